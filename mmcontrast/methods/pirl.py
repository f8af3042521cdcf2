"""PIRL: an image and its jigsaw tiles map to the same embedding, against a memory bank.

Image ``I`` (the first augmented view) goes through the backbone and a linear head ``f``
to D = 128. Its jigsaw transform ``I_t`` (:mod:`mmcontrast.methods.pirl_jigsaw`: 3 x 3
tiles of the second view, shuffled) goes tile by tile through the backbone and the
per-tile linear layer of head ``g`` (width -> ``patch_dim``); the 9 tile features are
concatenated in the shuffled order and projected by ``g``'s second linear layer to D. With
``m_I`` the memory bank's entry of image ``I`` (Misra & van der Maaten, section 3.2)::

    L = lambda * L_NCE(m_I, g(v_It)) + (1 - lambda) * L_NCE(m_I, f(v_I)),   lambda = 0.5

each ``L_NCE`` being NCE against 32,000 entries drawn uniformly from the bank (t = 0.07;
both terms share one draw of negatives; each term has its own Z, from each batch or fixed
once as the paper does: ``fix_z``, see :mod:`mmcontrast.methods.bank_method`). The
bank's entry moves towards ``f(v_I)`` after each batch (momentum 0.5). The tiles' offsets
and order are drawn for the whole batch of every process (each takes its rows) from a
generator seeded by (seed, call), the call count kept in the checkpoint: several processes
cut the tiles one process with the whole batch would.

Reference:
    Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant
    Representations", https://arxiv.org/abs/1912.01991 (and VISSL's ``pirl_jigsaw``
    config: per-tile linear 2048 -> 128, concatenation 1152 -> 128).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.config import Config
from mmcontrast.methods.bank_method import BankArgs, MemoryBankMethod
from mmcontrast.methods.pirl_jigsaw import PAPER_TILE_FRACTION, Jigsaw
from mmcontrast.models.heads import Projected
from mmcontrast.models.memory_bank import counter_generator
from mmcontrast.registry import METHODS


@dataclass
class PirlArgs(BankArgs):
    num_negatives: int = 32000  # the paper's, drawn uniformly from the bank per image
    patch_dim: int = 128  # g's per-tile linear layer (out_dim: heads f and g, the bank's rows)
    loss_weight: float = 0.5  # lambda: the jigsaw term's weight, 1 - lambda the image's
    grid: int = 3  # tiles per side
    tile_fraction: float = PAPER_TILE_FRACTION  # tile side / cell side (64 / 85)
    patch_size: int | None = None  # resize tiles to this side (None: as cut)


@METHODS.register("pirl", "PIRL: jigsaw-invariant embeddings, memory bank, NCE (Misra 2020)")
class Pirl(MemoryBankMethod):
    args_class = PirlArgs
    loss_name = "nce"
    nce_terms = 2  # jigsaw -> bank, image -> bank

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        a = self.args
        if not 0.0 <= a.loss_weight <= 1.0:
            raise ValueError(f"method_args.loss_weight must be in [0, 1], got {a.loss_weight}")
        self.jigsaw = Jigsaw(a.grid, a.tile_fraction, a.patch_size)
        width, tiles = self.backbone.width, a.grid * a.grid
        self.image_head = nn.Linear(width, a.out_dim)  # f
        self.patch_head = nn.Linear(width, a.patch_dim)  # g, per tile
        self.jigsaw_head = nn.Linear(tiles * a.patch_dim, a.out_dim)  # g, the concatenation
        self.jigsaw_calls: Tensor
        self.register_buffer("jigsaw_calls", torch.zeros((), dtype=torch.long))

    def jigsaw_embedding(self, views: Tensor) -> Tensor:
        """``g(v_It)`` [B, out_dim] of the jigsaw transforms of ``views`` [B, C, H, W]."""
        b = views.shape[0]
        start, total = distributed.local_offset(b, views.device)  # draws for the whole batch
        g = counter_generator(self.cfg.train.seed, int(self.jigsaw_calls))
        self.jigsaw_calls.add_(1)
        drawn = self.jigsaw.draw(total, views.shape[2], views.shape[3], g).rows(start, start + b)
        tiles = self.jigsaw.apply(views, drawn)  # [B, n, C, P, P], shuffled
        n = tiles.shape[1]
        features = self.patch_head(self.backbone(pixel_values=tiles.flatten(0, 1)))
        return self.jigsaw_head(features.view(b, n * features.shape[-1]))  # shuffled order

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        rows = self.rows(batch)
        image, transformed = batch["views"][:2]
        f = self.image_head(self.backbone(pixel_values=image))
        g = self.jigsaw_embedding(transformed)
        self.fill_new_rows(rows, f)
        negatives = self.negatives(rows.shape[0])
        jigsaw_loss = self.nce(0, g, rows, negatives)
        image_loss = self.nce(1, f, rows, negatives)
        weight = self.args.loss_weight
        loss = weight * jigsaw_loss + (1 - weight) * image_loss
        self.bank.update(rows, f)
        return {
            "loss": loss,
            "jigsaw_loss": jigsaw_loss.detach(),
            "image_loss": image_loss.detach(),
        }

    def knn_encoder(self) -> nn.Module:
        return Projected(self.backbone, self.image_head)
