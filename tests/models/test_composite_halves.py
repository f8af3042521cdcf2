"""One half of a composite checkpoint as a tower (``model.vision.name: CLIPModel_FOLDER``).

The tower is the composite's half with its weights (a VisionTextDualEncoderModel's BERT and
timm towers included, whose checkpoint keys carry the composite's prefix), and one warning
per tower names what is dropped: the other half, the projections and the logit scale (and
SigLIP's bias), pointing at ``model.init_from``. ``init_from`` itself and whole checkpoints
warn nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import save_clip, save_siglip, save_vtde
from transformers import AutoModel

from mmcontrast.config import TowerConfig
from mmcontrast.models.hf_tower import HFTower
from mmcontrast.models.tower import build_tower

LOGGER = "mmcontrast.models.hf_tower"
DROPPED = {  # what each composite drops besides the other half
    "clip": ["visual_projection", "text_projection", "logit_scale"],
    "siglip": ["logit_scale", "logit_bias"],
    "vtde": ["visual_projection", "text_projection", "logit_scale"],
    "vtde_timm": ["visual_projection", "text_projection", "logit_scale"],
}
CLASSES = {
    "clip": "CLIPModel",
    "siglip": "SiglipModel",
    "vtde": "VisionTextDualEncoderModel",
    "vtde_timm": "VisionTextDualEncoderModel",
}


@pytest.fixture(scope="module")
def composites(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("composites")
    return {
        "clip": save_clip(root / "clip", tokenizer_dir),
        "siglip": save_siglip(root / "siglip", tokenizer_dir),
        "vtde": save_vtde(root / "vtde", tokenizer_dir),
        "vtde_timm": save_vtde(root / "vtde_timm", tokenizer_dir, "timm"),
    }


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelname == "WARNING"]


@pytest.mark.parametrize("kind", list(DROPPED))
@pytest.mark.parametrize("modality", ["vision", "text"])
def test_a_half_keeps_its_weights_and_warns_what_is_dropped(
    composites: dict[str, Path], kind: str, modality: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = composites[kind]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        tower = build_tower(TowerConfig(source="hf", name=str(folder)), modality)
    messages = warnings_of(caplog)
    assert len(messages) == 1, messages
    other = "text_model" if modality == "vision" else "vision_model"
    message = messages[0]
    assert f"model.{modality}.name" in message and f"whole {CLASSES[kind]}" in message
    assert f"only its {modality}_model is used" in message
    assert all(part in message for part in [other, *DROPPED[kind]]), message
    assert f"model.init_from: {folder}" in message

    assert isinstance(tower, HFTower)
    whole: Any = AutoModel.from_pretrained(folder)
    expected = getattr(whole, f"{modality}_model").state_dict()
    ours = tower.model.state_dict()
    assert ours.keys() <= expected.keys()
    assert all(torch.equal(ours[k], expected[k]) for k in ours)


def test_no_warning_from_init_from_or_a_whole_checkpoint(
    composites: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    whole = AutoModel.from_pretrained(composites["clip"])
    vision_half = AutoModel.from_pretrained(composites["vtde"]).vision_model
    vision_half.save_pretrained(tmp_path / "vision")  # a CLIPVisionModel on its own
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        HFTower(
            TowerConfig(source="hf", name=str(composites["clip"])), "vision", whole.vision_model
        )
        build_tower(TowerConfig(source="hf", name=str(tmp_path / "vision")), "vision")
        random = TowerConfig(source="hf", name=str(composites["clip"]), pretrained=False)
        build_tower(random, "vision")  # random weights: nothing of the source is lost
    assert warnings_of(caplog) == []
