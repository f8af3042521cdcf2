"""model.text.stretch_positions (Long-CLIP) in a recipe: the text tower starts with a longer
position table, short captions embed as before, long ones are tokenized to the new length,
and the trained run rebuilds with the same table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import WORDS, method_from, save_clip, train_from

from mmcontrast.cli import main
from mmcontrast.methods.trained import load_trained
from mmcontrast.models.long_text import current_text_positions

STRETCH = "model.text.stretch_positions={length: 100, keep: 8}"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return save_clip(tmp_path_factory.mktemp("clip"), tokenizer_dir)  # 64 text positions


def text_embeddings(method: object, captions: list[str]) -> torch.Tensor:
    dual = method.trained_model()  # type: ignore[attr-defined]
    with torch.no_grad():
        return dual.get_text_features(**dual.tokenize(captions))


def test_init_from_with_a_stretched_text_table(clip_dir: Path) -> None:
    plain, stretched = method_from(clip_dir), method_from(clip_dir, STRETCH)
    assert current_text_positions(plain.model.text.model) == 64
    assert current_text_positions(stretched.model.text.model) == 100
    short = ["red circle", "blue star square"]  # fewer tokens than the kept 8
    torch.testing.assert_close(text_embeddings(stretched, short), text_embeddings(plain, short))

    long = [" ".join(WORDS * 10), " ".join(reversed(WORDS * 10))]
    tokens = stretched.model.text.tokenizer()(long)
    assert tokens["input_ids"].shape[1] == 100  # tokenized to the new length, not 64
    assert plain.model.text.tokenizer()(long)["input_ids"].shape[1] == 64
    out = text_embeddings(stretched, long)
    assert not torch.allclose(out[0], out[1])


def test_a_trained_run_rebuilds_its_stretched_table(
    clip_dir: Path, shapes_dir: Path, tmp_path: Path
) -> None:
    trained = train_from(clip_dir, shapes_dir, tmp_path / "run", STRETCH, steps=2)
    rebuilt = load_trained(tmp_path / "run").eval()
    assert current_text_positions(rebuilt.model.text.model) == 100  # type: ignore[attr-defined]
    captions = [" ".join(WORDS * 10), "red circle"]
    torch.testing.assert_close(text_embeddings(rebuilt, captions), text_embeddings(trained, captions))

    # exported as a plain transformers CLIPModel that holds the longer table
    from transformers import AutoTokenizer, CLIPModel

    assert main(["export", str(tmp_path / "run"), "--output", str(tmp_path / "export")]) == 0
    exported = CLIPModel.from_pretrained(tmp_path / "export").eval()
    assert exported.config.text_config.max_position_embeddings == 100
    tokens = AutoTokenizer.from_pretrained(tmp_path / "export")(
        captions, padding=True, truncation=True, max_length=100, return_tensors="pt"
    )
    assert tokens["input_ids"].shape[1] > 64  # the long caption runs past the old table
    with torch.no_grad():
        plain = exported.get_text_features(**tokens)
    plain = plain if isinstance(plain, torch.Tensor) else plain.pooler_output
    ours = text_embeddings(trained, captions)
    torch.testing.assert_close(
        torch.nn.functional.normalize(plain, dim=-1),
        torch.nn.functional.normalize(ours, dim=-1),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("model.vision.stretch_positions={length: 100}", "only a text tower"),
        ("model.text.stretch_positions={length: 100, size: 3}", "unknown keys"),
        ("model.text.stretch_positions={length: many}", "non-negative integer"),
        ("model.text.stretch_positions={length: 32}", "stretch_positions"),
    ],
)
def test_bad_settings_are_named(clip_dir: Path, setting: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        method_from(clip_dir, setting)


def test_an_open_clip_text_tower_is_stretched_and_tokenizes_longer(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from helpers import save_open_clip

    root = save_open_clip(tmp_path_factory.mktemp("long_open_clip"))  # 16 text positions
    spec = f"open_clip:{root / 'tiny-oc.json'}:{root / 'tiny-oc.safetensors'}"
    plain = method_from(spec)
    stretched = method_from(spec, "model.text.stretch_positions={length: 40, keep: 6}")
    assert current_text_positions(stretched.model.text.model) == 40
    long = ["a photo of " + "a red circle and a blue star " * 4, "a green square"]
    assert stretched.trained_model().tokenize(long)["input_ids"].shape[1] == 40
    assert plain.trained_model().tokenize(long)["input_ids"].shape[1] == 16
    out = text_embeddings(stretched, long)
    assert not torch.allclose(out[0], out[1])
    short = ["a cat"]  # end token within the kept 6 positions: as before
    torch.testing.assert_close(
        text_embeddings(stretched, short), text_embeddings(plain, short), rtol=1e-5, atol=1e-6
    )
