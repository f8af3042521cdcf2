"""The tower interface shared by every encoder family, plus pooling and locking.

A tower maps raw inputs (pixel values, or token ids from its own tokenizer) to one
feature vector per sample of width ``tower.width``. Families live in their own files
(``hf_tower.py``, ``timm_tower.py``, ``open_clip_tower.py``) and register a builder in
``TOWERS``; ``build_tower`` picks one by ``TowerConfig.source``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mmcontrast.config import TowerConfig
from mmcontrast.data.transforms import ImagePreprocess
from mmcontrast.models.long_text import stretch_to
from mmcontrast.models.lora import apply_lora, lora_settings
from mmcontrast.registry import TOWERS


class Tower(nn.Module):
    """Base class: ``forward(**inputs) -> [B, width]`` features (not normalised)."""

    width: int
    modality: str  # "vision" | "text"
    cfg: TowerConfig  # what built it (source, name, ...): export reads it

    def image_preprocess(self) -> ImagePreprocess:
        raise NotImplementedError(f"{type(self).__name__} is not a vision tower")

    def tokenizer(self) -> Callable[[list[str]], dict[str, Tensor]]:
        """A picklable callable turning a list of captions into model inputs."""
        raise NotImplementedError(f"{type(self).__name__} is not a text tower")

    def layer_stack(self) -> nn.ModuleList | nn.Sequential:
        """The module whose children are the tower's layers (``unlocked_layers``, ``lr_decay``:
        see :func:`layer_ids`)."""
        return find_layer_stack(self)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each layer's activations during backward instead of keeping them."""
        raise ValueError(
            f"model.{self.modality}.gradient_checkpointing: {type(self).__name__} towers do not "
            "support it (Hugging Face, timm and open_clip towers do)"
        )


def build_tower(cfg: TowerConfig, modality: str) -> Tower:
    """Build the tower described by ``cfg`` for ``modality`` ("vision" or "text")."""
    if not cfg.name:
        raise ValueError(
            f"model.{modality}.name is empty: give a Hub id, a local directory, a timm or "
            f"open_clip model name, or package:NAME"
        )
    builder = TOWERS.get(cfg.source)
    tower: Tower = builder(cfg, modality)
    return apply_training_options(tower, cfg, modality)


def apply_training_options(
    tower: Tower, cfg: TowerConfig, modality: str, source: str | None = None
) -> Tower:
    """Preprocessing overrides, locking, LoRA adapters and gradient checkpointing of ``cfg``
    on a built tower; ``source``: the pretrained model (``model.init_from``) it comes from.

    Raises:
        ValueError: ``source`` is given and its vision tower cannot take ``cfg.image_size``
            (a ViT's position embeddings are sized for its own image size).
    """
    if cfg.stretch_positions is not None:
        _stretch_text(tower, cfg, modality)
    if modality == "vision":
        pre = tower.image_preprocess()  # the recipe's size and normalisation, its resizing
        if source is not None and cfg.image_size and cfg.image_size != pre.size:
            _check_image_size(tower, cfg.image_size, pre.size, source)
        tower.preprocess_override = dataclasses.replace(  # type: ignore[assignment]
            pre,
            size=cfg.image_size or pre.size,
            mean=list(cfg.image_mean or pre.mean),
            std=list(cfg.image_std or pre.std),
        )
    apply_lock(tower, cfg.lock, cfg.unlocked_layers)
    if cfg.lora is not None:
        _apply_lora(tower, cfg, modality)
    if cfg.gradient_checkpointing:
        tower.enable_gradient_checkpointing()
    return tower


def _check_image_size(tower: Tower, size: int, native: int, source: str) -> None:
    """Refuse an image size a pretrained vision tower cannot take, by trying one image."""
    parameter = next(tower.parameters())
    probe = torch.zeros(1, 3, size, size, dtype=parameter.dtype, device=parameter.device)
    was_training = tower.training
    tower.eval()
    try:
        with torch.no_grad():
            tower(pixel_values=probe)
    except (RuntimeError, ValueError, AssertionError) as err:  # timm's PatchEmbed asserts
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"model.vision.image_size {size}: the vision tower of {source} takes {native} px "
            f"images and cannot take {size} px ones ({reason}); leave model.vision.image_size "
            "unset to keep the source's size"
        ) from None
    finally:
        tower.train(was_training)


def _stretch_text(tower: Tower, cfg: TowerConfig, modality: str) -> None:
    """Long-CLIP: a longer text position table (before locking and LoRA see its parameter);
    captions are then tokenized to the new length."""
    where = f"model.{modality}.stretch_positions"
    if modality != "text":
        raise ValueError(f"{where}: only a text tower has a caption length to stretch")
    model = tower.model
    assert isinstance(model, nn.Module)
    cfg.max_length = stretch_to(model, cfg.stretch_positions, where)
    if hasattr(tower, "context_length"):  # an open_clip text tower's tokenizer length
        setattr(tower, "context_length", cfg.max_length)  # noqa: B010


def _apply_lora(tower: Tower, cfg: TowerConfig, modality: str) -> None:
    where = f"model.{modality}.lora"
    settings = lora_settings(cfg.lora or {}, where)
    if cfg.unlocked_layers:
        raise ValueError(
            f"{where} freezes the tower's own weights: drop model.{modality}.unlocked_layers "
            "(or lora)"
        )
    apply_lora(tower, settings, where)


def resolved_preprocess(tower: Tower) -> ImagePreprocess:
    """The tower's preprocessing after recipe overrides."""
    return getattr(tower, "preprocess_override", None) or tower.image_preprocess()


# --------------------------------------------------------------------------- pooling


def pool(
    pooling: str,
    last_hidden_state: Tensor | None,
    pooler_output: Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Reduce token or spatial features to one vector per sample.

    ``cls`` takes the first token; ``mean`` averages tokens (respecting ``attention_mask``)
    or spatial positions of a [B, C, H, W] map; ``pooler`` returns the model's own pooled
    output.
    """
    if pooling == "pooler":
        if pooler_output is None:
            raise ValueError(
                "pooling 'pooler' was asked for but this model has no pooled output; use 'mean' or 'cls'"
            )
        return pooler_output.flatten(1)
    if last_hidden_state is None:
        raise ValueError(f"pooling {pooling!r} needs the model's last_hidden_state")
    if last_hidden_state.ndim == 4:  # convolutional [B, C, H, W]
        if pooling == "cls":
            raise ValueError(
                "pooling 'cls' needs a token sequence; this tower returns a feature map: use 'mean'"
            )
        return last_hidden_state.mean(dim=(2, 3))
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if pooling == "mean":
        if attention_mask is None:
            return last_hidden_state.mean(dim=1)
        mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
        return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    raise ValueError(f"unknown pooling {pooling!r}; choose cls, mean or pooler")


# --------------------------------------------------------------------------- layers and locking

# Parameter-name parts that mark the input side of a tower (embeddings, class token, stem,
# pre-norm) wherever the model registers them: open_clip registers its text tower's
# token_embedding after the transformer, timm ViTs hold cls_token on the model itself.
_INPUT_SIDE = ("cls_token", "reg_token", "dist_token", "mask_token", "pre_layrnorm", "ln_pre", "norm_pre", "stem")  # fmt: skip


def find_layer_stack(module: nn.Module) -> nn.ModuleList | nn.Sequential:
    """The ``ModuleList`` or ``Sequential`` holding the most parameters (the layer stack).

    A ``ModuleList`` of one layer counts (a one-layer transformer); a ``Sequential`` needs
    two, since one-module ``Sequential`` wrappers are common.
    """
    best: nn.ModuleList | nn.Sequential | None = None
    best_count = -1
    for sub in module.modules():
        if isinstance(sub, nn.ModuleList | nn.Sequential) and len(sub) >= (
            1 if isinstance(sub, nn.ModuleList) else 2
        ):
            count = sum(p.numel() for p in sub.parameters())
            if count > best_count:
                best, best_count = sub, count
    if best is None:
        raise ValueError(
            f"cannot find a stack of layers in {type(module).__name__} (no ModuleList, and "
            "no Sequential of two or more modules)"
        )
    return best


def layer_ids(tower: Tower) -> tuple[dict[str, int], int]:
    """Each parameter's layer id, and the number of layers L of ``tower.layer_stack()``.

    The convention of BEiT (Bao et al. 2021) and FT-CLIP (Dong et al. 2022), used by
    layer-wise learning-rate decay and by ``unlocked_layers``: the input side (embeddings,
    class token, stem, pre-norm) is layer 0, block k (from 0) of the stack is layer k + 1,
    and everything after the last block (final norm, pooler, head) is layer L + 1. A
    parameter inside a block (adapters included) takes the block's id; one outside the stack
    is input side by its name (:data:`_INPUT_SIDE`, or a part holding ``embed``), else by
    where it is registered: in a module before the stack is layer 0; after the stack, or
    held directly by a module that holds the stack (open_clip's ``proj``), is layer L + 1.

    Raises:
        ValueError: The tower has no stack of layers (the message names the tower).
    """
    try:
        stack = tower.layer_stack()
    except ValueError as err:
        raise ValueError(f"{type(tower).__name__}: {err}") from None
    blocks = list(stack)
    block_of = {id(p): k for k, block in enumerate(blocks) for p in block.parameters()}
    stack_path = next(name for name, sub in tower.named_modules() if sub is stack)
    ids: dict[str, int] = {}
    after_stack = False
    for name, param in tower.named_parameters():
        if id(param) in block_of:
            ids[name] = block_of[id(param)] + 1
            after_stack = True
        elif _input_side(name) or not (after_stack or _holds(name, stack_path)):
            ids[name] = 0
        else:
            ids[name] = len(blocks) + 1
    return ids, len(blocks)


def _input_side(name: str) -> bool:
    return any("embed" in part or part in _INPUT_SIDE for part in name.lower().split("."))


def _holds(name: str, stack_path: str) -> bool:
    """Whether parameter ``name`` belongs directly to a module that holds the stack."""
    owner = name.rpartition(".")[0]
    return owner == "" or stack_path.startswith(owner + ".")


def apply_lock(tower: Tower, lock: bool, unlocked_layers: int = 0) -> None:
    """Freeze the tower (LiT), optionally leaving its last ``unlocked_layers`` layers trainable.

    Everything after the unlocked layers (final norms, poolers, heads: layer ids of
    :func:`layer_ids`) stays trainable too, except what the tower itself froze. Frozen
    sub-modules are kept in eval mode by ``keep_frozen_in_eval``.
    """
    if unlocked_layers and not lock:
        raise ValueError("unlocked_layers only applies to a locked tower: set lock: true as well")
    if not lock:
        return
    trainable = {name for name, param in tower.named_parameters() if param.requires_grad}
    for param in tower.parameters():
        param.requires_grad_(False)
    if unlocked_layers <= 0:
        return
    try:
        ids, layers = layer_ids(tower)
    except ValueError as err:
        raise ValueError(f"{err}; use lock without unlocked_layers") from None
    if unlocked_layers > layers:
        raise ValueError(
            f"unlocked_layers={unlocked_layers} but the tower has only {layers} layers"
        )
    params = dict(tower.named_parameters())
    for name, layer in ids.items():
        if layer > layers - unlocked_layers and name in trainable:
            params[name].requires_grad_(True)


def keep_frozen_in_eval(module: nn.Module) -> None:
    """Put every sub-module whose parameters are all frozen into eval mode (BatchNorm, dropout)."""
    for sub in module.modules():
        params = list(sub.parameters())
        if params and not any(p.requires_grad for p in params):
            sub.eval()


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total
