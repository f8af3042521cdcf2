"""``hub.push_to_hub: true``: export and push from the main process during training.

At every checkpoint and at the end the run (or checkpoint) folder is exported to
``output_dir/hub_export`` and pushed to ``hub.repo_id``. A failed push during training is
reported and training goes on: the run's own files are never at risk.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmcontrast.config import Config, ConfigError
from mmcontrast.hub.export import export
from mmcontrast.hub.push import HubPushError, check_repo_id, push_folder

logger = logging.getLogger(__name__)

EXPORT_FOLDER = "hub_export"


def check_hub_config(cfg: Config) -> None:
    """Fail before training, not after it, when pushing cannot work."""
    if not cfg.hub.push_to_hub:
        return
    if not cfg.hub.repo_id:
        raise ConfigError("hub.push_to_hub is true but hub.repo_id is empty: set it to OWNER/NAME")
    try:
        check_repo_id(cfg.hub.repo_id)
    except HubPushError as err:
        raise ConfigError(f"hub.repo_id: {err}") from None


def push_snapshot(cfg: Config, folder: str | Path, step: int, final: bool) -> bool:
    """Export ``folder`` (run or checkpoint) and push it; returns whether the push worked."""
    if not cfg.hub.push_to_hub or not cfg.hub.repo_id:
        return False
    target = Path(cfg.train.output_dir) / EXPORT_FOLDER
    what = "final model" if final else "checkpoint"
    try:
        export(folder, target, model_id=cfg.hub.repo_id, license=cfg.hub.license, overwrite=True)
        push_folder(
            target,
            cfg.hub.repo_id,
            private=cfg.hub.private,
            revision=cfg.hub.revision,
            commit_message=f"mmcontrast: {what} at step {step}",
        )
    except (HubPushError, ValueError, OSError) as err:
        logger.warning("push to %s at step %d failed: %s", cfg.hub.repo_id, step, err)
        print(f"WARNING: push to {cfg.hub.repo_id} at step {step} failed: {err}")
        return False
    print(f"pushed the {what} at step {step} to https://huggingface.co/{cfg.hub.repo_id}")
    return True
