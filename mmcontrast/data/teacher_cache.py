"""A teacher's embeddings of a training split, computed once and kept on disk (distillation).

Distilling a student from a teacher (CLIP-KD, Yang et al. 2024; TinyCLIP, Wu et al. 2023)
needs the teacher's image and caption embeddings for every pair the student sees. Running
the teacher at every step costs more than training a small student; MobileCLIP's
"reinforced" datasets (Vasu et al. 2024) store them with the data instead. Here they are
computed once per (teacher, split) and reused by every run on that split:

* ``images`` [R, D_T]: the teacher's L2-normalised embedding of every row's image, as its own
  library preprocesses it (no training augmentation); ``readable`` [R] marks rows whose
  image could be read;
* ``texts`` [C, D_T]: one per distinct caption of the split, looked up by the caption itself;
* ``logit_scale``: the teacher's similarity multiplier (the relational loss sharpens its
  similarities with it).

Layout: ``FOLDER/embeddings.safetensors`` and ``FOLDER/teacher.json`` (teacher, logit scale,
captions in order, and a fingerprint of the split: its rows' images and captions), written
to a sibling folder and renamed into place, so a folder that exists is complete. A cache
whose fingerprint does not match the split it is used with is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mmcontrast.data.pairs import PairTable

FORMAT = 1
EMBEDDINGS_FILE, MANIFEST_FILE = "embeddings.safetensors", "teacher.json"


@dataclass(frozen=True)
class TeacherRequest:
    """What a run needs computed before it trains: ``teacher`` (any spec
    ``mmcontrast.load_model`` takes) over ``split`` of the run's data, kept in ``folder``."""

    teacher: str
    split: str
    folder: Path


@dataclass
class TeacherEmbeddings:
    """A teacher's embeddings of one split (see the module docstring)."""

    teacher: str
    images: Tensor  # [R, D_T] float32, normalised; rows of unreadable images are zeros
    readable: Tensor  # [R] bool
    captions: list[str]
    texts: Tensor  # [C, D_T] float32, normalised
    logit_scale: float
    fingerprint: str

    def __post_init__(self) -> None:
        self._caption_rows = {caption: i for i, caption in enumerate(self.captions)}

    @property
    def dim(self) -> int:
        return int(self.images.shape[1])

    def text_rows(self, captions: list[str]) -> Tensor:
        """Rows of ``texts`` for ``captions``.

        Raises:
            KeyError: A caption the teacher never embedded (the data changed after caching).
        """
        try:
            return torch.tensor([self._caption_rows[c] for c in captions], dtype=torch.long)
        except KeyError as err:
            raise KeyError(
                f"caption {err.args[0]!r} is not in the teacher's cache of {self.teacher}: the "
                "data changed after the cache was made; delete the cache folder to recompute it"
            ) from None


def split_fingerprint(table: PairTable) -> str:
    """A digest of a split's rows (each image's name and its captions), in order."""
    digest = hashlib.sha256(f"{table.source}\n{len(table)}\n".encode())
    for i, row in enumerate(table.dataset):
        name = table.row_name(row, f"row {i}")
        digest.update(json.dumps([name, table.row_captions(row)]).encode())
    return digest.hexdigest()


def split_captions(table: PairTable) -> list[str]:
    """Every distinct caption of a split, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in table.dataset:
        seen.update(dict.fromkeys(table.row_captions(row)))
    return list(seen)


def default_cache_folder(teacher: str, data_path: str, split: str, rows: int | None) -> Path:
    """``$MMCONTRAST_CACHE/teachers/<digest>`` (default ``~/.cache/mmcontrast``): one folder
    per teacher, data and split."""
    root = Path(os.environ.get("MMCONTRAST_CACHE", Path.home() / ".cache" / "mmcontrast"))
    key = json.dumps([teacher, str(Path(data_path).resolve()) if data_path else "", split, rows])
    return root / "teachers" / hashlib.sha256(key.encode()).hexdigest()[:16]


def save_teacher_embeddings(folder: Path, embeddings: TeacherEmbeddings) -> None:
    """Write ``embeddings`` to ``folder`` through a sibling folder renamed into place.

    Raises:
        FileExistsError: ``folder`` exists (it is never overwritten).
    """
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists: the teacher's embeddings are not overwritten")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tensors = {
            "images": embeddings.images.float().contiguous(),
            "readable": embeddings.readable.to(torch.uint8).contiguous(),
            "texts": embeddings.texts.float().contiguous(),
        }
        save_file(tensors, str(staging / EMBEDDINGS_FILE))
        manifest = {
            "format": FORMAT,
            "teacher": embeddings.teacher,
            "logit_scale": embeddings.logit_scale,
            "fingerprint": embeddings.fingerprint,
            "rows": int(embeddings.images.shape[0]),
            "dim": embeddings.dim,
            "captions": embeddings.captions,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest))
        staging.chmod(0o755)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_teacher_embeddings(folder: Path, fingerprint: str | None = None) -> TeacherEmbeddings:
    """Read a cache written by :func:`save_teacher_embeddings`.

    Raises:
        FileNotFoundError: No cache in ``folder``.
        ValueError: The cache is damaged, or was made for other data (``fingerprint``).
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} holds no teacher embeddings ({MANIFEST_FILE})")
    fix = f"delete {folder} to compute it again"
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        tensors = load_file(str(folder / EMBEDDINGS_FILE))
        images, readable, texts = tensors["images"], tensors["readable"].bool(), tensors["texts"]
        captions = [str(c) for c in manifest["captions"]]
        scale, recorded = float(manifest["logit_scale"]), str(manifest["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"the teacher's cache in {folder} is damaged ({err}): {fix}") from None
    if (
        manifest.get("format") != FORMAT
        or len(captions) != len(texts)
        or len(readable) != len(images)
    ):
        raise ValueError(f"the teacher's cache in {folder} is inconsistent: {fix}")
    if fingerprint is not None and recorded != fingerprint:
        raise ValueError(
            f"the teacher's cache in {folder} was made for other data (its rows or captions "
            f"differ from this split's): {fix}, or point method_args.teacher_cache elsewhere"
        )
    return TeacherEmbeddings(
        str(manifest["teacher"]), images, readable, captions, texts, scale, recorded
    )
