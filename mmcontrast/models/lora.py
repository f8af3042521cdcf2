"""LoRA and DoRA adapters on a tower, through peft.

LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") freezes a
linear layer's weight ``W`` and trains a low-rank update: ``W x + (alpha / r) B A x`` with
``A`` of shape [r, in] and ``B`` of shape [out, r], ``B`` starting at zero so the adapted
tower starts as the base tower. DoRA (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank
Adaptation") also trains a per-output-channel magnitude of the updated weight.

``TowerConfig.lora`` (a mapping, checked against :class:`LoraSettings`) turns it on for one
tower. The adapters are injected in place with ``peft.inject_adapter_in_model``: the tower
keeps its class and forward, each adapted layer becomes a peft layer holding the frozen
``base_layer`` and the trainable ``lora_A`` / ``lora_B`` (and DoRA's
``lora_magnitude_vector``), so the adapters are ordinary parameters of the method: the
optimiser, checkpoints and ``--resume`` see them with no special case. Export merges them
into the base weights (:func:`merge_adapters`) and writes plain weights.

    >>> from mmcontrast.models.lora import LoraSettings
    >>> LoraSettings(rank=4, alpha=8).scale
    2.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from mmcontrast.config import ConfigError, from_dict

ADAPTER_MARK = (
    "lora_"  # every adapter parameter's name holds it (lora_A, lora_B, lora_magnitude_vector)
)

# default ``target_modules`` by the linear layers a tower holds: (names that identify the
# family, names adapted)
DEFAULT_TARGETS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "HF CLIP / SigLIP / ViT (out_proj or o_proj)",
        ("q_proj", "k_proj", "v_proj"),
        ("q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "fc1", "fc2"),
    ),
    ("BERT-like", ("query", "key", "value"), ("query", "key", "value", "dense")),
    ("timm ViT", ("qkv",), ("qkv", "attn.proj", "fc1", "fc2")),  # not patch_embed.proj
    # open_clip: attention is a torch MultiheadAttention whose q, k, v share one packed
    # in_proj_weight; peft adapts the whole module (in_proj and out_proj) by its name
    ("open_clip", ("c_fc", "c_proj"), ("attn", "c_fc", "c_proj")),
)


@dataclass
class LoraSettings:
    """The keys of ``model.{vision,text}.lora``.

    Raises:
        ValueError: a rank below 1 or a dropout outside [0, 1).
    """

    rank: int = 8  # r, the rank of the update
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input
    target_modules: list[str] | None = None  # layer names (or name suffixes); None = per family
    dora: bool = False  # DoRA: also learn each output channel's magnitude

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be at least 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_settings(raw: dict[str, Any], prefix: str) -> LoraSettings:
    """``raw`` checked against :class:`LoraSettings` (unknown keys name the valid ones)."""
    try:
        settings: LoraSettings = from_dict(LoraSettings, raw, prefix=f"{prefix}.")
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{prefix}: {err}") from None
    return settings


def linear_names(module: nn.Module) -> list[str]:
    """The distinct last names of the ``nn.Linear`` layers in ``module``, in order."""
    names: dict[str, None] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and name:
            names.setdefault(name.rsplit(".", 1)[-1], None)
    return list(names)


def default_targets(module: nn.Module, where: str) -> list[str]:
    """The layers LoRA adapts in ``module`` when the recipe names none."""
    present = set(linear_names(module))
    names = [name for name, _ in module.named_modules() if name]
    for _family, marks, targets in DEFAULT_TARGETS:
        if set(marks) <= present:
            return [t for t in targets if any(_matches(name, t) for name in names)]
    raise ValueError(
        f"{where}.target_modules: no default for {type(module).__name__}; list the layers to "
        f"adapt, e.g. from its linear layers: {_sample(linear_names(module))}"
    )


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def apply_lora(module: nn.Module, settings: LoraSettings, where: str) -> list[str]:
    """Inject LoRA (or DoRA) adapters into ``module`` in place and freeze everything else in it.

    Returns the names of the adapted layers.

    Raises:
        ValueError: a target that matches no layer of ``module`` (the message lists the
            linear layers it has).
    """
    targets = settings.target_modules or default_targets(module, where)
    names = [name for name, _ in module.named_modules() if name]
    for target in targets:
        if not any(_matches(name, target) for name in names):
            raise ValueError(
                f"{where}.target_modules: {target!r} matches no layer of {type(module).__name__}; "
                f"its linear layers are named {_sample(linear_names(module))}"
            )
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft annotates int, uses alpha/r
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        use_dora=settings.dora,
        bias="none",
    )
    try:
        inject_adapter_in_model(config, module)
    except ValueError as err:  # peft's words, e.g. DoRA on a layer kind it cannot adapt
        raise ValueError(
            f"{where}: peft cannot adapt {type(module).__name__} with these settings ({err}); "
            f"change {where}.dora or {where}.target_modules"
        ) from None
    if hasattr(module, "peft_config"):  # peft's bookkeeping: nothing here reads it
        del module.peft_config
    for name, param in module.named_parameters():
        param.requires_grad_(ADAPTER_MARK in name)
    return [name for name, sub in module.named_modules() if isinstance(sub, BaseTunerLayer)]


def has_adapters(module: nn.Module) -> bool:
    return any(isinstance(sub, BaseTunerLayer) for sub in module.modules())


def merge_adapters(module: nn.Module) -> int:
    """Merge every adapter in ``module`` into its base layer and put the plain layer back.

    Changes ``module`` in place (merge a copy to keep the adapters); returns how many adapted
    layers were put back. Afterwards the state dict has the base model's own keys.
    """
    merged = 0
    while True:  # outermost first: an adapted MultiheadAttention holds an adapted out_proj
        found = next(
            ((n, sub) for n, sub in module.named_modules() if isinstance(sub, BaseTunerLayer)),
            None,
        )
        if found is None:
            return merged
        name, layer = found
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        if not layer.merged:
            layer.merge()
        base = layer.get_base_layer()
        _weights_as_parameters(base)
        setattr(parent, child, base)
        merged += 1


def _weights_as_parameters(module: nn.Module) -> None:
    """peft merges a MultiheadAttention by replacing its weight parameters with plain
    tensors: register them as (frozen) parameters again, so the state dict holds them."""
    for sub in module.modules():
        for attr in ("weight", "in_proj_weight"):
            value = sub.__dict__.get(attr)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                del sub.__dict__[attr]
                sub.register_parameter(attr, nn.Parameter(value, requires_grad=False))


def _sample(names: list[str], n: int = 12) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "") if names else "(none)"
