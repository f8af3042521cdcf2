"""The dual encoder: a vision tower and a text tower projected into one embedding space.

Image and text features are projected to ``embed_dim`` and L2-normalised. A learnable
logit scale (stored as its log, initialised to ln(1/0.07) for CLIP or ln 10 for SigLIP)
is capped at ``max_logit_scale`` (ln 100); an optional logit bias serves the sigmoid loss.
Both are stored as shape-[1] parameters (torch's FSDP refuses 0-dim ones) and come out of
``scale()`` and ``forward`` as 0-dim tensors; checkpoints that saved them 0-dim still load.

Reference: Radford et al. 2021 (CLIP), Zhai et al. 2022 (LiT: locking a tower).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast.config import ModelConfig
from mmcontrast.models.heads import build_projection
from mmcontrast.models.tower import Tower, build_tower, keep_frozen_in_eval, resolved_preprocess


class DualEncoder(nn.Module):
    """Vision tower + text tower + projections + logit scale (and bias)."""

    def __init__(
        self,
        vision: Tower,
        text: Tower,
        embed_dim: int = 512,
        projection: str = "linear",
        projection_hidden_dim: int | None = None,
        init_logit_scale: float = 2.6592600369262695,  # ln(1/0.07)
        init_logit_bias: float | None = None,
        max_logit_scale: float = 4.605170185988092,  # ln(100)
    ) -> None:
        super().__init__()
        self.vision = vision
        self.text = text
        self.vision_projection = build_projection(
            projection, vision.width, embed_dim, projection_hidden_dim
        )
        self.text_projection = build_projection(
            projection, text.width, embed_dim, projection_hidden_dim
        )
        # shape [1], not 0-dim: torch's FSDP (FSDP1 and fully_shard) refuses scalar parameters
        self.logit_scale = nn.Parameter(torch.tensor([float(init_logit_scale)]))
        self.logit_bias = (
            nn.Parameter(torch.tensor([float(init_logit_bias)]))
            if init_logit_bias is not None
            else None
        )
        self.max_logit_scale = max_logit_scale
        self.embed_dim = embed_dim
        self.register_load_state_dict_pre_hook(_scalars_to_shape_one)

    def get_image_features(
        self,
        pixel_values: Tensor | None = None,
        normalize: bool = True,
        vision_features: Tensor | None = None,
    ) -> Tensor:
        """[B, 3, H, W] pixels (or the vision tower's cached output) -> [B, embed_dim]."""
        if vision_features is None:
            if pixel_values is None:
                raise ValueError("get_image_features needs pixel_values or vision_features")
            vision_features = self.vision(pixel_values=pixel_values)
        features = self.vision_projection(vision_features)
        return F.normalize(features, dim=-1) if normalize else features

    def get_text_features(self, **text_inputs: Any) -> Tensor:
        """Tokenizer outputs (``input_ids``, ``attention_mask``, ...) -> [B, embed_dim].

        Pass ``normalize=False`` for the projected features before L2 normalisation.
        """
        normalize = text_inputs.pop("normalize", True)
        features = self.text_projection(self.text(**text_inputs))
        return F.normalize(features, dim=-1) if normalize else features

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """Captions -> the text tower's inputs, for ``get_text_features(**inputs)``."""
        return self.text.tokenizer()(texts)

    def image_transform(self) -> Any:
        """PIL image -> normalised [3, H, W] tensor, as evaluation sees images."""
        from mmcontrast.data.transforms import image_transform

        return image_transform(resolved_preprocess(self.vision))

    def scale(self) -> Tensor:
        """The logit multiplier exp(logit_scale), capped at exp(max_logit_scale); 0-dim."""
        return self.logit_scale.squeeze(0).clamp(max=self.max_logit_scale).exp()

    def forward(
        self,
        pixel_values: Tensor | None = None,
        vision_features: Tensor | None = None,
        **text_inputs: Tensor,
    ) -> dict[str, Any]:
        """Embeddings of a batch of image-text pairs, ready to unpack into a loss."""
        out: dict[str, Any] = {
            "image_features": self.get_image_features(
                pixel_values, vision_features=vision_features
            ),
            "text_features": self.get_text_features(**text_inputs),
            "logit_scale": self.scale(),
        }
        if self.logit_bias is not None:
            # 0-dim for the losses; a copy, not a view (FSDP2 warns about views in outputs)
            out["logit_bias"] = self.logit_bias.squeeze(0).clone()
        return out

    def train(self, mode: bool = True) -> DualEncoder:
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self)  # locked (LiT) parts keep BatchNorm statistics and no dropout
        return self


def _scalars_to_shape_one(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Older checkpoints saved the logit scale and bias 0-dim: read them as shape [1]."""
    for name in ("logit_scale", "logit_bias"):
        value = state_dict.get(prefix + name)
        if isinstance(value, Tensor) and value.ndim == 0:
            state_dict[prefix + name] = value.reshape(1)


def build_dual_encoder(
    cfg: ModelConfig, init_logit_scale: float, init_logit_bias: float | None
) -> DualEncoder:
    """Build both towers from the config; explicit inits in ``cfg`` win over the loss's defaults."""
    return DualEncoder(
        vision=build_tower(cfg.vision, "vision"),
        text=build_tower(cfg.text, "text"),
        embed_dim=cfg.embed_dim,
        projection=cfg.projection,
        projection_hidden_dim=cfg.projection_hidden_dim,
        init_logit_scale=cfg.init_logit_scale
        if cfg.init_logit_scale is not None
        else init_logit_scale,
        init_logit_bias=cfg.init_logit_bias if cfg.init_logit_bias is not None else init_logit_bias,
        max_logit_scale=cfg.max_logit_scale,
    )
