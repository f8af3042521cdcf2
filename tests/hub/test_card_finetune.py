"""Cards of fine-tuned models: base model metadata, the training regime, before/after tables.

Runs are fabricated folders (``config.yaml``, ``eval_history.jsonl``, ``eval/*.json``,
``wise_ft/*.json``) read the way the export reads them; the card is rendered from its
``CardContext`` without training, and its metadata parsed back from the YAML header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import TINY_BERT, TINY_VIT
from PIL import Image
from transformers import (
    AutoTokenizer,
    BertConfig,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
    VisionTextDualEncoderProcessor,
    ViTConfig,
    ViTImageProcessor,
    pipeline,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES as ZERO_SHOT,
)

from mmcontrast.config import Config, load_recipe, save_config
from mmcontrast.hub.card import (
    PIPELINE_TAGS,
    CardContext,
    base_models,
    init_from_hub_id,
    metric_label,
    read_eval_history,
    read_evaluations,
    read_wise_ft,
    render_card,
)

START = "openai/clip-vit-base-patch32"
LORA = ["model.vision.lora={rank: 4, alpha: 8}", "model.text.lora={rank: 4, alpha: 8}"]
BEFORE = {"image_retrieval_recall@1": 0.25, "text_retrieval_recall@1": 0.5, "acc1": 0.4}
AFTER = {"image_retrieval_recall@1": 0.625, "text_retrieval_recall@1": 0.4375, "acc1": 0.8}


def make_run(folder: Path, overrides: list[str], history: list[dict[str, Any]]) -> Path:
    """A run folder as training leaves it: the resolved config, the evaluation history and
    the final evaluation (the last history line)."""
    cfg = load_recipe(None, ["data.path=shapes", "loss.name=clip", *overrides])
    save_config(cfg, folder / "config.yaml")
    lines = [json.dumps(record) for record in history]
    (folder / "eval_history.jsonl").write_text("\n".join(lines) + "\n")
    final = {k: v for k, v in history[-1].items() if k != "step"}
    (folder / "eval").mkdir()
    result = {"task": "retrieval", "data": "shapes/test", "step": history[-1]["step"]}
    (folder / "eval" / "retrieval.json").write_text(json.dumps({**result, "metrics": final}))
    return folder


def card_for(run: Path, kind: str = "clip", **fields: Any) -> str:
    """The card of ``run`` as ``mmcontrast export`` renders it (a transformers export, or
    mmcontrast's format for ``kind="mmcontrast"``)."""
    context = CardContext(
        cfg=load_recipe(run / "config.yaml"),
        library="transformers" if kind != "mmcontrast" else "mmcontrast",
        kind=kind,
        model_id="someone/tuned",
        evaluations=read_evaluations(run),
        history=read_eval_history(run),
        wise_ft=read_wise_ft(run),
        **fields,
    )
    return str(render_card(context))


def metadata(card: str) -> dict[str, Any]:
    header = card.split("---\n")[1]
    parsed = yaml.safe_load(header)
    assert isinstance(parsed, dict)
    return parsed


def table_after(card: str, heading: str) -> dict[str, list[str]]:
    """The Markdown table after ``heading``: its header row as ``"metric"`` and each row by
    its first cell."""
    lines = card.split(heading, 1)[1].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in lines[first:end]]
    return {row[0]: row[1:] for row in cells if row[0] != "---"}


def training_row(card: str, name: str) -> str:
    match = [line for line in card.splitlines() if line.startswith(f"| {name} |")]
    assert len(match) == 1, card
    return match[0].split("|")[2].strip()


def test_init_from_lora_card(tmp_path: Path) -> None:
    history = [{"step": 0, **BEFORE}, {"step": 40, **AFTER}]
    run = make_run(tmp_path, [f"model.init_from={START}", *LORA], history)
    card = card_for(run, text_max_length=77)

    meta = metadata(card)
    assert meta["base_model"] == START
    assert meta["base_model_relation"] == "finetune"
    assert meta["pipeline_tag"] == "zero-shot-image-classification"
    assert {"mmcontrast", "lora"} <= set(meta["tags"])
    index = meta["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in index} == AFTER

    table = table_after(card, "### Before and after fine-tuning")
    assert table["metric"] == ["start (step 0)", "fine-tuned (step 40)", "change"]
    assert table["text->image R@1"] == ["0.2500", "0.6250", "+0.3750"]
    assert table["image->text R@1"] == ["0.5000", "0.4375", "-0.0625"]
    assert table["top-1 accuracy"] == ["0.4000", "0.8000", "+0.4000"]
    assert len(table) == 1 + len(AFTER)

    assert "LoRA r=4, alpha=8 on both towers" in training_row(card, "fine-tuning")
    assert f"[`{START}`](https://huggingface.co/{START})" in training_row(card, "starting model")
    assert "| text length | 77 tokens" in card and "64 tokens" not in card
    assert f"the vision model of [`{START}`]" in card and "``" not in card.split("```")[0]


def test_history_keeps_the_last_line_of_a_step(tmp_path: Path) -> None:
    lines = [{"step": 0, "acc1": 0.1}, {"step": 9, "acc1": 0.2}, {"step": 9, "acc1": 0.3}]
    (tmp_path / "eval_history.jsonl").write_text(
        "\n".join(json.dumps(line) for line in lines) + "\nnot json\n\n"
    )
    assert read_eval_history(tmp_path) == [lines[0], lines[2]]
    assert read_eval_history(tmp_path / "missing") == []


def test_no_step_zero_no_table(tmp_path: Path) -> None:
    run = make_run(tmp_path, [f"model.init_from={START}"], [{"step": 40, **AFTER}])
    card = card_for(run)
    assert "Before and after" not in card
    assert "the starting model's tokenizer length" in card  # export gave no length


def test_local_folder_is_named_not_a_base_model(tmp_path: Path) -> None:
    start = tmp_path / "start"
    start.mkdir()
    history = [{"step": 0, **BEFORE}, {"step": 40, **AFTER}]
    run = make_run(tmp_path / "run", [f"model.init_from={start}"], history)
    card = card_for(run)
    meta = metadata(card)
    assert "base_model" not in meta and "base_model_relation" not in meta
    assert f"fine-tuned from the local folder `{start}`" in card
    assert training_row(card, "starting model") == f"the local folder `{start}`"
    assert training_row(card, "fine-tuning") == "full fine-tuning (every weight trained)"


@pytest.mark.parametrize(
    ("source", "hub_id"),
    [
        (START, START),
        (
            "open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        ),
        ("open_clip:ViT-B-32:laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        ("open_clip:ViT-B-32:openai", "timm/vit_base_patch32_clip_224.openai"),
        ("open_clip:ViT-B-32", None),  # no weights named
        ("open_clip:ViT-B-32:weights/epoch_3.pt", None),
        ("open_clip:local-dir:exports/tuned", None),
        ("/models/clip", None),
    ],
)
def test_init_from_hub_ids(source: str, hub_id: str | None) -> None:
    assert init_from_hub_id(source) == hub_id


def cfg(*overrides: str) -> Config:
    return load_recipe(None, list(overrides))


def test_base_models_of_towers() -> None:
    bert = "google-bert/bert-base-uncased"
    assert base_models(cfg(f"model.vision.name={START}", f"model.text.name={bert}")) == [
        START,
        bert,
    ]
    # both halves of one Hub model: named once
    assert base_models(cfg(f"model.vision.name={START}", f"model.text.name={START}")) == [START]
    # a timm name without a tag: the repo of timm's default weights
    timm = cfg("model.vision.source=timm", "model.vision.name=resnet50", f"model.text.name={bert}")
    assert base_models(timm) == ["timm/resnet50.a1_in1k", bert]
    hub_timm = cfg("model.vision.source=timm", "model.vision.name=hf-hub:me/tuned-vit")
    assert base_models(hub_timm, image_text=False) == ["me/tuned-vit"]
    pair = ["source=open_clip", "name=ViT-B-32", "weights=laion2b_s34b_b79k"]
    open_clip = cfg(*[f"model.{m}.{kv}" for m in ("vision", "text") for kv in pair])
    assert base_models(open_clip) == ["laion/CLIP-ViT-B-32-laion2B-s34B-b79K"]
    # random towers, and weights from local files, have no Hub origin
    assert base_models(cfg(f"model.vision.name={START}", "model.vision.pretrained=false")) == []
    local = cfg(
        "model.vision.source=timm", "model.vision.name=resnet50", "model.vision.weights=w.pt"
    )
    assert base_models(local) == []
    # init_from gives the whole model: its towers' (empty) names are not consulted
    assert base_models(cfg(f"model.init_from={START}", f"model.vision.name={bert}")) == [START]


def test_two_tower_bases_are_a_list(tmp_path: Path) -> None:
    bert = "google-bert/bert-base-uncased"
    towers = [f"model.vision.name={START}", f"model.text.name={bert}"]
    run = make_run(tmp_path, towers, [{"step": 10, **AFTER}])
    meta = metadata(card_for(run, kind="vision-text-dual-encoder"))
    assert meta["base_model"] == [START, bert]
    assert "base_model_relation" not in meta  # built from towers, not fine-tuned whole


@pytest.mark.parametrize(
    ("kind", "tag"),
    [
        ("clip", "zero-shot-image-classification"),
        ("siglip", "zero-shot-image-classification"),
        ("vision-text-dual-encoder", "zero-shot-image-classification"),
        ("mmcontrast", None),  # mmcontrast's own format: no transformers pipeline loads it
    ],
)
def test_pipeline_tag_by_kind(tmp_path: Path, kind: str, tag: str | None) -> None:
    run = make_run(tmp_path, [f"model.init_from={START}"], [{"step": 10, **AFTER}])
    assert metadata(card_for(run, kind=kind)).get("pipeline_tag") == tag


def test_zero_shot_pipeline_serves_the_tagged_kinds(tmp_path: Path, tokenizer_dir: Path) -> None:
    """CLIP and SigLIP are in transformers' zero-shot mapping; VisionTextDualEncoderModel is not,
    yet the pipeline runs it and gives the model's own caption probabilities."""
    assert {"clip", "siglip"} <= set(ZERO_SHOT) and set(PIPELINE_TAGS) == {
        "clip",
        "siglip",
        "vision-text-dual-encoder",
    }
    torch.manual_seed(0)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        ViTConfig(**TINY_VIT), BertConfig(**TINY_BERT), projection_dim=16
    )
    VisionTextDualEncoderModel(config).save_pretrained(tmp_path)
    VisionTextDualEncoderProcessor(
        ViTImageProcessor(size={"height": 32, "width": 32}),
        AutoTokenizer.from_pretrained(tokenizer_dir),
    ).save_pretrained(tmp_path)
    image = Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy())
    labels = ["red circle", "blue square", "green star"]
    scores = pipeline("zero-shot-image-classification", model=str(tmp_path))(
        image, candidate_labels=labels
    )
    model = VisionTextDualEncoderModel.from_pretrained(tmp_path).eval()
    processor = VisionTextDualEncoderProcessor.from_pretrained(tmp_path)
    texts = [f"This is a photo of {label}." for label in labels]  # the pipeline's template
    with torch.no_grad():
        inputs = processor(text=texts, images=image, return_tensors="pt", padding=True)
        expected = model(**inputs).logits_per_image.softmax(dim=-1)[0]
    got = {s["label"]: s["score"] for s in scores}
    assert torch.allclose(torch.tensor([got[label] for label in labels]), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([f"model.init_from={START}"], "full fine-tuning (every weight trained)"),
        (
            [f"model.init_from={START}", "model.vision.lock=true"],
            "LiT: the vision tower locked; the text tower fully trained",
        ),
        (
            [
                f"model.init_from={START}",
                "model.vision.lock=true",
                "model.vision.unlocked_layers=2",
            ],
            "LiT: the vision tower locked except its last 2 layers",
        ),
        (
            [f"model.init_from={START}", "model.text.lora={rank: 2, alpha: 4, dora: true}"],
            "DoRA r=2, alpha=4 on the text tower (adapters merged into the exported weights); "
            "the vision tower fully trained",
        ),
        (
            [f"model.init_from={START}", "model.vision.lr_decay=0.65", "model.text.lr_decay=0.65"],
            "layer-wise lr decay 0.65 (both towers)",
        ),
        (
            [f"model.init_from={START}", "model.vision.lr_decay=0.6", "model.text.lr_decay=0.8"],
            "layer-wise lr decay 0.6 (vision), 0.8 (text)",
        ),
        ([f"model.init_from={START}", "train.ema_decay=0.999"], "EMA of the weights, decay 0.999"),
        ([f"model.init_from={START}", "method=flyp"], "FLYP: the contrastive loss of pre-training"),
        (
            ["model.vision.name=vit", "model.vision.pretrained=false", "model.text.name=bert"]
            + ["model.text.pretrained=false"],
            "trained from random initialisation",
        ),
    ],
)
def test_training_names_the_regime(tmp_path: Path, overrides: list[str], expected: str) -> None:
    card = card_for(make_run(tmp_path, overrides, [{"step": 10, **AFTER}]))
    label = "fine-tuning" if "model.vision.pretrained=false" not in overrides else "weights"
    assert expected in training_row(card, label)


def test_a_locked_text_tower_is_not_lit(tmp_path: Path) -> None:
    run = make_run(tmp_path, [f"model.init_from={START}", "model.text.lock=true"], [{"step": 1}])
    card = card_for(run)
    expected = "the text tower locked; the vision tower fully trained"
    assert training_row(card, "fine-tuning") == expected
    assert "lit" not in metadata(card)["tags"] and "(LiT)" not in card


def write_wise_ft(run: Path, scores: dict[float, dict[str, float]]) -> None:
    """``RUN/wise_ft/wise_ft.json`` as ``mmcontrast wise-ft`` writes it (and a stray file)."""
    (run / "wise_ft").mkdir()
    rows = [
        {"alpha": alpha, "folder": f"alpha-{alpha:g}", "metrics": metrics}
        for alpha, metrics in scores.items()
    ]
    record = {"run": str(run), "alphas": list(scores), "rows": rows}
    (run / "wise_ft" / "wise_ft.json").write_text(json.dumps(record))
    (run / "wise_ft" / "notes.json").write_text('"not a table"')  # skipped


def test_read_wise_ft_merges_files_and_flat_rows(tmp_path: Path) -> None:
    write_wise_ft(tmp_path, {0.0: {"acc1": 0.5}, 1.0: {"acc1": 0.75, "bad": None}})
    extra = {"rows": [{"alpha": 1, "sub/acc1": 0.25}, {"alpha": "x"}, "junk"]}  # flat metrics
    (tmp_path / "wise_ft" / "more.json").write_text(json.dumps(extra))
    (tmp_path / "wise_ft" / "broken.json").write_text("{")
    assert read_wise_ft(tmp_path) == [
        {"alpha": 0.0, "acc1": 0.5},
        {"alpha": 1.0, "acc1": 0.75, "sub/acc1": 0.25},
    ]


def test_wise_ft_export_with_its_scores(tmp_path: Path) -> None:
    history = [{"step": 0, **BEFORE}, {"step": 40, **AFTER}]
    run = make_run(tmp_path, [f"model.init_from={START}"], history)
    mixed = {"image_retrieval_recall@1": 0.75, "text_retrieval_recall@1": 0.5625}
    write_wise_ft(run, {0.0: BEFORE, 0.5: mixed, 1.0: AFTER})
    card = card_for(run, wise_ft_alpha=0.5)

    meta = metadata(card)
    assert "wise-ft" in meta["tags"]
    index = meta["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in index} == mixed  # this model's, not alpha 1's
    table = table_after(card, "### Before and after fine-tuning")
    assert table["metric"][-2:] == ["this model (WiSE-FT alpha 0.5)", "change"]
    assert table["text->image R@1"] == ["0.2500", "0.6250", "0.7500", "+0.5000"]
    assert table["top-1 accuracy"] == ["0.4000", "0.8000", "-", "-"]  # the mix not scored on it
    regime = training_row(card, "fine-tuning")
    assert "WiSE-FT alpha 0.5" in regime and "0.5 x start + 0.5 x fine-tuned" in regime


def test_wise_ft_scores_stand_in_for_a_missing_history(tmp_path: Path) -> None:
    run = make_run(tmp_path, [f"model.init_from={START}"], [{"step": 40, **AFTER}])
    write_wise_ft(run, {0.0: BEFORE, 1.0: AFTER})
    table = table_after(card_for(run), "### Before and after fine-tuning")
    assert table["metric"] == [
        "start (WiSE-FT alpha 0)",
        "fine-tuned (WiSE-FT alpha 1)",
        "change",
    ]
    assert table["text->image R@1"] == ["0.2500", "0.6250", "+0.3750"]


def test_wise_ft_export_without_its_scores(tmp_path: Path) -> None:
    history = [{"step": 0, **BEFORE}, {"step": 40, **AFTER}]
    run = make_run(tmp_path, [f"model.init_from={START}"], history)
    card = card_for(run, wise_ft_alpha=0.3)
    assert "model-index" not in metadata(card)  # the run's scores are alpha 1's, not this model's
    assert "the results below are those of the fine-tuned model (alpha 1)" in card
    table = table_after(card, "### Before and after fine-tuning")
    assert table["metric"] == ["start (step 0)", "fine-tuned (step 40)", "change"]
    assert "0.7 x start + 0.3 x fine-tuned" in training_row(card, "fine-tuning")


def test_extra_task_metrics_are_labelled() -> None:
    assert metric_label("subcategory/acc1") == "subcategory: top-1 accuracy"
    assert metric_label("emoji-knn/knn20_acc1") == "emoji-knn: kNN (k=20) top-1 accuracy"
