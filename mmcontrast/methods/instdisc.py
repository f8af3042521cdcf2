"""Instance discrimination: every image its own class, a memory bank and NCE.

The backbone's features go through a linear head to D = 128 and are L2-normalised; image
``i`` should be recognised as class ``i`` by the non-parametric softmax over the memory
bank's entries, trained with NCE against K = 4096 uniformly drawn entries (t = 0.07; Z
from each batch, or fixed once as the paper does: ``fix_z``, see
:mod:`mmcontrast.methods.bank_method`) or, with ``full_softmax``, with the exact softmax
over all N entries.
After each batch the bank's entries of its images move towards their new embeddings
(momentum 0.5). One augmented view per image (the first of the vision data's two).

Reference:
    Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", https://arxiv.org/abs/1805.01978.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mmcontrast.config import Config
from mmcontrast.methods.bank_method import BankArgs, MemoryBankMethod
from mmcontrast.models.heads import Projected
from mmcontrast.registry import METHODS


@METHODS.register(
    "instdisc", "Instance discrimination: memory bank, NCE, 4096 negatives (Wu et al. 2018)"
)
class InstDisc(MemoryBankMethod):
    args_class = BankArgs  # the paper's K = 4096
    loss_name = "nce"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.head = nn.Linear(self.backbone.width, self.args.out_dim)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        rows = self.rows(batch)
        embedding = self.head(self.backbone(pixel_values=batch["views"][0]))
        self.fill_new_rows(rows, embedding)
        loss = self.nce(0, embedding, rows, self.negatives(rows.shape[0]))
        self.bank.update(rows, embedding)
        return {"loss": loss}

    def knn_encoder(self) -> nn.Module:
        return Projected(self.backbone, self.head)
