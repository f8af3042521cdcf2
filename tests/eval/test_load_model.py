"""mmcontrast.load_model: any model the evaluation loads, embedding images (PIL, paths or
bytes) and texts as its own library does, normalised; bad input named."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import draw, save_clip

import mmcontrast


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return save_clip(tmp_path_factory.mktemp("clip"), tokenizer_dir)


def pooled(output: object) -> torch.Tensor:
    """transformers 5 returns a model output holding the features as ``pooler_output``."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]


def test_embeds_as_transformers_does(clip_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoProcessor, CLIPModel

    images = [draw("red", "circle"), draw("blue", "star"), draw("green", "square")]
    images[1].save(tmp_path / "star.png")
    buffer = io.BytesIO()
    images[2].save(buffer, format="PNG")
    model = mmcontrast.load_model(str(clip_dir), "cpu")
    got = model.embed_images([images[0], tmp_path / "star.png", buffer.getvalue()], batch_size=2)
    texts = ["red circle", "blue star", "green square"]
    got_texts = model.embed_texts(texts)

    reference = CLIPModel.from_pretrained(clip_dir).eval()
    processor = AutoProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        expected = F.normalize(pooled(reference.get_image_features(pixel_values=pixels)), dim=-1)
        tokens = processor(text=texts, return_tensors="pt", padding=True)
        expected_texts = F.normalize(pooled(reference.get_text_features(**tokens)), dim=-1)
    assert got.shape == (3, 16) and got_texts.shape == (3, 16)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_texts, expected_texts, rtol=1e-4, atol=1e-5)
    assert torch.cdist(got, got).triu(1).abs().sum() > 0  # the images differ: a real fixture
    assert not torch.allclose(got_texts[0], got_texts[1])


def test_bad_input_is_named(clip_dir: Path, tmp_path: Path) -> None:
    model = mmcontrast.load_model(str(clip_dir), "cpu")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="image 1 cannot be read"):
        model.embed_images([draw("red", "circle"), tmp_path / "broken.png"])
    for single in ("a.png", tmp_path / "broken.png", b"\x89PNG", draw("red", "circle")):
        with pytest.raises(TypeError, match="list of images; wrap a single image in a list"):
            model.embed_images(single)  # not one "missing image" per character
    with pytest.raises(TypeError, match="list of texts"):
        model.embed_texts("a red circle")
    with pytest.raises(ValueError, match="no texts"):
        model.embed_texts([])


def test_from_pretrained_points_a_transformers_folder_to_load_model(clip_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mmcontrast.load_model"):
        mmcontrast.from_pretrained(str(clip_dir))


def test_a_device_this_machine_lacks_is_named(
    clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=r"unknown device 'bogus': use cpu, cuda or cuda:N"):
        mmcontrast.load_model(str(clip_dir), "bogus")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1", torch.device("cuda:0")):
        with pytest.raises(ValueError, match="no CUDA GPU is visible: use --device cpu"):
            mmcontrast.load_model(str(clip_dir), device)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"no Apple GPU \(MPS\) is available: use --device cpu"):
        mmcontrast.load_model(str(clip_dir), "mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"there is no cuda:2: this machine shows 2 CUDA GPUs"):
        mmcontrast.load_model(str(clip_dir), "cuda:2")
