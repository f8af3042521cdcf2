"""Fuzz the data path: bad rows of every kind are skipped, counted once and named; good rows
are all used; nothing crashes.

It writes an image-text folder (``metadata.jsonl`` + images, the layout ``data.path``
reads) in which ``--bad-fraction`` of the rows are broken, one way each:

* images: over the pixel limit (set low with :func:`set_max_image_pixels`, so the files
  stay small; one between the limit and twice it, where Pillow only warns, one beyond),
  truncated PNG and JPEG, bytes that are no image, an empty file, a missing file, a row
  without ``file_name``;
* captions: empty, blank, null, a number, a list of numbers, an object.

The other rows are good but awkward, and must be used: CMYK JPEG, 16-bit greyscale,
greyscale with alpha, a palette with a transparent colour, 1-bit, a 1 x 1 image, a PNG
named ``.jpg``, a 100,000-character caption, a list of captions.

Then, on tiny random towers built from config (no network):

1. **data**: the training dataset read through a DataLoader worker for two epochs: every
   good row yields a sample each epoch, and the skipped rows, counted with
   :class:`SkippedRows`, are exactly the bad ones, each once, named by its file (or
   ``row N`` when it has none) with the expected reason;
2. **train**: a short training run completes; its skip counts are bad reasons only;
3. **eval**: ``mmcontrast eval`` (retrieval) on the folder completes, counts every bad
   row once by reason, and its warning names the unreadable images;
4. **refusals**: a malformed JSON line and a line that is not UTF-8 are refused, by the
   loader and by ``mmcontrast eval``, with a message naming ``metadata.jsonl:LINE``.

It prints ``rows tried N, rows skipped M (expected M), crashes 0`` and exits 1 on any
mismatch or crash.

    .venv/bin/python scripts/fuzz_data.py                  # 200 rows, 30 % bad
    .venv/bin/python scripts/fuzz_data.py --short          # the quick version CI runs
    .venv/bin/python scripts/fuzz_data.py --rows 1000 --bad-fraction 0.5 --seed 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

PIXEL_LIMIT = 64 * 64  # images above it are "too large"; theirs stay a few hundred bytes
WORDS = "red green blue yellow circle square triangle star small big dark light shape of a the on".split()
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}
SHAPES = ["circle", "square", "star"]
TINY_LAYERS = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
TINY_VIT = {**TINY_LAYERS, "intermediate_size": 64, "image_size": 32, "patch_size": 8}
TINY_BERT = {
    **TINY_LAYERS,
    "intermediate_size": 64,
    "vocab_size": 32,
    "max_position_embeddings": 64,
}
CAPTION_REASONS = ("empty caption", "caption not text")
MIN_GOOD = 8  # one training batch


@dataclass
class Row:
    """One planned metadata row: its kind, file and what the toolkit must make of it."""

    index: int
    kind: str
    file_name: str | None
    reason: str | None  # None: a good row, used
    name: str = ""  # how a skip must name it (filled in once the folder is known)


Maker = Callable[[Path, random.Random], Any]  # writes the row's file, returns its caption


def _picture(rng: random.Random, size: int = 24) -> tuple[Image.Image, str]:
    """A coloured shape on white, and its caption in the tiny tokenizer's words."""
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    box = (size // 5, size // 5, size - size // 5, size - size // 5)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image, f"a {colour} {shape}"


def _image(
    convert: Callable[[Image.Image], Image.Image] = lambda im: im, fmt: str = "PNG", size: int = 24
) -> Maker:
    """A picture converted (to another mode, size...) and saved as ``fmt``."""

    def make(path: Path, rng: random.Random) -> Any:
        image, caption = _picture(rng, size)
        convert(image).save(path, format=fmt)
        return caption

    return make


def _grey16(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)


def _palette_transparent(image: Image.Image) -> Image.Image:
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.info["transparency"] = 0
    return palette


def _truncated(fmt: str) -> Maker:
    def make(path: Path, rng: random.Random) -> Any:
        caption = _image(fmt=fmt, size=48)(path, rng)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return caption

    return make


def _bytes(data: bytes) -> Maker:
    def make(path: Path, rng: random.Random) -> Any:
        path.write_bytes(data)
        return "a red circle"

    return make


def _caption(value: Any) -> Maker:
    """A good image with the caption ``value``."""

    def make(path: Path, rng: random.Random) -> Any:
        _image()(path, rng)
        return value

    return make


def _long_caption(path: Path, rng: random.Random) -> Any:
    caption = _image()(path, rng)
    return " ".join([caption] * (100_000 // (len(caption) + 1) + 1))[:100_000]


def _two_captions(path: Path, rng: random.Random) -> Any:
    caption = _image()(path, rng)
    return [caption, f"the {caption}"]


def _no_file(path: Path, rng: random.Random) -> Any:
    return "a blue star"


def _resized(width: int, height: int) -> Callable[[Image.Image], Image.Image]:
    return lambda image: image.resize((width, height))


# kind -> (file extension, None: no file_name; what writes it; why it is skipped, None: used)
KINDS: dict[str, tuple[str | None, Maker, str | None]] = {
    "rgb png": ("png", _image(), None),
    "cmyk jpeg": ("jpg", _image(lambda im: im.convert("CMYK"), "JPEG"), None),
    "16-bit greyscale": ("png", _image(_grey16), None),
    "greyscale with alpha": ("png", _image(lambda im: im.convert("LA")), None),
    "palette with transparency": ("png", _image(_palette_transparent), None),
    "1-bit": ("png", _image(lambda im: im.convert("1")), None),
    "1 x 1": ("png", _image(_resized(1, 1)), None),
    "png named .jpg": ("jpg", _image(), None),
    "100k-character caption": ("png", _long_caption, None),
    "list of captions": ("png", _two_captions, None),
    "over the pixel limit": ("png", _image(_resized(80, 64)), "image too large"),  # Pillow warns
    "far over the pixel limit": ("png", _image(_resized(96, 96)), "image too large"),  # refuses
    "truncated png": ("png", _truncated("PNG"), "unreadable image"),
    "truncated jpeg": ("jpg", _truncated("JPEG"), "unreadable image"),
    "not an image": ("png", _bytes(b"these bytes are no picture\n" * 4), "unreadable image"),
    "zero-byte file": ("png", _bytes(b""), "unreadable image"),
    "missing file": ("png", _no_file, "missing image file"),
    "no file_name": (None, _no_file, "missing image"),
    "empty caption": ("png", _caption(""), "empty caption"),
    "blank caption": ("png", _caption("   "), "empty caption"),
    "null caption": ("png", _caption(None), "empty caption"),
    "number caption": ("png", _caption(42), "caption not text"),
    "list of numbers caption": ("png", _caption([1, 2, 3]), "caption not text"),
    "object caption": ("png", _caption({"en": "a red circle"}), "caption not text"),
}


def plan_rows(rows: int, bad_fraction: float, seed: int) -> list[Row]:
    """``rows`` rows, ``round(rows * bad_fraction)`` of them bad, kinds taken in turn.

    Raises:
        ValueError: Fewer than :data:`MIN_GOOD` good rows (a training batch), or a fraction
            outside [0, 1].
    """
    if not 0 <= bad_fraction <= 1 or rows - round(rows * bad_fraction) < MIN_GOOD:
        raise ValueError(
            f"--bad-fraction must be in [0, 1] and leave at least {MIN_GOOD} good rows (one "
            f"training batch); {rows} rows at {bad_fraction} leave "
            f"{rows - round(rows * bad_fraction)}"
        )
    rng = random.Random(seed)
    good = [k for k, (_, _, reason) in KINDS.items() if reason is None]
    bad = [k for k, (_, _, reason) in KINDS.items() if reason is not None]
    rng.shuffle(bad)
    n_bad = round(rows * bad_fraction)
    kinds = [bad[i % len(bad)] for i in range(n_bad)]
    kinds += [good[i % len(good)] for i in range(rows - n_bad)]
    rng.shuffle(kinds)
    planned = []
    for index, kind in enumerate(kinds):
        ext, _, reason = KINDS[kind]
        name = None if ext is None else f"{index:05d}.{ext}"
        planned.append(Row(index, kind, name, reason))
    return planned


def write_folder(folder: Path, planned: list[Row], seed: int) -> Path:
    """The images and ``metadata.jsonl`` of ``planned``; fills in each row's expected name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)
    lines = []
    for row in planned:
        _, make, _ = KINDS[row.kind]
        target = folder / (row.file_name or f"unused-{row.index}")
        caption = make(target, rng)
        entry: dict[str, Any] = {"text": caption}
        if row.file_name is not None:
            entry = {"file_name": row.file_name, **entry}
        lines.append(json.dumps(entry))
    metadata = folder / "metadata.jsonl"
    metadata.write_text("\n".join(lines) + "\n", encoding="utf-8")
    kept = [row for row in planned if row.reason not in CAPTION_REASONS]
    for row in planned:  # rows without a file are named by their row in the loaded table
        row.name = str(folder / row.file_name) if row.file_name else f"row {kept.index(row)}"
    return metadata


def tokenizer_folder(folder: Path) -> Path:
    """A tiny WordPiece tokenizer over :data:`WORDS` (the tests' own)."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}).save_pretrained(folder)
    return folder


def run_overrides(data: Path, tokenizer: Path, output: Path, steps: int) -> list[str]:
    """Tiny random ViT + BERT towers, every image decoded and augmented each step."""

    limit = [f"data.max_image_pixels={PIXEL_LIMIT}"]
    return [
        "model.vision.source=hf",
        "model.vision.name=vit",
        "model.vision.pretrained=false",
        f"model.vision.config_overrides={_flow(TINY_VIT)}",
        "model.vision.lock=false",
        "model.text.source=hf",
        "model.text.name=bert",
        "model.text.pretrained=false",
        f"model.text.tokenizer={tokenizer}",
        f"model.text.config_overrides={_flow(TINY_BERT)}",
        "model.embed_dim=16",
        f"data.path={data}",
        "data.random_resized_crop=[0.5, 1.0]",
        "data.horizontal_flip=0.5",
        f"train.output_dir={output}",
        "train.batch_size=8",
        f"train.max_steps={steps}",
        "train.cache_locked_features=false",
        "train.progress_bar=false",
        "train.trackers=[]",
        "eval.at_end=false",
        "eval.batch_size=8",
        *limit,
    ]


def _flow(mapping: dict[str, int]) -> str:
    """A dict as a YAML flow mapping, for a ``--set key={...}`` override."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


class Report:
    """Mismatches and crashes, as the stages find them."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.crashes = 0

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception:  # a crash is what this script looks for: count it, go on
            self.crashes += 1
            self.problems.append(f"{name}: crashed")
            traceback.print_exc()


def check_data(cfg: Any, planned: list[Row], report: Report) -> int:
    """Two epochs of the training dataset through a worker; returns the distinct skips."""
    from torch.utils.data import DataLoader

    from mmcontrast.data.skips import SkippedRows
    from mmcontrast.methods import build_method

    dataset: Any
    dataset, collate = build_method(cfg).train_data()
    loader = DataLoader(dataset, batch_size=8, collate_fn=collate, num_workers=1)
    skipped = SkippedRows()
    skipped.add_at_load(dataset.skipped_at_load)
    good = sum(row.reason is None for row in planned)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        used = 0
        for batch in loader:
            skipped.add(batch.pop("skipped"))
            used += len(batch.get("pixel_values", []))
        report.expect(used == good, f"data: epoch {epoch} used {used} rows, expected {good}")
    expected = {row.name: str(row.reason) for row in planned if row.reason is not None}
    found = dict(skipped.names())
    report.expect(
        skipped.total == len(expected) == len(found),
        f"data: {skipped.total} rows skipped ({len(found)} named), expected {len(expected)}",
    )
    for name in sorted(set(expected) | set(found)):
        report.expect(
            found.get(name) == expected.get(name),
            f"data: {name}: skipped for {found.get(name)!r}, expected {expected.get(name)!r}",
        )
    return skipped.total


def check_train(cfg: Any, planned: list[Row], report: Report) -> None:
    """A short run (at most one epoch) completes, counting bad reasons only, no row twice."""
    from mmcontrast.pipeline import train

    summary = train(cfg)
    bad = Counter(str(row.reason) for row in planned if row.reason is not None)
    counted = dict(summary.get("skipped", {}))
    report.expect(summary["step"] == cfg.train.max_steps, f"train: stopped at {summary['step']}")
    report.expect(
        all(count <= bad[reason] for reason, count in counted.items()),
        f"train: skipped {counted}, more than the bad rows {dict(bad)}",
    )


def _eval(argv: list[str]) -> tuple[int, str, list[str]]:
    """``mmcontrast eval`` in this process: exit status, stderr, mmcontrast warnings."""
    from mmcontrast.cli import main

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    keep = Keep()
    logger = logging.getLogger("mmcontrast")
    logger.addHandler(keep)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            status = main(["eval", *argv])
    finally:
        logger.removeHandler(keep)
    return status, stderr.getvalue(), keep.messages


def check_eval(run: Path, folder: Path, output: Path, planned: list[Row], report: Report) -> None:
    argv = ["--model", str(run), "--data", str(folder), "--task", "retrieval"]
    argv += ["--output", str(output), "--batch-size", "8", "--no-pictures", "--device", "cpu"]
    argv += ["--max-image-pixels", str(PIXEL_LIMIT)]
    status, stderr, warned = _eval(argv)
    report.expect(status == 0, f"eval: exit status {status}: {stderr.strip()}")
    if status != 0:
        return
    result = json.loads((output / "retrieval.json").read_text())
    expected = Counter(str(row.reason) for row in planned if row.reason is not None)
    report.expect(
        result["skipped"] == dict(expected),
        f"eval: skipped {result['skipped']}, expected {dict(expected)}",
    )
    unreadable = [row for row in planned if row.reason and row.reason not in CAPTION_REASONS]
    if unreadable:
        said = [m for m in warned if f"skipped {len(unreadable)} bad row" in m]
        report.expect(bool(said), f"eval: no warning naming the unreadable images in {warned}")
        names = {row.name for row in unreadable}
        report.expect(
            bool(said) and all(part.split(" (")[0] in names for part in _named(said[0])),
            f"eval: the warning names rows that are not bad: {said}",
        )


def _named(message: str) -> list[str]:
    """The ``name (reason)`` parts after ``first:`` in a skip message."""
    first = message.split("; first: ", 1)[-1]
    return [part for part in first.split(", ") if "(" in part and not part.startswith("and ")]


def check_refusals(folder: Path, run: Path, report: Report) -> None:
    """A malformed JSON line and a non-UTF-8 line: refused naming ``metadata.jsonl:LINE``."""
    from mmcontrast.config import DataConfig
    from mmcontrast.data.pairs import load_pairs

    lines = (folder / "metadata.jsonl").read_bytes().splitlines(keepends=True)
    line = len(lines) // 2 + 1
    broken = {
        "malformed JSON": b'{"file_name": "x.png" "text": "no comma"}\n',
        "not UTF-8": b'{"file_name": "x.png", "text": "caf\xe9 cr\xe8me"}\n',
    }
    for what, bad_line in broken.items():
        copy = folder.parent / what.replace(" ", "-")
        copy.mkdir(exist_ok=True)
        metadata = copy / "metadata.jsonl"
        metadata.write_bytes(b"".join(lines[: line - 1] + [bad_line] + lines[line:]))
        where = f"{metadata}:{line}"
        try:
            load_pairs(DataConfig(path=str(copy)), "train")
            report.expect(False, f"refusal: {what} line loaded")
        except ValueError as err:
            report.expect(where in str(err), f"refusal: {what}: {err} does not name {where}")
        argv = ["--model", str(run), "--data", str(copy), "--task", "retrieval"]
        status, stderr, _ = _eval([*argv, "--output", str(copy / "eval"), "--device", "cpu"])
        report.expect(
            status == 2 and where in stderr,
            f"refusal: mmcontrast eval on a {what} line: status {status}, {stderr.strip()!r}",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200, help="metadata rows (default 200)")
    parser.add_argument(
        "--bad-fraction", type=float, default=0.3, help="fraction of bad rows (default 0.3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="which rows go bad, and how")
    parser.add_argument("--short", action="store_true", help="48 rows, half bad, 2 steps (CI)")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    args = parser.parse_args(argv)
    rows, fraction = (48, 0.5) if args.short else (args.rows, args.bad_fraction)
    try:
        planned = plan_rows(rows, fraction, args.seed)
    except ValueError as err:
        parser.error(str(err))

    from mmcontrast.config import load_recipe
    from mmcontrast.data.images import (
        MAX_IMAGE_PIXELS_ENV,
        max_image_pixels,
        set_max_image_pixels,
    )

    report = Report()
    previous = max_image_pixels(), os.environ.get(MAX_IMAGE_PIXELS_ENV)
    set_max_image_pixels(PIXEL_LIMIT)
    skipped = -1
    try:
        with contextlib.ExitStack() as stack:
            root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            folder = root / "data"
            write_folder(folder, planned, args.seed)
            kept = sum(row.reason not in CAPTION_REASONS for row in planned)
            steps = 2 if args.short else max(1, kept // 8)  # at most one epoch
            overrides = run_overrides(
                folder, tokenizer_folder(root / "tokenizer"), root / "run", steps
            )
            cfg = load_recipe(None, overrides)
            with report.stage("data"):
                skipped = check_data(cfg, planned, report)
            with report.stage("train"):
                check_train(cfg, planned, report)
            with report.stage("eval"):
                check_eval(root / "run", folder, root / "eval", planned, report)
            with report.stage("refusals"):
                check_refusals(folder, root / "run", report)
    finally:  # as it was: main() also runs inside test sessions
        set_max_image_pixels(previous[0])
        if previous[1] is None:
            del os.environ[MAX_IMAGE_PIXELS_ENV]
    expected = sum(row.reason is not None for row in planned)
    for problem in report.problems:
        print(f"MISMATCH {problem}")
    print(
        f"rows tried {rows}, rows skipped {skipped} (expected {expected}), crashes {report.crashes}"
    )
    return 1 if report.problems or skipped != expected else 0


if __name__ == "__main__":
    sys.exit(main())
