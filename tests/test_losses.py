import math

import open_clip.loss as oc_loss
import pytest
import torch
import torch.nn.functional as F

from mmcontrast.losses import ClipLoss, SigLipLoss


def features(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(
        torch.randn(n, d, generator=g), dim=-1
    )


@pytest.mark.parametrize(("n", "d", "scale"), [(2, 4, 1.0), (8, 16, 14.3), (33, 64, 100.0)])
def test_clip_loss_equals_open_clip(n: int, d: int, scale: float) -> None:
    img, txt = features(n, d, n)
    s = torch.tensor(scale)
    ours = ClipLoss()(img, txt, s)
    theirs = oc_loss.ClipLoss()(img, txt, s)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize(
    ("n", "d", "scale", "bias"), [(2, 4, 10.0, -10.0), (8, 16, 3.0, 0.5), (33, 64, 100.0, -5.0)]
)
def test_siglip_loss_equals_open_clip(n: int, d: int, scale: float, bias: float) -> None:
    img, txt = features(n, d, n + 1)
    img.requires_grad_(True)
    ours = SigLipLoss()(img, txt, torch.tensor(scale), torch.tensor(bias))
    theirs = oc_loss.SigLipLoss()(img, txt, torch.tensor(scale), torch.tensor(bias))
    assert torch.allclose(ours, theirs, atol=1e-5)
    (g_ours,) = torch.autograd.grad(ours, img, retain_graph=True)
    (g_theirs,) = torch.autograd.grad(theirs, img)
    assert torch.allclose(g_ours, g_theirs, atol=5e-6 * g_theirs.abs().max().item())


def test_clip_loss_float64_reference() -> None:
    img, txt = (x.double() for x in features(6, 8, 3))
    s = 7.0
    logits = s * img @ txt.T
    ref = 0.0
    for i in range(6):  # cross-entropy written out, both directions
        ref += -math.log(math.exp(logits[i, i]) / sum(math.exp(logits[i, j]) for j in range(6)))
        ref += -math.log(math.exp(logits[i, i]) / sum(math.exp(logits[j, i]) for j in range(6)))
    ref /= 12
    assert ClipLoss()(img, txt, torch.tensor(s, dtype=torch.float64)).item() == pytest.approx(
        ref, abs=1e-12
    )


def test_clip_loss_perfect_alignment_is_small() -> None:
    eye = torch.eye(4)
    assert ClipLoss()(eye, eye, torch.tensor(100.0)).item() < 1e-10


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(torch.zeros(3, 4), torch.zeros(2, 4), torch.tensor(1.0))


def test_loss_inits() -> None:
    assert ClipLoss.init_logit_scale == pytest.approx(math.log(1 / 0.07))
    assert (SigLipLoss.init_logit_scale, SigLipLoss.init_logit_bias) == (pytest.approx(math.log(10)), -10.0)
