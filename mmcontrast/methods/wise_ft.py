"""WiSE-FT: a weight-space ensemble of a fine-tuned run and the model it started from.

Wortsman et al. 2022, "Robust fine-tuning of zero-shot models" (CVPR), mix the zero-shot
weights ``theta_0`` and the fine-tuned weights ``theta_1`` of the same architecture,

    theta_alpha = (1 - alpha) * theta_0 + alpha * theta_1,   alpha in [0, 1],

and find that intermediate ``alpha`` keep most of the fine-tuned accuracy on the target
distribution while recovering the zero-shot model's robustness under distribution shift,
at no extra cost at inference (one model, not two).

Here ``theta_1`` is a run rebuilt by :func:`~mmcontrast.methods.trained.load_trained`, its
LoRA adapters merged into the base weights (so its keys are the starting model's), and
``theta_0`` the same recipe built from its ``model.init_from`` with pretrained towers and no
adapters, or an explicit start: another run or export folder, or another ``init_from``
source. ``alpha`` 0 and 1 give the two models' weights bit for bit.

    >>> import torch
    >>> interpolate({"w": torch.zeros(2)}, {"w": torch.ones(2)}, 0.25)["w"]
    tensor([0.2500, 0.2500])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mmcontrast.config import Config, load_recipe
from mmcontrast.methods.base import Method, build_method
from mmcontrast.methods.trained import load_trained, merge_lora

State = dict[str, Tensor]


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float.

    Raises:
        ValueError: ``alpha`` is outside [0, 1] (or NaN).
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"WiSE-FT alpha must be in [0, 1] (0: the starting model, 1: the fine-tuned run), "
            f"got {alpha:g}"
        )
    return alpha


def alpha_folder(alpha: float) -> str:
    """``alpha-0``, ``alpha-0.25``, ``alpha-1``: where ``mmcontrast wise-ft`` writes the
    results of one ``alpha`` (and where ``mmcontrast export --wise-ft-alpha`` reads them)."""
    return f"alpha-{alpha:g}"


def check_same_architecture(start: State, finetuned: State) -> None:
    """Refuse two state dicts that cannot be mixed, naming what differs.

    Raises:
        ValueError: Keys, shapes or kinds (floating or not) differ, or a tensor that is not
            floating (position ids, counters) has different values.
    """
    problems = []
    only_start = sorted(start.keys() - finetuned.keys())
    only_tuned = sorted(finetuned.keys() - start.keys())
    if only_start:
        problems.append(f"only the starting model has {_few(only_start)}")
    if only_tuned:
        problems.append(f"only the fine-tuned model has {_few(only_tuned)}")
    shapes, kinds, values = [], [], []
    for key in sorted(start.keys() & finetuned.keys()):
        a, b = start[key], finetuned[key]
        if a.shape != b.shape:
            shapes.append(f"{key} {list(a.shape)} vs {list(b.shape)}")
        elif a.is_floating_point() != b.is_floating_point():
            kinds.append(f"{key} {a.dtype} vs {b.dtype}")
        elif not a.is_floating_point() and not torch.equal(a, b.to(a.device, a.dtype)):
            values.append(key)
    if shapes:
        problems.append(f"shapes differ: {_few(shapes)}")
    if kinds:
        problems.append(f"dtypes differ: {_few(kinds)}")
    if values:
        problems.append(f"non-floating tensors (copied, not mixed) differ: {_few(values)}")
    if problems:
        raise ValueError(
            "WiSE-FT needs the same architecture: the starting and fine-tuned models differ: "
            + "; ".join(problems)
        )


def interpolate(start: State, finetuned: State, alpha: float) -> State:
    """``(1 - alpha) * start + alpha * finetuned`` for every floating tensor.

    Tensors that are not floating (integer position ids, counters, boolean masks) must be
    equal in both and are copied. The mix is computed in at least float32 and stored in the
    fine-tuned tensor's dtype; ``alpha`` 0 and 1 return copies of ``start`` and
    ``finetuned`` exactly.

    Args:
        start: The starting (zero-shot) model's state dict, ``theta_0``.
        finetuned: The fine-tuned model's state dict, ``theta_1``: same keys and shapes.
        alpha: The fine-tuned model's share, in [0, 1].

    Returns:
        A new state dict with the keys of ``finetuned``.

    Raises:
        ValueError: ``alpha`` outside [0, 1], or the two state dicts differ in keys, shapes,
            kinds, or values of non-floating tensors.
    """
    alpha = check_alpha(alpha)
    check_same_architecture(start, finetuned)
    if alpha == 0.0:
        return {key: start[key].detach().clone() for key in finetuned}
    mixed = {}
    for key, tuned in finetuned.items():
        tuned = tuned.detach()
        if alpha == 1.0 or not tuned.is_floating_point():
            mixed[key] = tuned.clone()
            continue
        dtype = torch.promote_types(tuned.dtype, torch.float32)
        begin = start[key].detach().to(tuned.device, dtype)
        mixed[key] = ((1.0 - alpha) * begin + alpha * tuned.to(dtype)).to(tuned.dtype)
    return mixed


@dataclass
class WiseFT:
    """A fine-tuned run and its starting model, ready to mix at any ``alpha``."""

    method: Method  # the fine-tuned run's method, adapters merged: mixes are loaded into it
    start: State  # theta_0, on the CPU
    finetuned: State  # theta_1, on the CPU
    start_name: str  # where theta_0 came from (model.init_from, or the --start given)

    def mix(self, alpha: float) -> Method:
        """:attr:`method` holding the weights of ``alpha`` (in place), in eval mode."""
        self.method.load_state_dict(interpolate(self.start, self.finetuned, alpha), strict=True)
        return self.method.eval()


def load_wise_ft(run: str | Path, start: str | Path | None = None) -> WiseFT:
    """The fine-tuned ``run`` and the model it started from, checked to be mixable.

    Args:
        run: A run, checkpoint or mmcontrast export folder (``config.yaml`` +
            ``model.safetensors``).
        start: The starting model instead of the run's ``model.init_from``: another run or
            export folder, or another ``init_from`` source (a CLIPModel folder, Hub id ...).

    Raises:
        FileNotFoundError: ``run`` holds no ``config.yaml``.
        ValueError: The run has no ``model.init_from`` and no ``start`` is given, or the
            two models do not have the same architecture.
    """
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{run} holds no config.yaml: pass an mmcontrast run, checkpoint or export folder"
        )
    recipe = load_recipe(run / "config.yaml")
    if start is None and not recipe.model.init_from:
        raise ValueError(
            f"WiSE-FT mixes a fine-tuned run with the model it started from, and {run} did not "
            "start from a pretrained model (its config.yaml has no model.init_from): fine-tune "
            "with model.init_from, or name the starting model (mmcontrast wise-ft --start, "
            "mmcontrast export --wise-ft-start)"
        )
    method = merge_lora(load_trained(run))
    begin = _start_method(run, recipe, start)
    # a copy: the fine-tuned weights stay while mixes are loaded into the method
    finetuned, initial = _cpu_state(method, copy=True), _cpu_state(begin, copy=False)
    check_same_architecture(initial, finetuned)
    return WiseFT(method, initial, finetuned, str(start or recipe.model.init_from))


def wise_ft_method(run: str | Path, alpha: float, start: str | Path | None = None) -> Method:
    """The method of ``run`` with the WiSE-FT weights ``(1 - alpha) * start + alpha * run``.

    ``alpha`` 0 gives the starting model's weights, 1 the run's (LoRA merged), bit for bit.
    See :func:`load_wise_ft` for ``start`` and the errors.
    """
    alpha = check_alpha(alpha)  # before anything is built
    return load_wise_ft(run, start).mix(alpha)


def _start_method(run: Path, recipe: Config, start: str | Path | None) -> Method:
    """theta_0: a run or export folder as trained, else the recipe from its source."""
    if start is not None and (Path(start) / "config.yaml").is_file():
        return merge_lora(load_trained(start))
    if start is not None and not recipe.model.init_from:
        raise ValueError(
            f"--start {start}: a source for model.init_from can only replace the source of a "
            f"run that used one, and {run} built its towers itself; pass a run folder as the start"
        )
    overrides = [
        "model.vision.pretrained=true",  # the source's weights, not a random model
        "model.text.pretrained=true",
        "model.vision.lora=null",  # the starting model has no adapters
        "model.text.lora=null",
    ]
    if start is not None:
        overrides.append(f"model.init_from={start}")
    return build_method(load_recipe(run / "config.yaml", overrides)).eval()


def _cpu_state(method: Method, copy: bool) -> State:
    return {k: v.detach().to("cpu", copy=copy) for k, v in method.state_dict().items()}


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")
