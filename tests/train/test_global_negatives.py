"""Global negatives in the loop: 2 gloo processes x batch B train like 1 process x 2B.

Each process runs the real loop (``train``) under accelerate's MULTI_CPU with DDP. The
loader gives process r batches r, r+2, ... of one shuffled order, so a step's two B-batches
are, in rank order, the 2B-batch of one process; views and captions are seeded per sample.
Losses per step and final weights must match (float32, 1e-5) with ``loss.gather_distributed``
on; with local negatives, or without the loop's x P before ``backward``, they must not.

The runs use SGD: the gradients agree to float32 rounding (about 1e-6 here, the size of the
float32-vs-float64 error of one process), which AdamW's first, nearly sign-like steps turn
into weight differences of up to 3e-5 at lr 1e-3 for entries whose gradient is near its eps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import (
    QUICKSTART,
    WORLD,
    Case,
    assert_same_weights,
    clip_run,
    run_result,
    train_in_one_process,
    train_worker,
)

B = 4
VIT = (
    "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, "
    "image_size: 16, patch_size: 8}"
)


def simclr_run(labelled_16: Path, batch: int, extra: tuple[str, ...] = ()) -> list[str]:
    """SimCLR (NT-Xent) on a tiny ViT, no BatchNorm anywhere, SGD without clipping."""
    return [
        "method=simclr",
        "method_args.hidden_dim=32",
        "method_args.out_dim=16",
        "method_args.batch_norm=false",
        "model.vision.source=hf",
        "model.vision.name=vit",
        "model.vision.pretrained=false",
        f"model.vision.config_overrides={VIT}",
        "model.vision.image_size=16",
        f"data.path={labelled_16}",
        "data.max_train_samples=16",
        f"train.batch_size={batch}",
        "train.max_steps=3",
        "train.optimizer=sgd",
        "train.lr=0.2",
        "train.max_grad_norm=null",
        "train.progress_bar=false",
        "train.trackers=[]",
        "train.log_every=1",
        "eval.at_end=false",
        "eval.views_png=false",
        *extra,
    ]


def _cases(shapes: Path, tokenizer: Path, labelled_16: Path) -> dict[str, Case]:
    """Runs made on 2 processes (batch B each); ``*-local`` and ``*-no-factor`` must differ."""
    accumulate = ("loss.name=siglip", "train.gradient_accumulation_steps=2", "train.max_steps=2")
    local = ("loss.gather_distributed=false",)
    two_captions = ("loss.name=unicl", "data.captions_per_image=2")
    return {
        "clip": (QUICKSTART, clip_run(shapes, tokenizer, B)),
        "clip-local": (QUICKSTART, clip_run(shapes, tokenizer, B, local)),
        "siglip-accumulate": (QUICKSTART, clip_run(shapes, tokenizer, B, accumulate)),
        # two pairs of each image per batch, positives of each other across processes too
        "unicl-two-captions": (QUICKSTART, clip_run(shapes, tokenizer, B, two_captions)),
        "siglip-multi-two-captions": (
            QUICKSTART,
            clip_run(shapes, tokenizer, B, (*two_captions[1:], "loss.name=siglip_multi")),
        ),
        "simclr": (None, simclr_run(labelled_16, B)),
        "simclr-local": (None, simclr_run(labelled_16, B, local)),
        "simclr-no-factor": (None, simclr_run(labelled_16, B)),
    }


@pytest.fixture(scope="module")
def two_processes(
    shapes_dir: Path,
    tokenizer_dir: Path,
    labelled_16: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    root = tmp_path_factory.mktemp("two_processes")
    cases = _cases(shapes_dir, tokenizer_dir, labelled_16)
    mp.spawn(train_worker, args=(cases, str(root)), nprocs=WORLD, join=True)
    return root


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["clip", "siglip-accumulate", "unicl-two-captions", "siglip-multi-two-captions"]
)
def test_image_text_two_processes_equal_one_process_with_twice_the_batch(
    two_processes: Path,
    shapes_dir: Path,
    tokenizer_dir: Path,
    labelled_16: Path,
    tmp_path: Path,
    case: str,
) -> None:
    recipe, overrides = _cases(shapes_dir, tokenizer_dir, labelled_16)[case]
    losses, weights = train_in_one_process(
        recipe, [*overrides, f"train.batch_size={2 * B}"], tmp_path
    )
    got_losses, got_weights = run_result(two_processes / case)
    assert len(losses) == len(got_losses) and len(set(losses)) == len(losses)
    assert got_losses == pytest.approx(losses, abs=1e-5, rel=1e-5)
    assert_same_weights(got_weights, weights)
    if case == "clip":  # local negatives: a B-batch loss, another training
        local_losses, local_weights = run_result(two_processes / "clip-local")
        assert abs(local_losses[0] - losses[0]) > 0.1
        assert _max_difference(local_weights, weights) > 1e-4


@pytest.mark.slow
def test_simclr_two_processes_equal_one_process_with_twice_the_batch(
    two_processes: Path, labelled_16: Path, tmp_path: Path
) -> None:
    losses, weights = train_in_one_process(None, simclr_run(labelled_16, 2 * B), tmp_path)
    got_losses, got_weights = run_result(two_processes / "simclr")
    assert len(set(losses)) == len(losses) == 3
    assert got_losses == pytest.approx(losses, abs=1e-5, rel=1e-5)
    assert_same_weights(got_weights, weights)
    local_losses, local_weights = run_result(two_processes / "simclr-local")
    assert abs(local_losses[0] - losses[0]) > 0.1
    assert _max_difference(local_weights, weights) > 1e-4
    # without x P the gradient is 1/P of the whole batch's: same first loss, other weights
    unscaled_losses, unscaled_weights = run_result(two_processes / "simclr-no-factor")
    assert unscaled_losses[0] == pytest.approx(losses[0], abs=1e-5)
    assert _max_difference(unscaled_weights, weights) > 1e-4


def test_the_recipe_switch_and_the_backward_factor(tiny_run: list[str]) -> None:
    """``loss.gather_distributed`` (default on) reaches every loss that can gather; the loop
    multiplies by P exactly those; ``loss.kwargs`` may not set it a second way."""
    from mmcontrast.config import load_recipe
    from mmcontrast.methods import build_method
    from mmcontrast.methods.base import Method
    from mmcontrast.train.loop import _loss_factor

    def image_text(*extra: str) -> Method:
        return build_method(
            load_recipe(QUICKSTART, [*tiny_run, "model.vision.weights=null", *extra])
        )

    def vision(name: str) -> Method:
        tiny = ["model.vision.source=builtin", "model.vision.name=tiny_cnn"]
        heads = ["method_args.hidden_dim=8", "method_args.out_dim=4"]
        return build_method(load_recipe(None, [f"method={name}", *tiny, *heads]))

    clip = image_text()
    assert clip.loss_fn.gather_distributed and clip.loss_fn.local_loss  # open_clip's flags
    assert _loss_factor(2, clip) == 2 and _loss_factor(1, clip) == 1
    assert image_text("loss.name=siglip").loss_is_global()
    local = image_text("loss.gather_distributed=false")
    assert not local.loss_is_global() and _loss_factor(2, local) == 1
    with pytest.raises(ValueError, match="set loss.gather_distributed"):
        image_text("loss.kwargs={gather_distributed: true}")
    assert vision("simclr").loss_is_global() and vision("moco_v3").loss_is_global()
    byol = vision("byol")  # negative cosine: a per-sample mean, DDP's average is right
    assert not byol.loss_is_global() and _loss_factor(2, byol) == 1
