"""Labelled image tables (Fashion-MNIST, imagefolders) and multi-view augmentation."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import write_idx
from PIL import Image
from torchvision.transforms import v2

from mmcontrast.config import AugmentConfig, DataConfig
from mmcontrast.data.fashion_mnist import SYSTEM_DIR
from mmcontrast.data.image_text import image_batches
from mmcontrast.data.labelled import LabelledImages, load_labelled
from mmcontrast.data.transforms import ImagePreprocess
from mmcontrast.data.views import (
    MultiViewCollator,
    MultiViewDataset,
    save_views_png,
    view_transforms,
)

FASHION = DataConfig(path="fashion_mnist")


@pytest.fixture()
def fake_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    source, cache = tmp_path / "idx", tmp_path / "cache"
    source.mkdir()
    g = torch.Generator().manual_seed(0)
    data = {
        "train_images": torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8, generator=g),
        "train_labels": torch.tensor([0, 1, 2, 9, 4, 5]),
        "test_images": torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8, generator=g),
        "test_labels": torch.tensor([7, 8, 3]),
    }
    write_idx(source, "train", data["train_images"], data["train_labels"])
    write_idx(source, "t10k", data["test_images"], data["test_labels"])
    monkeypatch.setenv("MMCONTRAST_FASHION_MNIST", str(source))
    monkeypatch.setenv("MMCONTRAST_CACHE", str(cache))
    return data


def test_fashion_mnist_fake_files(fake_fashion: dict[str, torch.Tensor], tmp_path: Path) -> None:
    train = load_labelled(FASHION, "train")
    assert len(train) == 6 and train.class_names[0] == "T-shirt/top"
    assert len(train.class_names) == 10 and train.class_names[9] == "Ankle boot"
    assert torch.equal(train.labels(), fake_fashion["train_labels"])
    assert train.labels().dtype == torch.long and train.label(3) == 9
    image = train.image(2)
    assert isinstance(image, Image.Image) and image.size == (28, 28)
    assert torch.equal(
        torch.tensor(list(image.getdata())).view(28, 28).to(torch.uint8),
        fake_fashion["train_images"][2],
    )
    test = load_labelled(FASHION, "test", max_samples=2)
    assert torch.equal(test.labels(), fake_fashion["test_labels"][:2])
    cached = sorted(p.name for p in (tmp_path / "cache" / "fashion-mnist").iterdir())
    assert len(cached) == 4 and not any(name.endswith(".gz") for name in cached)
    with pytest.raises(ValueError, match="no split 'valid'"):
        load_labelled(FASHION, "valid")


def test_fashion_mnist_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMCONTRAST_FASHION_MNIST", str(tmp_path))
    monkeypatch.setattr("mmcontrast.data.fashion_mnist.SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist") as err:
        load_labelled(FASHION, "train")
    assert "MMCONTRAST_FASHION_MNIST" in str(err.value)


@pytest.mark.skipif(not SYSTEM_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_real_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMCONTRAST_FASHION_MNIST", raising=False)
    monkeypatch.setenv("MMCONTRAST_CACHE", str(tmp_path))
    train, test = load_labelled(FASHION, "train"), load_labelled(FASHION, "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.image(0).size == (28, 28)
    assert torch.equal(test.labels().bincount(), torch.full((10,), 1000))


def write_metadata(folder: Path, rows: Sequence[Mapping[str, Any]], images: bool = True) -> None:
    folder.mkdir(parents=True)
    for row in rows:
        if images:
            Image.new("RGB", (16, 16), (200, 40, 40)).save(folder / str(row["file_name"]))
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_imagefolder_string_labels(tmp_path: Path) -> None:
    train: list[dict[str, Any]] = [
        {"file_name": f"{i}.png", "kind": k} for i, k in enumerate("cat dog cat bird".split())
    ]
    train.append({"file_name": "4.png", "kind": None})
    write_metadata(tmp_path / "train", train)
    write_metadata(tmp_path / "test", [{"file_name": "0.png", "kind": "dog"}])
    write_metadata(tmp_path / "odd", [{"file_name": "0.png", "kind": "fish"}])
    cfg = DataConfig(path=str(tmp_path), label_column="kind")
    table = load_labelled(cfg, "train")
    assert table.class_names == ["bird", "cat", "dog"]
    assert table.labels().tolist() == [1, 2, 1, 0] and table.skipped["missing label"] == 1
    assert Path(table.image(0)) == tmp_path / "train" / "0.png"
    assert len(load_labelled(cfg, "train", max_samples=2)) == 2
    test = load_labelled(cfg, "test", class_names=table.class_names)
    assert test.labels().tolist() == [2]
    with pytest.raises(ValueError, match=r"\['fish'\].*training classes"):
        load_labelled(cfg, "odd", class_names=table.class_names)
    with pytest.raises(ValueError, match="column 'label' not found.*kind.*data.label_column"):
        load_labelled(DataConfig(path=str(tmp_path)), "train")
    pixels = torch.cat([p for _, p, _ in image_batches(table, v2.ToImage(), 2) if p is not None])
    assert pixels.shape == (4, 3, 16, 16)


def test_class_subfolders(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("test", 1)):
        for name in ("boot", "coat"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8)).save(tmp_path / split / name / f"{i}.png")
    train = load_labelled(DataConfig(path=str(tmp_path)), "train")
    assert train.class_names == ["boot", "coat"] and train.labels().tolist() == [0] * 3 + [1] * 3
    assert isinstance(train.image(0), dict)  # datasets.Image(decode=False), for load_image
    test = load_labelled(DataConfig(path=str(tmp_path)), "test", class_names=train.class_names)
    assert sorted(test.labels().tolist()) == [0, 1]


def constant_table(value: int = 200, n: int = 4) -> LabelledImages:
    images = torch.full((n, 32, 32), value, dtype=torch.uint8)
    return LabelledImages("const", ["a", "b"], torch.arange(n) % 2, images=images)


def test_views_shapes_and_determinism() -> None:
    table = LabelledImages(
        "rand",
        ["a"],
        torch.zeros(3, dtype=torch.long),
        images=torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8),
    )
    transforms = view_transforms(ImagePreprocess(size=32), AugmentConfig(local_views=3))
    dataset = MultiViewDataset(table, transforms, seed=7)
    views = dataset[1]["views"]
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 14, 14)] * 3
    again = MultiViewDataset(table, transforms, seed=7)[1]["views"]
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["views"][0], views[0])
    assert not torch.equal(views[0], views[1])


def test_blur_and_solarize_reach_transforms() -> None:
    aug = AugmentConfig(blur_prob=(1.0, 0.1), solarize_prob=(0.0, 1.0), color_jitter_prob=0.0)
    transforms = view_transforms(ImagePreprocess(size=32), aug)
    blur_p = [
        t.p
        for t in transforms[0].transforms + transforms[1].transforms  # type: ignore[attr-defined]
        if isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.GaussianBlur)
    ]
    assert blur_p == [1.0, 0.1]
    pre = ImagePreprocess(size=32, mean=[0.0] * 3, std=[1.0] * 3)
    dataset = MultiViewDataset(constant_table(200), view_transforms(pre, aug))
    for index in range(4):
        first, second = dataset[index]["views"]
        # 1/255 tolerance: grayscale may round 200 down to 199
        assert torch.allclose(first, torch.full_like(first, 200 / 255), atol=1.5 / 255)
        assert torch.allclose(second, torch.full_like(second, 55 / 255), atol=1.5 / 255)


def test_bad_image_is_skipped_and_counted(tmp_path: Path) -> None:
    rows = [{"file_name": "ok.png", "label": "a"}, {"file_name": "bad.png", "label": "b"}]
    write_metadata(tmp_path / "train", rows, images=False)
    Image.new("RGB", (16, 16)).save(tmp_path / "train" / "ok.png")
    (tmp_path / "train" / "bad.png").write_bytes(b"not a png")
    table = load_labelled(DataConfig(path=str(tmp_path)), "train")
    dataset = MultiViewDataset(table, view_transforms(ImagePreprocess(size=16), AugmentConfig()))
    samples = [dataset[0], dataset[1]]
    assert samples[1] == {"skip": "unreadable image"}
    batch = MultiViewCollator()(samples)
    assert batch["skipped"] == {"unreadable image": 1} and batch["labels"].tolist() == [0]
    assert [tuple(v.shape) for v in batch["views"]] == [(1, 3, 16, 16)] * 2
    assert MultiViewCollator()([samples[1]]) == {"skipped": {"unreadable image": 1}}


def test_save_views_png(tmp_path: Path) -> None:
    pre = ImagePreprocess(size=32)
    dataset = MultiViewDataset(
        constant_table(n=3), view_transforms(pre, AugmentConfig(local_views=3))
    )
    batch = MultiViewCollator()([dataset[i] for i in range(3)])
    path = save_views_png(batch["views"], tmp_path / "views" / "grid.png", pre.mean, pre.std)
    with Image.open(path) as image:  # 5 columns, 3 rows of 96 px cells (32 px x 3), titles
        assert image.size == (4 + 5 * 100, 22 + 3 * 100)


def test_bad_augment_config() -> None:
    with pytest.raises(ValueError, match="augment.solarize_prob"):
        view_transforms(ImagePreprocess(), AugmentConfig(solarize_prob=(0.0, 2.0)))
