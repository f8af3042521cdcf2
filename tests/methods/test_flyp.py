"""FLYP: a tiny random CLIPModel (``model.init_from``) fine-tuned on labelled shapes with
class prompts raises its zero-shot accuracy; captions, labels and masking are what the
method says; bad data and settings are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import COLOURS, SHAPES, draw, save_clip, save_siglip

from mmcontrast.cli import main
from mmcontrast.config import load_recipe
from mmcontrast.data.class_prompts import ClassPromptDataset
from mmcontrast.data.imagefolder import write_imagefolder
from mmcontrast.data.labelled import load_labelled
from mmcontrast.losses import ClipLoss, UniClLoss
from mmcontrast.methods import build_method
from mmcontrast.methods.flyp import Flyp
from mmcontrast.pipeline import train

TEMPLATES = ["a {c} shape", "the {c} shape"]


@pytest.fixture(scope="module")
def colours_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes labelled by colour: train 4 x 4 x 3 images, test 4 x 4."""
    root = tmp_path_factory.mktemp("colours")
    train_rows = [
        {"image": draw(c, s, size=32 + 2 * k), "label": c, "text": f"a {c} {s}"}
        for c in COLOURS
        for s in SHAPES
        for k in range(3)
    ]
    test_rows = [
        {"image": draw(c, s), "label": c, "text": f"a {c} {s}"} for c in COLOURS for s in SHAPES
    ]
    write_imagefolder(train_rows, root, "train")
    write_imagefolder(test_rows, root, "test")
    return root


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return save_clip(tmp_path_factory.mktemp("flyp_clip") / "clip", tokenizer_dir)


def flyp_overrides(clip_dir: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "method=flyp",
        f"model.init_from={clip_dir}",
        f"method_args={{templates: {json.dumps(TEMPLATES)}}}",
        f"data.path={data}",
        "data.label_column=label",
        f"train.output_dir={output}",
        "train.batch_size=16",
        "train.progress_bar=false",
        "train.trackers=[]",
        "train.log_every=1",
        "eval.batch_size=16",
        "eval.views_png=false",
        *extra,
    ]


def test_class_prompts_are_seeded_and_labelled(
    colours_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    method = build_method(load_recipe(None, flyp_overrides(clip_dir, colours_dir, tmp_path)))
    assert isinstance(method, Flyp)
    classes = method.zero_shot_classes()
    assert classes.labels == sorted(COLOURS) and classes.templates == TEMPLATES
    dataset, collate = method.train_data()
    assert isinstance(dataset, ClassPromptDataset)
    rows = range(0, 48, 4)  # every colour
    first = [dataset[i]["caption"] for i in rows]
    assert first == [dataset[i]["caption"] for i in rows]  # same epoch, same draws
    assert len(set(first)) > 2  # templates and classes vary
    table = load_labelled(method.cfg.data, "train", None, classes.labels)
    for i in rows:
        sample = dataset[i]
        colour = classes.labels[table.label(i)]
        assert sample["label"] == table.label(i)
        assert sample["caption"] in [t.format(c=colour) for t in TEMPLATES]
    batch = collate([dataset[i] for i in range(6)])
    assert batch["labels"].tolist() == [table.label(i) for i in range(6)]
    assert (
        batch["input_ids"].shape[0] == 6 and len(set(map(tuple, batch["input_ids"].tolist()))) > 1
    )
    out = method(batch)
    assert torch.isfinite(out["loss"])


def test_same_class_captions_are_masked(colours_dir: Path, clip_dir: Path, tmp_path: Path) -> None:
    """The method's loss equals the CLIP loss with same-class entries removed."""
    method = build_method(load_recipe(None, flyp_overrides(clip_dir, colours_dir, tmp_path)))
    dataset, collate = method.train_data()
    batch = collate([dataset[i] for i in range(0, 24, 2)])
    embeddings = method.embed_for_loss(batch)
    image, text = embeddings["image_features"], embeddings["text_features"]
    logits = embeddings["logit_scale"] * image @ text.T
    same = batch["labels"][:, None] == batch["labels"][None, :]
    eye = torch.eye(len(same), dtype=torch.bool)
    masked = logits.masked_fill(same & ~eye, float("-inf"))
    targets = torch.arange(len(same))
    expected = (
        torch.nn.functional.cross_entropy(masked, targets)
        + torch.nn.functional.cross_entropy(masked.T, targets)
    ) / 2
    assert same.sum() > len(same)  # the batch does hold one class several times
    got = method.loss_from_embeddings(embeddings)["loss"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_with_unicl_same_class_pairs_are_positives(
    colours_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    """``loss.name=unicl``: the class labels are the loss's ids."""
    overrides = [*flyp_overrides(clip_dir, colours_dir, tmp_path), "loss.name=unicl"]
    method = build_method(load_recipe(None, overrides))
    dataset, collate = method.train_data()
    batch = collate([dataset[i] for i in range(0, 24, 2)])
    embeddings = method.embed_for_loss(batch)
    args = (embeddings["image_features"], embeddings["text_features"], embeddings["logit_scale"])
    got = method.loss_from_embeddings(embeddings)["loss"]
    assert got.item() == pytest.approx(UniClLoss()(*args, batch["labels"]).item(), rel=1e-5)
    masked = ClipLoss()(*args, labels=batch["labels"])
    assert abs(got.item() - masked.item()) > 1e-3  # not the masked loss


@pytest.mark.slow
def test_flyp_raises_zero_shot_accuracy(colours_dir: Path, clip_dir: Path, tmp_path: Path) -> None:
    summary = train(
        load_recipe(
            None,
            flyp_overrides(
                clip_dir, colours_dir, tmp_path / "run", "train.epochs=8", "train.lr=2e-3",
                "train.warmup_steps=0", "train.weight_decay=0.0",
                "eval.tasks=[{task: retrieval, data: " + str(colours_dir) + ", name: pairs}]",
            ),
        )
    )  # fmt: skip
    history = [json.loads(line) for line in (tmp_path / "run" / "eval_history.jsonl").open()]
    before, after = history[0], history[-1]
    assert before["step"] == 0 and after["step"] == summary["step"] > 0  # before and after
    assert after["acc1"] >= before["acc1"] + 0.25, (before, after)
    assert after["acc1"] >= 0.75
    written = json.loads((tmp_path / "run" / "eval" / "zeroshot.json").read_text())
    assert written["templates"] == TEMPLATES and written["class_names"] == sorted(COLOURS)

    # mmcontrast eval --model RUN: the run's own evaluation (its classes, prompts, eval.tasks)
    again = tmp_path / "again"
    argv = ["eval", "--model", str(tmp_path / "run"), "--output", str(again), "--no-pictures"]
    assert main(argv) == 0
    scored = json.loads((again / "zeroshot.json").read_text())
    assert scored["templates"] == TEMPLATES
    assert scored["metrics"].keys() == written["metrics"].keys()
    for key, value in written["metrics"].items():  # acc5 of 4 classes: null in both
        assert scored["metrics"][key] == (value and pytest.approx(value, rel=1e-5, abs=1e-6))
    extra = json.loads((again / "pairs" / "retrieval.json").read_text())["metrics"]
    assert extra == pytest.approx(
        {k[len("pairs/") :]: v for k, v in after.items() if k.startswith("pairs/")},
        rel=1e-5,
        abs=1e-6,
    )


def test_bad_settings_are_clear(
    colours_dir: Path, clip_dir: Path, tmp_path: Path, shapes_dir: Path, tokenizer_dir: Path
) -> None:
    with pytest.raises(ValueError, match="not FLYP's"):
        build_method(
            load_recipe(
                None, [*flyp_overrides(clip_dir, colours_dir, tmp_path), "method_args.shots=3"]
            )
        )
    with pytest.raises(ValueError, match="loss 'clip' .* or 'unicl' .*not 'siglip'"):
        build_method(
            load_recipe(
                None, [*flyp_overrides(clip_dir, colours_dir, tmp_path), "loss.name=siglip"]
            )
        )
    siglip = save_siglip(tmp_path / "siglip", tokenizer_dir)  # the loss comes from the source
    with pytest.raises(ValueError, match=r"init_from source, a SigLIP model\): set loss.name=clip"):
        build_method(load_recipe(None, flyp_overrides(siglip, colours_dir, tmp_path)))
    with pytest.raises(ValueError, match=r"\{c\}"):
        build_method(
            load_recipe(
                None,
                [
                    *flyp_overrides(clip_dir, colours_dir, tmp_path),
                    "method_args.templates=[a photo]",
                ],
            )
        )
    unlabelled = build_method(load_recipe(None, flyp_overrides(clip_dir, shapes_dir, tmp_path)))
    with pytest.raises(ValueError, match="label"):
        unlabelled.train_data()
