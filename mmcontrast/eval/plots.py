"""Evaluation pictures: a retrieval grid, a confusion matrix and training curves.

All figures are drawn on matplotlib's Agg canvas (``Figure`` + ``FigureCanvasAgg``),
so no display is needed and the global pyplot backend is left untouched.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "eval_panels",
    "save_confusion_matrix",
    "save_retrieval_grid",
    "save_training_curves",
    "topk_texts_to_images",
    "training_curves_figure",
]

_CELL_INCHES = 2.0  # side of one image cell
_LABEL_INCHES = 0.3  # room above each row for the rank labels
_TEXT_CELLS = 1.6  # width of the caption column, in image cells
DPI = 100
_FONT_SIZE = 10.0
_CORRECT_COLOR = "#1a9e3a"
_OTHER_COLOR = "#b0b0b0"
_MISS_COLOR = "#c62828"


@torch.no_grad()
def topk_texts_to_images(
    image_features: Tensor,
    text_features: Tensor,
    k: int,
    max_matrix_elements: int = 2**26,
) -> Tensor:
    """Returns the indices of the k most cosine-similar images for every text.

    Texts are processed in chunks so that at most ``max_matrix_elements``
    similarities (and never less than one row) are held at once. The order among
    exactly tied images is whatever ``torch.topk`` returns.

    Args:
        image_features: Image embeddings ``[Ni, D]``.
        text_features: Text embeddings ``[Nt, D]``.
        k: Number of images per text; clamped to ``Ni``.
        max_matrix_elements: Largest number of similarity entries held at once.

    Returns:
        Long tensor ``[Nt, min(k, Ni)]`` on the image device, best match first.
    """
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError("image_features and text_features must be 2-D [N, D]")
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError("image and text feature dims differ")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = image_features.device
    dtype = torch.promote_types(
        torch.promote_types(image_features.dtype, text_features.dtype), torch.float32
    )
    images = F.normalize(image_features.detach().to(dtype), dim=-1)
    texts = F.normalize(text_features.detach().to(device=device, dtype=dtype), dim=-1)
    n_img, n_txt = images.shape[0], texts.shape[0]
    k = min(k, n_img)
    step = max(1, max_matrix_elements // max(n_img, 1))
    out = torch.empty(n_txt, k, dtype=torch.long, device=device)
    for start in range(0, n_txt, step):
        stop = min(start + step, n_txt)
        out[start:stop] = torch.topk(texts[start:stop] @ images.T, k, dim=1).indices
    return out


def _wrap_caption(caption: str, width_chars: int, max_lines: int) -> str:
    lines = textwrap.wrap(" ".join(caption.split()), width=width_chars, break_long_words=True)
    if not lines:
        return "(empty caption)"
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(width_chars - 1, 1)].rstrip() + "\u2026"
    return "\n".join(lines)


def _thumbnail(image: Image.Image, max_side: int) -> Image.Image:
    thumb = image.convert("RGB")
    thumb.thumbnail((max_side, max_side))
    return thumb


def save_retrieval_grid(
    path: str | Path,
    captions: list[str],
    images: list[Image.Image],
    topk_indices: list[list[int]],
    correct: list[int],
    k: int = 5,
) -> Path:
    """Saves a PNG showing, for each caption, its top-k retrieved images.

    One row per query: the word-wrapped caption on the left, then its first
    ``k`` retrieved images in rank order, each labelled ``#rank``. The correct
    image gets a thick green frame and a check mark; the other images a thin
    grey frame. When the correct image is not among the shown ones, the caption
    cell says so in red. The figure is rendered with matplotlib's Agg canvas
    (no display needed, the global pyplot backend is untouched). The PNG is
    about ``200 * (1.6 + k)`` by ``230 * len(captions) + 10`` pixels.

    Args:
        path: Output PNG path; parent directories are created.
        captions: Query captions, one per row.
        images: Image gallery that ``topk_indices`` and ``correct`` index into.
        topk_indices: For each caption, retrieved gallery indices, best first
            (e.g. rows of :func:`topk_texts_to_images`); only the first ``k``
            are drawn.
        correct: For each caption, the gallery index of its correct image.
        k: Number of retrieved images shown per row.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: On mismatched lengths, an empty query list, ``k < 1`` or
            out-of-range image indices.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows = len(captions)
    if n_rows == 0:
        raise ValueError("need at least one caption")
    if len(topk_indices) != n_rows or len(correct) != n_rows:
        raise ValueError(
            f"captions ({n_rows}), topk_indices ({len(topk_indices)}) and correct "
            f"({len(correct)}) must have the same length"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows = [[int(i) for i in list(row)[:k]] for row in topk_indices]
    wanted = {i for row in rows for i in row} | {int(c) for c in correct}
    bad = sorted(i for i in wanted if not 0 <= i < len(images))
    if bad:
        raise ValueError(f"image indices out of range [0, {len(images)}): {bad[:5]}")

    max_side = int(_CELL_INCHES * DPI * 1.5)
    thumbs = {i: _thumbnail(images[i], max_side) for i in sorted({i for r in rows for i in r})}

    width_in = _CELL_INCHES * (_TEXT_CELLS + k)
    height_in = (_CELL_INCHES + _LABEL_INCHES) * n_rows + 0.1
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        n_rows,
        k + 1,
        width_ratios=[_TEXT_CELLS] + [1.0] * k,
        left=0.1 / width_in,
        right=1 - 0.1 / width_in,
        top=1 - _LABEL_INCHES / height_in,
        bottom=0.1 / height_in,
        wspace=0.08,
        hspace=_LABEL_INCHES / _CELL_INCHES,
    )
    label_dy = 0.06 / height_in
    text_width_pt = _CELL_INCHES * _TEXT_CELLS * 72 * 0.92
    wrap_chars = max(8, int(text_width_pt / (_FONT_SIZE * 0.55)))
    max_lines = max(1, int(_CELL_INCHES * 72 * 0.75 / (_FONT_SIZE * 1.25)))

    for r, (caption, row, target) in enumerate(zip(captions, rows, correct, strict=True)):
        text_ax = fig.add_subplot(grid[r, 0])
        text_ax.axis("off")
        text_ax.text(
            0.0,
            0.5,
            _wrap_caption(caption, wrap_chars, max_lines),
            fontsize=_FONT_SIZE,
            va="center",
            ha="left",
            transform=text_ax.transAxes,
            linespacing=1.25,
        )
        if int(target) not in row:
            text_ax.text(
                0.0,
                0.02,
                f"correct image not in top-{k}",
                fontsize=_FONT_SIZE * 0.85,
                color=_MISS_COLOR,
                va="bottom",
                ha="left",
                transform=text_ax.transAxes,
                fontweight="bold",
            )
        for c in range(k):
            ax = fig.add_subplot(grid[r, c + 1])
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.axis("off")
                continue
            index = row[c]
            hit = index == int(target)
            ax.imshow(thumbs[index])
            ax.set_aspect("equal")
            color = _CORRECT_COLOR if hit else _OTHER_COLOR
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(5.0 if hit else 0.8)
            cell = grid[r, c + 1].get_position(fig)  # rank labels aligned per row
            fig.text(
                (cell.x0 + cell.x1) / 2,
                cell.y1 + label_dy,
                f"#{c + 1} \u2713 correct" if hit else f"#{c + 1}",
                fontsize=_FONT_SIZE * 0.9,
                color=_CORRECT_COLOR if hit else "#444444",
                fontweight="bold" if hit else "normal",
                ha="center",
                va="bottom",
            )

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI, facecolor="white")
    return out


# Confusion matrix layout: one square cell per class pair, sized so the matrix is
# 6-16 inches wide; cells are annotated only while the text fits.
_CM_MATRIX_INCHES = 14.0
_CM_CELL_MIN, _CM_CELL_MAX = 0.16, 0.6  # inches
_CM_ANNOTATE_MAX = 25  # largest number of shown classes with per-cell numbers
_CM_NAME_CHARS_FEW, _CM_NAME_CHARS_MANY = 24, 18


def shorten(name: str, max_chars: int) -> str:
    name = " ".join(str(name).split())
    return name if len(name) <= max_chars else name[: max_chars - 1].rstrip() + "\u2026"


def _check_matrix(matrix: Tensor, class_names: Sequence[str], max_classes: int) -> Tensor:
    counts = torch.as_tensor(matrix).detach().cpu()
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"matrix must be square [C, C] with C >= 1, got {tuple(counts.shape)}")
    if len(class_names) != counts.shape[0]:
        raise ValueError(f"got {len(class_names)} class names for a {counts.shape[0]}-class matrix")
    if max_classes < 1:
        raise ValueError(f"max_classes must be >= 1, got {max_classes}")
    counts = counts.to(torch.float64)
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("matrix entries must be finite and non-negative counts")
    return counts


def save_confusion_matrix(
    path: str | Path,
    matrix: Tensor,
    class_names: Sequence[str],
    normalize: bool = True,
    max_classes: int = 100,
) -> Path:
    """Saves a confusion matrix as a PNG heat map.

    Rows are true classes, columns predicted classes (the layout of
    :func:`~mmcontrast.eval.classification.confusion_matrix`). Cell colours are
    always row-normalised (the fraction of the true class predicted as the
    column, so the diagonal is each class's recall and large classes do not
    drown small ones); rows without samples are grey. With at most 25 shown
    classes every non-zero cell is annotated, with its row percentage when
    ``normalize`` is True or its raw count otherwise, and cell borders are drawn;
    with more classes the annotations are dropped and the cells, fonts and
    labels shrink (the figure grows to about 16 inches for 100 classes).
    Class names longer than 24 characters (18 with more than 25 classes) are
    cut with an ellipsis; column labels are rotated. The title gives the
    accuracy, the mean per-class recall and the number of samples, over the
    full matrix.

    When the matrix has more than ``max_classes`` classes, only the
    ``max_classes`` classes involved in the most errors (off-diagonal entries
    of their row plus column) are drawn, in label order, and the title says so;
    their colours still use the full row totals.

    Args:
        path: Output PNG path; parent directories are created.
        matrix: Counts ``[C, C]`` (any real dtype, non-negative).
        class_names: The C class names, in label order.
        normalize: Annotate row percentages (True) or raw counts (False).
        max_classes: Most classes drawn.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: On a non-square or empty matrix, a name count other than C,
            negative or non-finite entries, or ``max_classes < 1``.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = _check_matrix(matrix, class_names, max_classes)
    n_classes = counts.shape[0]
    diag = counts.diagonal()
    row_totals, col_totals = counts.sum(1), counts.sum(0)
    total = float(counts.sum())
    present = row_totals > 0
    accuracy = float(diag.sum()) / total if total else math.nan
    mean_recall = float((diag[present] / row_totals[present]).mean()) if present.any() else math.nan

    shown = torch.arange(n_classes)
    note = ""
    if n_classes > max_classes:
        errors = row_totals + col_totals - 2 * diag
        order = sorted(range(n_classes), key=lambda i: (-float(errors[i]), i))
        shown = torch.tensor(sorted(order[:max_classes]))
        note = f"\nshowing the {max_classes} of {n_classes} classes with the most errors"
    m = len(shown)
    sub = counts[shown][:, shown]
    totals = row_totals[shown, None]
    fractions = torch.where(totals > 0, sub / totals.clamp_min(1e-300), torch.nan)

    cell = min(_CM_CELL_MAX, max(_CM_CELL_MIN, _CM_MATRIX_INCHES / m))
    few = m <= _CM_ANNOTATE_MAX
    tick_size = min(10.0, max(5.0, cell * 72 * 0.6))
    name_chars = _CM_NAME_CHARS_FEW if few else _CM_NAME_CHARS_MANY
    names = [shorten(class_names[int(i)], name_chars) for i in shown]
    label_in = max(len(n) for n in names) * tick_size * 0.6 / 72 + 0.6
    side = max(cell * m, 4.0)  # room for the title
    fig = Figure(figsize=(side + label_in + 1.5, side + label_in + 1.2), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(fractions.numpy(), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046 * max(1.0, 6.0 / side), pad=0.02)
    colorbar.set_label("fraction of the true class (row-normalised)", fontsize=9)

    ax.set_xticks(range(m), names, fontsize=tick_size)
    ax.set_yticks(range(m), names, fontsize=tick_size)
    if few:
        for label in ax.get_xticklabels():
            label.set(rotation=45, ha="right", rotation_mode="anchor")
        ax.set_xticks([i - 0.5 for i in range(m + 1)], minor=True)
        ax.set_yticks([i - 0.5 for i in range(m + 1)], minor=True)
        ax.grid(which="minor", color="white", linewidth=1.0)
        ax.tick_params(which="minor", length=0)
        text_size = min(10.0, max(6.0, cell * 72 * 0.32))
        for r in range(m):
            for c in range(m):
                count = float(sub[r, c])
                if count == 0:
                    continue
                frac = float(fractions[r, c])
                if normalize:
                    pct = 100 * frac
                    text = "<1" if 0 < pct < 0.5 else f"{pct:.0f}"
                else:
                    text = f"{count:.0f}" if count.is_integer() else f"{count:.3g}"
                color = "white" if frac > 0.6 else "#1a1a1a"
                ax.text(c, r, text, ha="center", va="center", fontsize=text_size, color=color)
    else:
        for label in ax.get_xticklabels():
            label.set(rotation=90, ha="center")
        ax.tick_params(length=2, pad=1)
    ax.set_xlabel("predicted class", fontsize=10)
    ax.set_ylabel("true class", fontsize=10)
    unit = " (cells: % of row)" if few and normalize else " (cells: counts)" if few else ""
    ax.set_title(
        f"Confusion matrix{unit}\naccuracy {100 * accuracy:.1f}%, mean per-class recall "
        f"{100 * mean_recall:.1f}%, {total:.0f} samples{note}",
        fontsize=10,
    )

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI, facecolor="white", bbox_inches="tight")
    return out


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` finite values (NaN stays a gap)."""
    out: list[float] = []
    recent: list[float] = []
    for v in values:
        if math.isfinite(v):
            recent = (recent + [v])[-window:]
            out.append(sum(recent) / len(recent))
        else:
            out.append(math.nan)
    return out


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(float(r["step"]), float(r[key])) for r in records if _numeric(r.get(key))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _check_records(records: Any, name: str) -> list[dict[str, Any]]:
    if not isinstance(records, Sequence) or isinstance(records, str | bytes):
        raise ValueError(f"{name} must be a list of dicts, got {type(records).__name__}")
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not _numeric(record.get("step")):
            raise ValueError(f"{name}[{i}] must be a dict with a numeric 'step', got {record!r}")
    return list(records)


# Evaluation metrics by name (the part after any ``TASK/`` prefix): fractions in [0, 1]
# (recall@k, accuracies, top-k, mean per-class recall), ranks, and chosen hyper-parameters
# (the linear probe's ``lp_weight_decay``), which are no score and are not drawn.
_FRACTION = re.compile(r"(recall@\d+|(^|_)acc\d+|accuracy|mean_per_class_recall|top-?\d+)$")
_RANK = re.compile(r"_rank$")
_HYPERPARAMETER = re.compile(r"^lp_|weight_decay$")


_EVAL_LABELS = {"fraction": "eval (fraction)", "rank": "eval rank (lower: better)", "other": "eval"}


def eval_panels(names: Sequence[str]) -> dict[str, list[str]]:
    """Sorts evaluation metric names into the panels of the training curves.

    Returns ``{"fraction": [...], "rank": [...], "other": [...]}`` in the order given:
    recall@k, accuracies (``acc1``, ``knn20_acc5``, ``lp_acc1``, ``accuracy``), top-k and
    mean per-class recall are fractions; names ending in ``_rank`` are ranks; chosen
    hyper-parameters (``lp_*`` that are not scores, ``*weight_decay``) are left out; the
    rest (losses, custom scores) go to "other". A ``TASK/`` prefix is ignored.

    Example:
        >>> eval_panels(["acc1", "image_retrieval_median_rank", "lp_weight_decay", "loss"])
        {'fraction': ['acc1'], 'rank': ['image_retrieval_median_rank'], 'other': ['loss']}
    """
    panels: dict[str, list[str]] = {"fraction": [], "rank": [], "other": []}
    for name in names:
        base = name.rpartition("/")[2]
        if _FRACTION.search(base):
            panels["fraction"].append(name)
        elif _RANK.search(base):
            panels["rank"].append(name)
        elif not _HYPERPARAMETER.search(base):
            panels["other"].append(name)
    return panels


def save_training_curves(
    path: str | Path,
    history: list[dict[str, Any]],
    eval_history: list[dict[str, Any]] | None = None,
) -> Path:
    """Saves loss, learning rate and evaluation metrics against step as a PNG.

    Panels, top to bottom, sharing the step axis:

    * ``loss`` of every training record; with 25 or more points the raw curve is
      drawn faintly under a trailing moving average (window ``n // 25``). The
      axis is logarithmic when the loss is positive and spans over 20x.
    * ``lr``, when the records have it.
    * Evaluation metrics from ``eval_history`` (one line with markers per key,
      ``step`` and ``epoch`` excluded), sorted by name (:func:`eval_panels`):
      fractions (recall@k, accuracies) on a [0, 1] panel, ranks on their own
      panel (logarithmic when they span over 20x), any other metric on a last
      one; chosen hyper-parameters such as ``lp_weight_decay`` are not drawn.

    Non-numeric and non-finite values are skipped (NaN leaves a gap); records
    may carry other keys (``pairs_per_s``, temperatures), which are ignored.

    Args:
        path: Output PNG path; parent directories are created.
        history: Training records, each ``{"step", "loss", "lr", ...}`` (the
            trainer's ``history`` / ``history.jsonl`` rows).
        eval_history: Evaluation records, each ``{"step": int, metric: float,
            ...}``; None or empty for none.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: If a record is not a dict with a numeric ``step``, or no
            record has a numeric ``loss``.
    """
    fig = training_curves_figure(history, eval_history)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI, facecolor="white", bbox_inches="tight")
    return out


def training_curves_figure(
    history: list[dict[str, Any]], eval_history: list[dict[str, Any]] | None = None
) -> Figure:
    """The matplotlib ``Figure`` that :func:`save_training_curves` writes (same arguments
    and errors); each drawn series is a line labelled with its metric name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = _check_records(history, "history")
    evals = _check_records(eval_history or [], "eval_history")
    steps, losses = _series(records, "loss")
    if not any(math.isfinite(v) for v in losses):
        raise ValueError("history has no record with a finite numeric 'loss'")
    lr_steps, lrs = _series(records, "lr")

    metric_names = list(
        dict.fromkeys(
            k for r in evals for k, v in r.items() if k not in ("step", "epoch") and _numeric(v)
        )
    )
    drawn = [n for n in metric_names if any(math.isfinite(v) for v in _series(evals, n)[1])]
    by_panel = eval_panels(drawn)

    panels: list[tuple[str, float]] = [("loss", 2.0)]
    if lrs:
        panels.append(("lr", 1.0))
    heights = {"fraction": 2.0, "rank": 1.6, "other": 1.6}
    panels += [(kind, heights[kind]) for kind, names in by_panel.items() if names]
    fig = Figure(figsize=(9.0, 1.0 + 1.6 * sum(h for _, h in panels)), dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(panels), 1, height_ratios=[h for _, h in panels], hspace=0.12)
    axes: list[Any] = []
    for i, (kind, _) in enumerate(panels):
        ax = fig.add_subplot(grid[i], sharex=axes[0] if axes else None)
        ax.grid(True, color="#e0e0e0", linewidth=0.6)
        axes.append(ax)
        if kind == "loss":
            window = len(losses) // 25
            if window > 1:
                ax.plot(steps, losses, color="#1f77b4", alpha=0.3, linewidth=0.8, label="loss")
                ax.plot(
                    steps,
                    _moving_average(losses, window),
                    color="#1f77b4",
                    linewidth=1.6,
                    label=f"loss, mean of last {window}",
                )
                ax.legend(fontsize=8, loc="upper right")
            else:
                ax.plot(steps, losses, color="#1f77b4", linewidth=1.4, marker=".")
            finite = [v for v in losses if math.isfinite(v)]
            if min(finite) > 0 and max(finite) / min(finite) > 20:
                ax.set_yscale("log")
            ax.set_ylabel("train loss")
            ax.set_title("Training curves", fontsize=11)
        elif kind == "lr":
            ax.plot(lr_steps, lrs, color="#ff7f0e", linewidth=1.4)
            ax.set_ylabel("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        else:
            names = by_panel[kind]
            for name in names:
                ax.plot(*_series(evals, name), marker="o", markersize=3, linewidth=1.2, label=name)
            if kind == "rank":
                ranks = [v for n in names for v in _series(evals, n)[1] if math.isfinite(v)]
                if min(ranks) > 0 and max(ranks) / min(ranks) > 20:
                    ax.set_yscale("log")
            ax.set_ylabel(_EVAL_LABELS[kind])
            ax.legend(
                fontsize=8,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                ncol=1 + len(names) // 16,
                frameon=False,
            )
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("step")
    return fig
