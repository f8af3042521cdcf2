"""Distillation (``method: distill``): a tiny random CLIPModel teaches tiny ViT + BERT
students. The teacher's embeddings are computed once by the training pipeline, cached,
checked against the split and reused; batches carry the teacher's embeddings of exactly
their images and captions; the loss is ``clip_kd`` on them; bad settings and caches are
clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import save_clip, tiny_overrides

from mmcontrast import load_model
from mmcontrast.config import load_recipe
from mmcontrast.data.pairs import load_pairs
from mmcontrast.data.teacher_cache import (
    TeacherEmbeddings,
    load_teacher_embeddings,
    save_teacher_embeddings,
    split_fingerprint,
)
from mmcontrast.eval import teacher as teacher_module
from mmcontrast.losses import ClipDistillLoss, ClipLoss
from mmcontrast.methods import build_method
from mmcontrast.methods.distill import Distill
from mmcontrast.pipeline import train


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return save_clip(tmp_path_factory.mktemp("teacher") / "clip", tokenizer_dir)


def _overrides(
    shapes_dir: Path, tokenizer_dir: Path, teacher_dir: Path, root: Path, *extra: str
) -> list[str]:
    return [
        *tiny_overrides(shapes_dir, tokenizer_dir, root / "run"),
        "method=distill",
        f"method_args={{teacher: {teacher_dir}, teacher_cache: {root / 'cache'}}}",
        "train.max_steps=2",
        "eval.at_end=false",
        *extra,
    ]


def test_the_teacher_is_cached_once_and_batches_carry_its_embeddings(
    shapes_dir: Path, tokenizer_dir: Path, teacher_dir: Path, tmp_path: Path
) -> None:
    overrides = _overrides(shapes_dir, tokenizer_dir, teacher_dir, tmp_path)
    compute = mock.patch.object(
        teacher_module,
        "compute_teacher_embeddings",
        wraps=teacher_module.compute_teacher_embeddings,
    )
    with compute as computed:
        summary = train(load_recipe(None, overrides))
    assert computed.call_count == 1 and summary["step"] == 2
    cache = load_teacher_embeddings(tmp_path / "cache")
    assert cache.teacher == str(teacher_dir) and bool(cache.readable.all())

    # the cache holds the teacher's own embeddings, of every image and distinct caption
    teacher = load_model(str(teacher_dir), "cpu")
    table = load_pairs(load_recipe(None, overrides).data, "train")
    images = teacher.embed_images([table.image(i) for i in range(4)])
    torch.testing.assert_close(cache.images[:4], images, atol=1e-5, rtol=0)
    assert set(cache.captions) == {c for i in range(len(table)) for c in table.captions(i)}
    texts = teacher.embed_texts(cache.captions[:3])
    torch.testing.assert_close(cache.texts[:3], texts, atol=1e-5, rtol=0)
    assert cache.logit_scale == pytest.approx(
        float(teacher.model.logit_scale.detach().exp()), rel=1e-6
    )

    # a second run on the same split reuses it
    again = [*overrides, f"train.output_dir={tmp_path / 'again'}"]
    with compute as computed:
        train(load_recipe(None, again))
    assert computed.call_count == 0

    method = build_method(load_recipe(None, overrides))
    assert isinstance(method, Distill)
    dataset, collate = method.train_data()
    rows = [3, 0, 7, 12]
    batch = collate([dataset[i] for i in rows])
    torch.testing.assert_close(batch["teacher_image_features"], cache.images[rows])
    captions = [table.captions(i)[0] for i in rows]  # one caption each in the shapes data
    torch.testing.assert_close(
        batch["teacher_text_features"], cache.texts[cache.text_rows(captions)]
    )
    assert not torch.equal(batch["teacher_image_features"][0], batch["teacher_image_features"][1])

    method.eval()
    with torch.no_grad():
        out = method(batch)
        emb = method(batch, embed_only=True)
    expected = ClipDistillLoss()(
        emb["image_features"],
        emb["text_features"],
        emb["logit_scale"],
        batch["teacher_image_features"],
        batch["teacher_text_features"],
        cache.logit_scale,
    )
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    plain = ClipLoss()(emb["image_features"], emb["text_features"], emb["logit_scale"])
    assert abs(float(out["loss"]) - float(plain)) > 1e-4  # the teacher changed the loss


def test_distillation_with_grad_cache_and_the_feature_term(
    shapes_dir: Path, tokenizer_dir: Path, teacher_dir: Path, tmp_path: Path
) -> None:
    """The teacher's embeddings go through micro-batches; the feature term on."""
    overrides = _overrides(
        shapes_dir,
        tokenizer_dir,
        teacher_dir,
        tmp_path,
        "loss.kwargs={feature_weight: 1.0}",
        "train.grad_cache_micro_batch=4",
    )
    summary = train(load_recipe(None, overrides))
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_bad_settings_and_caches_are_clear(
    shapes_dir: Path, tokenizer_dir: Path, teacher_dir: Path, tmp_path: Path
) -> None:
    base = tiny_overrides(shapes_dir, tokenizer_dir, tmp_path / "run")

    def build(*extra: str) -> object:
        return build_method(load_recipe(None, [*base, *extra]))

    with pytest.raises(ValueError, match="needs method_args.teacher"):
        build("method=distill")
    with pytest.raises(ValueError, match=r"\['teachr'\] are not distillation's"):
        build("method=distill", f"method_args={{teacher: {teacher_dir}, teachr: x}}")
    with pytest.raises(ValueError, match="loss 'clip' does not use the teacher"):
        build("method=distill", f"method_args={{teacher: {teacher_dir}}}", "loss.name=clip")
    with pytest.raises(ValueError, match="distils from a teacher: train it with method: distill"):
        build("loss.name=clip_kd")
    with pytest.raises(ValueError, match="data.streaming=false"):
        build("method=distill", f"method_args={{teacher: {teacher_dir}}}", "data.streaming=true")

    overrides = _overrides(shapes_dir, tokenizer_dir, teacher_dir, tmp_path)
    method = build_method(load_recipe(None, overrides))
    with pytest.raises(ValueError, match=r"no embeddings of teacher .* `mmcontrast train`"):
        method.train_data()  # the loop alone does not compute them

    train(load_recipe(None, overrides))  # computes the cache
    small = build_method(
        load_recipe(None, [*overrides, "model.embed_dim=8", "loss.kwargs={feature_weight: 1.0}"])
    )
    with pytest.raises(ValueError, match=r"16 dimensions and the student in 8.*model.embed_dim=16"):
        small.train_data()
    fewer = build_method(load_recipe(None, [*overrides, "data.max_train_samples=10"]))
    with pytest.raises(ValueError, match="was made for other data"):
        fewer.train_data()
    manifest = tmp_path / "cache" / "teacher.json"
    manifest.write_text(manifest.read_text()[:-20])
    with pytest.raises(ValueError, match="is damaged"):
        method.train_data()


def test_the_cache_is_never_overwritten_and_names_unknown_captions(tmp_path: Path) -> None:
    embeddings = TeacherEmbeddings(
        "t", torch.randn(3, 4), torch.tensor([True, False, True]), ["a", "b"], torch.randn(2, 4),
        50.0, "f",
    )  # fmt: skip
    save_teacher_embeddings(tmp_path / "c", embeddings)
    loaded = load_teacher_embeddings(tmp_path / "c", "f")
    assert torch.equal(loaded.images, embeddings.images) and loaded.captions == ["a", "b"]
    assert loaded.readable.tolist() == [True, False, True] and loaded.logit_scale == 50.0
    assert loaded.text_rows(["b", "a", "b"]).tolist() == [1, 0, 1]
    with pytest.raises(KeyError, match="caption 'c' is not in the teacher's cache"):
        loaded.text_rows(["c"])
    with pytest.raises(FileExistsError):
        save_teacher_embeddings(tmp_path / "c", embeddings)
    assert json.loads((tmp_path / "c" / "teacher.json").read_text())["dim"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no staging folder left


def test_the_fingerprint_follows_rows_and_captions(shapes_dir: Path) -> None:
    from mmcontrast.config import DataConfig

    table = load_pairs(DataConfig(path=str(shapes_dir)), "train")
    fewer = load_pairs(DataConfig(path=str(shapes_dir)), "train", max_samples=20)
    other = load_pairs(DataConfig(path=str(shapes_dir)), "test")
    prints = {split_fingerprint(t) for t in (table, fewer, other)}
    assert len(prints) == 3 and split_fingerprint(table) in prints
