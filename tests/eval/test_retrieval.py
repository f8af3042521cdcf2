"""Tests for mmcontrast.eval.retrieval and mmcontrast.eval.plots."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmcontrast.eval.plots import save_retrieval_grid, topk_texts_to_images
from mmcontrast.eval.retrieval import format_table, retrieval_metrics, retrieval_ranks

KS = (1, 2, 5, 10)


def _brute_force(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: tuple[int, ...],
    ties: str = "pessimistic",
) -> dict[str, float]:
    """Reference metrics from the full similarity matrix, with Python loops."""
    sims = (
        F.normalize(text_features.double(), dim=-1) @ F.normalize(image_features.double(), dim=-1).T
    ).tolist()
    t2i = text_to_image.tolist()
    n_txt, n_img = len(sims), len(sims[0])
    # Sort candidates by decreasing similarity; on a tie the correct item goes last
    # (pessimistic) or first (optimistic). A query's rank is the first correct position.
    loses_ties = ties == "pessimistic"

    def first_correct_rank(scores: list[float], is_correct: list[bool]) -> int:
        order = sorted(
            range(len(scores)),
            key=lambda j: (-scores[j], is_correct[j] if loses_ties else not is_correct[j]),
        )
        return next(pos for pos, j in enumerate(order, start=1) if is_correct[j])

    t2i_ranks = [
        first_correct_rank(sims[t], [i == t2i[t] for i in range(n_img)]) for t in range(n_txt)
    ]
    i2t_ranks = []
    for i in range(n_img):
        is_correct = [t2i[t] == i for t in range(n_txt)]
        if any(is_correct):
            i2t_ranks.append(first_correct_rank([sims[t][i] for t in range(n_txt)], is_correct))
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = sum(r <= k for r in t2i_ranks) / n_txt
        out[f"text_retrieval_recall@{k}"] = sum(r <= k for r in i2t_ranks) / len(i2t_ranks)
    out["image_retrieval_mean_rank"] = statistics.fmean(t2i_ranks)
    out["image_retrieval_median_rank"] = float(statistics.median(t2i_ranks))
    out["text_retrieval_mean_rank"] = statistics.fmean(i2t_ranks)
    out["text_retrieval_median_rank"] = float(statistics.median(i2t_ranks))
    return out


def _captions_per_image(n_img: int, gen: torch.Generator) -> torch.Tensor:
    """0 to 3 captions per image (some images have none), shuffled order."""
    counts = torch.randint(0, 4, (n_img,), generator=gen)
    counts[0] = max(int(counts[0]), 1)
    t2i = torch.repeat_interleave(torch.arange(n_img), counts)
    return t2i[torch.randperm(len(t2i), generator=gen)]


def _tied_features(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """Vectors with four entries in {-1, 1}, rest 0: normalised entries are +-0.5,
    so every cosine similarity is an exact multiple of 0.25 (many exact ties)."""
    x = torch.zeros(n, dim)
    for row in range(n):
        cols = torch.randperm(dim, generator=gen)[:4]
        x[row, cols] = torch.randint(0, 2, (4,), generator=gen).float() * 2 - 1
    return x


def _assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_matches_brute_force_random_with_duplicates(seed: int, ties: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    n_img, dim = 40, 8
    images = torch.randn(n_img, dim, generator=gen, dtype=torch.float64)
    images[5] = images[3]  # planted duplicate images
    images[17] = 3.0 * images[3]  # same direction, different norm
    t2i = _captions_per_image(n_img, gen)
    texts = images[t2i] + 0.9 * torch.randn(len(t2i), dim, generator=gen, dtype=torch.float64)
    texts[1] = texts[0]  # planted duplicate texts
    texts[2] = texts[0]
    got = retrieval_metrics(images, texts, t2i, ks=KS, ties=ties)
    _assert_close(got, _brute_force(images, texts, t2i, KS, ties))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_matches_brute_force_exact_ties(seed: int, ties: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    n_img = 30
    images = _tied_features(n_img, 6, gen)
    t2i = _captions_per_image(n_img, gen)
    texts = _tied_features(len(t2i), 6, gen)
    texts[: len(t2i) // 3] = images[t2i[: len(t2i) // 3]]  # some texts equal their image
    full = retrieval_metrics(images, texts, t2i, ks=KS, ties=ties)
    _assert_close(full, _brute_force(images, texts, t2i, KS, ties))
    # Exact arithmetic: chunking cannot change anything, down to one row per chunk.
    for kwargs in ({"max_matrix_elements": 1}, {"max_matrix_elements": 70}, {"chunk_size": 4}):
        assert retrieval_metrics(images, texts, t2i, ks=KS, ties=ties, **kwargs) == full


def test_chunked_equals_unchunked_float32() -> None:
    gen = torch.Generator().manual_seed(7)
    n_img, dim = 300, 32
    images = torch.randn(n_img, dim, generator=gen)
    t2i = _captions_per_image(n_img, gen)
    texts = images[t2i] + torch.randn(len(t2i), dim, generator=gen)
    full = retrieval_ranks(images, texts, t2i)
    for kwargs in ({"max_matrix_elements": 1}, {"max_matrix_elements": 1000}, {"chunk_size": 17}):
        chunked = retrieval_ranks(images, texts, t2i, **kwargs)
        assert torch.equal(full[0], chunked[0]) and torch.equal(full[1], chunked[1])
    assert retrieval_metrics(images, texts, t2i, max_matrix_elements=3 * n_img) == (
        retrieval_metrics(images, texts, t2i)
    )


def test_hand_made_case() -> None:
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # image 2 has no caption
    texts = torch.tensor([[1.0, 0.1], [0.1, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    t2i = torch.tensor([0, 0, 1, 1])
    m = retrieval_metrics(images, texts, t2i, ks=(1, 5))
    # text -> image ranks: t0 -> 1, t1 -> 2 (i1 wins), t2 -> 1, t3 -> 2 (i2 wins).
    assert m["image_retrieval_recall@1"] == 0.5
    assert m["image_retrieval_recall@5"] == 1.0
    assert m["image_retrieval_mean_rank"] == 1.5
    assert m["image_retrieval_median_rank"] == 1.5
    # image -> text: i0 -> t0 first (rank 1); i1's best caption t2 (0.8) loses to t1
    # (0.995), rank 2; i2 is excluded (CLIP_benchmark would count it as a miss).
    assert m["text_retrieval_recall@1"] == 0.5
    assert m["text_retrieval_recall@5"] == 1.0
    assert m["text_retrieval_mean_rank"] == 1.5
    assert m["text_retrieval_median_rank"] == 1.5
    assert set(m) == {
        f"{d}_retrieval_{s}"
        for d in ("image", "text")
        for s in ("recall@1", "recall@5", "mean_rank", "median_rank")
    }
    t2i_ranks, i2t_ranks = retrieval_ranks(images, texts, t2i)
    assert t2i_ranks.tolist() == [1, 2, 1, 2]
    assert i2t_ranks.tolist() == [1, 2, 0]


def test_collapsed_embeddings_tie_rules() -> None:
    n = 10
    feats = torch.ones(n, 4)
    t2i = torch.arange(n)
    pess = retrieval_metrics(feats, feats, t2i, ks=(1, 10))
    assert pess["image_retrieval_recall@1"] == 0.0
    assert pess["text_retrieval_recall@1"] == 0.0
    assert pess["image_retrieval_recall@10"] == 1.0
    assert pess["image_retrieval_median_rank"] == float(n)
    opt = retrieval_metrics(feats, feats, t2i, ks=(1,), ties="optimistic")
    assert opt["image_retrieval_recall@1"] == 1.0
    assert opt["text_retrieval_mean_rank"] == 1.0


def test_multiple_captions_tied_with_each_other() -> None:
    # Both captions of image 0 tie with each other and with a caption of image 1.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t2i = torch.tensor([0, 0, 1, 1])
    _, i2t = retrieval_ranks(images, texts, t2i)
    assert i2t.tolist() == [2, 1]  # only the image-1 caption beats image 0 (on a tie)
    _, i2t = retrieval_ranks(images, texts, t2i, ties="optimistic")
    assert i2t.tolist() == [1, 1]


def test_half_precision_and_input_checks() -> None:
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(20, 8, generator=gen)
    t2i = torch.arange(20)
    texts = images + 0.1 * torch.randn(20, 8, generator=gen)
    m16 = retrieval_metrics(images.half(), texts.bfloat16(), t2i)
    assert m16["image_retrieval_recall@10"] == 1.0
    with pytest.raises(ValueError):
        retrieval_metrics(images, texts, torch.full((20,), 20))
    with pytest.raises(ValueError):
        retrieval_metrics(images, texts[:5], t2i)
    with pytest.raises(ValueError):
        retrieval_metrics(images, texts, t2i.float())
    with pytest.raises(ValueError):
        retrieval_metrics(images, texts, t2i, ks=(0,))
    bad = texts.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError):
        retrieval_metrics(images, bad, t2i)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(11)
    images = _tied_features(50, 6, gen)
    t2i = _captions_per_image(50, gen)
    texts = _tied_features(len(t2i), 6, gen)
    cpu = retrieval_metrics(images, texts, t2i, ks=KS)
    gpu = retrieval_metrics(images.cuda(), texts.cuda(), t2i.cuda(), ks=KS, max_matrix_elements=64)
    assert cpu == gpu
    assert topk_texts_to_images(images.cuda(), texts.cuda(), 3).device.type == "cuda"


def test_format_table() -> None:
    images = torch.eye(3)
    m = retrieval_metrics(images, images, torch.arange(3), ks=(1, 5, 10))
    table = format_table(m)
    lines = table.splitlines()
    assert "R@1" in lines[0] and "R@10" in lines[0] and "median rank" in lines[0]
    assert lines[2].startswith("text->image") and lines[3].startswith("image->text")
    assert "100.00" in lines[2] and "1.0" in lines[3]
    assert "-" in format_table({"image_retrieval_recall@1": 0.5}).splitlines()[3]


def test_topk_texts_to_images_chunked() -> None:
    gen = torch.Generator().manual_seed(5)
    images = torch.randn(50, 16, generator=gen)
    texts = torch.randn(30, 16, generator=gen)
    want = torch.topk(F.normalize(texts, dim=-1) @ F.normalize(images, dim=-1).T, 5).indices
    assert torch.equal(topk_texts_to_images(images, texts, 5), want)
    assert torch.equal(topk_texts_to_images(images, texts, 5, max_matrix_elements=120), want)
    assert topk_texts_to_images(images[:3], texts, 5).shape == (30, 3)


def test_save_retrieval_grid(tmp_path) -> None:
    colors = [(220, 60, 60), (60, 160, 60), (60, 60, 220), (230, 200, 40)]
    sizes = [(64, 48), (40, 64), (50, 50), (80, 30)]
    images = [Image.new("RGB", s, c) for s, c in zip(sizes, colors, strict=True)]
    images[3] = images[3].convert("L")  # non-RGB input is fine
    captions = ["a red box", "a long caption " * 20]
    topk = [[0, 1, 2], [3, 2, 1, 0]]
    out = save_retrieval_grid(tmp_path / "sub" / "grid.png", captions, images, topk, [0, 0], k=3)
    assert out.exists()
    with Image.open(out) as png:
        width, height = png.size
        assert png.format == "PNG"
    # Documented size: about 200 * (1.6 + k) by 230 * rows + 10 pixels.
    assert abs(width - 200 * (1.6 + 3)) <= 4
    assert abs(height - (230 * 2 + 10)) <= 4
    with pytest.raises(ValueError):
        save_retrieval_grid(tmp_path / "bad.png", captions, images, topk, [0], k=3)
    with pytest.raises(ValueError):
        save_retrieval_grid(tmp_path / "bad.png", captions, images, [[0], [9]], [0, 0], k=3)
