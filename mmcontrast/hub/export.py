"""``mmcontrast export``: a run or checkpoint folder -> a folder others can load.

Image-text models go to plain transformers (``CLIPModel``, ``SiglipModel`` or
``VisionTextDualEncoderModel``) whenever the architecture can be expressed there, a model
started from open_clip back to open_clip's format (:mod:`mmcontrast.hub.open_clip_export`),
else to mmcontrast's own format with the reason; vision recipes export their backbone in its
own library's format. Every export holds safetensors weights, the config, the processor or
tokenizer files, the resolved training recipe (``training_config.yaml``), the run's
evaluation JSON files and a model card (``README.md``).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcontrast.config import Config, load_recipe, save_config
from mmcontrast.hub.backbone_export import save_backbone
from mmcontrast.hub.card import (
    CardContext,
    read_eval_history,
    read_evaluations,
    read_wise_ft,
    render_card,
)
from mmcontrast.hub.convert import open_clip_to_transformers
from mmcontrast.hub.native import save_native
from mmcontrast.hub.open_clip_export import is_open_clip, save_open_clip
from mmcontrast.hub.transformers_export import NotExpressible, to_transformers
from mmcontrast.methods import Method, load_trained
from mmcontrast.methods.trained import merge_lora
from mmcontrast.methods.wise_ft import check_alpha, wise_ft_method
from mmcontrast.models.dual_encoder import DualEncoder
from mmcontrast.models.tower import resolved_preprocess

logger = logging.getLogger(__name__)

FORMATS = ("auto", "transformers", "mmcontrast")
PREVIEWS = ("retrieval_grid.png",)


@dataclass
class ExportResult:
    output: Path
    library: str  # transformers | open_clip | timm | torchvision | mmcontrast
    kind: str  # clip | siglip | vision-text-dual-encoder | open_clip | mmcontrast | backbone
    reason: str | None = None  # why the preferred format was not possible
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        what = {
            "clip": "transformers CLIPModel",
            "siglip": "transformers SiglipModel",
            "vision-text-dual-encoder": "transformers VisionTextDualEncoderModel",
            "open_clip": "open_clip model (open_clip.create_model_and_transforms"
            f'("local-dir:{self.output}"))',
            "mmcontrast": "mmcontrast format (load with mmcontrast.from_pretrained)",
            "backbone": f"{self.library} backbone",
        }[self.kind]
        lines = [f"exported {what} to {self.output}"]
        if self.reason:
            lines.append(f"not in a model library's own format because: {self.reason}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def export(
    source: str | Path,
    output: str | Path,
    format: str = "auto",
    model_id: str | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
    wise_ft_alpha: float | None = None,
    wise_ft_start: str | Path | None = None,
) -> ExportResult:
    """Export the run or checkpoint ``source`` to ``output``.

    ``format``: ``auto`` (transformers when possible, open_clip for a model made of open_clip
    towers, else mmcontrast), ``transformers`` (fail with the reason when impossible; an
    open_clip model converted to ``CLIPModel``) or ``mmcontrast``. ``model_id`` is the Hub id the
    card's usage snippet loads (default: the output folder).

    ``wise_ft_alpha``: export the WiSE-FT mix ``(1 - alpha) * start + alpha * run`` instead
    of the run's weights (:mod:`mmcontrast.methods.wise_ft`; the start is the run's
    ``model.init_from``, or ``wise_ft_start``: another run or export folder, or source), in
    the same format. The run's evaluation files go along as usual (they are of alpha 1); the
    card shows the mix's own scores when ``mmcontrast wise-ft`` measured that alpha
    (``RUN/wise_ft/wise_ft.json``).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose {', '.join(FORMATS)}")
    if wise_ft_alpha is not None:
        wise_ft_alpha = check_alpha(wise_ft_alpha)
    elif wise_ft_start is not None:
        raise ValueError("a WiSE-FT start is given without a WiSE-FT alpha (--wise-ft-alpha)")
    source, output = Path(source), Path(output)
    _check_output(output, source, overwrite)
    # a fresh copy: merging LoRA below leaves the run as it is; built before the output is
    # touched, so a run that cannot be loaded or mixed leaves nothing behind
    if wise_ft_alpha is None:
        method = load_trained(source)
    else:
        method = wise_ft_method(source, wise_ft_alpha, wise_ft_start)
    merge_lora(method)
    _prepare(output, overwrite)
    result = _write_model(method, output, format)
    if wise_ft_start is not None:
        result.notes.append(f"the WiSE-FT starting model is {wise_ft_start}, not model.init_from")
    recipe = load_recipe(source / "config.yaml")  # as trained (load_trained rewrites towers)
    save_config(recipe, output / "training_config.yaml")
    evaluations = _copy_evaluations(source, output)
    preview = next((p for p in PREVIEWS if (output / p).is_file()), None)
    module = method.trained_model()
    card = render_card(
        CardContext(
            cfg=recipe,
            library=result.library,
            kind=result.kind,
            model_id=model_id or str(output),
            evaluations=evaluations,
            notes=result.notes + ([result.reason] if result.reason else []),
            preview=preview if result.kind != "backbone" else None,
            parameters=sum(p.numel() for p in module.parameters()),
            license=license,
            pooling=_poolings(module),
            image_size=resolved_preprocess(
                module.vision if isinstance(module, DualEncoder) else module
            ).size,
            name=model_id.rstrip("/").split("/")[-1] if model_id else _run_name(source, recipe),
            replaced=_replaced_modules(output) if result.library == "torchvision" else (),
            wise_ft_alpha=wise_ft_alpha,
            wise_ft=read_wise_ft(source) if wise_ft_alpha is not None else [],
            history=read_eval_history(source),  # step 0 (eval.at_start) and after: before/after
            text_max_length=_text_length(module),
        )
    )
    card.save(output / "README.md")
    return result


def _text_length(module: Any) -> int | None:
    """Tokens the text tower keeps (as resolved, e.g. from ``init_from``); None: no text."""
    if not isinstance(module, DualEncoder):
        return None
    text = module.text
    length = getattr(text, "context_length", None)  # open_clip
    return int(length) if length is not None else int(text.cfg.max_length)


def _check_output(output: Path, source: Path, overwrite: bool) -> None:
    if output.resolve() == source.resolve() or output.resolve() in source.resolve().parents:
        raise ValueError(f"export into a new folder, not over the run itself ({source})")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output} is not empty: choose a new folder or pass --overwrite to replace it"
        )


def _prepare(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()) and overwrite:
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


def _write_model(method: Method, output: Path, format: str) -> ExportResult:
    dual = method.trained_model()
    if not isinstance(dual, DualEncoder):  # a vision recipe: its backbone
        if format != "mmcontrast":
            try:
                library = save_backbone(dual, output)
                return ExportResult(output, library, "backbone")
            except NotExpressible as err:
                if format == "transformers":
                    raise
                reason = str(err)
        else:
            reason = None
        save_native(method, output)
        return ExportResult(output, "mmcontrast", "backbone", reason=reason)
    reason = None
    if format != "mmcontrast":
        try:
            if is_open_clip(dual):  # back to open_clip (transformers: converted from it)
                return _write_open_clip(dual, output, format)
            exported = to_transformers(dual)
        except NotExpressible as err:
            if format == "transformers":
                raise
            reason = str(err)
            logger.info("exporting in mmcontrast's format: %s", reason)
        else:
            exported.model.save_pretrained(output)
            exported.processor.save_pretrained(output)
            return ExportResult(output, "transformers", exported.kind, notes=exported.notes)
    save_native(method, output)
    return ExportResult(output, "mmcontrast", "mmcontrast", reason=reason)


def _write_open_clip(dual: DualEncoder, output: Path, format: str) -> ExportResult:
    """open_clip's format; ``transformers``: that, converted to a CLIPModel by
    :func:`~mmcontrast.hub.convert.open_clip_to_transformers` (which checks its embeddings)."""
    if format != "transformers":
        return ExportResult(output, "open_clip", "open_clip", notes=save_open_clip(dual, output))
    with tempfile.TemporaryDirectory() as folder:
        notes = [n for n in save_open_clip(dual, folder) if "convert" not in n]
        try:
            open_clip_to_transformers(f"local-dir:{folder}", output)
        except (ValueError, RuntimeError) as err:
            raise NotExpressible(
                f"the open_clip model has no transformers CLIPModel: {err}"
            ) from None
    return ExportResult(output, "transformers", "clip", notes=notes)


def _poolings(module: Any) -> tuple[str, str] | None:
    if not isinstance(module, DualEncoder):
        return None
    vision, text = (getattr(t, "pooling", "the tower's own") for t in (module.vision, module.text))
    return str(vision), str(text)


def _replaced_modules(output: Path) -> tuple[str, ...]:
    """What a torchvision backbone export replaced by Identity (its config.json's record)."""
    return tuple(json.loads((output / "config.json").read_text())["identity"])


def _run_name(source: Path, cfg: Config) -> str:
    """A run's name: its output folder's (checkpoints are named after their run)."""
    return Path(cfg.train.output_dir).name or source.resolve().name


def _copy_evaluations(source: Path, output: Path) -> list[dict]:
    """The run's evaluation JSON (and its retrieval picture) go along with the export."""
    evaluations = read_evaluations(source)
    if evaluations:
        target = output / "eval"
        target.mkdir(exist_ok=True)
        for path in sorted((source / "eval").glob("*.json")):
            shutil.copyfile(path, target / path.name)
    for name in PREVIEWS:
        if (source / "eval" / name).is_file():
            shutil.copyfile(source / "eval" / name, output / name)
    return evaluations
