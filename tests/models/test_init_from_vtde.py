"""``model.init_from`` on a transformers VisionTextDualEncoderModel: tiny random ones saved to
a folder (no network), with a CLIP vision tower or a timm model through TimmWrapperModel (as
mmcontrast's quickstart exports), and BERT. At step 0 the dual encoder is the source (same
embeddings, tokens, logit scale, and the pixels of the source's own image processor); the
loss defaults to clip; a run trained from one exports back to a VisionTextDualEncoderModel
that plain transformers loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    COLOURS,
    SHAPES,
    TEXTS,
    TINY_TIMM_DATA,
    draw,
    embeddings,
    method_from,
    pixels,
    save_vtde,
    train_from,
)
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    TimmWrapperImageProcessor,
)

from mmcontrast.eval.adapters.base import features_of
from mmcontrast.hub.export import export
from mmcontrast.methods import load_trained
from mmcontrast.models.tower import resolved_preprocess

KINDS = ["clip", "timm"]
# PIL's resize (the processors') and torchvision's tensor resize (ours) round differently:
# (mean, max) absolute difference on normalised pixels, as in tests/data/test_source_preprocessing
PIL_TOLERANCE = (1e-2, 0.1)


@pytest.fixture(scope="module")
def vtdes(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("init_from_vtde")
    return {kind: save_vtde(root / kind, tokenizer_dir, kind) for kind in KINDS}


def source_processor(folder: Path) -> Any:
    """The source's own image processor, as plain transformers rebuilds it: a timm one is
    saved in processor_config.json, which AutoImageProcessor cannot read back."""
    try:
        return AutoImageProcessor.from_pretrained(folder)
    except TypeError:
        saved = json.loads((folder / "processor_config.json").read_text())
        return TimmWrapperImageProcessor(pretrained_cfg=saved["image_processor"]["data_config"])


def random_image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("kind", KINDS)
def test_step_zero_is_the_source(vtdes: dict[str, Path], kind: str) -> None:
    folder = vtdes[kind]
    method = method_from(folder)
    dual = method.model
    source = AutoModel.from_pretrained(folder).eval()
    assert type(source).__name__ == "VisionTextDualEncoderModel"
    assert method.cfg.loss.name == "clip"
    assert dual.logit_bias is None
    assert dual.logit_scale.item() == pytest.approx(3.1)
    assert dual.logit_scale.item() == source.logit_scale.item()

    tokens = dual.tokenize(TEXTS)
    expected = AutoTokenizer.from_pretrained(folder)(
        TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt"
    )
    assert tokens.keys() == expected.keys()
    for key in tokens:
        assert torch.equal(tokens[key], expected[key])

    # the source's own image processor and mmcontrast's transform: the same pixels
    images = [draw(colour, shape) for colour in COLOURS for shape in SHAPES[:2]]
    theirs = source_processor(folder)(images=images, return_tensors="pt")["pixel_values"]
    transform = method.image_transform(train=False)
    ours = torch.stack([transform(image) for image in images])
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)

    with torch.no_grad():
        for their_pixels, our_pixels in ((pixels(), pixels()), (theirs, ours)):
            image = source.get_image_features(pixel_values=their_pixels)
            image = F.normalize(features_of(image), dim=-1)
            got = dual.get_image_features(our_pixels)
            torch.testing.assert_close(got, image, atol=1e-5, rtol=1e-5)
        text = F.normalize(features_of(source.get_text_features(**tokens)), dim=-1)
        torch.testing.assert_close(dual.get_text_features(**tokens), text, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(50, 37), (37, 50)])
def test_preprocessing_is_the_processors(
    vtdes: dict[str, Path], kind: str, shape: tuple[int, int]
) -> None:
    method = method_from(vtdes[kind])
    pre = resolved_preprocess(method.model.vision)
    processor: Any = source_processor(vtdes[kind])
    if kind == "timm":  # timm's data config: torchvision's centre crop
        mean, std, offset = TINY_TIMM_DATA["mean"], TINY_TIMM_DATA["std"], "round"
    else:  # CLIPImageProcessor's defaults, transformers' crop offset
        mean, std, offset = list(processor.image_mean), list(processor.image_std), "floor"
    fields = (pre.size, pre.mean, pre.std, pre.interpolation, pre.resize, pre.crop_offset)
    assert fields == (32, mean, std, "bicubic", "shortest", offset)
    image = random_image(*shape)
    ours = method.image_transform(train=False)(image)
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    diff = (ours - theirs).abs()
    mean_tolerance, max_tolerance = PIL_TOLERANCE
    assert diff.mean() < mean_tolerance and diff.max() < max_tolerance, (diff.mean(), diff.max())


def test_timm_data_config_without_a_processor(tmp_path: Path, tokenizer_dir: Path) -> None:
    """No processor file: the data config in the vision config is read, crop_pct included
    (timm resizes to size / crop_pct, then crops)."""
    folder = save_vtde(tmp_path / "bare", tokenizer_dir, "timm")
    (folder / "processor_config.json").unlink()
    pre = resolved_preprocess(method_from(folder).model.vision)
    assert (pre.size, pre.mean, pre.interpolation) == (32, TINY_TIMM_DATA["mean"], "bicubic")

    cropped = {**TINY_TIMM_DATA, "crop_pct": 0.875, "interpolation": "bilinear"}
    folder = save_vtde(tmp_path / "cropped", tokenizer_dir, "timm", timm_data=cropped)
    pre = resolved_preprocess(method_from(folder).model.vision)
    assert (pre.size, pre.interpolation) == (32, "bilinear")
    assert (pre.crop_pct, pre.resize_size) == (0.875, 36)


def test_training_options_apply_to_a_timm_tower(vtdes: dict[str, Path]) -> None:
    method = method_from(vtdes["timm"], "model.vision.lock=true", "model.vision.unlocked_layers=1")
    trainable = [n for n, p in method.model.vision.named_parameters() if p.requires_grad]
    after_last_block = (".blocks.4.", ".conv_head.", ".bn2.")
    assert trainable and all(any(part in n for part in after_last_block) for n in trainable)
    assert all(p.requires_grad for p in method.model.text.parameters())


def test_keys_that_init_from_sets_are_refused(vtdes: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="model.projection"):
        method_from(vtdes["timm"], "model.projection=mlp")
    with pytest.raises(ValueError, match="model.text.tokenizer"):
        method_from(vtdes["clip"], "model.text.tokenizer=bert-base-uncased")


@pytest.mark.parametrize("kind", KINDS)
def test_trains_reloads_and_exports_back(
    vtdes: dict[str, Path], shapes_dir: Path, tmp_path: Path, kind: str
) -> None:
    run = tmp_path / "run"
    trained = train_from(vtdes[kind], shapes_dir, run, steps=2)
    image, text = embeddings(trained)
    assert not torch.allclose(image, embeddings(method_from(vtdes[kind]))[0], atol=1e-4)
    again_image, again_text = embeddings(load_trained(run))
    torch.testing.assert_close(again_image, image, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(again_text, text, atol=1e-6, rtol=1e-5)

    result = export(run, tmp_path / "export")
    assert result.kind == "vision-text-dual-encoder"
    exported = AutoModel.from_pretrained(tmp_path / "export").eval()
    assert type(exported).__name__ == "VisionTextDualEncoderModel"
    processor = AutoProcessor.from_pretrained(tmp_path / "export")
    tokens = trained.trained_model().tokenize(TEXTS)
    theirs_tokens = processor(text=TEXTS, return_tensors="pt", padding=True, truncation=True)
    assert torch.equal(theirs_tokens["input_ids"], tokens["input_ids"])
    with torch.no_grad():
        theirs_image = features_of(exported.get_image_features(pixel_values=pixels()))
        theirs_text = features_of(exported.get_text_features(**tokens))
    torch.testing.assert_close(F.normalize(theirs_image, dim=-1), image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(F.normalize(theirs_text, dim=-1), text, atol=1e-5, rtol=1e-5)

    # the export starts a run of its own, as it was saved
    again = method_from(tmp_path / "export")
    torch.testing.assert_close(embeddings(again)[0], image, atol=1e-5, rtol=1e-5)
