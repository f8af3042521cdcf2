"""``mmcontrast export``: a run or checkpoint folder -> a folder others can load.

Image-text models go to plain transformers (``CLIPModel``, ``SiglipModel`` or
``VisionTextDualEncoderModel``) whenever the architecture can be expressed there, else to
mmcontrast's own format with the reason; vision recipes export their backbone in its own
library's format. Every export holds safetensors weights, the config, the processor or
tokenizer files, the resolved training recipe (``training_config.yaml``), the run's
evaluation JSON files and a model card (``README.md``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcontrast.config import Config, load_recipe, save_config
from mmcontrast.hub.backbone_export import save_backbone
from mmcontrast.hub.card import CardContext, read_evaluations, render_card
from mmcontrast.hub.native import save_native
from mmcontrast.hub.transformers_export import NotExpressible, to_transformers
from mmcontrast.methods import Method, load_trained
from mmcontrast.models.dual_encoder import DualEncoder
from mmcontrast.models.lora import merge_adapters
from mmcontrast.models.tower import Tower, resolved_preprocess

logger = logging.getLogger(__name__)

FORMATS = ("auto", "transformers", "mmcontrast")
PREVIEWS = ("retrieval_grid.png",)


@dataclass
class ExportResult:
    output: Path
    library: str  # transformers | timm | torchvision | mmcontrast
    kind: str  # clip | siglip | vision-text-dual-encoder | mmcontrast | backbone
    reason: str | None = None  # why the preferred format was not possible
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        what = {
            "clip": "transformers CLIPModel",
            "siglip": "transformers SiglipModel",
            "vision-text-dual-encoder": "transformers VisionTextDualEncoderModel",
            "mmcontrast": "mmcontrast format (load with mmcontrast.from_pretrained)",
            "backbone": f"{self.library} backbone",
        }[self.kind]
        lines = [f"exported {what} to {self.output}"]
        if self.reason:
            lines.append(f"not a transformers model because: {self.reason}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def export(
    source: str | Path,
    output: str | Path,
    format: str = "auto",
    model_id: str | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
) -> ExportResult:
    """Export the run or checkpoint ``source`` to ``output``.

    ``format``: ``auto`` (transformers when possible, else mmcontrast), ``transformers``
    (fail with the reason when impossible) or ``mmcontrast``. ``model_id`` is the Hub id the
    card's usage snippet loads (default: the output folder).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose {', '.join(FORMATS)}")
    source, output = Path(source), Path(output)
    _prepare(output, source, overwrite)
    method = load_trained(source)  # a fresh copy: merging LoRA below leaves the run as it is
    _merge_lora(method)
    result = _write_model(method, output, format)
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
        )
    )
    card.save(output / "README.md")
    return result


def _merge_lora(method: Method) -> None:
    """Fold LoRA/DoRA adapters into the base weights: the export holds plain weights and
    a config without ``lora``, loadable without peft."""
    if not merge_adapters(method):
        return
    for modality in ("vision", "text"):
        getattr(method.cfg.model, modality).lora = None
    for module in method.modules():
        if isinstance(module, Tower):
            module.cfg = dataclasses.replace(module.cfg, lora=None)


def _prepare(output: Path, source: Path, overwrite: bool) -> None:
    if output.resolve() == source.resolve() or output.resolve() in source.resolve().parents:
        raise ValueError(f"export into a new folder, not over the run itself ({source})")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{output} is not empty: choose a new folder or pass --overwrite to replace it"
            )
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
