"""``model.init_from``: a whole tiny random CLIPModel or SiglipModel, saved to a folder (no
network), is the dual encoder at step 0 (same embeddings, logit scale and bias, tokenizer
and preprocessing), picks the loss, refuses keys it replaces, trains, reloads and exports
back to its own class; what is not an image-text source is refused, naming what is.

The other kinds of source have their own files: ``test_init_from_vtde.py``
(VisionTextDualEncoderModel), ``test_init_from_open_clip.py``, ``test_init_from_run.py``
(mmcontrast runs and exports) and ``test_init_from_eval.py`` (step-0 evaluation)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    TEXTS,
    TINY_BERT,
    embeddings,
    method_from,
    pixels,
    save_clip,
    save_siglip,
    train_from,
)
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from mmcontrast.config import load_recipe
from mmcontrast.eval.adapters.base import features_of
from mmcontrast.hub.export import export
from mmcontrast.methods import build_method, load_trained
from mmcontrast.models.tower import resolved_preprocess

SIGLIP_SCALE, SIGLIP_BIAS = math.log(117.33), -12.93  # above ln 100, as trained SigLIPs are


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("init_from")
    siglip = save_siglip(root / "siglip", tokenizer_dir)
    model = AutoModel.from_pretrained(siglip)
    with torch.no_grad():
        model.logit_scale.fill_(SIGLIP_SCALE)
        model.logit_bias.fill_(SIGLIP_BIAS)
    model.save_pretrained(siglip)
    return {"clip": save_clip(root / "clip", tokenizer_dir), "siglip": siglip}


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_step_zero_is_the_source(sources: dict[str, Path], kind: str) -> None:
    folder = sources[kind]
    dual = method_from(folder).model
    source = AutoModel.from_pretrained(folder).eval()
    tokens = dual.tokenize(TEXTS)
    padding, length = (True, 64) if kind == "clip" else ("max_length", 12)
    expected_tokens = AutoTokenizer.from_pretrained(folder)(
        TEXTS, padding=padding, truncation=True, max_length=length, return_tensors="pt"
    )
    assert torch.equal(tokens["input_ids"], expected_tokens["input_ids"])
    with torch.no_grad():
        image = F.normalize(features_of(source.get_image_features(pixel_values=pixels())), dim=-1)
        text = F.normalize(features_of(source.get_text_features(**tokens)), dim=-1)
        got_image, got_text = embeddings(method_from(folder))
    torch.testing.assert_close(got_image, image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_text, text, atol=1e-5, rtol=1e-5)

    assert dual.logit_scale.item() == source.logit_scale.item()  # log-scale in both
    assert dual.scale().item() == pytest.approx(math.exp(source.logit_scale.item()), rel=1e-6)
    if kind == "siglip":
        assert dual.scale().item() == pytest.approx(117.33, rel=1e-5)  # not capped at 100
        assert dual.logit_bias is not None
        assert dual.logit_bias.item() == pytest.approx(SIGLIP_BIAS)
    else:
        assert dual.logit_bias is None
    processor = AutoImageProcessor.from_pretrained(folder)
    pre = resolved_preprocess(dual.vision)
    assert (pre.size, pre.mean, pre.std) == (
        32,
        list(processor.image_mean),
        list(processor.image_std),
    )


def test_loss_follows_the_source_unless_named(sources: dict[str, Path]) -> None:
    assert method_from(sources["clip"]).cfg.loss.name == "clip"
    assert method_from(sources["siglip"]).cfg.loss.name == "siglip"
    # a CLIP model fine-tuned with the sigmoid loss gets the loss's initial bias
    clip_siglip = method_from(sources["clip"], "loss.name=siglip")
    assert clip_siglip.model.logit_bias is not None
    assert clip_siglip.model.logit_bias.item() == -10.0
    siglip_clip = method_from(sources["siglip"], "loss.name=clip")
    assert siglip_clip.cfg.loss.name == "clip"


def test_training_options_apply(sources: dict[str, Path]) -> None:
    dual = method_from(
        sources["clip"], "model.vision.lock=true", "model.vision.image_mean=[0.5, 0.5, 0.5]"
    )
    assert not any(p.requires_grad for p in dual.model.vision.parameters())
    assert all(p.requires_grad for p in dual.model.text.parameters())
    assert resolved_preprocess(dual.model.vision).mean == [0.5, 0.5, 0.5]
    # a ViT's position embeddings are sized for its images: another size is refused up front
    for kind in ("clip", "siglip"):
        with pytest.raises(ValueError, match=r"image_size 48: the vision tower of .* takes 32 px"):
            method_from(sources[kind], "model.vision.image_size=48")


def test_keys_that_init_from_sets_are_refused(sources: dict[str, Path]) -> None:
    keys = ["model.vision.name=vit", "model.embed_dim=16", "model.text.max_length=32"]
    with pytest.raises(ValueError, match="init_from") as info:
        method_from(sources["clip"], *keys)
    for key in keys:
        assert key.split("=")[0] in str(info.value)
    with pytest.raises(ValueError, match="model.vision.pretrained / model.text.pretrained"):
        method_from(sources["clip"], "model.text.pretrained=false")


def test_only_image_text_models(tmp_path: Path, tokenizer_dir: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(**TINY_BERT)).save_pretrained(tmp_path / "bert")
    accepted = "VisionTextDualEncoderModel.*open_clip:NAME.*mmcontrast run"
    with pytest.raises(ValueError, match=f"is a bert model, not an image-text model.*{accepted}"):
        method_from(tmp_path / "bert")
    with pytest.raises(ValueError, match=f"cannot read.*{accepted}"):
        method_from(tmp_path / "missing")
    clip = save_clip(tmp_path / "clip", tokenizer_dir)
    (clip / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="no image processor"):
        method_from(clip)


def test_an_export_of_a_sigmoid_loss_run_keeps_its_bias(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """CLIPModel has no logit bias: mmcontrast's export records it in config.json."""
    folder = save_clip(tmp_path / "clip", tokenizer_dir)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mmcontrast_logit_bias": -4.25}))
    method = method_from(folder)
    assert method.cfg.loss.name == "siglip"
    assert method.model.logit_bias is not None
    assert method.model.logit_bias.item() == -4.25


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_trains_saves_and_reloads(
    sources: dict[str, Path], shapes_dir: Path, tmp_path: Path, kind: str
) -> None:
    run = tmp_path / "run"
    trained = train_from(sources[kind], shapes_dir, run, at_start=None, at_end=True)
    start_image, _ = embeddings(method_from(sources[kind]))
    image, text = embeddings(trained)
    assert not torch.allclose(image, start_image, atol=1e-4)  # it trained
    reloaded = load_trained(run)
    assert reloaded.cfg.loss.name == kind
    again_image, again_text = embeddings(reloaded)
    torch.testing.assert_close(again_image, image, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(again_text, text, atol=1e-6, rtol=1e-5)
    assert reloaded.trained_model().scale().item() == pytest.approx(
        trained.trained_model().scale().item()
    )

    export(run, tmp_path / "export")  # back to the source's own class
    exported = AutoModel.from_pretrained(tmp_path / "export").eval()
    assert type(exported).__name__ == {"clip": "CLIPModel", "siglip": "SiglipModel"}[kind]
    tokens = trained.trained_model().tokenize(TEXTS)
    with torch.no_grad():
        theirs_image = features_of(exported.get_image_features(pixel_values=pixels()))
        theirs_text = features_of(exported.get_text_features(**tokens))
    torch.testing.assert_close(F.normalize(theirs_image, dim=-1), image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(F.normalize(theirs_text, dim=-1), text, atol=1e-5, rtol=1e-5)


def test_vision_methods_refuse_init_from(sources: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="init_from is for image-text training"):
        build_method(load_recipe(None, ["method=simclr", f"model.init_from={sources['clip']}"]))


def test_a_crop_smaller_than_the_resize_is_kept(tmp_path: Path, tokenizer_dir: Path) -> None:
    """CLIP's processors resize the shortest side to 256 and crop 224: the dual encoder
    resizes to the processor's edge too, so its pixels are the processor's."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    folder = save_clip(tmp_path / "clip", tokenizer_dir)
    CLIPImageProcessor(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    dual = method_from(folder).model
    pre = resolved_preprocess(dual.vision)
    assert (pre.size, pre.resize_size, pre.interpolation) == (32, 40, "bicubic")
    rng = torch.Generator().manual_seed(0)
    array = (torch.rand(50, 70, 3, generator=rng) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(array)  # not square
    ours = dual.image_transform()(image)
    theirs = AutoImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt")
    diff = (ours - theirs["pixel_values"][0]).abs()
    # transformers resizes in PIL, torchvision antialiases on tensors: a few 8-bit levels apart
    assert diff.mean() < 0.02 and ours.shape == theirs["pixel_values"][0].shape
