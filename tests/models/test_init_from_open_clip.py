"""``model.init_from=open_clip:...``: a tiny random open_clip model saved as a config JSON plus a
weights file, and as a ``local-dir:`` folder (no network), is the dual encoder at step 0:
open_clip's normalised ``encode_image`` / ``encode_text``, its tokenizer, logit scale (and a
SigLIP model's bias and loss), and the pixels of open_clip's own preprocess; bad specs fail
with what to give; a run trained from one reloads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import torch
from helpers import (
    COLOURS,
    SHAPES,
    TEXTS,
    TINY_OPEN_CLIP,
    draw,
    embeddings,
    method_from,
    pixels,
    save_open_clip,
    train_from,
)
from PIL import Image

from mmcontrast.methods import load_trained
from mmcontrast.models.tower import resolved_preprocess


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = save_open_clip(tmp_path_factory.mktemp("init_from_open_clip"))
    siglip = {**TINY_OPEN_CLIP, "init_logit_bias": -7.5}
    return save_open_clip(root, siglip, name="tiny-oc-siglip")


def specs(root: Path) -> dict[str, tuple[str, str, str | None]]:
    """spec kind -> (init_from, open_clip model name, pretrained) of the same model."""
    weights = str(root / "tiny-oc.safetensors")
    local = f"local-dir:{root / 'tiny-oc-dir'}"
    return {
        "file": (f"open_clip:{root / 'tiny-oc.json'}:{weights}", "tiny-oc", weights),
        "local-dir": (f"open_clip:{local}", local, None),
    }


def reference(name: str, pretrained: str | None) -> tuple[Any, Any, Any]:
    """open_clip's own model (eval mode), validation preprocess and tokenizer."""
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


@pytest.mark.parametrize("kind", ["file", "local-dir"])
def test_step_zero_is_open_clips_model(root: Path, kind: str) -> None:
    spec, name, pretrained = specs(root)[kind]
    method = method_from(spec)
    dual = method.model
    model, preprocess, tokenizer = reference(name, pretrained)
    assert method.cfg.loss.name == "clip"
    assert dual.logit_bias is None
    assert dual.logit_scale.item() == pytest.approx(3.3) == model.logit_scale.item()
    assert isinstance(dual.vision_projection, torch.nn.Identity)

    tokens = dual.tokenize(TEXTS)
    assert torch.equal(tokens["input_ids"], tokenizer(TEXTS))
    images = [draw(colour, shape) for colour in COLOURS for shape in SHAPES[:2]]
    theirs = torch.stack([preprocess(image) for image in images])
    ours = torch.stack([method.image_transform(train=False)(image) for image in images])
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    with torch.no_grad():
        for their_pixels, our_pixels in ((pixels(), pixels()), (theirs, ours)):
            image = model.encode_image(their_pixels, normalize=True)
            got = dual.get_image_features(our_pixels)
            torch.testing.assert_close(got, image, atol=1e-5, rtol=1e-5)
        text = model.encode_text(tokens["input_ids"], normalize=True)
        torch.testing.assert_close(dual.get_text_features(**tokens), text, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["file", "local-dir"])
@pytest.mark.parametrize("shape", [(50, 37), (37, 50), (20, 25)])
def test_preprocessing_is_open_clips(root: Path, kind: str, shape: tuple[int, int]) -> None:
    spec, name, pretrained = specs(root)[kind]
    method = method_from(spec)
    pre = resolved_preprocess(method.model.vision)
    expected = {  # the config's defaults; the local-dir folder's preprocess_cfg
        "file": (list(open_clip.OPENAI_DATASET_MEAN), "bicubic", "shortest"),
        "local-dir": ([0.5, 0.5, 0.5], "bilinear", "squash"),
    }[kind]
    assert (pre.size, pre.mean, pre.interpolation, pre.resize) == (32, *expected)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (shape[1], shape[0], 3), dtype=np.uint8))
    model, preprocess, _ = reference(name, pretrained)
    ours, theirs = method.image_transform(train=False)(image), preprocess(image)
    torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=0)  # PIL resizes both: same pixels
    with torch.no_grad():  # so step 0 embeds a resized image as open_clip does
        expected = model.encode_image(theirs[None], normalize=True)
        torch.testing.assert_close(
            method.model.get_image_features(ours[None]), expected, atol=1e-5, rtol=1e-5
        )


def test_a_siglip_model_keeps_its_bias_and_loss(root: Path) -> None:
    weights = root / "tiny-oc-siglip.safetensors"
    method = method_from(f"open_clip:{root / 'tiny-oc-siglip.json'}:{weights}")
    assert method.cfg.loss.name == "siglip"
    assert method.model.logit_bias is not None
    assert method.model.logit_bias.item() == pytest.approx(-7.5)
    # a CLIP model fine-tuned with the sigmoid loss gets the loss's initial bias
    spec = specs(root)["file"][0]
    clip_siglip = method_from(spec, "loss.name=siglip")
    assert clip_siglip.model.logit_bias is not None
    assert clip_siglip.model.logit_bias.item() == -10.0


def test_bad_specs_say_what_to_give(root: Path) -> None:
    config = root / "tiny-oc.json"
    with pytest.raises(ValueError, match="no pretrained tag 'nope'"):
        method_from(f"open_clip:{config}:nope")
    with pytest.raises(ValueError, match="names no weights"):
        method_from(f"open_clip:{config}")
    with pytest.raises(ValueError, match="open_clip_config.json"):
        method_from(f"open_clip:local-dir:{root / 'missing'}")
    with pytest.raises(ValueError, match="could not fetch .* local-dir:DIR"):  # offline here
        method_from("open_clip:hf-hub:nobody/no-such-repo")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        method_from("open_clip:no-such-model:some_tag")
    with pytest.raises(ValueError, match="model.embed_dim"):
        method_from(specs(root)["file"][0], "model.embed_dim=16")


def test_training_options_apply(root: Path) -> None:
    method = method_from(
        specs(root)["file"][0], "model.text.lock=true", "model.vision.image_std=[0.5, 0.5, 0.5]"
    )
    assert not any(p.requires_grad for p in method.model.text.parameters())
    assert all(p.requires_grad for p in method.model.vision.parameters())
    assert resolved_preprocess(method.model.vision).std == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match=r"image_size 48: the vision tower of .* cannot take"):
        method_from(specs(root)["file"][0], "model.vision.image_size=48")


def test_trains_and_reloads(
    root: Path, shapes_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    image, text = embeddings(train_from(specs(root)["local-dir"][0], shapes_dir, run, steps=2))
    start_image, _ = embeddings(method_from(specs(root)["local-dir"][0]))
    assert not torch.allclose(image, start_image, atol=1e-4)  # it trained
    with caplog.at_level(logging.WARNING):
        reloaded = load_trained(run)  # built from config, then its weights: no random-init alarm
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    again_image, again_text = embeddings(reloaded)
    torch.testing.assert_close(again_image, image, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(again_text, text, atol=1e-6, rtol=1e-5)
