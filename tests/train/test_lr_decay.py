"""Layer-wise learning-rate decay (``model.{vision,text}.lr_decay``) reaches the optimiser.

Each parameter's group rate is checked against the BEiT / FT-CLIP formula written from the
parameter names here (embeddings 0, block k id k + 1, the rest L + 1; rate
``lr * lr_decay ** (L + 1 - id)``), independent of ``layer_ids``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import TINY_CLIP_VISION, TINY_OPEN_CLIP, flow
from torch import nn

from mmcontrast.config import TowerConfig, TrainConfig, load_recipe
from mmcontrast.methods import Method, build_method
from mmcontrast.models import build_tower
from mmcontrast.models.tower import Tower, layer_ids
from mmcontrast.train.optim import build_optimizer

TIMM_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}
CLIP_VISION = {**TINY_CLIP_VISION, "num_hidden_layers": 2}
TOWERS = {  # vision tower overrides and its number of layers
    "hf-vit": ([], 2),
    "hf-clip": (
        [
            "model.vision.name=clip_vision_model",
            f"model.vision.config_overrides={flow(CLIP_VISION)}",
        ],
        2,
    ),  # fmt: skip
    "timm": (
        [
            "model.vision.source=timm",
            "model.vision.name=vit_tiny_patch16_224",
            f"model.vision.config_overrides={flow(TIMM_VIT)}",
        ],
        3,
    ),  # fmt: skip
}
BLOCK = re.compile(r"\.(?:layers?|blocks)\.(\d+)\.")  # HF ViT/CLIP/BERT and timm block names
EMBEDDINGS = re.compile(r"embed|cls_token|pre_layrnorm")


def method_with(tiny_run: list[str], *extra: str) -> Method:
    return build_method(load_recipe(None, [*tiny_run, "train.lr=1e-3", *extra]))


def group_rates(method: Method) -> dict[str, float]:
    """Parameter name -> its group's learning rate (trainable parameters only)."""
    optimizer = build_optimizer(method, method.cfg.train, method.lr_prefixes())
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    return {n: rate[id(p)] for n, p in method.named_parameters() if p.requires_grad}


def expected_rate(name: str, tower_lr: float, decay: float | None, layers: int) -> float:
    """The formula, with the layer id read from the name."""
    if decay is None:
        return tower_lr
    block = BLOCK.search(name)
    layer = int(block.group(1)) + 1 if block else 0 if EMBEDDINGS.search(name) else layers + 1
    return tower_lr * decay ** (layers + 1 - layer)


@pytest.mark.parametrize("kind", list(TOWERS))
def test_each_parameter_trains_at_its_layers_rate(tiny_run: list[str], kind: str) -> None:
    vision, layers = TOWERS[kind]
    method = method_with(
        tiny_run,
        *vision,
        "model.vision.lr_decay=0.5",
        "model.text.lr=1e-4",
        "model.text.lr_decay=0.8",
    )
    rates = group_rates(method)
    for name, rate in rates.items():
        if name.startswith("model.vision."):
            want = expected_rate(name, 1e-3, 0.5, layers)
        elif name.startswith("model.text."):
            want = expected_rate(name, 1e-4, 0.8, 2)  # TINY_BERT: 2 layers
        else:  # projections and the logit scale are outside the towers
            want = 1e-3
        assert rate == pytest.approx(want, rel=1e-12), name
    vision_rates = {r for n, r in rates.items() if n.startswith("model.vision.")}
    assert len(vision_rates) == layers + 2  # embeddings, each block, what follows
    assert max(vision_rates) == pytest.approx(1e-3) and min(vision_rates) == pytest.approx(
        1e-3 * 0.5 ** (layers + 1)
    )


def test_off_leaves_the_groups_as_they_were(tiny_run: list[str]) -> None:
    """No lr_decay: one group per (rate, weight decay); lr_decay 1 gives the same groups."""

    def groups(*extra: str) -> list[tuple[float, float, list[str]]]:
        method = method_with(tiny_run, "model.text.lr=1e-4", *extra)
        names = {id(p): n for n, p in method.named_parameters()}
        optimizer = build_optimizer(method, method.cfg.train, method.lr_prefixes())
        return [
            (g["lr"], g["weight_decay"], [names[id(p)] for p in g["params"]])
            for g in optimizer.param_groups
        ]

    off = groups()
    assert sorted((lr, wd) for lr, wd, _ in off) == [
        (1e-4, 0.0),
        (1e-4, 0.1),
        (1e-3, 0.0),
        (1e-3, 0.1),
    ]
    assert groups("model.vision.lr_decay=1.0", "model.text.lr_decay=1.0") == off


def test_with_lora_and_unlocked_layers(tiny_run: list[str]) -> None:
    """Adapters take their block's rate; frozen parameters are in no group."""
    clip = TOWERS["hf-clip"][0]
    method = method_with(
        tiny_run,
        *clip,
        "model.vision.lr_decay=0.5",
        "model.vision.lora={rank: 2}",
        "model.text.lock=true",
        "model.text.unlocked_layers=1",
        "model.text.lr_decay=0.8",
    )
    rates = group_rates(method)
    adapters = [n for n in rates if n.startswith("model.vision.")]
    assert adapters and all("lora_" in n for n in adapters)
    for name in adapters:
        assert rates[name] == pytest.approx(expected_rate(name, 1e-3, 0.5, 2)), name
    assert sorted({rates[n] for n in adapters}) == pytest.approx([1e-3 * 0.5**2, 1e-3 * 0.5])
    text = {n: r for n, r in rates.items() if n.startswith("model.text.")}
    assert text and all(".layer.1." in n for n in text)  # the last layer only (no pooler)
    assert list(text.values()) == pytest.approx([1e-3 * 0.8] * len(text))


@pytest.mark.parametrize("modality", ["vision", "text"])
def test_open_clip_layer_ids(tmp_path: Path, modality: str) -> None:
    """open_clip registers some input-side parameters after its blocks (the text tower's
    token_embedding) and output-side ones before them (proj, text_projection)."""
    path = tmp_path / "tiny-oc.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP))
    tower = build_tower(TowerConfig(source="open_clip", name=str(path), pretrained=False), modality)
    ids, layers = layer_ids(tower)
    assert layers == 1
    for name, layer in ids.items():
        if "resblocks.0." in name:
            assert layer == 1, name
        elif re.search(r"embedding|conv1|ln_pre", name):
            assert layer == 0, name
        else:  # proj, text_projection, ln_post, ln_final, the (frozen) logit scale
            assert layer == 2, name


class Flat(Tower):
    """A tower with no stack of layers."""

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.cfg, self.modality, self.width = cfg, "vision", 4
        self.linear = nn.Linear(4, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.linear(pixel_values)


def test_bad_settings_are_clear_errors() -> None:
    tower = Flat(TowerConfig(source="custom", name="flat", lr_decay=0.5))
    model = nn.ModuleDict({"backbone": tower})
    with pytest.raises(ValueError, match=r"model\.vision\.lr_decay: cannot find the layers of the custom tower 'flat' \(Flat: .*set model\.vision\.lr_decay=null"):  # fmt: skip
        build_optimizer(model, TrainConfig())
    tower.cfg.lr_decay = 1.5
    with pytest.raises(ValueError, match=r"model\.vision\.lr_decay = 1\.5 must be in \(0, 1\]"):
        build_optimizer(model, TrainConfig())
    tower.cfg.lr_decay = None
    assert len(build_optimizer(model, TrainConfig()).param_groups) == 2
