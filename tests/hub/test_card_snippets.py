"""The torchvision backbone card's loading code, executed: it gives the tower's features.

For each family of ``torchvision.models`` classifiers the tower accepts (its smallest model,
random weights), the tower is built, exported with ``save_backbone``, its card rendered,
and the card's Python snippet run with the exported weights file in place of the Hub
download. The model it loads must return the tower's features: the snippet replaced exactly
the modules the tower replaced (``fc``, ``classifier[1]``, ``heads.head``, ``head`` ...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from mmcontrast.config import load_recipe
from mmcontrast.hub.backbone_export import save_backbone
from mmcontrast.hub.card import CardContext, render_card
from mmcontrast.models.torchvision_tower import TorchvisionTower

SLOW = pytest.mark.slow
# the smallest model of each family, the image size it runs at (transformers need 224) and
# the modules the tower replaces; the fast ones cover each kind of classifier
# (a lone Linear, Dropout + Linear, a pre-logits block kept, a builder that reads tensors)
FAMILIES = [
    pytest.param("resnet18", 64, ("fc",), id="resnet"),
    pytest.param("mobilenet_v3_small", 64, ("classifier.2", "classifier.3"), id="mobilenet_v3"),
    pytest.param("mobilenet_v2", 64, ("classifier.0", "classifier.1"), id="mobilenet_v2", marks=SLOW),
    pytest.param("shufflenet_v2_x0_5", 64, ("fc",), id="shufflenet", marks=SLOW),
    pytest.param("mnasnet0_5", 64, ("classifier.0", "classifier.1"), id="mnasnet"),
    pytest.param("efficientnet_b0", 64, ("classifier.0", "classifier.1"), id="efficientnet", marks=SLOW),
    pytest.param("regnet_y_400mf", 64, ("fc",), id="regnet"),
    pytest.param("convnext_tiny", 64, ("classifier.2",), id="convnext", marks=SLOW),
    pytest.param("densenet121", 64, ("classifier",), id="densenet", marks=SLOW),
    pytest.param("googlenet", 64, ("fc",), id="googlenet", marks=SLOW),
    pytest.param("inception_v3", 96, ("fc",), id="inception", marks=SLOW),
    pytest.param("alexnet", 64, ("classifier.6",), id="alexnet", marks=SLOW),
    pytest.param("vgg11", 32, ("classifier.5", "classifier.6"), id="vgg", marks=SLOW),
    pytest.param("swin_t", 64, ("head",), id="swin", marks=SLOW),
    pytest.param("vit_b_32", 224, ("heads.head",), id="vit", marks=SLOW),
    pytest.param("maxvit_t", 224, ("classifier.5",), id="maxvit", marks=SLOW),
]


def tower_config(name: str) -> list[str]:
    return [
        "method=simclr",
        "model.vision.source=torchvision",
        f"model.vision.name={name}",
        "model.vision.pretrained=false",
    ]


def card_snippet(card: str, weights: Path) -> str:
    """The card's Python block, loading ``weights`` instead of downloading from the Hub."""
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 1, card
    code, found = re.subn(r"hf_hub_download\([^)]*\)", repr(str(weights)), blocks[0])
    assert found == 1, code
    return code


@pytest.mark.parametrize(("name", "size", "replaced"), FAMILIES)
def test_torchvision_card_loads_the_tower(
    name: str, size: int, replaced: tuple[str, ...], tmp_path: Path
) -> None:
    cfg = load_recipe(None, tower_config(name))
    torch.manual_seed(0)
    tower = TorchvisionTower(cfg.model.vision).eval()
    assert tower.replaced == replaced
    assert all(isinstance(tower.model.get_submodule(p), nn.Identity) for p in replaced)

    assert save_backbone(tower, tmp_path) == "torchvision"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["identity"] == list(replaced)
    context = CardContext(
        cfg=cfg,
        library="torchvision",
        kind="backbone",
        model_id="me/backbone",
        replaced=tuple(config["identity"]),
    )
    card = str(render_card(context))
    namespace: dict[str, object] = {}
    exec(card_snippet(card, tmp_path / "model.safetensors"), namespace)  # noqa: S102
    loaded = namespace["model"]
    assert isinstance(loaded, nn.Module)

    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixels).flatten(1), tower(pixels))


def test_card_passes_config_overrides_to_get_model(tmp_path: Path) -> None:
    cfg = load_recipe(None, [*tower_config("resnet18"), "model.vision.config_overrides={num_classes: 7}"])
    tower = TorchvisionTower(cfg.model.vision).eval()
    save_backbone(tower, tmp_path)
    context = CardContext(
        cfg=cfg,
        library="torchvision",
        kind="backbone",
        model_id="me/backbone",
        replaced=tower.replaced,
    )
    code = card_snippet(str(render_card(context)), tmp_path / "model.safetensors")
    assert 'get_model("resnet18", num_classes=7)' in code
    namespace: dict[str, object] = {}
    exec(code, namespace)  # noqa: S102
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"].eval()(pixels), tower(pixels))  # type: ignore[attr-defined]


def test_tower_without_a_linear_classifier_is_refused() -> None:
    cfg = load_recipe(None, tower_config("squeezenet1_1"))
    with pytest.raises(ValueError, match="cannot find the classifier of SqueezeNet"):
        TorchvisionTower(cfg.model.vision)


def test_vision_run_exports_a_torchvision_backbone(tmp_path: Path) -> None:
    """``export`` of a run with a torchvision backbone: torchvision's format, and the card
    loads it (MobileNetV3 keeps its pre-logits ``classifier.0`` and ``classifier.1``)."""
    from mmcontrast.hub.export import export
    from mmcontrast.methods import build_method
    from mmcontrast.train.checkpoint import save_weights

    run = tmp_path / "run"
    cfg = load_recipe(None, [*tower_config("mobilenet_v3_small"), f"train.output_dir={run}"])
    torch.manual_seed(0)
    method = build_method(cfg)
    with torch.no_grad():
        for param in method.parameters():
            param.add_(0.01 * torch.randn_like(param))
    save_weights(method, cfg, run)
    result = export(run, tmp_path / "export", model_id="me/backbone")
    assert (result.library, result.kind) == ("torchvision", "backbone")

    card = (tmp_path / "export" / "README.md").read_text()
    assert "model.classifier[3] = torch.nn.Identity()" in card
    namespace: dict[str, object] = {}
    exec(card_snippet(card, tmp_path / "export" / "model.safetensors"), namespace)  # noqa: S102
    tower = method.trained_model().eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"].eval()(pixels), tower(pixels))  # type: ignore[attr-defined]
