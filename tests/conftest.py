"""Shared fixtures: tiny random towers, a tiny tokenizer and a tiny imagefolder (no network).

Everything else tests share (constants, drawn images, run overrides) is in ``helpers.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import COLOURS, SHAPES, WORDS, draw, tiny_overrides  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny WordPiece (BERT) tokenizer saved in transformers format."""
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    # the vocabulary as a mapping: transformers 5 ignores a vocab_file given to the fast class
    BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imagefolder of coloured shapes: train (32 pairs) and test (16, two captions each)."""
    from mmcontrast.data.imagefolder import write_imagefolder

    root = tmp_path_factory.mktemp("shapes")
    train = [
        {"image": draw(c, s), "text": f"a {c} {s}"}
        for c in COLOURS
        for s in SHAPES
        for _ in range(2)
    ]
    test = [
        {"image": draw(c, s), "text": [f"a {c} {s}", f"the {s} {c}"]}
        for c in COLOURS
        for s in SHAPES
    ]
    write_imagefolder(train, root, "train")
    write_imagefolder(test, root, "test")
    return root


@pytest.fixture(scope="session")
def labelled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imagefolder of coloured shapes labelled by shape: train 32 images, test 16."""
    from mmcontrast.data.imagefolder import write_imagefolder

    root = tmp_path_factory.mktemp("labelled")
    rows = [{"image": draw(c, s), "label": s} for c in COLOURS for s in SHAPES]
    write_imagefolder(rows * 2, root, "train")
    write_imagefolder(rows, root, "test")
    return root


@pytest.fixture(scope="session")
def labelled_16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imagefolder of coloured shapes labelled by shape: train only, each shape and colour
    once (16 images)."""
    from mmcontrast.data.imagefolder import write_imagefolder

    root = tmp_path_factory.mktemp("labelled16")
    write_imagefolder(
        [{"image": draw(c, s), "label": s} for c in COLOURS for s in SHAPES], root, "train"
    )
    return root


@pytest.fixture()
def tiny_run(shapes_dir: Path, tokenizer_dir: Path, tmp_path: Path) -> list[str]:
    return tiny_overrides(shapes_dir, tokenizer_dir, tmp_path / "run")


@pytest.fixture(autouse=True)
def fresh_accelerator_state() -> None:
    """Each test may pick its own mixed precision: forget accelerate's process-wide state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
