"""Training and evaluation preprocess images as the source model's own image processor.

For tiny transformers CLIPModel / SiglipModel folders (no network), the pixels from
``image_transform(tower preprocessing)`` on a PIL image equal the source processor's
``pixel_values`` (both its torchvision and PIL backends), and the resize fields are what the
processor says: CLIP resizes the shortest side bicubically and centre-crops, SigLIP squashes.
Torchvision's tensor resize and PIL's differ by a rounding step on some pixels, hence the
tolerances (measured: see ``TOLERANCE``).

timm towers (and timm models through transformers' TimmWrapperModel) follow timm's
evaluation transform: resize to ``floor(size / crop_pct)``, then centre crop (``center``,
``squash``) or pad (``border``); open_clip towers follow open_clip's ``shortest``, ``longest``
and ``squash``. On float tensors both libraries run torchvision's tensor kernels, as we do:
equal within 1e-5. On PIL images they resize with PIL. open_clip towers do too, so their
pixels are open_clip's; timm's on PIL are one uint8 level apart at most (``one_level``,
mean < 1e-3).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import TINY_TIMM_DATA, save_clip, save_siglip, save_vtde
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision.transforms import v2
from transformers import (
    AutoImageProcessor,
    CLIPImageProcessor,
    SiglipImageProcessor,
    TimmWrapperImageProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mmcontrast.config import AugmentConfig, DataConfig, TowerConfig, load_recipe
from mmcontrast.data.batch_views import resized_crop_flip
from mmcontrast.data.transforms import ImagePreprocess, image_transform
from mmcontrast.data.views import view_transforms
from mmcontrast.eval.adapters.hf import ProcessorTransform
from mmcontrast.methods import build_method
from mmcontrast.methods.image_text import ImageTextContrastive
from mmcontrast.models.hf_tower import processor_resizing
from mmcontrast.models.open_clip_tower import open_clip_preprocess
from mmcontrast.models.timm_tower import TimmTower, timm_preprocess
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


def float_image(image: Image.Image) -> torch.Tensor:
    """``[3, H, W]`` in [0, 1]: what both libraries' tensor paths take."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def one_level(pre: ImagePreprocess) -> float:
    """One uint8 step after normalisation: PIL's resize and torchvision's round apart by it."""
    return 1.01 / 255 / min(pre.std)


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
    data = DataConfig(random_resized_crop=(0.5, 1.0))
    crop = image_transform(pre, data, train=True).transforms[1]
    assert isinstance(crop, v2.RandomResizedCrop)
    assert crop.interpolation == v2.InterpolationMode.BILINEAR


def test_bad_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="interpolation"):
        ImagePreprocess(interpolation="lanczos")
    with pytest.raises(ValueError, match="resize"):
        ImagePreprocess(resize="pad")
    with pytest.raises(ValueError, match="crop_pct"):
        ImagePreprocess(crop_pct=0)
    with pytest.raises(ValueError, match="fill"):
        ImagePreprocess(fill=[0, 0, 256])


# ------------------------------------------------------------------ timm and open_clip

SHAPES = [(50, 37), (37, 50), (33, 47), (20, 25)]  # (width, height): wide, tall, small
Transform = Callable[..., torch.Tensor]


def assert_same_pixels(
    ours: Transform, theirs: Transform, pre: ImagePreprocess, tensors: bool, pil: bool
) -> None:
    """Noise images of each of ``SHAPES``: as float tensors (``tensors``) the two transforms
    agree within 1e-5; as PIL images (``pil``) at most one uint8 level apart, mean < 1e-3."""
    for shape in SHAPES:
        image = random_image(*shape)
        if tensors:
            tensor = float_image(image)
            torch.testing.assert_close(ours(tensor), theirs(tensor), atol=1e-5, rtol=0)
        if pil:
            diff = (ours(image) - theirs(image)).abs()
            assert diff.max() <= one_level(pre) and diff.mean() < 1e-3, (shape, diff.max())


def tiny_timm_tower(crop_mode: str, crop_pct: float) -> TimmTower:
    overlay = {
        "input_size": (3, 32, 32),
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "interpolation": "bicubic",
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.25, 0.3),
    }
    cfg = TowerConfig(
        source="timm",
        name="test_efficientnet",
        pretrained=False,
        config_overrides={"pretrained_cfg_overlay": overlay},
    )
    return TimmTower(cfg, "vision")


@pytest.mark.parametrize(
    ("crop_mode", "resize"), [("center", "shortest"), ("squash", "squash"), ("border", "longest")]
)
@pytest.mark.parametrize("crop_pct", [0.875, 1.15])
def test_timm_tower_pixels_are_timms(crop_mode: str, resize: str, crop_pct: float) -> None:
    """Our eval transform against ``create_transform(**resolve_data_config({}, model=m))``."""
    tower = tiny_timm_tower(crop_mode, crop_pct)
    pre = tower.image_preprocess()
    assert (pre.size, pre.crop_pct, pre.resize, pre.interpolation) == (
        32,
        crop_pct,
        resize,
        "bicubic",
    )
    assert pre.resize_size == int(32 / crop_pct)  # 36 or 27: a crop, or a pad
    assert pre.fill == ([128, 102, 76] if crop_mode == "border" else [0, 0, 0])  # timm's mean
    theirs = timm.data.create_transform(**timm.data.resolve_data_config({}, model=tower.model))
    assert_same_pixels(
        image_transform(pre),
        theirs,
        pre,
        tensors=crop_mode != "border",  # timm pads tensors with a scalar fill only
        pil=crop_mode != "squash",  # PIL's squash of tall noise rounds apart by more
    )


def test_timm_default_crop_pct_is_timms() -> None:
    """A data config without crop_pct gets timm's default (0.875), as timm's transform does."""
    pre = timm_preprocess({"input_size": (3, 224, 224), "interpolation": "bilinear"})
    assert (pre.crop_pct, pre.resize_size, pre.interpolation) == (0.875, 256, "bilinear")


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_open_clip_pixels_are_open_clips(resize_mode: str, interpolation: str) -> None:
    """Our eval transform against ``open_clip``'s own validation transform."""
    cfg = {
        "size": 32,
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.25, 0.3),
        "interpolation": interpolation,
        "resize_mode": resize_mode,
        "fill_color": 7,
    }
    pre = open_clip_preprocess(cfg)
    assert (pre.resize, pre.interpolation, pre.crop_pct, pre.fill) == (
        resize_mode,
        interpolation,
        1.0,
        [7, 7, 7],
    )
    theirs = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    assert pre.backend == "pil"
    assert_same_pixels(
        image_transform(pre),
        theirs,
        pre,
        tensors=resize_mode != "longest",  # open_clip's longest reads PIL's size only
        pil=False,
    )
    ours = image_transform(pre)
    for shape in SHAPES:  # PIL images: resized by PIL as open_clip does, the same pixels
        image = random_image(*shape)  # (normalised in float: within a rounding step)
        torch.testing.assert_close(ours(image), theirs(image), atol=2e-6, rtol=0)
        assert torch.equal(ours(np.asarray(image)), ours(image))  # an array: the same


def test_open_clip_refuses_an_unknown_resize_mode() -> None:
    with pytest.raises(ValueError, match="shortest, longest and squash"):
        open_clip_preprocess({"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "pad"})


def test_timm_vtde_reads_crop_pct(tmp_path: Path, tokenizer_dir: Path) -> None:
    """A TimmWrapper VisionTextDualEncoderModel: the crop_pct of its saved data config is
    applied, so training pixels are timm's (TimmWrapperImageProcessor's) own."""
    data = {**TINY_TIMM_DATA, "crop_pct": 0.875, "interpolation": "bilinear"}
    folder = save_vtde(tmp_path / "vtde", tokenizer_dir, "timm", timm_data=data)
    pre = training_preprocess(folder)
    assert (pre.size, pre.crop_pct, pre.resize_size, pre.interpolation) == (
        32,
        0.875,
        36,
        "bilinear",
    )
    processor = TimmWrapperImageProcessor(pretrained_cfg=data)
    for shape in SHAPES:
        image = random_image(*shape)
        tensor = float_image(image)
        torch.testing.assert_close(
            image_transform(pre)(tensor), processor.val_transforms(tensor), atol=1e-5, rtol=0
        )
        diff = (image_transform(pre)(image) - ProcessorTransform(processor)(image)).abs()
        assert diff.max() <= one_level(pre) and diff.mean() < 1e-3, (shape, diff.max())


def test_crop_pct_is_evaluation_only() -> None:
    """Training's random resized crop ignores crop_pct, as timm's training transform does."""
    pre = ImagePreprocess(size=32, crop_pct=0.5, interpolation="bicubic")
    data = DataConfig(random_resized_crop=(0.5, 1.0))
    crop = image_transform(pre, data, train=True).transforms[1]
    assert isinstance(crop, v2.RandomResizedCrop) and crop.size == (32, 32)
    steps = image_transform(pre).transforms
    assert isinstance(steps[1], v2.Resize) and steps[1].size == [64]


def test_views_use_the_towers_interpolation() -> None:
    """The vision recipes' augmentation views resample as the tower's source does."""
    pre = ImagePreprocess(size=16, interpolation="bicubic")
    for transform in view_transforms(pre, AugmentConfig(local_views=1)):
        crops = [t for t in transform.transforms if isinstance(t, v2.RandomResizedCrop)]  # type: ignore[attr-defined]
        assert [c.interpolation for c in crops] == [v2.InterpolationMode.BICUBIC]
    # batched views: nearest keeps the input's values; bicubic stays in [0, 1]
    x = torch.randint(0, 256, (4, 3, 20, 20), generator=torch.Generator().manual_seed(0)) / 255
    g = torch.Generator().manual_seed(0)
    nearest = resized_crop_flip(x, 12, (0.3, 0.6), 0.5, g, "nearest")
    assert torch.isin(nearest, x).all()
    bicubic = resized_crop_flip(x, 12, (0.3, 0.6), 0.5, g, "bicubic")
    assert bicubic.min() >= 0 and bicubic.max() <= 1
