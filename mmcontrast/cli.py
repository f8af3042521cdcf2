"""The ``mmcontrast`` command: ``train``, ``eval``, ``list`` and ``data``.

Examples::

    mmcontrast train recipes/quickstart.yaml --set train.lr=3e-4
    mmcontrast train recipes/quickstart.yaml --resume latest
    mmcontrast eval --model runs/quickstart --data data/emoji --split test
    mmcontrast list losses
    mmcontrast data emoji --output data/emoji
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mmcontrast.config import ConfigError, load_recipe

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _registries() -> dict[str, object]:
    import mmcontrast.data.builtin  # noqa: F401
    import mmcontrast.losses  # noqa: F401
    import mmcontrast.methods  # noqa: F401
    import mmcontrast.models  # noqa: F401
    from mmcontrast.registry import DATASETS, LOSSES, METHODS, TOWERS

    return {"towers": TOWERS, "losses": LOSSES, "methods": METHODS, "datasets": DATASETS}


def cmd_train(args: argparse.Namespace) -> int:
    from mmcontrast.train.loop import train

    overrides = list(args.set or [])
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_recipe(args.recipe, overrides)
    summary = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if summary.get("eval"):
        print(json.dumps({"step": summary["step"], **summary["eval"]}, indent=2))
    print(f"run saved in {cfg.train.output_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mmcontrast.eval.run import evaluate_run

    metrics = evaluate_run(
        args.model, data=args.data, split=args.split, output_dir=args.output, overrides=args.set
    )
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    what = args.what
    if what == "recipes":
        for path in sorted(RECIPES_DIR.glob("*.yaml")):
            first = path.read_text().splitlines()[0].lstrip("# ") if path.stat().st_size else ""
            print(f"{path.relative_to(RECIPES_DIR.parent)}  {first}")
        return 0
    registries = _registries()
    for name, registry in registries.items():
        if what not in ("all", name):
            continue
        print(f"{name}:")
        for entry, doc in registry.describe().items():  # type: ignore[attr-defined]
            print(f"  {entry:<12} {doc}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from mmcontrast.registry import DATASETS

    _registries()
    summary = DATASETS.get(args.name)(args.output, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2, default=str))
    return 0


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
    p.add_argument("recipe", help="path to a YAML recipe, e.g. recipes/quickstart.yaml")
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
        help="continue from a checkpoint folder, or the latest one of the run",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a trained run",
        description="Image-text retrieval of a trained run on held-out pairs.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a run folder (with config.yaml and model.safetensors) or a checkpoint folder",
    )
    p.add_argument(
        "--data", help="imagefolder directory or datasets name (default: the run's data.path)"
    )
    p.add_argument("--split", help="split to evaluate (default: the run's data.eval_split)")
    p.add_argument(
        "--output",
        help="folder for retrieval.json, the table and the PNG grid (default: MODEL/eval)",
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value of the run"
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("list", help="list recipes and registered towers, losses, methods, datasets")
    p.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "recipes", "towers", "losses", "methods", "datasets"],
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, KeyError, FileNotFoundError, ImportError) as err:
        if args.verbose:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"mmcontrast {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
