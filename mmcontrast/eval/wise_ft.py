"""``mmcontrast wise-ft``: score WiSE-FT mixes of a fine-tuned run and its starting model.

Wortsman et al. 2022, "Robust fine-tuning of zero-shot models", mix the zero-shot and the
fine-tuned weights, ``(1 - alpha) * theta_0 + alpha * theta_1``
(:mod:`mmcontrast.methods.wise_ft`), and plot the fine-tuning task's accuracy against the
accuracy under distribution shift as ``alpha`` goes from 0 to 1 (their Figure 1). Here every
``alpha`` is scored by the run's own evaluation
(:func:`~mmcontrast.eval.training.evaluate_during_training`: the method's tasks on its
held-out split, and the recipe's ``eval.tasks``, e.g. zero-shot classification on a
reference set), written to ``OUTPUT/alpha-A/``; then ``OUTPUT/wise_ft.json`` holds one row
per ``alpha`` and ``OUTPUT/wise_ft.png`` the trade-off curve.

The headline metrics are the top-1 ones (names ending in ``recall@1`` or ``acc1``), in the
order the evaluation returns them: the run's own task first. The picture plots them against
``alpha`` and, with two or more, the last against the first, as in the paper's figure.

Everything is written to a temporary folder renamed to ``OUTPUT`` once every ``alpha`` has
been scored, so a failed evaluation leaves no partial result.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmcontrast.eval.plots import DPI, shorten
from mmcontrast.eval.report import finite
from mmcontrast.eval.training import evaluate_during_training
from mmcontrast.methods.wise_ft import alpha_folder, check_alpha, load_wise_ft

RESULT_FILE = "wise_ft.json"
PLOT_FILE = "wise_ft.png"
HEADLINE_SUFFIXES = ("recall@1", "acc1")  # top-1: retrieval and classification
PAPER = 'Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"'


@dataclass
class WiseFTResult:
    """What :func:`evaluate_wise_ft` wrote: one metrics dict per ``alpha``."""

    output: Path
    alphas: list[float]
    metrics: list[dict[str, float]]  # one per alpha, in the order of ``alphas``
    headline: list[str]

    def table(self) -> str:
        """``alpha`` and the headline metrics, one line per ``alpha``."""
        names = self.headline or sorted({k for row in self.metrics for k in row})
        header = ["alpha", *names]
        cells = [
            [f"{alpha:g}", *(_cell(row.get(name)) for name in names)]
            for alpha, row in zip(self.alphas, self.metrics, strict=True)
        ]
        widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in [header, *cells]
        )


def evaluate_wise_ft(
    run: str | Path,
    alphas: Sequence[float],
    output: str | Path | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    start: str | Path | None = None,
    overwrite: bool = False,
) -> WiseFTResult:
    """Score the WiSE-FT mix of ``run`` at every ``alpha`` and write the table and the curve.

    Args:
        run: A fine-tuned run (or checkpoint) folder with ``model.init_from`` in its config.
        alphas: Mixing coefficients in [0, 1] (0: the starting model, 1: the run); sorted,
            duplicates dropped.
        output: Result folder (default ``RUN/wise_ft``).
        batch_size: Images or texts per batch (default the recipe's ``eval.batch_size``).
        device: Where to evaluate (default CUDA when available).
        start: The starting model instead of the run's ``model.init_from`` (a run or export
            folder, or an ``init_from`` source).
        overwrite: Replace a non-empty ``output``.

    Raises:
        ValueError: An ``alpha`` outside [0, 1], no ``alpha``, a run without
            ``model.init_from`` (and no ``start``), models of different architectures, or a
            run whose evaluation gives no metrics.
        FileNotFoundError: The run has no ``config.yaml``.
        FileExistsError: ``output`` is not empty and ``overwrite`` is False.
    """
    values = sorted({check_alpha(alpha) for alpha in alphas})
    if not values:
        raise ValueError("give at least one WiSE-FT alpha in [0, 1], e.g. --alphas 0 0.5 1")
    run = Path(run)
    output = Path(output) if output is not None else run / "wise_ft"
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output} is not empty: choose another --output or pass --overwrite to replace it"
        )
    pair = load_wise_ft(run, start)
    method = pair.method
    if batch_size is not None:
        method.cfg.eval.batch_size = batch_size
    method.to(torch.device(device) if device else _default_device())
    step = _run_step(run)

    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        rows = []
        for alpha in values:
            print(f"WiSE-FT alpha {alpha:g}:")
            metrics = evaluate_during_training(pair.mix(alpha), scratch / alpha_folder(alpha), step)
            if not metrics:
                raise ValueError(
                    f"evaluating {run} gave no metrics: its recipe has no held-out split "
                    "(data.eval_split) or no evaluation task, so there is no trade-off to plot"
                )
            rows.append(metrics)
        result = WiseFTResult(output, values, rows, headline_metrics(rows))
        _write_json(scratch / RESULT_FILE, result, run, pair.start_name)
        save_wise_ft_curve(scratch / PLOT_FILE, values, rows, result.headline)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    scratch.rename(output)
    return result


def headline_metrics(rows: Sequence[dict[str, float]]) -> list[str]:
    """The top-1 metrics (``*recall@1``, ``*acc1``) in order of appearance; without any, the
    metrics that lie in [0, 1] at every ``alpha``; without those, every metric."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    top1 = [name for name in names if name.endswith(HEADLINE_SUFFIXES)]
    if top1:
        return top1
    fractions = [
        name
        for name in names
        if all(0.0 <= row[name] <= 1.0 for row in rows if name in row and math.isfinite(row[name]))
    ]
    return fractions or names


def save_wise_ft_curve(
    path: str | Path,
    alphas: Sequence[float],
    rows: Sequence[dict[str, float]],
    headline: Sequence[str],
) -> Path:
    """Saves the WiSE-FT trade-off as a PNG.

    Left: each headline metric against ``alpha`` (0: the starting model, 1: the fine-tuned
    run). Right, with two or more headline metrics: the last against the first, one point
    per ``alpha`` joined in order and labelled, as in Wortsman et al.'s Figure 1 (their axes:
    the fine-tuning distribution, then the shifted ones). Non-finite values leave gaps.

    Raises:
        ValueError: ``alphas`` and ``rows`` differ in length, or no headline metric.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(alphas) != len(rows):
        raise ValueError(f"{len(alphas)} alphas but {len(rows)} rows of metrics")
    if not headline:
        raise ValueError("no headline metric to plot")
    pair = len(headline) >= 2
    fig = Figure(figsize=(11.0 if pair else 6.0, 4.2), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if pair else 1, squeeze=False)[0]
    ax = axes[0]
    for name in headline:
        ax.plot(alphas, _values(rows, name), marker="o", linewidth=1.4, label=shorten(name, 40))
    ax.set_xlabel("alpha (0: starting model, 1: fine-tuned)")
    ax.set_ylabel("metric")
    ax.set_title("WiSE-FT: metrics against the mixing coefficient", fontsize=11)
    ax.legend(fontsize=8, loc="best")
    if pair:
        x_name, y_name = headline[0], headline[-1]
        xs, ys = _values(rows, x_name), _values(rows, y_name)
        ax = axes[1]
        ax.plot(xs, ys, color="#1f77b4", marker="o", linewidth=1.4, zorder=2)
        ends = {0.0: ("*", "#d62728", "starting model"), 1.0: ("s", "#2ca02c", "fine-tuned")}
        at_point: dict[tuple[float, float], list[str]] = {}  # equal points share one label
        for alpha, x, y in zip(alphas, xs, ys, strict=True):
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            at_point.setdefault((x, y), []).append(f"{alpha:g}")
            if alpha in ends:
                marker, color, name = ends[alpha]
                ax.scatter([x], [y], marker=marker, s=110, color=color, zorder=3, label=name)
        for (x, y), names in at_point.items():
            label = f"alpha={', '.join(names)}"
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
        if any(alpha in ends for alpha in alphas):
            ax.legend(fontsize=8, loc="best")
        ax.set_xlabel(shorten(x_name, 48))
        ax.set_ylabel(shorten(y_name, 48))
        ax.set_title("WiSE-FT trade-off (Wortsman et al. 2022)", fontsize=11)
    for ax in axes:
        ax.grid(True, color="#e0e0e0", linewidth=0.6)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI, facecolor="white", bbox_inches="tight")
    return out


def _values(rows: Sequence[dict[str, float]], name: str) -> list[float]:
    return [float(row.get(name, math.nan)) for row in rows]


def _cell(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _write_json(path: Path, result: WiseFTResult, run: Path, start: str) -> None:
    record: dict[str, Any] = {
        "method": f"WiSE-FT ({PAPER}): (1 - alpha) * start + alpha * fine-tuned",
        "run": str(run),
        "start": start,
        "metrics": list(dict.fromkeys(k for row in result.metrics for k in row)),
        "headline": result.headline,
        "alphas": result.alphas,
        "rows": [
            {"alpha": alpha, "folder": alpha_folder(alpha), "metrics": finite(metrics)}
            for alpha, metrics in zip(result.alphas, result.metrics, strict=True)
        ],
    }
    path.write_text(json.dumps(record, indent=2))


def _run_step(run: Path) -> int:
    """The run's last training step (``history.jsonl``), recorded with each result; else 0."""
    history = run / "history.jsonl"
    if not history.is_file():
        return 0
    lines = history.read_text().splitlines()
    try:
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (ValueError, KeyError, TypeError):
        return 0


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
