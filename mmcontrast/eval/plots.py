"""Visual checks for retrieval: top-k lookup and a caption -> images PNG grid."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["save_retrieval_grid", "topk_texts_to_images"]

_CELL_INCHES = 2.0  # side of one image cell
_LABEL_INCHES = 0.3  # room above each row for the rank labels
_TEXT_CELLS = 1.6  # width of the caption column, in image cells
_DPI = 100
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

    max_side = int(_CELL_INCHES * _DPI * 1.5)
    thumbs = {i: _thumbnail(images[i], max_side) for i in sorted({i for r in rows for i in r})}

    width_in = _CELL_INCHES * (_TEXT_CELLS + k)
    height_in = (_CELL_INCHES + _LABEL_INCHES) * n_rows + 0.1
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI)
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
    fig.savefig(out, format="png", dpi=_DPI, facecolor="white")
    return out
