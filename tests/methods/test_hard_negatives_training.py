"""NegCLIP's hard negatives in image-text training: drawn from a column and from caption
swaps, seeded, batched with a mask, embedded by the text tower and scored by ``negclip``;
through gradient caching the same training; the ``swaps`` task evaluated; bad settings
and columns are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    COLOURS,
    QUICKSTART,
    SHAPES,
    assert_same_weights,
    clip_run,
    draw,
    tiny_overrides,
    train_in_one_process,
)

from mmcontrast.config import DataConfig, load_recipe
from mmcontrast.data.caption_swaps import swaps
from mmcontrast.data.hard_negatives import HardNegatives, check_negatives_column
from mmcontrast.data.image_text import ImageTextDataset, seeded
from mmcontrast.data.imagefolder import write_imagefolder
from mmcontrast.data.pairs import load_pairs
from mmcontrast.data.transforms import ImagePreprocess, image_transform
from mmcontrast.losses import ClipLoss, NegClipLoss
from mmcontrast.methods import build_method
from mmcontrast.methods.image_text import ImageTextContrastive
from mmcontrast.pipeline import train


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pairs of shapes whose captions have swaps ("a red circle on a blue square"), a
    ``negatives`` column (a list, a string or nothing) and a ``count`` column (numbers)."""
    root = tmp_path_factory.mktemp("scenes")
    colours, rows = list(COLOURS), []
    for i, (c, s) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        other, shape = colours[(i + 1) % 4], SHAPES[(i + 2) % 4]
        negatives = [f"a {other} {s} on a {c} {shape}", f"a {c} {shape} on a {other} {s}"]
        rows.append(
            {
                "image": draw(c, s),
                "text": f"a {c} {s} on a {other} {shape}",
                "negatives": (negatives, negatives[0], None)[i % 3],
                "count": i,
            }
        )
    write_imagefolder(rows, root, "train")
    write_imagefolder(rows[:8], root, "test")
    return root


def test_column_negatives_first_then_swaps_distinct_and_seeded() -> None:
    hard = HardNegatives(3, column="negatives", swap_kinds=("noun", "attribute", "relation"))
    caption = "a red circle on a blue square"
    with seeded(0, 0, 1):
        drawn = hard.draw(caption, ["a red square on a blue circle", caption, "x"])
    with seeded(0, 0, 1):
        again = hard.draw(caption, ["a red square on a blue circle", caption, "x"])
    assert drawn == again and len(drawn) == len(set(drawn)) == 3
    assert set(drawn[:2]) == {"a red square on a blue circle", "x"}  # the column first,
    everything = {s for kind in swaps(caption).values() for s in kind}
    assert drawn[2] in everything  # then a swap; the caption itself is never a negative
    only_swaps = HardNegatives(10, swap_kinds=("attribute",))
    with seeded(0, 0, 2):
        assert only_swaps.draw(caption, []) == swaps(caption)["attribute"]  # fewer than 10
    with pytest.raises(ValueError, match="need data.hard_negatives >= 1 and a source"):
        HardNegatives(1, column=None, swap_kinds=())
    with pytest.raises(ValueError, match="swap kinds"):
        HardNegatives(1, swap_kinds=("verbs",))


def test_batches_hold_negatives_with_a_mask(scenes_dir: Path, tokenizer_dir: Path) -> None:
    cfg = DataConfig(path=str(scenes_dir))
    table = load_pairs(cfg, "train")
    hard = HardNegatives(2, column="negatives", swap_kinds=())
    dataset = ImageTextDataset(
        table, image_transform(ImagePreprocess(size=16)), hard_negatives=hard
    )
    samples = [dataset[i] for i in range(3)]
    assert [len(s["negatives"]) for s in samples] == [2, 1, 0]  # list, string, empty cell
    assert samples[1]["negatives"] == [table.dataset[1]["negatives"]]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    from mmcontrast.data.image_text import ImageTextCollator

    collate = ImageTextCollator(lambda c: dict(tok(c, padding=True, return_tensors="pt")))
    batch = collate(samples)
    assert batch["negative_mask"].tolist() == [[True, True], [True, False], [False, False]]
    ids = batch["negative_input_ids"]
    assert ids.shape[:2] == (3, 2) and batch["negative_attention_mask"].shape == ids.shape
    assert not torch.equal(ids[0, 0], ids[0, 1])  # two different captions


def test_the_column_must_hold_captions(scenes_dir: Path) -> None:
    table = load_pairs(DataConfig(path=str(scenes_dir)), "train")
    check_negatives_column(table, "negatives")
    with pytest.raises(ValueError, match=r"'count' of .* holds .*int64.*negative caption"):
        check_negatives_column(table, "count")
    with pytest.raises(ValueError, match=r"'negativs' not found .*columns: "):
        check_negatives_column(table, "negativs")


def _run(scenes_dir: Path, tokenizer_dir: Path, root: Path, *extra: str) -> list[str]:
    return [
        *tiny_overrides(scenes_dir, tokenizer_dir, root),
        "loss.name=negclip",
        "data.hard_negatives=2",
        "data.hard_negatives_column=negatives",
        *extra,
    ]


def test_the_loss_sees_each_image_with_its_negatives(
    scenes_dir: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    method = build_method(load_recipe(None, _run(scenes_dir, tokenizer_dir, tmp_path)))
    assert isinstance(method, ImageTextContrastive)
    assert method.eval_tasks() == ("retrieval", "swaps")
    dataset, collate = method.train_data()
    batch = collate([dataset[i] for i in range(8)])
    method.eval()
    with torch.no_grad():
        out, emb = method(batch), method(batch, embed_only=True)
        mask = batch["negative_mask"]
        assert mask.any() and not mask.all()
        i, m = mask.nonzero()[0].tolist()
        tokens = {
            k[len("negative_") :]: v[i, m : m + 1]
            for k, v in batch.items()
            if k.startswith("negative_") and k != "negative_mask"
        }
        expected_feature = method.model.get_text_features(**tokens)[0]
    torch.testing.assert_close(emb["negative_features"][i, m], expected_feature, atol=1e-5, rtol=0)
    assert bool((emb["negative_features"][~mask] == 0).all())
    args = (emb["image_features"], emb["text_features"], emb["logit_scale"])
    expected = NegClipLoss()(*args, emb["negative_features"], mask)
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(out["loss"]) > float(ClipLoss()(*args)) + 1e-4


def test_grad_cache_trains_the_same_with_negatives(
    scenes_dir: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    negatives = (
        "loss.name=negclip",
        "data.hard_negatives=2",
        "data.hard_negatives_column=negatives",
        "data.hard_negative_swaps=[relation]",  # fills the rows the column leaves short
    )
    run = clip_run(scenes_dir, tokenizer_dir, 8, negatives)
    losses, weights = train_in_one_process(QUICKSTART, run, tmp_path / "plain")
    cached = [*run, "train.grad_cache_micro_batch=2"]
    got_losses, got_weights = train_in_one_process(QUICKSTART, cached, tmp_path / "cached")
    assert len(set(losses)) == len(losses) == 3
    assert got_losses == pytest.approx(losses, abs=1e-6, rel=1e-5)
    assert_same_weights(got_weights, weights)


def test_training_evaluates_swaps(scenes_dir: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    summary = train(
        load_recipe(None, [*_run(scenes_dir, tokenizer_dir, tmp_path / "run"), "train.max_steps=2"])
    )
    metrics = summary["eval"]
    assert "swap_acc" in metrics and 0.0 <= metrics["swap_acc"] <= 1.0
    assert "image_retrieval_recall@1" in metrics


def test_bad_settings_are_clear(scenes_dir: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    base = tiny_overrides(scenes_dir, tokenizer_dir, tmp_path / "run")

    def build(*extra: str) -> object:
        return build_method(load_recipe(None, [*base, *extra]))

    with pytest.raises(ValueError, match="loss 'clip' does not use them: set loss.name=negclip"):
        build("data.hard_negatives=1")
    with pytest.raises(
        ValueError, match="loss 'negclip' trains with hard negatives: set data.hard"
    ):
        build("loss.name=negclip")
    with pytest.raises(ValueError, match="hard_negatives_column='negatives' is set but .*=0"):
        build("data.hard_negatives_column=negatives")
    method = build("loss.name=negclip", "data.hard_negatives=1", "data.hard_negatives_column=count")
    assert isinstance(method, ImageTextContrastive)
    with pytest.raises(ValueError, match="holds .*int64"):
        method.train_data()
