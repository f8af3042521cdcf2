"""mmcontrast's own export format, for models transformers cannot express (e.g. MLP heads).

An export folder is a self-contained run folder: ``config.yaml`` (the resolved recipe,
towers rewritten to build without downloads), ``model.safetensors`` (every weight of the
method) and one sub-folder per Hugging Face tower with its config and tokenizer files.
:func:`from_pretrained` loads it from a directory or a Hub repository.

    >>> model = mmcontrast.from_pretrained("runs/quickstart-export")
    >>> model.get_image_features(pixels), model.get_text_features(**model.tokenize(texts))
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from mmcontrast.config import TowerConfig, save_config
from mmcontrast.methods import Method, load_trained
from mmcontrast.models.dual_encoder import DualEncoder
from mmcontrast.models.tower import resolved_preprocess

TOWER_FOLDERS = {"vision": "vision_tower", "text": "text_tower"}


def save_native(method: Method, output: str | Path) -> list[Path]:
    """Write ``method`` to ``output`` so that :func:`from_pretrained` rebuilds it offline."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(method.cfg)
    written = []
    towers = _towers(method)
    for modality, tower in towers.items():
        tower_cfg: TowerConfig = getattr(cfg.model, modality)
        written += _make_self_contained(tower, tower_cfg, output / TOWER_FOLDERS[modality])
    state = {k: v.detach().contiguous().cpu() for k, v in method.state_dict().items()}
    save_file(state, str(output / "model.safetensors"), metadata={"format": "pt"})
    written += [output / "model.safetensors", save_config(cfg, output / "config.yaml")]
    return written


def _towers(method: Method) -> dict[str, Any]:
    module = method.trained_model()
    if isinstance(module, DualEncoder):
        return {"vision": module.vision, "text": module.text}
    return {"vision": module}


def _make_self_contained(tower: Any, cfg: TowerConfig, folder: Path) -> list[Path]:
    """Point ``cfg`` at files inside the export: no Hub, package or local path needed."""
    cfg.pretrained, cfg.weights = False, None
    if tower.modality == "vision":
        pre = resolved_preprocess(tower)
        cfg.image_size, cfg.image_mean, cfg.image_std = pre.size, list(pre.mean), list(pre.std)
    if cfg.source == "hf":
        folder.mkdir(parents=True, exist_ok=True)
        tower.model.config.save_pretrained(folder)
        if tower.modality == "text":
            tower.tokenizer().tokenizer.save_pretrained(folder)
        cfg.name, cfg.tokenizer, cfg.config_overrides = folder.name, None, {}
        cfg.revision = None
        return sorted(folder.iterdir())
    if cfg.source == "open_clip" and cfg.name.endswith(".json"):
        target = folder.with_suffix(".json")
        shutil.copyfile(cfg.name, target)
        cfg.name = target.name
        return [target]
    return []  # timm, torchvision and builtin towers are built from their name


def from_pretrained(name_or_path: str | Path, revision: str | None = None) -> nn.Module:
    """Load an mmcontrast export (directory or Hub repository id).

    Image-text models come back as a :class:`~mmcontrast.models.DualEncoder` (with
    ``tokenize`` and ``image_transform``), vision recipes as their backbone; both in eval
    mode. Weights are read from safetensors only.
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        folder = _download(str(name_or_path), revision)
    return load_trained(folder).trained_model().eval()


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except Exception as err:  # network, missing repo, offline mode: one clear message
        raise FileNotFoundError(
            f"{repo_id!r} is not a local directory and could not be fetched from the Hugging "
            f"Face Hub ({type(err).__name__}); check the name and the network, or pass the "
            "folder `mmcontrast export` wrote"
        ) from None
