"""Fashion-MNIST from its original IDX files, offline.

The four files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``) are looked for in
``$MMCONTRAST_FASHION_MNIST`` if set, then in ``/usr/share/datasets/fashion-mnist`` (Debian
package ``dataset-fashion-mnist``). Compressed files are decompressed once into
``$MMCONTRAST_CACHE/fashion-mnist`` (default ``~/.cache/mmcontrast/fashion-mnist``) and read
with torchvision's IDX reader.

Reference: Xiao et al., "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", 2017.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import FashionMNIST
from torchvision.datasets.mnist import read_image_file, read_label_file

CLASSES: list[str] = list(FashionMNIST.classes)  # "T-shirt/top", "Trouser", ...
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_source() -> Path:
    """The folder holding the four IDX files (``.gz`` or uncompressed).

    Raises:
        ValueError: No candidate folder holds all four files.
    """
    candidates = [Path(p) for p in [os.environ.get("MMCONTRAST_FASHION_MNIST")] if p]
    candidates.append(SYSTEM_DIR)
    for folder in candidates:
        if all(_find(folder, name) for pair in FILES.values() for name in pair):
            return folder
    names = ", ".join(f"{n}.gz" for pair in FILES.values() for n in pair)
    raise ValueError(
        f"Fashion-MNIST files not found in {', '.join(str(c) for c in candidates)}; "
        f"run `apt-get install dataset-fashion-mnist` or set MMCONTRAST_FASHION_MNIST "
        f"to a folder with {names}"
    )


def cache_dir() -> Path:
    """Where decompressed files go: ``$MMCONTRAST_CACHE/fashion-mnist`` or ``~/.cache/...``."""
    root = os.environ.get("MMCONTRAST_CACHE") or Path.home() / ".cache" / "mmcontrast"
    return Path(root) / "fashion-mnist"


def load_fashion_mnist(split: str) -> tuple[Tensor, Tensor]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` long of ``train`` (60k) or ``test`` (10k).

    Raises:
        ValueError: Unknown split, missing files, or files that are not matching IDX arrays.
    """
    if split not in FILES:
        raise ValueError(
            f"Fashion-MNIST has no split {split!r} (splits: {', '.join(FILES)}); "
            f"set data.train_split / data.eval_split"
        )
    source = find_source()
    image_file, label_file = (_readable(source, name) for name in FILES[split])
    try:
        images, labels = read_image_file(str(image_file)), read_label_file(str(label_file))
    except (AssertionError, RuntimeError, ValueError) as err:
        raise ValueError(f"{image_file} / {label_file} are not valid IDX files: {err}") from None
    if len(images) != len(labels):
        raise ValueError(
            f"{image_file} holds {len(images)} images but {label_file} {len(labels)} labels"
        )
    return images, labels.to(torch.long)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _readable(source: Path, name: str) -> Path:
    """An uncompressed copy of ``name``: the file itself, or one decompressed into the cache."""
    path = _find(source, name)
    assert path is not None  # find_source checked
    if path.suffix != ".gz":
        return path
    stat = path.stat()  # a replaced source file gets a fresh cache entry
    key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache_dir() / f"{name}-{key.hexdigest()[:12]}"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        try:
            with gzip.open(path, "rb") as compressed:
                shutil.copyfileobj(compressed, tmp)
        except (OSError, EOFError) as err:
            os.unlink(tmp.name)
            raise ValueError(f"cannot decompress {path}: {err}") from None
    os.replace(tmp.name, target)  # atomic: concurrent processes never see half a file
    return target
