"""``model.init_from`` on an mmcontrast run, and on its native export: a tiny run (random ViT +
BERT towers, the sigmoid loss, LoRA on the text tower) trained for two steps is, at step 0
of the next run, the run's own model (same embeddings, tokens, preprocessing, logit scale
and bias) with the adapters merged; its loss is the default; the new recipe's training
options apply; a vision recipe's run is refused; a run started from a run reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TEXTS, embeddings, flow, method_from, tiny_overrides, train_from

from mmcontrast.config import load_recipe, save_config
from mmcontrast.hub.export import export
from mmcontrast.methods import load_trained
from mmcontrast.models.tower import resolved_preprocess
from mmcontrast.pipeline import train


@pytest.fixture(scope="module")
def source_run(
    tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path, tokenizer_dir: Path
) -> Path:
    run = tmp_path_factory.mktemp("init_from_run") / "run"
    overrides = [
        *tiny_overrides(shapes_dir, tokenizer_dir, run),
        "loss.name=siglip",
        f"model.text.lora={flow({'rank': 2})}",
        "model.vision.image_mean=[0.1,0.2,0.3]",  # the run's own, kept by its successors
        "train.max_steps=2",
        "train.lr=1e-2",
        "eval.at_end=false",
    ]
    train(load_recipe(None, overrides))
    return run


def test_step_zero_is_the_run(source_run: Path) -> None:
    source = load_trained(source_run)
    method = method_from(source_run)
    assert method.cfg.loss.name == "siglip"  # the run's loss
    dual, theirs = method.model, source.trained_model()
    assert not any("lora_" in key for key in method.state_dict())  # merged into the weights
    assert any("lora_" in key for key in source.state_dict())
    image, text = embeddings(method)
    their_image, their_text = embeddings(source)
    torch.testing.assert_close(image, their_image, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(text, their_text, atol=1e-6, rtol=1e-5)
    assert torch.equal(dual.logit_scale, theirs.logit_scale)
    assert dual.logit_bias is not None and theirs.logit_bias is not None
    assert dual.logit_bias.item() == theirs.logit_bias.item()
    assert resolved_preprocess(dual.vision) == resolved_preprocess(theirs.vision)
    assert resolved_preprocess(dual.vision).mean == [0.1, 0.2, 0.3]
    assert torch.equal(dual.tokenize(TEXTS)["input_ids"], theirs.tokenize(TEXTS)["input_ids"])
    assert all(p.requires_grad for p in dual.parameters())  # LoRA's frozen base: trainable again


def test_training_options_apply(source_run: Path) -> None:
    lora = flow({"rank": 2})
    method = method_from(source_run, "model.text.lock=true", f"model.vision.lora={lora}")
    assert not any(p.requires_grad for p in method.model.text.parameters())
    trainable = {n for n, p in method.model.vision.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    image, _ = embeddings(method)  # fresh adapters start at zero: still the run's model
    torch.testing.assert_close(image, embeddings(load_trained(source_run))[0], atol=1e-6, rtol=0)
    assert method.cfg.loss.name == "siglip"
    assert method_from(source_run, "loss.name=clip").cfg.loss.name == "clip"
    with pytest.raises(ValueError, match="model.text.max_length"):
        method_from(source_run, "model.text.max_length=8")


def test_a_native_export_is_a_source(source_run: Path, tmp_path: Path) -> None:
    result = export(source_run, tmp_path / "export")  # BERT mean pooling: mmcontrast's format
    assert result.kind == "mmcontrast"
    image, text = embeddings(method_from(tmp_path / "export"))
    their_image, their_text = embeddings(load_trained(source_run))
    torch.testing.assert_close(image, their_image, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(text, their_text, atol=1e-6, rtol=1e-5)


def test_vision_runs_and_missing_weights_are_refused(tmp_path: Path) -> None:
    vision = tmp_path / "simclr"
    vision.mkdir()
    save_config(load_recipe(None, ["method=simclr", "loss.name=ntxent"]), vision / "config.yaml")
    with pytest.raises(ValueError, match="not an image-text one.*mmcontrast run"):
        method_from(vision)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    save_config(load_recipe(None, ["loss.name=clip"]), unfinished / "config.yaml")
    with pytest.raises(ValueError, match="holds no model.safetensors.*checkpoints"):
        method_from(unfinished)


def test_a_run_from_a_run_reloads(source_run: Path, shapes_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "second"
    train_from(source_run, shapes_dir, run, steps=1, lr=1e-2)
    second = load_trained(run)
    image, _ = embeddings(second)
    assert not torch.allclose(image, embeddings(load_trained(source_run))[0], atol=1e-4)
    assert second.cfg.loss.name == "siglip"
    # reloading gives the saved weights: the same model once more
    torch.testing.assert_close(embeddings(load_trained(run))[0], image, atol=0, rtol=0)
