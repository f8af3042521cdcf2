"""Towers from open_clip: one half of an open_clip model, by config name or config JSON.

``name`` is an open_clip model name (``ViT-B-32``), a path to a model config JSON, or one of
open_clip's own schemas, ``local-dir:DIR`` or ``hf-hub:ORG/REPO`` (a folder or Hub repo with
``open_clip_config.json`` and weights); ``weights`` is a pretrained tag (``laion2b_s34b_b79k``)
or a checkpoint file. Both towers already end in open_clip's own projection, so features have
the model's ``embed_dim``. Images are preprocessed as open_clip's own validation transform
(``model.visual.preprocess_cfg``: size, mean/std, interpolation, resize mode, torchvision's
centre crop). A model already built (the whole open_clip model that ``model.init_from``
names, :mod:`mmcontrast.models.pretrained_open_clip`) is split into the two towers as it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
from torch import Tensor, nn

from mmcontrast.config import TowerConfig
from mmcontrast.data.transforms import ImagePreprocess
from mmcontrast.models.tower import Tower
from mmcontrast.registry import TOWERS, unknown_name_message

OPEN_CLIP_SCHEMAS = ("local-dir:", "hf-hub:")  # open_clip reads config and weights from these


def open_clip_model_name(name: str) -> str:
    """Register a config JSON with open_clip if needed and return its model name.

    ``local-dir:`` and ``hf-hub:`` names stay whole once their config is found.

    Raises:
        FileNotFoundError: The config JSON or ``local-dir:`` folder config does not exist.
        ValueError: An unknown name, or an ``hf-hub:`` repo the Hub does not give.
    """
    if name.startswith(OPEN_CLIP_SCHEMAS):
        open_clip_model_config(name)
        return name
    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config {name!r} not found")
        open_clip.add_model_config(path)
        return path.stem
    if name not in open_clip.list_models():
        raise ValueError(unknown_name_message("open_clip model", name, open_clip.list_models()))
    return name


def open_clip_model_config(name: str) -> dict[str, Any]:
    """The model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) of an open_clip name."""
    if name.startswith("local-dir:"):
        path = Path(name.removeprefix("local-dir:")) / "open_clip_config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{name!r}: no {path} (a local-dir: folder holds open_clip_config.json and "
                "weights, as transformers_to_open_clip or open_clip's push_to_hf_hub write them)"
            )
        config = json.loads(path.read_text())
        return dict(config.get("model_cfg", config))
    if name.startswith("hf-hub:"):
        try:
            return dict(open_clip.get_model_config(name))
        except (OSError, RuntimeError, ValueError) as err:
            repo, reason = name.removeprefix("hf-hub:"), str(err).rstrip(".")
            raise ValueError(
                f"could not fetch open_clip_config.json of {name!r} from the Hugging Face Hub "
                f"(the Hub is unreachable or offline, or a typo or gated repo): {reason}. On a "
                f"machine with access run `hf download {repo} --local-dir DIR`, then use "
                "local-dir:DIR"
            ) from err
    config = open_clip.get_model_config(name)
    if config is None:
        raise ValueError(unknown_name_message("open_clip model", name, open_clip.list_models()))
    return dict(config)


def open_clip_folder(spec: str) -> str | None:
    """``local-dir:SPEC`` when ``spec`` is a folder holding an open_clip model (its
    ``open_clip_config.json``, as ``mmcontrast export`` writes for open_clip runs), else None."""
    folder = Path(spec).expanduser()
    if folder.is_dir() and (folder / "open_clip_config.json").is_file():
        return f"{OPEN_CLIP_SCHEMAS[0]}{folder}"
    return None


def parse_open_clip_spec(spec: str) -> tuple[str, str | None]:
    """``"ViT-B-32:laion2b_s34b_b79k"`` -> name and pretrained (a tag or a checkpoint file);
    ``local-dir:``/``hf-hub:`` names bring their weights and stay whole."""
    if spec.startswith(OPEN_CLIP_SCHEMAS):
        return spec, None
    name, sep, pretrained = spec.partition(":")
    return name, (pretrained or None) if sep else None


def create_open_clip_model(cfg: TowerConfig) -> Any:
    """The whole open_clip model ``cfg`` names: ``weights`` (a tag or file) loaded when
    ``pretrained``; ``local-dir:``/``hf-hub:`` names load their own weights then.

    Raises:
        ValueError: ``weights`` given with a ``local-dir:``/``hf-hub:`` name.
    """
    model_name = open_clip_model_name(cfg.name)
    schema = model_name.startswith(OPEN_CLIP_SCHEMAS)
    if schema and cfg.weights:
        raise ValueError(
            f"{cfg.name!r} brings its own weights: drop weights ({cfg.weights!r}), or use "
            "the model's config JSON with weights"
        )
    random_on_purpose = logging.getLogger()  # open_clip logs on the root logger
    quiet = _DropRandomInitNote()
    if not cfg.pretrained:  # built from config (the run's own weights come next): no alarm
        random_on_purpose.addFilter(quiet)
    try:
        return open_clip.create_model(
            model_name,
            pretrained=cfg.weights if cfg.pretrained else None,
            load_weights=cfg.pretrained,  # local-dir:/hf-hub: weights only when pretrained
            require_pretrained=schema and cfg.pretrained,
            **cfg.config_overrides,
        )
    finally:
        random_on_purpose.removeFilter(quiet)


class _DropRandomInitNote(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


class OpenClipTower(Tower):
    """The vision (``model.visual``) or text (``encode_text``) half of an open_clip model.

    ``model`` splits an open_clip model already built instead of building one from ``cfg``;
    build the vision half first: the text half replaces ``model.visual`` in it.
    """

    def __init__(self, cfg: TowerConfig, modality: str, model: nn.Module | None = None) -> None:
        super().__init__()
        if cfg.pooling != "auto":
            raise ValueError("open_clip towers pool as their model defines: set pooling: auto")
        self.modality = modality
        self.cfg = cfg
        self.model_name = open_clip_model_name(cfg.name)
        whole: Any = model if model is not None else create_open_clip_model(cfg)
        config = {**open_clip_model_config(self.model_name), **cfg.config_overrides}
        self.width = int(config["embed_dim"])
        if modality == "vision":
            self.model = whole.visual
            self.preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(whole))
        else:
            whole.visual = nn.Identity()  # keep only the text half
            for name in ("logit_scale", "logit_bias"):  # the dual encoder has its own
                if isinstance(getattr(whole, name, None), nn.Parameter):
                    getattr(whole, name).requires_grad_(False)
            self.model = whole
            self.context_length = int(getattr(whole, "context_length", 77))

    def forward(
        self, pixel_values: Tensor | None = None, input_ids: Tensor | None = None
    ) -> Tensor:
        if self.modality == "vision":
            return self.model(pixel_values)
        return self.model.encode_text(input_ids)

    def enable_gradient_checkpointing(self) -> None:
        if self.modality == "vision":
            self.model.set_grad_checkpointing(True)
        elif hasattr(self.model, "text"):  # CustomTextCLIP: its own text module
            self.model.text.set_grad_checkpointing(True)
        else:  # CLIP: the text transformer is the model's own
            self.model.transformer.grad_checkpointing = True

    def image_preprocess(self) -> ImagePreprocess:
        return open_clip_preprocess(self.preprocess_cfg)

    def tokenizer(self) -> Callable[[list[str]], dict[str, Tensor]]:
        return OpenClipTokenizer(self.model_name, getattr(self, "context_length", None))


def open_clip_preprocess(preprocess_cfg: dict[str, Any]) -> ImagePreprocess:
    """open_clip's validation transform (``open_clip.image_transform``) as ``ImagePreprocess``.

    ``resize_mode`` ``shortest`` resizes the shortest side then takes torchvision's centre
    crop (offset ``round``), ``squash`` resizes to the square, ``longest`` resizes the
    longest side and pads with ``fill_color``; ``interpolation`` is bicubic unless
    ``bilinear`` (open_clip's ``random`` means bicubic outside training).

    Raises:
        ValueError: A ``resize_mode`` open_clip does not have.
    """
    size = preprocess_cfg.get("size", 224)
    size = size[0] if isinstance(size, list | tuple) else size
    mode = preprocess_cfg.get("resize_mode") or "shortest"
    if mode not in ("shortest", "longest", "squash"):
        raise ValueError(
            f"open_clip preprocess_cfg resize_mode is {mode!r}; open_clip has shortest, "
            "longest and squash"
        )
    bilinear = preprocess_cfg.get("interpolation") == "bilinear"
    mean = [float(v) for v in preprocess_cfg["mean"]]
    fill = preprocess_cfg.get("fill_color") or 0
    return ImagePreprocess(
        size=int(size),
        mean=mean,
        std=[float(v) for v in preprocess_cfg["std"]],
        interpolation="bilinear" if bilinear else "bicubic",
        resize=mode,
        crop_offset="round",
        fill=[int(v) for v in fill] if isinstance(fill, list | tuple) else [int(fill)] * len(mean),
        backend="pil",  # open_clip resizes PIL images: the same pixels
    )


class OpenClipTokenizer:
    """Picklable ``captions -> {input_ids}`` with open_clip's tokenizer for a model."""

    def __init__(self, model_name: str, context_length: int | None = None) -> None:
        # None: the model's own; a stretched text tower (Long-CLIP) takes longer captions
        self.tokenize = open_clip.get_tokenizer(model_name, context_length=context_length)

    def __call__(self, captions: list[str]) -> dict[str, Tensor]:
        return {"input_ids": self.tokenize(captions)}


@TOWERS.register(
    "open_clip",
    "the vision or text half of an open_clip model (name, config JSON, local-dir:DIR or hf-hub:ORG/REPO)",
)
def build_open_clip_tower(cfg: TowerConfig, modality: str) -> OpenClipTower:
    return OpenClipTower(cfg, modality)
