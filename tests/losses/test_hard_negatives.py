"""NegCLIP's loss (``negclip``): against a float64 loop written from the paper's definition,
CLIP's loss without negatives, its gradients, its errors, and 2 real gloo processes against
1 process with the whole batch."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import WORLD, run_in_gloo_processes
from torch import Tensor

from mmcontrast import distributed
from mmcontrast.losses import ClipLoss, NegClipLoss
from mmcontrast.registry import LOSSES


def _batch(n: int = 6, m: int = 3, d: int = 8, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)  # noqa: E731
    mask = torch.rand(n, m, generator=g) < 0.6
    mask[0] = True  # a row with every negative
    mask[1] = False  # and one with none
    return {
        "image_features": unit(n, d),
        "text_features": unit(n, d),
        "negative_features": unit(n, m, d),
        "negative_mask": mask,
    }


def reference(batch: dict[str, Tensor], s: float) -> float:
    """The loss, term by term, in float64 Python."""
    img, txt = batch["image_features"].tolist(), batch["text_features"].tolist()
    neg, mask = batch["negative_features"].tolist(), batch["negative_mask"].tolist()
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    n, total = len(img), 0.0
    for i in range(n):
        row = [s * dot(img[i], txt[j]) for j in range(n)]
        row += [s * dot(img[i], h) for h, valid in zip(neg[i], mask[i], strict=True) if valid]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row))) / (2 * n)
    for j in range(n):
        col = [s * dot(img[i], txt[j]) for i in range(n)]
        total += -(col[j] - math.log(sum(math.exp(v) for v in col))) / (2 * n)
    return total


@pytest.mark.parametrize("s", [1.0, 14.3, 100.0])
def test_matches_the_reference(s: float) -> None:
    batch = _batch()
    got = NegClipLoss()(**batch, logit_scale=torch.tensor(s, dtype=torch.float64))
    assert got.item() == pytest.approx(reference(batch, s), rel=1e-10)
    assert LOSSES.get("negclip") is NegClipLoss


def test_without_negatives_it_is_clip_and_negatives_only_add() -> None:
    batch = _batch()
    s = torch.tensor(20.0, dtype=torch.float64)
    none = {**batch, "negative_mask": torch.zeros_like(batch["negative_mask"])}
    clip = ClipLoss()(batch["image_features"], batch["text_features"], s)
    torch.testing.assert_close(NegClipLoss()(**none, logit_scale=s), clip)
    assert NegClipLoss()(**batch, logit_scale=s) > clip


def test_a_negative_reaches_only_its_own_image() -> None:
    batch = _batch()
    for key in ("image_features", "negative_features"):
        batch[key] = batch[key].clone().requires_grad_(True)
    NegClipLoss()(**batch, logit_scale=torch.tensor(10.0, dtype=torch.float64)).backward()
    grads = batch["negative_features"].grad
    assert grads is not None
    valid = batch["negative_mask"]
    assert bool((grads[~valid] == 0).all()) and bool((grads[valid].abs().sum(-1) > 0).all())


def test_gradients() -> None:
    batch = _batch(n=4, m=2, d=5)
    mask = batch.pop("negative_mask")
    inputs = tuple(v.requires_grad_(True) for v in batch.values())
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)

    def f(img: Tensor, txt: Tensor, neg: Tensor, s: Tensor) -> Tensor:
        return NegClipLoss()(img, txt, s, neg, mask)

    assert torch.autograd.gradcheck(f, (*inputs, scale))


def test_bad_shapes_say_what_is_expected() -> None:
    batch = _batch()
    s = torch.tensor(10.0)
    with pytest.raises(ValueError, match=r"shape \[N, M, D\] = \[6, M, 8\]"):
        NegClipLoss()(
            **{**batch, "negative_features": batch["negative_features"][:, :, :4]}, logit_scale=s
        )
    with pytest.raises(ValueError, match="negative_mask must be a bool tensor"):
        NegClipLoss()(**{**batch, "negative_mask": batch["negative_mask"].long()}, logit_scale=s)


# ------------------------------------------------------------------ 2 processes

SIZES = {"equal": (4, 4), "unequal": (3, 5), "empty-rank": (0, 6)}


def _run(batch: dict[str, Tensor], start: int, stop: int, gather: bool) -> dict[str, Any]:
    rows = {k: v[start:stop].clone() for k, v in batch.items()}
    for key in ("image_features", "text_features", "negative_features"):
        rows[key].requires_grad_(True)
    scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    loss = NegClipLoss(gather_distributed=gather)(**rows, logit_scale=scale)
    loss.backward()
    keys = ("image_features", "text_features", "negative_features")
    return {"value": loss.detach(), "grads": [rows[k].grad for k in keys], "scale": scale.grad}


def _job(rank: int) -> dict[str, dict[str, Any]]:
    assert distributed.world_size() == WORLD
    results = {}
    for name, sizes in SIZES.items():
        batch = _batch(n=sum(sizes), seed=len(name))
        start = sum(sizes[:rank])
        results[name] = _run(batch, start, start + sizes[rank], gather=True)
    return results


@pytest.fixture(scope="module")
def per_process(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("negclip_dist")
    return run_in_gloo_processes(_job, root)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SIZES))
def test_two_processes_equal_one_process(per_process: list[dict[str, Any]], name: str) -> None:
    sizes = SIZES[name]
    whole = _run(_batch(n=sum(sizes), seed=len(name)), 0, sum(sizes), gather=False)
    parts = [p[name] for p in per_process]
    for part in parts:
        torch.testing.assert_close(part["value"], whole["value"], atol=0, rtol=1e-10)
    for i, expected in enumerate(whole["grads"]):
        got = torch.cat([part["grads"][i] for part in parts])
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(sum(p["scale"] for p in parts), whole["scale"], atol=0, rtol=1e-8)
