"""SimSiam and VICReg: heads as the papers, a training step, SimSiam's stop-gradient, the
VICReg loss options, a few steps of the loop and an exact resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    RECIPES,
    assert_resume_is_exact,
    tiny_vision_overrides,
)
from torch import nn

from mmcontrast.config import load_recipe
from mmcontrast.methods import build_method
from mmcontrast.pipeline import train

SMALL_HEADS = {
    "simsiam": [
        "method_args.hidden_dim=32",
        "method_args.out_dim=16",
        "method_args.predictor_dim=8",
    ],
    "vicreg": ["method_args.expander_dims=[32, 32]"],
}


def overrides(method: str, data: Path, output: Path) -> list[str]:
    return [
        f"method={method}",
        *SMALL_HEADS[method],
        *tiny_vision_overrides(data, output),
        "eval.knn_k=[3]",
        "eval.batch_size=16",
    ]


def build(method: str, data: Path, output: Path, extra: tuple[str, ...] = ()) -> Any:
    return build_method(load_recipe(None, [*overrides(method, data, output), *extra]))


def first_batch(method: Any) -> dict[str, Any]:
    dataset, collate = method.train_data()
    return collate([dataset[i] for i in range(8)])


@pytest.mark.parametrize("name", ["simsiam", "vicreg"])
def test_one_step_trains_everything(name: str, labelled_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = build(name, labelled_dir, tmp_path)
    batch = first_batch(method)
    before = {k: v.detach().clone() for k, v in method.state_dict().items()}
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    out = method(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.requires_grad for p in method.parameters()), "no momentum target here"
    assert all(p.grad is not None for p in method.parameters())
    optimizer.step()
    method.after_optimizer_step(1, 10)
    after = method.state_dict()
    weights = [k for k in after if "weight" in k]
    assert all(not torch.equal(before[k], after[k]) for k in weights), "a layer did not move"
    if name == "simsiam":
        assert -1.0 <= out["loss"].item() <= 1.0
        assert 0.0 < out["output_std"].item() < 1.0 and not out["output_std"].requires_grad


def test_simsiam_heads_follow_the_paper(labelled_dir: Path, tmp_path: Path) -> None:
    method = build("simsiam", labelled_dir, tmp_path)
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    norms = [m for m in method.projector if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 32), (32, 16)]
    assert all(m.bias is None for m in linears)  # each feeds a BatchNorm
    assert len(norms) == 3 and isinstance(method.projector[-1], nn.BatchNorm1d)
    assert not method.projector[-1].affine  # the output BatchNorm, no ReLU after it
    pred = [m for m in method.predictor if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in pred] == [(16, 8), (8, 16)]
    assert isinstance(method.predictor[1], nn.BatchNorm1d)


def test_simsiam_target_branch_gets_no_gradient(labelled_dir: Path, tmp_path: Path) -> None:
    """The method's gradient is the one with each view's projection a constant target, and
    differs from the one without the stop-gradient."""
    torch.manual_seed(0)
    method = build("simsiam", labelled_dir, tmp_path)
    x0, x1 = first_batch(method)["views"][:2]
    params = [p for p in method.parameters()]

    def grads(stop_gradient: bool) -> list[torch.Tensor]:
        z0 = method.projector(method.backbone(pixel_values=x0))
        z1 = method.projector(method.backbone(pixel_values=x1))
        t0, t1 = (z0.detach(), z1.detach()) if stop_gradient else (z0, z1)
        p0, p1 = method.predictor(z0), method.predictor(z1)
        cos = F.cosine_similarity(p0, t1).mean() + F.cosine_similarity(p1, t0).mean()
        return list(torch.autograd.grad(-cos / 2, params))

    ours = torch.autograd.grad(method({"views": [x0, x1]})["loss"], params)
    for mine, expected in zip(ours, grads(stop_gradient=True), strict=True):
        torch.testing.assert_close(mine, expected)
    without = grads(stop_gradient=False)
    backbone = [
        i for i, (n, _) in enumerate(method.named_parameters()) if n.startswith("backbone.")
    ]
    assert any(not torch.allclose(ours[i], without[i]) for i in backbone)


def test_vicreg_weights_reach_the_loss(labelled_dir: Path, tmp_path: Path) -> None:
    method = build("vicreg", labelled_dir, tmp_path, ("method_args.mu_param=10",))
    loss = method.loss_fn
    assert (loss.lambda_param, loss.mu_param, loss.nu_param) == (25.0, 10.0, 1.0)
    assert loss.gather_distributed and method.loss_is_global()
    expander = [m for m in method.expander if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in expander] == [(64, 32), (32, 32)]
    overridden = build("vicreg", labelled_dir, tmp_path, ("loss.kwargs.nu_param=0.5",))
    assert overridden.loss_fn.nu_param == 0.5
    local = build("vicreg", labelled_dir, tmp_path, ("loss.gather_distributed=false",))
    assert not local.loss_is_global()


@pytest.mark.parametrize("name", ["simsiam", "vicreg"])
def test_a_few_steps_of_the_loop(name: str, labelled_dir: Path, tmp_path: Path) -> None:
    cfg = load_recipe(
        RECIPES / f"{name}-fashion-mnist.yaml",
        [
            *overrides(name, labelled_dir, tmp_path),
            "train.max_steps=4",
            "train.warmup_steps=1",
            "train.log_every=1",
            "data.num_workers=0",
            "augment.batched=false",  # the recipe batches views of in-memory Fashion-MNIST
            "eval.linear_probe=false",
        ],
    )
    summary = train(cfg)
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert "knn3_acc1" in summary["eval"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simsiam", "vicreg"])
def test_resume_is_exact(name: str, labelled_dir: Path, tmp_path: Path) -> None:
    """Stop mid-epoch and resume: the same losses and weights, BatchNorm statistics included."""
    _, a = assert_resume_is_exact(overrides(name, labelled_dir, tmp_path), tmp_path)
    assert any("running_mean" in k for k in a)
