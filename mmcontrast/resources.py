"""The files mmcontrast ships as package data: training recipes and model-card templates.

They live inside the package (``mmcontrast/recipes/``, ``mmcontrast/model_cards/``) and are
read through :mod:`importlib.resources`, so an installed wheel lists recipes, trains them by
name and renders model cards without the source tree. A checkout keeps one copy of each
file: the repository's ``recipes`` is a symlink to ``mmcontrast/recipes``.

Recipes are named by their path under ``mmcontrast/recipes/`` without ``.yaml``:
``quickstart``, ``simclr-fashion-mnist``; accelerate launch configs are ``accelerate/ddp``.

Example:
    >>> [r.name for r in list_recipes()][:2]
    ['barlow-twins-fashion-mnist', 'barlow-twins-imagenet-resnet50']
    >>> resolve_recipe("quickstart").name
    'quickstart.yaml'
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.abc import Traversable
from importlib.resources import files
from pathlib import Path

from mmcontrast.config import ConfigError
from mmcontrast.registry import unknown_name_message

RECIPES = "recipes"
ACCELERATE = "accelerate"  # sub-folder of launch configs for `accelerate launch --config_file`
CARD_TEMPLATES = "model_cards"
SUFFIX = ".yaml"


@dataclass(frozen=True)
class Recipe:
    """A shipped YAML file: its name, where it is and the first line of its comment."""

    name: str  # e.g. "quickstart", "accelerate/fsdp"
    path: Traversable  # a pathlib.Path for an ordinary (unzipped) install
    description: str


def recipes_root() -> Traversable:
    """The folder of shipped recipes (``mmcontrast/recipes``)."""
    return files("mmcontrast") / RECIPES


def list_recipes(folder: str | None = None) -> list[Recipe]:
    """The shipped training recipes, by name; ``folder="accelerate"``: the launch configs."""
    root = recipes_root() / folder if folder else recipes_root()
    found = []
    for entry in root.iterdir():
        if entry.is_file() and entry.name.endswith(SUFFIX):
            stem = entry.name.removesuffix(SUFFIX)
            name = f"{folder}/{stem}" if folder else stem
            found.append(Recipe(name=name, path=entry, description=_description(entry)))
    return sorted(found, key=lambda recipe: recipe.name)


def _description(entry: Traversable) -> str:
    """The recipe's first line, without its comment marker (empty when it has none)."""
    lines = entry.read_text(encoding="utf-8").splitlines()
    first = lines[0].strip() if lines else ""
    return first.lstrip("#").strip() if first.startswith("#") else ""


def resolve_recipe(recipe: str | Path) -> Path | Traversable:
    """The recipe file ``recipe`` names: an existing file path first, else a shipped name.

    Shipped names are accepted with or without ``.yaml`` and with the checkout's
    ``recipes/`` prefix, so ``quickstart``, ``quickstart.yaml`` and
    ``recipes/quickstart.yaml`` all name the shipped quickstart wherever the command runs.

    Raises:
        ConfigError: ``recipe`` is neither a file nor a shipped recipe (the message names
            the closest shipped ones).
    """
    path = Path(recipe)
    if path.is_file():
        return path
    name = path.as_posix().removeprefix(f"{RECIPES}/").removesuffix(SUFFIX)
    launch = name.startswith(f"{ACCELERATE}/")  # accelerate configs are no training recipes
    shipped = {r.name: r.path for r in list_recipes(ACCELERATE if launch else None)}
    if name in shipped:
        return shipped[name]
    raise ConfigError(
        unknown_name_message("accelerate config" if launch else "recipe", name, list(shipped))
        + f"; and {str(recipe)!r} is not a file: pass a shipped recipe's name "
        "(`mmcontrast list recipes`) or the path to a YAML recipe"
    )


def card_template(name: str) -> str:
    """The text of the model-card template ``name`` (e.g. ``vision_backbone.md``,
    ``usage/timm.md``), from ``mmcontrast/model_cards/``."""
    entry = files("mmcontrast") / CARD_TEMPLATES
    for part in name.split("/"):
        entry = entry / part
    if not entry.is_file():
        raise FileNotFoundError(
            f"model card template {name!r} is not in mmcontrast/{CARD_TEMPLATES}/: "
            "the installed package is incomplete (reinstall mmcontrast)"
        )
    return entry.read_text(encoding="utf-8")
