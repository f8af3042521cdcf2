"""Training and evaluation preprocess images as the source model's own image processor.

For tiny transformers CLIPModel / SiglipModel folders (no network), the pixels from
``image_transform(tower preprocessing)`` on a PIL image equal the source processor's
``pixel_values`` (both its torchvision and PIL backends), and the resize fields are what the
processor says: CLIP resizes the shortest side bicubically and centre-crops, SigLIP squashes.
Torchvision's tensor resize and PIL's differ by a rounding step on some pixels, hence the
tolerances (measured: see ``TOLERANCE``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_clip, save_siglip
from PIL import Image
from transformers import AutoImageProcessor, CLIPImageProcessor, SiglipImageProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mmcontrast.config import DataConfig, load_recipe
from mmcontrast.data.transforms import ImagePreprocess, image_transform
from mmcontrast.eval.adapters.hf import ProcessorTransform
from mmcontrast.methods import build_method
from mmcontrast.methods.image_text import ImageTextContrastive
from mmcontrast.models.hf_tower import processor_resizing
from mmcontrast.models.tower import resolved_preprocess

# (mean, max) absolute difference allowed on normalised pixels, per processor backend.
# "torchvision" runs the same kernels as we do: measured mean ~1e-7, max 4.8e-7 (float
# rounding of the normalisation). "pil" is PIL's resize, rounded to uint8 differently:
# measured mean <= 2.5e-3, max 0.071 (SigLIP squashing 37x50 up to 32x32; std 0.5, so
# 9/255 of one channel), CLIP max 0.015 (2/255)
TOLERANCE = {"torchvision": (1e-5, 1e-4), "pil": (1e-2, 0.1)}


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("source_preprocessing")
    clip = save_clip(root / "clip", tokenizer_dir)
    siglip = save_siglip(root / "siglip", tokenizer_dir)
    bilinear = save_siglip(root / "siglip_bilinear", tokenizer_dir)
    SiglipImageProcessor(size={"height": 32, "width": 32}, resample=2).save_pretrained(bilinear)
    return {"clip": clip, "siglip": siglip, "siglip_bilinear": bilinear}


def training_preprocess(source: Path) -> ImagePreprocess:
    method = build_method(load_recipe(None, [f"model.init_from={source}"]))
    assert isinstance(method, ImageTextContrastive)
    return resolved_preprocess(method.model.vision)


EXPECTED = {
    "clip": ("bicubic", "shortest"),
    "siglip": ("bicubic", "squash"),  # transformers' SiglipImageProcessor default: BICUBIC
    "siglip_bilinear": ("bilinear", "squash"),
}


@pytest.mark.parametrize("kind", list(EXPECTED))
@pytest.mark.parametrize("backend", list(TOLERANCE))
@pytest.mark.parametrize("shape", [(50, 37), (37, 50), (64, 64), (20, 25)])
def test_training_pixels_are_the_processors(
    sources: dict[str, Path], kind: str, backend: str, shape: tuple[int, int]
) -> None:
    pre = training_preprocess(sources[kind])
    assert (pre.size, pre.interpolation, pre.resize, pre.crop_offset) == (
        32,
        *EXPECTED[kind],
        "floor",
    )
    processor = AutoImageProcessor.from_pretrained(sources[kind], backend=backend)
    assert processor_resizing(processor) == {
        "interpolation": pre.interpolation,
        "resize": pre.resize,
        "crop_offset": "floor",
    }
    image = random_image(*shape)
    ours = image_transform(pre)(image)
    theirs = processor(images=image, return_tensors="pt").pixel_values[0]
    assert ours.shape == theirs.shape == (3, 32, 32)
    diff = (ours - theirs).abs()
    mean_tol, max_tol = TOLERANCE[backend]
    assert diff.mean() < mean_tol and diff.max() < max_tol, (diff.mean(), diff.max())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_eval_and_training_agree(sources: dict[str, Path], kind: str) -> None:
    """``mmcontrast eval``'s transformers adapter runs the source's processor: same pixels."""
    pre = training_preprocess(sources[kind])
    evaluation = ProcessorTransform(AutoImageProcessor.from_pretrained(sources[kind]))
    image = random_image(50, 37, seed=1)
    torch.testing.assert_close(image_transform(pre)(image), evaluation(image))


def test_processor_resizing_reads_both_backends() -> None:
    for cls in (CLIPImageProcessor, CLIPImageProcessorPil):
        processor = cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        assert processor_resizing(processor)["resize"] == "shortest"
    squash = {"height": 32, "width": 32}
    assert processor_resizing(CLIPImageProcessor(size=squash, do_center_crop=False)) == {
        "interpolation": "bicubic",
        "resize": "squash",
        "crop_offset": "floor",
    }
    assert processor_resizing(SiglipImageProcessor(size=squash, resample=0))["interpolation"] == (
        "nearest"
    )
    assert processor_resizing(SiglipImageProcessor(size=squash, resample=1))["interpolation"] == (
        "bicubic"  # lanczos: torchvision tensors have none
    )


def test_defaults_keep_todays_transform() -> None:
    """A tower that sets none of the new fields: bilinear, shortest side, torchvision crop."""
    from torchvision.transforms import v2

    pre = ImagePreprocess(size=32)
    image = random_image(50, 37)
    today = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(32, antialias=True),
            v2.CenterCrop(32),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=pre.mean, std=pre.std),
        ]
    )
    assert torch.equal(image_transform(pre)(image), today(image))
    data = DataConfig(random_resized_crop=[0.5, 1.0])
    crop = image_transform(pre, data, train=True).transforms[1]
    assert isinstance(crop, v2.RandomResizedCrop)
    assert crop.interpolation == v2.InterpolationMode.BILINEAR


def test_bad_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="interpolation"):
        ImagePreprocess(interpolation="lanczos")
    with pytest.raises(ValueError, match="resize"):
        ImagePreprocess(resize="pad")
