"""The ``mmcontrast`` command: ``train``, ``eval``, ``wise-ft``, ``export``, ``push``, ``convert``, ``list``, ``data``, ``shards``.

Examples::

    mmcontrast train quickstart --set train.lr=3e-4
    mmcontrast train my-recipe.yaml
    mmcontrast train quickstart --resume latest
    mmcontrast eval --model runs/quickstart --data data/emoji --split test
    mmcontrast eval --model runs/quickstart --task zeroshot --data emoji-category
    mmcontrast wise-ft runs/finetuned --alphas 0 0.25 0.5 0.75 1
    mmcontrast export runs/quickstart --output exports/quickstart
    mmcontrast export runs/finetuned --output exports/finetuned-wise-ft --wise-ft-alpha 0.5
    mmcontrast push exports/quickstart --repo-id me/emoji-clip --dry-run
    mmcontrast list losses
    mmcontrast data emoji --output data/emoji
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from importlib.resources import as_file
from pathlib import Path
from typing import Any

from mmcontrast.cli_search import add_search_commands
from mmcontrast.cli_serve import positive_int
from mmcontrast.config import ConfigError, DataConfig, load_recipe
from mmcontrast.cpu_allocator import reuse_freed_memory
from mmcontrast.logs import configure_logging
from mmcontrast.registry import unknown_name_message
from mmcontrast.resources import ACCELERATE, list_recipes, recipes_root, resolve_recipe
from mmcontrast.train.errors import TrainingStopped

MAX_IMAGE_PIXELS = DataConfig.max_image_pixels  # the training default, for `eval`
RECIPES_DIR = recipes_root()  # shipped recipes (package data): `mmcontrast train NAME`


def _registries() -> dict[str, object]:
    """Every registry ``mmcontrast list`` shows; each discovers its entries on first use."""
    from mmcontrast.eval.adapters import MODEL_FAMILIES
    from mmcontrast.eval.tasks import TASKS
    from mmcontrast.registry import DATASETS, LOSSES, METHODS, TOWERS

    return {
        "towers": TOWERS,
        "losses": LOSSES,
        "methods": METHODS,
        "datasets": DATASETS,
        "models": MODEL_FAMILIES,
        "tasks": TASKS,
    }


def cmd_train(args: argparse.Namespace) -> int:
    from mmcontrast.pipeline import train

    overrides = list(args.set or [])
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.overwrite:
        overrides.append("train.overwrite_output_dir=true")
    with as_file(resolve_recipe(args.recipe)) as recipe:
        cfg = load_recipe(recipe, overrides)
    summary = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if summary.get("eval"):
        print(json.dumps({"step": summary["step"], **summary["eval"]}, indent=2))
    if not summary.get("stopped_early"):
        print(f"run saved in {cfg.train.output_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mmcontrast.data.images import set_max_image_pixels
    from mmcontrast.eval.suite import evaluate_models
    from mmcontrast.eval.tasks import EvalOptions

    set_max_image_pixels(args.max_image_pixels)
    templates: str | list[str] | None = args.templates
    if args.templates and "{" not in args.templates and Path(args.templates).is_file():
        lines = Path(args.templates).read_text(encoding="utf-8").splitlines()  # one per line
        templates = [line.strip() for line in lines if line.strip()]
        if not templates:
            raise ValueError(f"--templates {args.templates}: the file holds no template")
    defaults = EvalOptions()
    options = EvalOptions(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        ks=tuple(args.ks or defaults.ks),
        templates=templates,
        knn_k=tuple(args.knn_k or defaults.knn_k),
        knn_temperature=args.knn_temperature or defaults.knn_temperature,
        max_samples=args.max_samples,
        max_matrix_elements=args.max_matrix_elements,
        pictures=not args.no_pictures,
    )
    given = {"ks": args.ks, "knn_k": args.knn_k, "knn_temperature": args.knn_temperature}
    class_names = None
    if args.class_names:
        lines = Path(args.class_names).read_text().splitlines()
        class_names = [line.strip() for line in lines if line.strip()]
    evaluate_models(
        args.model,
        args.task,
        data=args.data,
        output_dir=args.output,
        options=options,
        split=args.split,
        train_split=args.train_split,
        columns={
            "image_column": args.image_column,
            "caption_column": args.caption_column,
            "label_column": args.label_column,
            "group_column": args.group_column,
        },
        class_names=class_names,
        device=args.device,
        run_settings=[k for k, v in given.items() if v is None],
    )
    return 0


def cmd_wise_ft(args: argparse.Namespace) -> int:
    from mmcontrast.eval.wise_ft import PLOT_FILE, RESULT_FILE, evaluate_wise_ft

    result = evaluate_wise_ft(
        args.run,
        args.alphas,
        output=args.output,
        batch_size=args.batch_size,
        device=args.device,
        start=args.start,
        overwrite=args.overwrite,
    )
    print(f"WiSE-FT (weight-space ensembles):\n{result.table()}")
    print(f"results in {result.output / RESULT_FILE}, curve in {result.output / PLOT_FILE}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mmcontrast.hub.export import export

    result = export(
        args.run,
        args.output,
        format=args.format,
        model_id=args.repo_id,
        license=args.license,
        overwrite=args.overwrite,
        wise_ft_alpha=args.wise_ft_alpha,
        wise_ft_start=args.wise_ft_start,
    )
    print(result.summary())
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from mmcontrast.hub.push import push_folder

    result = push_folder(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
    )
    if result.dry_run:
        print(result.text)
        return 0
    print(f"pushed {len(result.files)} files to {result.repo_url}")
    if result.commit_url:
        print(f"commit: {result.commit_url}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from mmcontrast.hub.convert import open_clip_to_transformers, transformers_to_open_clip

    target = args.to or _conversion_target(args.source)
    try:
        _convert(args, target, open_clip_to_transformers, transformers_to_open_clip)
    except RuntimeError as err:  # the converted model failed its equality check
        raise ValueError(f"conversion refused: {err}") from None
    return 0


def _convert(args: argparse.Namespace, target: str, to_hf: Any, to_oc: Any) -> None:
    if target == "transformers":
        source = args.source.removeprefix("open_clip:")
        out = to_hf(source, args.output, checkpoint=args.checkpoint)
        print(f"converted open_clip {source} to a transformers CLIPModel in {out}")
    else:
        if args.checkpoint:
            raise ValueError(
                "--checkpoint is for open_clip sources; a transformers folder holds its weights"
            )
        out = to_oc(args.source, args.output, revision=args.revision)
        print(f"converted {args.source} to open_clip's format in {out} (load: local-dir:{out})")


def _conversion_target(source: str) -> str:
    """open_clip names, config JSONs and open_clip folders -> transformers; else -> open_clip."""
    if source.startswith(("open_clip:", "local-dir:", "hf-hub:")) or source.endswith(".json"):
        return "transformers"
    if (Path(source) / "open_clip_config.json").is_file():
        return "transformers"
    if (Path(source) / "config.json").is_file():
        return "open_clip"
    import open_clip

    return "transformers" if source in open_clip.list_models() else "open_clip"


def cmd_list(args: argparse.Namespace) -> int:
    what = args.what
    if what == "recipes":
        recipes = list_recipes()
        width = max(len(r.name) for r in recipes) + 2
        print("recipes (train one with `mmcontrast train NAME`):")
        for recipe in recipes:
            print(f"  {recipe.name:<{width}}{recipe.description}")
        example = "quickstart" if any(r.name == "quickstart" for r in recipes) else recipes[0].name
        print(f"files: {RECIPES_DIR} (copy one, e.g. {example}.yaml, to change it)")
        print("accelerate configs (accelerate launch --config_file FILE -m mmcontrast train NAME):")
        for config in list_recipes(ACCELERATE):
            print(f"  {config.path}")
        return 0
    registries = _registries()
    for name, registry in registries.items():
        if what not in ("all", name):
            continue
        print(f"{name}:")
        for entry, doc in registry.describe().items():  # type: ignore[attr-defined]
            print(f"  {entry:<24} {doc}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from mmcontrast.registry import DATASETS

    summary = DATASETS.get(args.name)(args.output, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from mmcontrast.config import DataConfig
    from mmcontrast.data.pairs import load_pairs
    from mmcontrast.data.webdataset import write_shards

    data = DataConfig(
        path=args.source,
        name=args.name,
        image_column=args.image_column,
        caption_column=args.caption_column,
    )
    for split in args.splits:
        try:
            table = load_pairs(data, split)
        except ValueError as err:
            raise ValueError(f"{err} (choose the splits to write with --splits)") from None
        shards, left_out = write_shards(
            iter(table.dataset),
            args.output,
            split,
            table.image_column,
            table.caption_column,
            args.shard_size,
            table.base_dir,
        )
        written = len(table) - sum(left_out.values())
        left_out.update(table.skipped)
        dropped = f"; left out: {dict(left_out)}" if left_out else ""
        folder = Path(args.output) / split
        print(f"{split}: {written} pairs in {len(shards)} shard(s) under {folder}{dropped}")
    print(f"train on them with: --set data.path={args.output} --set data.streaming=true")
    return 0


def _task_name(name: str) -> str:
    """``--task``: a name in the task registry, checked when given (``--help`` stays fast)."""
    from mmcontrast.eval.tasks import TASKS

    if name not in TASKS:
        raise argparse.ArgumentTypeError(unknown_name_message("task", name, TASKS.names()))
    return name


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (number > 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmcontrast", description="Contrastive representation learning toolkit."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show full tracebacks and debug logs"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train a recipe",
        description="Train from a YAML recipe (see `mmcontrast list recipes`).",
    )
    p.add_argument(
        "recipe",
        help="a shipped recipe's name (e.g. quickstart; `mmcontrast list recipes`) or the path "
        "to a YAML recipe",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)",
    )
    p.add_argument(
        "--output-dir", help="where checkpoints, logs and the final model go (train.output_dir)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CHECKPOINT",
        help="continue from a checkpoint folder, or (alone) the newest of the run; "
        "`auto`: the newest if there is one, nothing if the run finished, else start afresh "
        "(for jobs that are requeued)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in the output folder (train.overwrite_output_dir=true)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate models: retrieval, zero-shot, kNN, linear probe",
        description=(
            "Evaluate one or more models on one or more tasks.\n\n"
            "MODEL: an mmcontrast run or checkpoint folder; a transformers CLIPModel,\n"
            "  SiglipModel or VisionTextDualEncoderModel folder or Hub id;\n"
            "  open_clip:NAME[:PRETRAINED] (a tag or a checkpoint file) or hf-hub:ORG/REPO.\n"
            "  Prefix a family to skip detection (siglip:DIR; see `mmcontrast list models`).\n"
            "DATA: an imagefolder, a datasets name, or a built-in: emoji (retrieval),\n"
            "  emoji-category, emoji-subcategory, fashion_mnist (zeroshot, knn, linear)."
        ),
        epilog=(
            "examples:\n"
            "  mmcontrast eval --model runs/quickstart\n"
            "  mmcontrast eval --model runs/quickstart --task zeroshot --data emoji-category\n"
            "  mmcontrast eval --model runs/a --model runs/b --task retrieval --task zeroshot "
            "--data emoji-subcategory\n"
            "  mmcontrast eval --model open_clip:ViT-B-32:laion2b_s34b_b79k --task retrieval "
            "--data data/coco --caption-column captions"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, action="append", help="model to evaluate (repeatable)")
    p.add_argument(
        "--task",
        action="append",
        type=_task_name,
        metavar="TASK",
        help="a task of `mmcontrast list tasks` (repeatable); default: a run's own "
        "evaluation, zeroshot for classification data, else retrieval",
    )
    p.add_argument("--data", help="data to evaluate on (default: an mmcontrast run's own data)")
    p.add_argument("--split", help="split to score (default: test, or the run's eval split)")
    p.add_argument("--train-split", help="kNN bank / linear-probe training split (default train)")
    p.add_argument("--image-column", help="image column of the data (default image)")
    p.add_argument("--caption-column", help="caption column for retrieval (default text)")
    p.add_argument("--label-column", help="label column for classification (default label)")
    p.add_argument(
        "--group-column",
        metavar="COL",
        help="retrieval: also score each value of this column (e.g. lang) among its own rows, "
        "as GROUP/metric (default: a run's data.group_column, else none)",
    )
    p.add_argument(
        "--templates",
        help="zero-shot prompts: a set (openai_imagenet (80), simple, photo, name), one "
        "template with {c}, or a text file of templates, one per line (default: the data's "
        "own, else openai_imagenet)",
    )
    p.add_argument("--class-names", help="text file, one prompt name per class in label order")
    p.add_argument(
        "--ks",
        type=positive_int,
        nargs="+",
        metavar="K",
        help="retrieval recall@k cutoffs (default: a run's eval.ks, else 1 5 10)",
    )
    p.add_argument(
        "--knn-k",
        type=positive_int,
        nargs="+",
        metavar="K",
        help="kNN neighbours (default: a run's eval.knn_k, else 20 200)",
    )
    p.add_argument(
        "--knn-temperature",
        type=_positive_float,
        metavar="T",
        help="kNN vote temperature (default: a run's eval.knn_temperature, else 0.07)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images or texts per batch")
    p.add_argument("--num-workers", type=int, default=0, help="image decoding processes")
    p.add_argument("--max-samples", type=int, help="score only the first N rows of each split")
    p.add_argument(
        "--max-image-pixels",
        type=lambda v: None if v.lower() in ("none", "null") else int(v),
        default=MAX_IMAGE_PIXELS,
        help="skip images with more pixels (default %(default)s, as data.max_image_pixels; "
        "none: no limit)",
    )
    p.add_argument(
        "--max-matrix-elements",
        type=int,
        default=2**26,
        help="largest similarity matrix held at once (memory bound)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-pictures", action="store_true", help="skip the PNG grid / matrix")
    p.add_argument(
        "--output",
        help="result folder (default: RUN/eval for one mmcontrast run, else eval_results)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "wise-ft",
        help="score WiSE-FT mixes of a fine-tuned run and the model it started from",
        description=(
            "WiSE-FT (Wortsman et al. 2022, Robust fine-tuning of zero-shot models): mix the\n"
            "weights of a run fine-tuned from model.init_from with its starting model,\n"
            "(1 - alpha) * start + alpha * fine-tuned, and score every alpha with the run's\n"
            "own evaluation (its held-out split and eval.tasks) into OUTPUT/alpha-A/.\n"
            "Writes OUTPUT/wise_ft.json (one row per alpha) and OUTPUT/wise_ft.png (the\n"
            "trade-off curve). Export a mix with `mmcontrast export RUN --wise-ft-alpha A`."
        ),
        epilog=(
            "examples:\n"
            "  mmcontrast wise-ft runs/finetuned --alphas 0 0.25 0.5 0.75 1\n"
            "  mmcontrast wise-ft runs/finetuned --alphas 0 0.5 1 --output wise-ft --overwrite"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="a run (or checkpoint) folder fine-tuned with model.init_from")
    p.add_argument(
        "--alphas",
        nargs="+",
        type=float,
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        metavar="A",
        help="mixing coefficients in [0, 1]: 0 is the starting model, 1 the fine-tuned run "
        "(default 0 0.25 0.5 0.75 1)",
    )
    p.add_argument("--output", help="result folder (default RUN/wise_ft)")
    p.add_argument("--batch-size", type=int, help="images or texts per batch (eval.batch_size)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--start",
        help="the starting model instead of the run's model.init_from: another run or export "
        "folder, or an init_from source",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_wise_ft)

    p = sub.add_parser(
        "export",
        help="export a run for plain transformers (or timm), with a model card",
        description=(
            "Export a run or checkpoint folder: safetensors weights, config, processor or\n"
            "tokenizer files, the training recipe, evaluation results and a model card.\n\n"
            "Image-text models become a transformers CLIPModel, SiglipModel or\n"
            "VisionTextDualEncoderModel (AutoModel.from_pretrained loads them) when the\n"
            "architecture allows (linear projections, towers pooled by their own pooler);\n"
            "otherwise mmcontrast's format (mmcontrast.from_pretrained), with the reason.\n"
            "Vision recipes export their backbone as transformers, timm or torchvision weights."
        ),
        epilog=(
            "examples:\n"
            "  mmcontrast export runs/quickstart --output exports/quickstart\n"
            "  mmcontrast export runs/finetuned --output exports/wise-ft --wise-ft-alpha 0.5"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder (train.output_dir) or one of its checkpoints")
    p.add_argument("--output", required=True, help="new folder to write the export to")
    p.add_argument(
        "--format",
        choices=["auto", "transformers", "mmcontrast"],
        default="auto",
        help="auto (default): the source's own format (transformers, or open_clip weights for a "
        "model fine-tuned from open_clip) when possible, else mmcontrast's; transformers: fail "
        "if impossible",
    )
    p.add_argument(
        "--repo-id", help="Hub id the model card's usage snippet loads (default: the folder)"
    )
    p.add_argument("--license", default="apache-2.0", help="licence in the model card")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument(
        "--wise-ft-alpha",
        type=float,
        metavar="A",
        help="export the WiSE-FT mix (1 - A) * start + A * run of a run fine-tuned with "
        "model.init_from (A in [0, 1]; see `mmcontrast wise-ft`)",
    )
    p.add_argument(
        "--wise-ft-start",
        metavar="START",
        help="with --wise-ft-alpha: the starting model instead of the run's model.init_from",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "push",
        help="upload an exported folder to the Hugging Face Hub",
        description=(
            "Upload an export folder to a Hub model repository (created if needed).\n"
            "The token comes from HF_TOKEN or `hf auth login`; it is never printed."
        ),
        epilog="example:\n  mmcontrast push exports/quickstart --repo-id me/emoji-clip --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", help="folder written by `mmcontrast export`")
    p.add_argument("--repo-id", required=True, help="OWNER/NAME of the model repository")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to push to (created if needed; default main)")
    p.add_argument("--commit-message", help="commit message")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print which files would go where (with sizes) and the card; upload nothing",
    )
    p.set_defaults(func=cmd_push)

    p = sub.add_parser(
        "convert",
        help="convert between open_clip checkpoints and transformers CLIPModel",
        description=(
            "Convert a standard ViT CLIP model between open_clip and transformers.\n\n"
            "open_clip -> transformers: SOURCE is an open_clip model name (ViT-B-32), a model\n"
            "  config JSON, local-dir:DIR or hf-hub:ORG/REPO; --checkpoint gives the weights\n"
            "  (.safetensors or torch file, or a pretrained tag). Writes a CLIPModel with its\n"
            "  CLIPProcessor (AutoModel / AutoProcessor load it).\n"
            "transformers -> open_clip: SOURCE is a CLIPModel folder or Hub id. Writes\n"
            "  open_clip_config.json + open_clip_model.safetensors, which open_clip loads as\n"
            "  local-dir:DIR (or hf-hub:ORG/REPO once pushed).\n"
            "Both directions check that the converted model gives the same embeddings (1e-5)."
        ),
        epilog=(
            "examples:\n"
            "  mmcontrast convert ViT-B-32 --checkpoint vit_b_32.safetensors --output clip-hf\n"
            "  mmcontrast convert clip-hf --output clip-open-clip"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source", help="open_clip model (name, JSON, local-dir:, hf-hub:) or CLIPModel folder"
    )
    p.add_argument("--output", required=True, help="folder to write the converted model to")
    p.add_argument("--checkpoint", help="open_clip weights: a file or a pretrained tag")
    p.add_argument(
        "--to", choices=["transformers", "open_clip"], help="direction (default: from SOURCE)"
    )
    p.add_argument("--revision", help="Hub revision of a transformers source")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "list", help="list recipes, towers, losses, methods, datasets, model families, eval tasks"
    )
    p.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "recipes", "towers", "losses", "methods", "datasets", "models", "tasks"],
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "data",
        help="build a built-in dataset as an imagefolder",
        description="Build a built-in dataset (see `mmcontrast list datasets`).",
    )
    p.add_argument("name", help="built-in dataset name, e.g. emoji")
    p.add_argument("--output", required=True, help="folder to write the imagefolder dataset to")
    p.add_argument(
        "--overwrite", action="store_true", help="rebuild even if the folder is complete"
    )
    p.set_defaults(func=cmd_data)

    p = sub.add_parser(
        "shards",
        help="write image-text pairs as webdataset tar shards (for streaming)",
        description=(
            "Write an image-text source (imagefolder, datasets name, shards) as webdataset tar\n"
            "shards OUTPUT/SPLIT/SPLIT-00000.tar: KEY.jpg/.png (the image's own bytes),\n"
            "KEY.txt (first caption), KEY.json (every other column, all captions).\n\n"
            "  mmcontrast shards data/emoji --output data/emoji-shards --shard-size 500\n"
            "  mmcontrast train quickstart --set data.path=data/emoji-shards \\\n"
            "      --set data.streaming=true --set train.max_steps=330"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="imagefolder directory, datasets name/path, or tar shards")
    p.add_argument("--output", required=True, help="folder to write SPLIT/*.tar into")
    p.add_argument("--splits", nargs="+", default=["train", "test"], help="splits to write")
    p.add_argument("--shard-size", type=int, default=1000, help="pairs per shard (default 1000)")
    p.add_argument("--name", help="datasets configuration name")
    p.add_argument("--image-column", default="image", help="image column (default image)")
    p.add_argument("--caption-column", default="text", help="caption column (default text)")
    p.set_defaults(func=cmd_shards)
    add_search_commands(sub)  # embed, index, search
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reuse_freed_memory()
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except TrainingStopped as err:  # the exit status tells a job script what happened
        if args.verbose:
            traceback.print_exc()
        print(f"mmcontrast {args.command}: stopped: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C pressed again while training, or outside training
        if args.verbose:
            traceback.print_exc()
        print(f"mmcontrast {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, ValueError, KeyError, OSError, ImportError) as err:
        if args.verbose:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"mmcontrast {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
