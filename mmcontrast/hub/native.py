"""mmcontrast's own export format, for models transformers cannot express (e.g. MLP heads).

An export folder is a self-contained run folder: ``config.yaml`` (the resolved recipe,
towers rewritten to build without downloads), ``model.safetensors`` (every weight of the
method) and one sub-folder per Hugging Face tower with its config, tokenizer and image
processor files (an open_clip tower: its model config JSON). :func:`from_pretrained` loads
it from a directory or a Hub repository.

The towers are written as built (``tower.cfg``), not as the recipe named them: a run that
started from a whole model (``model.init_from``) keeps default tower keys in its recipe, so
its export names the resolved towers, projections and logit scale and drops ``init_from``.
The preprocessing a tower trained with (size, normalisation, interpolation, resize or
squash) goes along: an image processor beside a Hugging Face tower, open_clip's
``force_preprocess_cfg`` for an open_clip one. Folders rewritten this way (``init_from``,
open_clip towers, the halves of a composite model) are reloaded before they are kept, and
must give the run's preprocessing, tokens and embeddings (1e-5).

    >>> model = mmcontrast.from_pretrained("runs/quickstart-export")
    >>> model.get_image_features(pixels), model.get_text_features(**model.tokenize(texts))
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, TimmWrapperImageProcessor

from mmcontrast.config import ModelConfig, TowerConfig, save_config
from mmcontrast.hub.clip_processor import CAPTIONS
from mmcontrast.hub.download import HubDownloadError, download_snapshot
from mmcontrast.hub.open_clip_export import open_clip_config
from mmcontrast.hub.transformers_export import TOLERANCE, image_processor, timm_data_config
from mmcontrast.methods import Method, load_trained
from mmcontrast.models.dual_encoder import DualEncoder
from mmcontrast.models.tower import build_tower, resolved_preprocess
from mmcontrast.models.weights import save_state_file

TOWER_FOLDERS = {"vision": "vision_tower", "text": "text_tower"}
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


def save_native(method: Method, output: str | Path) -> list[Path]:
    """Write ``method`` to ``output`` so that :func:`from_pretrained` rebuilds it offline.

    Raises:
        ValueError: The reloaded folder differs from ``method`` (nothing is kept).
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    towers = _towers(method)
    written: list[Path] = []
    try:
        return _write(method, towers, output, written)
    except BaseException:  # nothing half-written is kept
        for path in written:
            if path.is_file():
                path.unlink()
        for folder in TOWER_FOLDERS.values():
            if (output / folder).is_dir() and not any((output / folder).iterdir()):
                (output / folder).rmdir()
        raise


def _write(method: Method, towers: dict[str, Any], output: Path, written: list[Path]) -> list[Path]:
    """Tower files, weights and config (``written`` grows as they are); the reload check of
    folders whose towers were rewritten."""
    cfg = copy.deepcopy(method.cfg)
    module = method.trained_model()
    rewritten = bool(cfg.model.init_from)
    renames: dict[str, str] = {}
    for modality, tower in towers.items():
        tower_cfg = copy.deepcopy(tower.cfg)  # as built: init_from leaves the recipe's empty
        written += _make_self_contained(tower, tower_cfg, output / TOWER_FOLDERS[modality])
        setattr(cfg.model, modality, tower_cfg)
        renames.update(_wrapped_keys(method, tower, tower_cfg, output))
        rewritten = rewritten or tower_cfg.source == "open_clip"
    if isinstance(module, DualEncoder) and cfg.model.init_from:
        _standalone(cfg.model, module)
    state = {
        _renamed(k, renames): v.detach().contiguous().cpu() for k, v in method.state_dict().items()
    }
    written.append(output / "model.safetensors")
    save_state_file(state, str(written[-1]), metadata={"format": "pt"})
    written.append(save_config(cfg, output / "config.yaml"))
    if rewritten or renames:
        _check_reload(method, output)
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
        return _save_hf_tower(tower, cfg, folder)
    if cfg.source == "open_clip":
        return [_save_open_clip_tower(tower, cfg, folder)]
    return []  # timm, torchvision and builtin towers are built from their name


def _save_hf_tower(tower: Any, cfg: TowerConfig, folder: Path) -> list[Path]:
    """Config, tokenizer and image processor files; the tower is rebuilt from them."""
    folder.mkdir(parents=True, exist_ok=True)
    tower.model.config.save_pretrained(folder)
    if tower.modality == "text":
        tower.tokenizer().tokenizer.save_pretrained(folder)
    else:
        processor = _processor_like_training(tower)
        if processor is not None:
            processor.save_pretrained(folder)
    cfg.name, cfg.tokenizer, cfg.config_overrides = folder.name, None, {}
    cfg.revision = None
    return sorted(folder.iterdir())


def _processor_like_training(tower: Any) -> Any:
    """An image processor that preprocesses as the tower trained, or None if the tower's
    defaults (no processor) already do: timm's for a timm model (torchvision's centre crop),
    a CLIP-like one (transformers' crop) otherwise."""
    pre = resolved_preprocess(tower)
    if getattr(tower, "model_type", "") == "timm_wrapper":
        return TimmWrapperImageProcessor(pretrained_cfg=timm_data_config(pre))
    if pre.crop_offset == "floor" or pre.resize == "squash":
        return image_processor(tower)
    return None  # a centre crop at round(margin / 2): what a tower without a processor does


def _save_open_clip_tower(tower: Any, cfg: TowerConfig, folder: Path) -> Path:
    """The model config as a JSON file, one for both towers (named by a digest of it:
    open_clip registers configs by file name, so each config gets a name of its own); the
    vision tower's preprocessing (open_clip's, e.g. a pretrained tag's or a local-dir's) as
    ``force_preprocess_cfg``."""
    model_cfg = open_clip_config(tower.cfg)
    text = json.dumps(model_cfg, indent=2, sort_keys=True) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    target = folder.with_name(f"open_clip-{digest}.json")
    target.write_text(text)
    cfg.name, cfg.config_overrides = target.name, {}
    if tower.modality == "vision":
        own = tower.preprocess_cfg
        cfg.config_overrides["force_preprocess_cfg"] = {
            k: list(own[k]) if isinstance(own[k], tuple) else own[k]
            for k in PREPROCESS_KEYS
            if k in own
        }
    return target


def _wrapped_keys(method: Method, tower: Any, cfg: TowerConfig, output: Path) -> dict[str, str]:
    """Key prefixes to rename when the tower wraps part of a transformers model (the
    ``CLIPVisionTransformer`` of a ``CLIPModel`` that ``init_from`` named) and a rebuilt
    tower loads the whole class around it (``CLIPVisionModel``): ``{old: new}``."""
    if cfg.source != "hf" or isinstance(tower.model, PreTrainedModel):
        return {}
    rebuilt_cfg = copy.deepcopy(cfg)
    rebuilt_cfg.name = str(output / cfg.name)
    with torch.device("meta"):  # its structure only
        rebuilt: Any = build_tower(rebuilt_cfg, tower.modality)
    inner = next(
        (name for name, sub in rebuilt.model.named_modules() if type(sub) is type(tower.model)),
        None,
    )
    path = next(name for name, sub in method.named_modules() if sub is tower.model)
    if inner is None:
        raise ValueError(
            f"the {tower.modality} tower ({type(tower.model).__name__}) cannot be rebuilt from "
            f"its config ({type(rebuilt.model).__name__} holds no such module); export with "
            "--format transformers"
        )
    return {f"{path}.": f"{path}.{inner}." if inner else f"{path}."}


def _renamed(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if key.startswith(old):
            return new + key.removeprefix(old)
    return key


def _standalone(model: ModelConfig, dual: DualEncoder) -> None:
    """The model keys ``init_from`` gave, read from the built dual encoder; no ``init_from``."""
    kind, hidden = _projection(dual)
    model.init_from = None
    model.embed_dim = dual.embed_dim
    model.projection, model.projection_hidden_dim = kind, hidden
    model.init_logit_scale = float(dual.logit_scale.detach().reshape(-1)[0])
    bias = dual.logit_bias
    model.init_logit_bias = float(bias.detach().reshape(-1)[0]) if bias is not None else None
    model.max_logit_scale = dual.max_logit_scale


def _projection(dual: DualEncoder) -> tuple[str, int | None]:
    """``model.projection`` (and ``projection_hidden_dim``) that rebuild the projections."""
    found: list[tuple[str, int | None]] = []
    for tower, head in ((dual.vision, dual.vision_projection), (dual.text, dual.text_projection)):
        if isinstance(head, nn.Identity):
            found.append(("none", None))
        elif isinstance(head, nn.Linear) and head.bias is None:
            found.append(("linear", None))
        elif isinstance(head, nn.Sequential) and isinstance(head[0], nn.Linear):
            width = head[0].out_features
            default = max(tower.width, dual.embed_dim)
            found.append(("mlp", None if width == default else width))
        else:
            found.append((type(head).__name__, None))
    kinds = {kind for kind, _ in found}
    hidden = {size for _, size in found if size is not None}
    if len(kinds) != 1 or len(hidden) > 1 or kinds & {"none", "linear", "mlp"} != kinds:
        raise ValueError(
            f"the dual encoder's projections ({', '.join(k for k, _ in found)}) are not what "
            "one model.projection setting builds; mmcontrast's format cannot rebuild them"
        )
    return kinds.pop(), hidden.pop() if hidden else None


@torch.no_grad()
def _check_reload(method: Method, output: Path) -> None:
    """The written folder, reloaded, preprocesses, tokenises and embeds as ``method``."""
    ours, theirs = method.trained_model(), load_trained(output).trained_model()
    was_training = ours.training
    ours.eval()
    try:
        problems = _differences(ours, theirs)
    finally:
        ours.train(was_training)
    if problems:
        raise ValueError(
            f"mmcontrast's format cannot rebuild this model as trained: reloaded, its "
            f"{'; '.join(problems)}. Export with --format transformers (or open_clip's format "
            "for an open_clip model) instead"
        )


def _differences(ours: Any, theirs: Any) -> list[str]:
    vision = (ours.vision, theirs.vision) if isinstance(ours, DualEncoder) else (ours, theirs)
    pre = [resolved_preprocess(v) for v in vision]
    if pre[0] != pre[1]:
        return [f"image preprocessing differs ({pre[1]} instead of {pre[0]})"]
    pixels = torch.randn(2, 3, pre[0].size, pre[0].size, generator=torch.Generator().manual_seed(0))
    if not isinstance(ours, DualEncoder):
        pairs = {"image": (ours(pixel_values=pixels), theirs(pixel_values=pixels))}
    else:
        tokens, their_tokens = ours.tokenize(CAPTIONS), theirs.tokenize(CAPTIONS)
        if tokens.keys() != their_tokens.keys() or any(
            not torch.equal(tokens[k], their_tokens[k]) for k in tokens
        ):
            return ["tokenizer gives other token ids"]
        pairs = {
            "image": (ours.get_image_features(pixels), theirs.get_image_features(pixels)),
            "text": (ours.get_text_features(**tokens), theirs.get_text_features(**tokens)),
        }
    return [
        f"{kind} embeddings differ (max difference {_difference(a, b)})"
        for kind, (a, b) in pairs.items()
        if not _difference(a, b) <= TOLERANCE
    ]


def _difference(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item() if a.shape == b.shape else float("inf")


def from_pretrained(name_or_path: str | Path, revision: str | None = None) -> nn.Module:
    """Load an mmcontrast export (directory or Hub repository id).

    Image-text models come back as a :class:`~mmcontrast.models.DualEncoder` (with
    ``tokenize`` and ``image_transform``), vision recipes as their backbone; both in eval
    mode. Weights are read from safetensors only.
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        hint = "pass the folder `mmcontrast export` wrote"
        try:
            folder = download_snapshot(str(name_or_path), revision, hint)
        except HubDownloadError as err:
            raise HubDownloadError(
                f"{str(name_or_path)!r} is not a local directory; {err}"
            ) from None
    return load_trained(folder).trained_model().eval()
