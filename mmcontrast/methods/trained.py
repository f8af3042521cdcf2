"""A trained method back from its folder: the final weights of a run, a checkpoint or an
mmcontrast export (``config.yaml`` + ``model.safetensors``), for evaluation and export.

Weights are read from safetensors only, so loading a folder runs no code from it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from safetensors.torch import load_file, load_model
from torch import nn

from mmcontrast.config import load_recipe
from mmcontrast.methods.base import Method, build_method
from mmcontrast.models.lora import merge_adapters
from mmcontrast.models.tower import Tower

WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"  # a checkpoint's moving average of the weights (train.ema_decay)


def load_weights(model: nn.Module, folder: str | Path) -> None:
    """Load the weights of ``folder/model.safetensors`` into ``model`` (strict)."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {folder}")
    model.load_state_dict(load_file(str(path)), strict=True)


def load_trained(folder: str | Path) -> Method:
    """Rebuild the method of a run, checkpoint or mmcontrast export folder, with its weights.

    Towers are built from their configs only (no pretrained download); the folder's
    ``model.safetensors`` replaces every weight, and a checkpoint's ``ema.safetensors`` (a run
    with ``train.ema_decay``) then replaces the trained model's, as the final weights do. Tower names that are sub-folders of
    ``folder`` (as in ``mmcontrast export`` folders) resolve against it.
    """
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{folder} holds no config.yaml: pass an mmcontrast run, checkpoint or export folder"
        )
    fixed = [  # towers are built from config only; the folder's weights replace them
        "model.vision.pretrained=false",
        "model.text.pretrained=false",
        "model.vision.weights=null",
        "model.text.weights=null",
    ]
    cfg = load_recipe(folder / "config.yaml", fixed)
    for tower in (cfg.model.vision, cfg.model.text):
        for attr in ("name", "tokenizer"):
            value = getattr(tower, attr)
            if value and (folder / value).exists():
                setattr(tower, attr, str(folder / value))
    method = build_method(cfg)
    load_weights(method, folder)
    if (folder / EMA_FILE).is_file():  # a checkpoint of a run with an EMA: the average is the model
        load_model(method.trained_model(), str(folder / EMA_FILE), strict=True)
    return method.eval()


def merge_lora(method: Method) -> Method:
    """``method`` with its LoRA/DoRA adapters folded into the base weights (in place) and
    ``lora`` dropped from its config: plain weights, keys of a model without adapters,
    loadable without peft (export, WiSE-FT)."""
    if merge_adapters(method):
        for modality in ("vision", "text"):
            getattr(method.cfg.model, modality).lora = None
        for module in method.modules():
            if isinstance(module, Tower):
                module.cfg = dataclasses.replace(module.cfg, lora=None)
    return method
