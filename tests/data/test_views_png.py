"""``views.png``: a titled grid, the original image first in each row, then its views, in
cells of at least 96 px."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import draw
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from mmcontrast.data.views import save_views_png

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _normalised(images: list[Image.Image], size: int) -> torch.Tensor:
    x = torch.stack([pil_to_tensor(im.resize((size, size))).float() / 255 for im in images])
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_views_png_shows_originals_then_views(tmp_path: Path) -> None:
    originals = [draw("red", "circle", 28), draw("blue", "square", 28)]
    views = [_normalised(originals, 28), _normalised(originals, 28), _normalised(originals, 12)]
    path = save_views_png(views, tmp_path / "views.png", MEAN, STD, originals=originals)
    with Image.open(path) as image:
        grid = image.convert("RGB")
    cell, gap, band = 112, 4, 22  # 28 px x 4: the first whole factor reaching 96
    assert grid.size == (gap + 4 * (cell + gap), band + 2 * (cell + gap))
    for row, original in enumerate(originals):
        top = band + row * (cell + gap)
        shown = grid.crop((gap, top, gap + cell, top + cell))
        expected = original.convert("RGB").resize((cell, cell))
        diff = (pil_to_tensor(shown).float() - pil_to_tensor(expected).float()).abs().mean()
        assert diff < 12, f"row {row}: first column is not the original ({diff:.1f})"
    titles = grid.crop((0, 0, grid.width, band)).convert("L")
    assert min(titles.getdata()) < 100  # dark title text above the columns


def test_views_png_without_originals_keeps_view_columns(tmp_path: Path) -> None:
    images = [draw("green", "triangle", 224)]
    views = [_normalised(images, 224)] * 2
    path = save_views_png(views, tmp_path / "views.png", MEAN, STD)
    with Image.open(path) as image:
        assert image.size == (4 + 2 * 228, 22 + 228)  # large views keep their own size
