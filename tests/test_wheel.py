"""mmcontrast installed from a wheel, away from its source tree: recipes and card templates
are package data, so it lists recipes, trains one by name and exports a model with its card.

The slow test builds a wheel from a copy of the repository's packaging files (building in
place would write ``build/`` and ``*.egg-info`` into a tree others work in), installs it
with ``--no-deps`` into a fresh virtual environment, and lends that environment this
interpreter's site-packages through a ``.pth`` path line (torch and friends, not
re-installed). A path line does not run the ``__editable__`` finder that site-packages
holds for an editable mmcontrast, and the test checks the one imported is the wheel's.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import tiny_overrides

from mmcontrast.config import ConfigError
from mmcontrast.resources import card_template, list_recipes, resolve_recipe

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ["pyproject.toml", "README.md", "mmcontrast"]  # what setuptools builds from


def test_shipped_recipes_resolve_by_name_and_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # outside the checkout, where recipes/ is no folder
    names = [recipe.name for recipe in list_recipes()]
    assert "quickstart" in names and not any("/" in name for name in names)
    assert "accelerate/fsdp" in [config.name for config in list_recipes("accelerate")]
    quickstart = resolve_recipe("quickstart")
    for spelling in ["quickstart.yaml", "recipes/quickstart.yaml"]:
        assert resolve_recipe(spelling) == quickstart
    assert resolve_recipe("accelerate/fsdp").name == "fsdp.yaml"
    own = Path("quickstart")  # an existing file wins over a shipped name
    own.write_text("method: clip\n")
    assert resolve_recipe("quickstart") == own
    with pytest.raises(ConfigError, match="did you mean 'quickstart'"):
        resolve_recipe("quikstart")
    assert "{{ usage }}" in card_template("vision_backbone.md")
    assert "${spec}" in card_template("usage/timm.md")
    with pytest.raises(FileNotFoundError, match="no_such.md"):
        card_template("no_such.md")


def test_repository_recipes_is_the_package_folder() -> None:
    """One source of truth: the checkout's ``recipes`` is a symlink into the package."""
    link = ROOT / "recipes"
    assert link.is_symlink() and os.readlink(link) == "mmcontrast/recipes"
    assert (link / "quickstart.yaml").resolve() == ROOT / "mmcontrast" / "recipes" / "quickstart.yaml"


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_wheel(folder: Path) -> Path:
    source = folder / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in PACKAGING:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    wheels = folder / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
        check=True,
    )
    (wheel,) = wheels.glob("mmcontrast-*.whl")
    return wheel


def wheel_venv(folder: Path, wheel: Path) -> Path:
    """A fresh virtual environment holding the wheel, with this one's packages visible."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python)]
        + ["install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "outer_site_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


@pytest.mark.slow
def test_wheel_lists_trains_and_exports_outside_the_repository(
    tmp_path: Path, shapes_dir: Path, tokenizer_dir: Path
) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
    for shipped in [
        "mmcontrast/recipes/quickstart.yaml",
        "mmcontrast/recipes/accelerate/fsdp.yaml",
        "mmcontrast/model_cards/dual_encoder.md",
        "mmcontrast/model_cards/vision_backbone.md",
        "mmcontrast/model_cards/usage/torchvision.md",
    ]:
        assert shipped in files, shipped

    venv = wheel_venv(tmp_path, wheel)
    work = tmp_path / "work"  # no recipes/ or model_cards/ here
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    where = run([str(venv / "bin" / "python"), "-c", "import mmcontrast; print(mmcontrast.__file__)"], work, env)
    assert Path(where.strip()).is_relative_to(venv), where

    mmcontrast = str(venv / "bin" / "mmcontrast")
    listed = run([mmcontrast, "list", "recipes"], work, env)
    assert "\n  quickstart " in listed and str(venv) in listed, listed

    output = work / "run"
    overrides = [
        *tiny_overrides(shapes_dir, tokenizer_dir, output),
        "model.vision.weights=null",
        "train.max_steps=2",
        "eval.at_end=false",
    ]
    run([mmcontrast, "train", "quickstart", *[x for o in overrides for x in ("--set", o)]], work, env)
    run([mmcontrast, "export", str(output), "--output", str(work / "export")], work, env)
    card = (work / "export" / "README.md").read_text()
    assert card.startswith("---\n") and "## How to use" in card
    assert 'AutoModel.from_pretrained("' in card
