"""PIRL's jigsaw transform on a batch of views: a grid of tiles, shuffled.

Misra & van der Maaten 2020 (and VISSL's ``pirl_jigsaw`` config) crop a
255 x 255 region of the image, split it into a 3 x 3 grid of 85 x 85 cells, take a random
64 x 64 tile inside each cell (the gaps keep the network from matching tile edges) and
shuffle the 9 tiles. Here the region is a view the data pipeline already cropped and
augmented (PIRL's second crop of the image): a view of S pixels gives cells of ``S // 3``
and tiles of ``round(cell * 64 / 85)`` (224 -> cells of 74, tiles of 56; 28 -> 9, 7),
optionally resized to ``patch_size``. Colour augmentation is the view's, shared by its
tiles (VISSL jitters each tile on its own).

Every random number (tile offsets, permutations) comes from the generator passed in, on
the CPU, so the draws are the same on any device and a seeded generator replays them.

Reference:
    Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant
    Representations", https://arxiv.org/abs/1912.01991 (the jigsaw transform).
    Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving
    Jigsaw Puzzles", https://arxiv.org/abs/1603.09246.

Example:
    >>> jigsaw = Jigsaw(grid=3)
    >>> tiles, order = jigsaw(torch.randn(2, 3, 28, 28), torch.Generator().manual_seed(0))
    >>> tiles.shape, order.shape
    (torch.Size([2, 9, 3, 7, 7]), torch.Size([2, 9]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

PAPER_TILE_FRACTION = 64 / 85  # a 64 px tile in an 85 px cell


class JigsawDraw(NamedTuple):
    """The random part of a jigsaw: ``[B, n]`` tile offsets (rows, columns) and order."""

    down: Tensor
    right: Tensor
    order: Tensor

    def rows(self, start: int, stop: int) -> JigsawDraw:
        return JigsawDraw(self.down[start:stop], self.right[start:stop], self.order[start:stop])


@dataclass(frozen=True)
class Jigsaw:
    """``[B, C, H, W]`` views -> their tiles in shuffled order and the order.

    Args:
        grid: Cells per side (3: 9 tiles).
        tile_fraction: Tile side over cell side, in (0, 1] (paper: 64/85).
        patch_size: Resize every tile to this side (None: keep the tile's size).

    Returns (from ``__call__``):
        tiles: ``[B, grid**2, C, P, P]``; slot ``j`` of image ``b`` holds the tile of cell
        ``order[b, j]`` (cells counted row by row from the top left).
        order: ``[B, grid**2]`` long, a permutation per image.

    Raises:
        ValueError: A grid < 1, a tile fraction outside (0, 1], a patch size < 1, or views
            smaller than the grid.
    """

    grid: int = 3
    tile_fraction: float = PAPER_TILE_FRACTION
    patch_size: int | None = None

    def __post_init__(self) -> None:
        if self.grid < 1 or not 0.0 < self.tile_fraction <= 1.0:
            raise ValueError(
                f"jigsaw needs grid >= 1 and tile_fraction in (0, 1], got {self.grid}, "
                f"{self.tile_fraction}"
            )
        if self.patch_size is not None and self.patch_size < 1:
            raise ValueError(f"jigsaw patch_size must be >= 1 or null, got {self.patch_size}")

    def tile_size(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(cell height, cell width, tile height, tile width) for views of this size."""
        cell_h, cell_w = height // self.grid, width // self.grid
        if cell_h < 1 or cell_w < 1:
            raise ValueError(f"views of {height}x{width} px are smaller than a {self.grid}x grid")
        tile_h = max(1, round(cell_h * self.tile_fraction))
        tile_w = max(1, round(cell_w * self.tile_fraction))
        return cell_h, cell_w, tile_h, tile_w

    def draw(self, batch: int, height: int, width: int, generator: torch.Generator) -> JigsawDraw:
        """The random part for ``batch`` views of ``height x width``: tile offsets in their
        cells and the order (rows of a larger draw serve a share of a batch alike)."""
        cell_h, cell_w, tile_h, tile_w = self.tile_size(height, width)
        n = self.grid * self.grid
        return JigsawDraw(
            down=torch.randint(cell_h - tile_h + 1, (batch, n), generator=generator),
            right=torch.randint(cell_w - tile_w + 1, (batch, n), generator=generator),
            order=torch.argsort(torch.rand(batch, n, generator=generator), dim=1),
        )

    def apply(self, views: Tensor, drawn: JigsawDraw) -> Tensor:
        """The tiles of ``views`` [B, C, H, W] in ``drawn.order``: [B, grid**2, C, P, P]."""
        if views.ndim != 4 or drawn.order.shape[0] != views.shape[0]:
            raise ValueError(
                f"jigsaw takes views [B, C, H, W] and a draw for B of them, got "
                f"{tuple(views.shape)} and {tuple(drawn.order.shape)}"
            )
        b, _, height, width = views.shape
        cell_h, cell_w, tile_h, tile_w = self.tile_size(height, width)
        n = self.grid * self.grid
        cells = torch.arange(n)
        top = (cells // self.grid) * cell_h + drawn.down  # [B, n]: each tile's first row
        left = (cells % self.grid) * cell_w + drawn.right
        rows = (top[..., None] + torch.arange(tile_h)).to(views.device)  # [B, n, th]
        cols = (left[..., None] + torch.arange(tile_w)).to(views.device)  # [B, n, tw]
        batch = torch.arange(b, device=views.device)[:, None, None, None]
        # advanced indices around a slice: [B, n, th, tw, C]
        tiles = views[batch, :, rows[..., None], cols[..., None, :]].permute(0, 1, 4, 2, 3)
        order = drawn.order.to(views.device)
        tiles = tiles[torch.arange(b, device=views.device)[:, None], order]
        if self.patch_size is not None and (tile_h, tile_w) != (self.patch_size,) * 2:
            flat = F.interpolate(
                tiles.flatten(0, 1), size=(self.patch_size,) * 2, mode="bilinear", antialias=True
            )
            tiles = flat.unflatten(0, (b, n))
        return tiles.contiguous()

    def __call__(self, views: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if views.ndim != 4:
            raise ValueError(f"jigsaw takes views [B, C, H, W], got {tuple(views.shape)}")
        drawn = self.draw(views.shape[0], views.shape[2], views.shape[3], generator)
        return self.apply(views, drawn), drawn.order.to(views.device)
