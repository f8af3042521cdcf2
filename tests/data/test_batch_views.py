"""Batched views (``augment.batched``): each operation against torchvision's on the same
parameters, determinism, and a resumed run seeing exactly the uninterrupted run's views."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import write_idx
from safetensors.torch import load_file
from torchvision.transforms.v2 import functional as TF

from mmcontrast.config import AugmentConfig, load_recipe
from mmcontrast.data.batch_views import (
    BatchedViews,
    RawSamples,
    color_jitter,
    gaussian_blur,
    grayscale,
    resized_crop_flip,
    rotate_hue,
)
from mmcontrast.data.transforms import ImagePreprocess
from mmcontrast.pipeline import train

PLAIN = AugmentConfig(
    crop_scale=(1.0, 1.0),
    horizontal_flip=0.0,
    color_jitter_prob=0.0,
    grayscale_prob=0.0,
    blur_prob=(0.0, 0.0),
)


def images(b: int = 6, c: int = 3, size: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, size, size), dtype=torch.uint8, generator=g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_whole_image_crop_is_the_identity_and_flip_mirrors() -> None:
    x = images().float() / 255
    torch.testing.assert_close(resized_crop_flip(x, 20, (1.0, 1.0), 0.0, gen()), x)
    torch.testing.assert_close(resized_crop_flip(x, 20, (1.0, 1.0), 1.0, gen()), x.flip(-1))
    views = BatchedViews(ImagePreprocess(20, [0.0] * 3, [1.0] * 3), PLAIN)(images(), gen())
    assert len(views) == 2
    for view in views:
        torch.testing.assert_close(view, x)


def test_crops_sample_torchvision_areas() -> None:
    """A constant-gradient image: the crop's x-extent follows from its values."""
    ramp = torch.linspace(0, 1, 200).expand(1, 200, 200).repeat(4000, 3, 1, 1)
    out = resized_crop_flip(ramp[:, :, :2], 64, (0.3, 0.6), 0.0, gen())  # rows don't matter
    width = out[:, 0, 0, -1] - out[:, 0, 0, 0]  # fraction of the width, up to one pixel
    assert 0.3**0.5 * (3 / 4) ** 0.5 - 0.02 < float(width.min())
    assert float(width.max()) < 1.0 + 1e-6
    # mean sqrt(area * ratio) for area ~ U(0.3, 0.6), log-ratio ~ U(log 3/4, log 4/3)
    area = torch.rand(200_000, generator=gen(1)) * 0.3 + 0.3
    ratio = (torch.rand(200_000, generator=gen(2)) * 2 - 1).mul(math.log(4 / 3)).exp()
    expected = (area * ratio).sqrt().clamp(max=1).mean()
    assert abs(float(width.mean()) - float(expected)) < 0.02


def test_jitter_blends_equal_torchvision() -> None:
    x = images().float() / 255
    for name, fn in [
        ("brightness", TF.adjust_brightness),
        ("contrast", TF.adjust_contrast),
        ("saturation", TF.adjust_saturation),
    ]:
        only = AugmentConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
        setattr(only, name, 0.5)
        out = color_jitter(x, only, gen(3))
        factors = 0.5 + torch.rand(len(x), generator=gen(3))  # U(0.5, 1.5), same draws
        expected = torch.stack([fn(xi, float(f)) for xi, f in zip(x, factors, strict=True)])
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0, msg=name)
    torch.testing.assert_close(grayscale(x), TF.rgb_to_grayscale(x, 3), atol=1e-6, rtol=0)


def test_hue_rotation_keeps_luma_and_zero_is_identity() -> None:
    x = images().float() / 255 * 0.6 + 0.2  # away from the clamp
    torch.testing.assert_close(rotate_hue(x, torch.zeros(len(x))), x, atol=1e-5, rtol=0)
    rotated = rotate_hue(x, torch.full((len(x),), 0.3))
    torch.testing.assert_close(grayscale(rotated)[:, 0], grayscale(x)[:, 0], atol=2e-3, rtol=0)
    assert (rotated - x).abs().max() > 0.01


def test_blur_equals_torchvision_per_sample() -> None:
    x = images(size=30).float() / 255
    out = gaussian_blur(x, (0.5, 2.0), gen(4))
    sigma = 0.5 + 1.5 * torch.rand(len(x), generator=gen(4))
    for xi, oi, s in zip(x, out, sigma, strict=True):
        expected = TF.gaussian_blur(xi, kernel_size=[3, 3], sigma=[float(s)] * 2)
        torch.testing.assert_close(oi, expected, atol=1e-5, rtol=0)


def test_views_are_seeded_and_shaped() -> None:
    aug = AugmentConfig(local_views=2, solarize_prob=(0.0, 1.0), grayscale_prob=0.5)
    views = BatchedViews(ImagePreprocess(28), aug)
    grey = images(c=1, size=28)
    a, b = views(grey, gen(5)), views(grey, gen(5))
    assert [tuple(v.shape) for v in a] == [(6, 3, 28, 28)] * 2 + [(6, 3, 12, 12)] * 2
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], views(grey, gen(6))[0])
    with pytest.raises(ValueError, match="uint8"):
        views(grey.float(), gen())
    with pytest.raises(ValueError, match="augment.batched needs images held in memory"):
        RawSamples(type("Table", (), {"images": None, "source": "folder/train"})())


@pytest.fixture()
def fashion_32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "idx"
    source.mkdir()
    g = gen(7)
    for prefix, n in (("train", 32), ("t10k", 8)):
        x = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        write_idx(source, prefix, x, torch.arange(n) % 10)
    monkeypatch.setenv("MMCONTRAST_FASHION_MNIST", str(source))
    monkeypatch.setenv("MMCONTRAST_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
def test_batched_training_resumes_exactly(fashion_32: None, tmp_path: Path) -> None:
    common = [
        "method=byol",
        "method_args.hidden_dim=32",
        "method_args.out_dim=16",
        "model.vision.source=builtin",
        "model.vision.name=tiny_cnn",
        "model.vision.image_size=28",
        "data.path=fashion_mnist",
        "augment.batched=true",
        "train.batch_size=8",
        "train.epochs=2",
        "train.checkpoint_every=3",
        "train.log_every=1",
        "train.progress_bar=false",
        "train.trackers=[]",
        "eval.at_end=false",
    ]
    full = train(load_recipe(None, [*common, f"train.output_dir={tmp_path / 'full'}"]))
    assert (tmp_path / "full" / "views.png").is_file()
    split = f"train.output_dir={tmp_path / 'split'}"
    first = train(load_recipe(None, [*common, split, "train.stop_at_step=5"]))
    second = train(load_recipe(None, [*common, split]), resume="latest")
    losses = [h["loss"] for h in full["history"]]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert [h["loss"] for h in first["history"] + second["history"]] == losses
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
