"""The interface every evaluated model family implements, and how a model spec picks one.

An :class:`EvalModel` turns images into pixel tensors (its own preprocessing), pixel
batches into image embeddings and captions into text embeddings. The evaluation tasks
(retrieval, zero-shot, kNN, linear probe) only talk to this interface, so any CLIP-like
model is scored with the same code. Families register in ``MODEL_FAMILIES``; a spec
``FAMILY:REST`` names its family, otherwise each family's ``matches`` is asked in turn.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mmcontrast.data.images import BadSample, load_image
from mmcontrast.models.locations import check_local_name
from mmcontrast.registry import Registry

MODEL_FAMILIES = Registry("model family", packages=["mmcontrast.eval.adapters"])

# Families asked in this order when a spec names none (specific forms before broad ones).
DETECTION_ORDER = ["mmcontrast", "clip", "siglip", "vision-text-dual-encoder", "open_clip"]


class PerImage:
    """Marks a per-image transform (e.g. a PIL-only processor): no uint8 batch fast path."""

    per_image = True

    def __init__(self, transform: Callable[[Any], Tensor]) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> Tensor:
        return self.transform(image)


class EvalModel(ABC):
    """A model under evaluation: preprocessing, image and (optionally) text embeddings.

    Embeddings are returned as they come from the model (the tasks normalise them);
    ``has_text`` is False for vision-only models, which support kNN and linear probes.
    """

    family: ClassVar[str]
    has_text: bool = True

    def __init__(self, spec: str, device: torch.device) -> None:
        self.spec = spec
        self.device = device

    @classmethod
    @abstractmethod
    def matches(cls, spec: str) -> bool:
        """Whether an unprefixed spec (a path, Hub id or name) belongs to this family."""

    @classmethod
    @abstractmethod
    def load(cls, spec: str, device: torch.device) -> EvalModel:
        """Build the model on ``device`` in eval mode."""

    @abstractmethod
    def image_transform(self) -> Callable[[Any], Tensor]:
        """One image (PIL, or a uint8 tensor unless wrapped in ``PerImage``) -> pixels."""

    @abstractmethod
    def encode_images(self, pixels: Tensor) -> Tensor:
        """``[B, 3, H, W]`` pixels from ``image_transform`` -> ``[B, D]`` embeddings."""

    def encode_texts(self, texts: list[str]) -> Tensor:
        """Captions -> ``[B, D]`` embeddings."""
        raise ValueError(
            f"{self.spec} ({self.family}) has no text tower: use --task knn or linear, "
            "or a model with a text tower for retrieval and zero-shot"
        )

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any], batch_size: int = 64) -> Tensor:
        """L2-normalised embeddings of images, ``[len(images), D]`` float32 on the CPU.

        Each image is a PIL image, a file path or the bytes of an image file, preprocessed
        as the model's own library preprocesses it.

        Raises:
            TypeError: ``images`` is one image (a path, bytes or a PIL image), not a list.
            ValueError: An image cannot be read (the message names which and why).
        """
        if isinstance(images, str | bytes | bytearray | Path | Image.Image):
            raise TypeError("embed_images takes a list of images; wrap a single image in a list")
        transform = self.image_transform()
        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = [
                transform(_readable(image, start + i))
                for i, image in enumerate(images[start : start + batch_size])
            ]
            chunks.append(self.encode_images(torch.stack(pixels)).float().cpu())
        if not chunks:
            raise ValueError("no images to embed")
        return F.normalize(torch.cat(chunks), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """L2-normalised embeddings of texts, ``[len(texts), D]`` float32 on the CPU."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of texts; wrap a single text in a list")
        chunks = [
            self.encode_texts(list(texts[start : start + batch_size])).float().cpu()
            for start in range(0, len(texts), batch_size)
        ]
        if not chunks:
            raise ValueError("no texts to embed")
        return F.normalize(torch.cat(chunks), dim=-1)

    def logit_scale(self) -> float | None:
        """The multiplier of its image-text similarities (exponentiated), where it has one:
        what a distilled student's relational loss sharpens the teacher's similarities by."""
        scale = getattr(getattr(self, "model", None), "logit_scale", None)
        return float(scale.detach().exp()) if isinstance(scale, Tensor) else None

    def describe(self) -> dict[str, Any]:
        """What was evaluated, for the result JSON."""
        return {"spec": self.spec, "family": self.family}


def _readable(image: Any, position: int) -> Any:
    """A PIL image from a PIL image, a path or file bytes, or a ValueError naming it."""
    try:
        return load_image(str(image) if isinstance(image, Path) else image)
    except BadSample as bad:
        raise ValueError(f"image {position} cannot be read: {bad}") from None


def split_family(spec: str) -> tuple[str | None, str]:
    """``"siglip:path"`` -> ``("siglip", "path")``; specs without a known prefix -> ``(None, spec)``."""
    head, sep, rest = spec.partition(":")
    if sep and head in MODEL_FAMILIES:
        return head, rest
    return None, spec


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def checked_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a :class:`torch.device` this machine has (default: :func:`default_device`).

    Raises:
        ValueError: ``device`` is no device torch knows, or CUDA or MPS that this machine
            lacks (no GPU visible, fewer GPUs than its index); the message says what to pass.
    """
    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError("no CUDA GPU is visible: use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"there is no {parsed}: this machine shows {count} CUDA "
                f"{'GPU' if count == 1 else 'GPUs'} (cuda:0 to cuda:{count - 1})"
            )
    elif parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("no Apple GPU (MPS) is available: use --device cpu")
    return parsed


def load_eval_model(spec: str, device: torch.device | str | None = None) -> EvalModel:
    """Load the model a spec names, detecting its family unless prefixed.

    Accepted specs: an mmcontrast run or checkpoint folder; a Hugging Face ``CLIPModel``,
    ``SiglipModel`` or ``VisionTextDualEncoderModel`` directory or Hub id; ``open_clip:NAME``
    or ``open_clip:NAME:PRETRAINED`` (a pretrained tag or a checkpoint file) or
    ``hf-hub:ORG/REPO``; any of these prefixed with its family (``siglip:DIR``).

    A spec that can only be a local path (:mod:`mmcontrast.models.locations`) and does not
    exist is refused at once, without trying the Hub.

    Raises:
        ValueError: No family recognises the spec, it is a missing local path, or
            ``device`` is not a device of this machine (:func:`checked_device`).
    """
    device = checked_device(device)
    family, rest = split_family(spec)
    if family is None:
        for name in DETECTION_ORDER:
            if MODEL_FAMILIES.get(name).matches(spec):
                family, rest = name, spec
                break
    if family is None:
        check_local_name(spec)
        raise ValueError(
            f"cannot tell which kind of model {spec!r} is: give an mmcontrast run folder, a "
            "transformers CLIPModel/SiglipModel/VisionTextDualEncoderModel folder or Hub id, "
            "or open_clip:NAME[:PRETRAINED]; or prefix the spec with its family "
            f"({', '.join(MODEL_FAMILIES.names())}), e.g. clip:openai/clip-vit-base-patch32"
        )
    return MODEL_FAMILIES.get(family).load(rest, device)


def features_of(output: Any) -> Tensor:
    """transformers 5 returns a model output whose ``pooler_output`` holds the embeddings."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, Tensor):
        return pooled
    return output[0]
