"""A vision recipe's backbone in its own library's format, ready for fine-tuning.

transformers towers -> ``save_pretrained`` (``AutoModel`` / ``AutoImageProcessor`` load it);
timm towers -> timm's Hub layout (``timm.create_model("local-dir:DIR")`` or ``hf-hub:``);
torchvision towers -> a safetensors state dict for ``torchvision.models.get_model(NAME)``
with the classifier's last layer replaced by ``nn.Identity()``; ``config.json`` names the
modules replaced (``identity``, e.g. ``["classifier.2", "classifier.3"]`` for MobileNetV3,
``["heads.head"]`` for ViT), which a loader must replace too before ``load_state_dict``.
Built-in CPU backbones have no library of their own: they export in mmcontrast's format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmcontrast.hub.transformers_export import NotExpressible, image_processor, timm_data_config
from mmcontrast.models.tower import resolved_preprocess
from mmcontrast.models.weights import save_state_file


def save_backbone(tower: Any, output: str | Path) -> str:
    """Write ``tower``'s weights and config to ``output``; returns the library name."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    source = tower.cfg.source
    model = getattr(tower, "model", tower)
    if source == "hf":
        model.save_pretrained(output)
        image_processor(tower).save_pretrained(output)
        return "transformers"
    if source == "timm":
        from timm.models import save_for_hf

        pre = resolved_preprocess(tower)
        save_for_hf(
            model,
            str(output),
            model_args=dict(tower.cfg.config_overrides) or None,
            safe_serialization=True,
            data_config=timm_data_config(pre),
        )
        return "timm"
    if source == "torchvision":
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_state_file(state, str(output / "model.safetensors"), metadata={"format": "pt"})
        pre = resolved_preprocess(tower)
        info = {
            "library": "torchvision",
            "architecture": tower.cfg.name,
            "config_overrides": dict(tower.cfg.config_overrides),  # get_model(NAME, **these)
            "classifier": "removed: replace the modules in `identity` by torch.nn.Identity() "
            "before loading",
            "identity": list(tower.replaced),  # dotted paths in get_model(NAME)'s namespace
            "num_features": tower.width,
            "image_size": pre.size,
            "mean": list(pre.mean),
            "std": list(pre.std),
        }
        (output / "config.json").write_text(json.dumps(info, indent=2) + "\n")
        return "torchvision"
    raise NotExpressible(
        f"the {source!r} backbone {tower.cfg.name!r} belongs to no model library; "
        "it exports in mmcontrast's format (use an hf, timm or torchvision backbone for a "
        "library-native export)"
    )
