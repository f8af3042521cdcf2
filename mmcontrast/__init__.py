"""mmcontrast: contrastive representation learning on Hugging Face, timm and open_clip towers.

Two loaders:

- :func:`load_model`: any image-text or vision model the evaluation suite scores (an
  mmcontrast run or export, a transformers ``CLIPModel`` / ``SiglipModel`` /
  ``VisionTextDualEncoderModel``, an open_clip model), to embed images and texts;
- :func:`from_pretrained`: an export in mmcontrast's own format as its ``nn.Module``, to
  train or fine-tune further.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mmcontrast.eval.adapters.base import EvalModel

__all__ = ["from_pretrained", "load_model"]


def load_model(spec: str, device: torch.device | str | None = None) -> EvalModel:
    """Any model ``mmcontrast eval --model`` takes, ready to embed images and texts.

    ``spec`` is a folder or Hub id (an mmcontrast run or export, a transformers CLIP, SigLIP
    or vision-text dual encoder), ``open_clip:NAME[:TAG or weights file]`` or
    ``hf-hub:ORG/NAME`` for open_clip. The model is in eval mode on ``device`` (default:
    CUDA if available), with its own library's preprocessing and tokenizer.

    Example:
        >>> model = load_model("openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> images = model.embed_images(["cat.jpg", "dog.png"])  # [2, 512], normalised
        >>> texts = model.embed_texts(["a cat", "a dog"])  # doctest: +SKIP
        >>> (images @ texts.T).argmax(dim=1)  # doctest: +SKIP
    """
    from mmcontrast.eval.adapters.base import load_eval_model

    return load_eval_model(spec, device)


def from_pretrained(name_or_path: str, revision: str | None = None) -> Any:
    """Load an mmcontrast export (folder or Hub id): a dual encoder, or a vision backbone.

    For a transformers or open_clip model, or to embed images and texts with any model,
    use :func:`load_model`.
    """
    from mmcontrast.hub.native import from_pretrained as load

    return load(name_or_path, revision=revision)
