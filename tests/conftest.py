"""Shared fixtures: tiny random towers, a tiny tokenizer and a tiny imagefolder (no network)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = "red green blue yellow circle square triangle star small big dark light shape of a the on".split()
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 30),
    "blue": (30, 30, 220),
    "yellow": (230, 220, 30),
}
SHAPES = ["circle", "square", "triangle", "star"]
TINY_OPEN_CLIP = {  # an open_clip model config small enough for CPU tests
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny WordPiece (BERT) tokenizer saved in transformers format."""
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    return folder


def draw(colour: str, shape: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    from PIL import ImageDraw

    d = ImageDraw.Draw(image)
    box = (6, 6, size - 6, size - 6)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(size // 2, 6), (6, size - 6), (size - 6, size - 6)], fill=fill)
    else:
        d.regular_polygon((size // 2, size // 2, size // 2 - 6), 5, fill=fill)
    return image


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


TINY_VIT = {  # random ViT tower for CPU tests (32 px, 2 layers)
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
TINY_BERT = {  # random BERT tower for CPU tests (the tokenizer_dir vocabulary fits in 32)
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 32,
    "max_position_embeddings": 64,
}


def flow(mapping: dict[str, int]) -> str:
    """A dict as a YAML flow mapping, for ``--set key={...}`` overrides."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def tiny_overrides(data: Path, tokenizer: Path, output: Path) -> list[str]:
    """``--set`` overrides for a run on random tiny ViT + BERT towers."""
    vit = flow(TINY_VIT)
    bert = flow(TINY_BERT)
    return [
        "model.vision.source=hf",
        "model.vision.name=vit",
        "model.vision.pretrained=false",
        f"model.vision.config_overrides={vit}",
        "model.text.source=hf",
        "model.text.name=bert",
        "model.text.pretrained=false",
        f"model.text.tokenizer={tokenizer}",
        f"model.text.config_overrides={bert}",
        "model.embed_dim=16",
        f"data.path={data}",
        f"train.output_dir={output}",
        "train.batch_size=8",
        "train.progress_bar=false",
        "train.trackers=[]",
        "train.log_every=1",
        "eval.batch_size=8",
    ]


@pytest.fixture()
def tiny_run(shapes_dir: Path, tokenizer_dir: Path, tmp_path: Path) -> list[str]:
    return tiny_overrides(shapes_dir, tokenizer_dir, tmp_path / "run")


@pytest.fixture(autouse=True)
def fresh_accelerator_state() -> None:
    """Each test may pick its own mixed precision: forget accelerate's process-wide state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def train_stopped_and_resumed(
    recipe: Path | None,
    overrides: list[str],
    root: Path,
    stop_at: int = 5,
    when_stopped: Callable[[dict], None] | None = None,
) -> tuple[dict, dict, dict]:
    """Train ``recipe`` straight through into ``root/full``, and into ``root/split`` stopped
    at step ``stop_at`` (``when_stopped`` sees that summary) then resumed; returns the three
    summaries (full, first, second)."""
    from mmcontrast.config import load_recipe
    from mmcontrast.pipeline import train

    full = train(load_recipe(recipe, [*overrides, f"train.output_dir={root / 'full'}"]))
    split = [*overrides, f"train.output_dir={root / 'split'}"]
    first = train(load_recipe(recipe, [*split, f"train.stop_at_step={stop_at}"]))
    if when_stopped is not None:
        when_stopped(first)
    second = train(load_recipe(recipe, split), resume="latest")
    return full, first, second
