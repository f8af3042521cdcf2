"""Gradient caching (``train.grad_cache_micro_batch``): the whole batch's gradients, exactly.

The reference for one batch is a single graph over the whole batch: the towers run
micro-batch by micro-batch (so dropout draws its masks in the same order), the embeddings
are concatenated and one loss is back-propagated. With dropout off it is also the towers
run once on the whole batch. Gradients must match to 1e-5 in float32 with dropout on in
both towers; without restoring each micro-batch's RNG state they must not.

Through the loop: the option on and off train to the same losses and weights (SGD; see
train/test_global_negatives.py for why not AdamW), with gradient clipping, accumulation, bf16
and, in 2 gloo processes with global negatives, against 1 process with the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp
from accelerate import Accelerator
from helpers import (
    QUICKSTART,
    WORDS,
    assert_same_weights,
    clip_run,
    run_result,
    train_in_one_process,
    train_worker,
)

from mmcontrast.config import ConfigError, TrainConfig, load_recipe
from mmcontrast.methods import build_method
from mmcontrast.methods.base import Method
from mmcontrast.train import grad_cache
from mmcontrast.train.grad_cache import grad_cache_backward, micro_batches_per_batch

N, CHUNKS = 8, 4
DROPOUT = "hidden_dropout_prob: 0.2, attention_probs_dropout_prob: 0.2"
VIT = (
    "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, "
    f"image_size: 32, patch_size: 8, {DROPOUT}}}"
)
BERT = (
    "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, "
    f"vocab_size: 32, max_position_embeddings: 64, {DROPOUT}}}"
)
BERT_NO_DROPOUT = BERT.replace("0.2", "0.0")
CASES = {  # dropout on in every trained tower
    "clip": [],
    "siglip": ["loss.name=siglip"],  # with a logit bias
    "locked-features": ["model.vision.lock=true"],  # cache_locked_features' batches
    "unicl": ["loss.name=unicl"],  # ids through the micro-batches: pairs of 0 and 1 share one
    "batchnorm": [  # micro-batch statistics, running statistics updated once per micro-batch
        "model.vision.source=builtin",
        "model.vision.name=tiny_cnn",
        "model.vision.config_overrides={}",
    ],
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: on a busy CPU more threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _method(tiny_run: list[str], *extra: str) -> Method:
    dropout = [f"model.vision.config_overrides={VIT}", f"model.text.config_overrides={BERT}"]
    method = build_method(load_recipe(None, [*tiny_run, *dropout, *extra]))
    return method.train()


def _batch(method: Method, case: str = "clip") -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    words = torch.randint(len(WORDS), (N, 6), generator=g).tolist()
    captions = [" ".join(WORDS[w] for w in row[: 2 + i % 5]) for i, row in enumerate(words)]
    batch: dict[str, Any] = dict(method.model.tokenize(captions))  # padded: lengths differ
    if case == "locked-features":
        batch["vision_features"] = torch.randn(N, method.model.vision.width, generator=g)
    else:
        batch["pixel_values"] = torch.randn(N, 3, 32, 32, generator=g)
    if case == "unicl":
        batch["ids"] = torch.tensor([0, 0, 1, 2, 3, 3, 3, 4])  # positives across micro-batches
    return batch


def _grads(method: Method) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    method.zero_grad(set_to_none=True)
    return grads


def _reference(method: Method, batch: dict[str, Any], chunks: int) -> torch.Tensor:
    """One graph: the towers per micro-batch, the loss over the concatenation; backward."""
    size = N // chunks
    inputs = {k: v for k, v in batch.items() if k != "ids"}
    parts = [
        method.model(**{k: v[i : i + size] for k, v in inputs.items()}) for i in range(0, N, size)
    ]
    out = {
        k: torch.cat([p[k] for p in parts]) if parts[0][k].ndim else parts[0][k] for k in parts[0]
    }
    if "ids" in batch:
        out["ids"] = batch["ids"]
    loss = method.loss_fn(**{k: v for k, v in out.items() if k in method.loss_inputs})
    loss.backward()
    return loss.detach()


def _cached(method: Method, batch: dict[str, Any], chunks: int = CHUNKS) -> torch.Tensor:
    return grad_cache_backward(Accelerator(cpu=True), method, batch, chunks)["loss"]


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _scale(grads: dict[str, torch.Tensor]) -> float:
    """The largest gradient entry (at least 1): float32 rounding grows with it."""
    return max(1.0, *(float(g.abs().max()) for g in grads.values()))


@pytest.mark.parametrize("case", list(CASES))
def test_same_gradients_as_the_whole_batch_with_dropout(tiny_run: list[str], case: str) -> None:
    method = _method(tiny_run, *CASES[case])
    batch = _batch(method, case)
    norms = [m for m in method.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bool(norms) == (case == "batchnorm")
    buffers = {name: b.clone() for name, b in method.named_buffers()}

    torch.manual_seed(0)
    loss = _reference(method, batch, CHUNKS)
    expected, rng_after = _grads(method), torch.get_rng_state()
    expected_stats = [m.running_var.clone() for m in norms]
    for name, b in method.named_buffers():  # back to the state before the reference
        b.copy_(buffers[name])

    torch.manual_seed(0)
    cached_loss = _cached(method, batch)
    got = _grads(method)
    assert torch.equal(torch.get_rng_state(), rng_after)  # the generators end where they would
    assert float(cached_loss) == pytest.approx(float(loss), abs=1e-6, rel=1e-6)
    assert len(got) > 10 and _max_difference(got, expected) < 1e-5 * _scale(expected)
    if case == "siglip":
        assert got["model.logit_bias"].abs() > 0
    for m, var in zip(norms, expected_stats, strict=True):  # updated once per micro-batch
        assert int(m.num_batches_tracked) == CHUNKS
        torch.testing.assert_close(m.running_var, var, atol=1e-6, rtol=0)


def test_without_restoring_the_rng_the_dropout_masks_differ(tiny_run: list[str]) -> None:
    method = _method(tiny_run)
    batch = _batch(method)
    torch.manual_seed(0)
    _reference(method, batch, CHUNKS)
    expected = _grads(method)
    torch.manual_seed(0)
    with mock.patch.object(grad_cache.RngState, "restore", lambda self: None):
        _cached(method, batch)
    assert _max_difference(_grads(method), expected) > 1e-3


def test_without_dropout_equals_one_pass_over_the_whole_batch(tiny_run: list[str]) -> None:
    vit = VIT.replace("0.2", "0.0")
    method = _method(
        tiny_run,
        f"model.vision.config_overrides={vit}",
        f"model.text.config_overrides={BERT_NO_DROPOUT}",
    )
    batch = _batch(method)
    loss = method(batch)["loss"]
    loss.backward()
    expected = _grads(method)
    accelerator = Accelerator(cpu=True)
    with mock.patch.object(Accelerator, "no_sync", wraps=accelerator.no_sync) as no_sync:
        cached_loss = grad_cache_backward(accelerator, method, batch, CHUNKS)["loss"]
    assert no_sync.call_count == CHUNKS - 1  # under DDP only the last replay synchronises
    assert float(cached_loss) == pytest.approx(float(loss.detach()), abs=1e-6, rel=1e-6)
    assert _max_difference(_grads(method), expected) < 1e-5 * _scale(expected)


def _loop_run(shapes: Path, tokenizer: Path, *extra: str) -> list[str]:
    return clip_run(shapes, tokenizer, N, extra)


LOOP_CASES = {
    "clip": ("train.max_grad_norm=0.05", "train.grad_cache_micro_batch=2"),  # always clips
    "siglip-accumulate": (
        "loss.name=siglip",
        "train.gradient_accumulation_steps=2",
        "train.max_grad_norm=null",  # clipping would hide a wrong gradient scale
        "train.grad_cache_micro_batch=4",
    ),
    # LoRA adapters on both towers (the base weights frozen), no dropout
    "lora": (
        f"model.text.config_overrides={BERT_NO_DROPOUT}",
        "model.vision.lora={rank: 2}",
        "model.text.lora={rank: 2}",
        "train.grad_cache_micro_batch=2",
    ),
    # two pairs of each image per batch: their ids reach the loss through the micro-batches
    "unicl-two-captions": (
        "loss.name=unicl",
        "data.captions_per_image=2",
        "train.grad_cache_micro_batch=2",
    ),
    # dropout on: one micro-batch draws the same masks as the plain step
    "dropout-one-micro-batch": (
        f"model.text.config_overrides={BERT}",
        "train.grad_cache_micro_batch=8",
    ),
}


@pytest.mark.parametrize("case", list(LOOP_CASES))
def test_loop_trains_the_same_with_and_without_grad_cache(
    shapes_dir: Path, tokenizer_dir: Path, tmp_path: Path, case: str
) -> None:
    cached = _loop_run(shapes_dir, tokenizer_dir, *LOOP_CASES[case])
    plain = [o for o in cached if not o.startswith("train.grad_cache_micro_batch")]
    losses, weights = train_in_one_process(QUICKSTART, plain, tmp_path / "plain")
    got_losses, got_weights = train_in_one_process(QUICKSTART, cached, tmp_path / "cached")
    assert len(set(losses)) == len(losses) > 1
    assert got_losses == pytest.approx(losses, abs=1e-6, rel=1e-5)
    assert_same_weights(got_weights, weights)


def test_bf16_with_grad_cache(shapes_dir: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    plain = _loop_run(shapes_dir, tokenizer_dir, "train.mixed_precision=bf16", "train.max_steps=2")
    plain_losses, _ = train_in_one_process(QUICKSTART, plain, tmp_path / "plain")
    losses, weights = train_in_one_process(
        QUICKSTART, [*plain, "train.grad_cache_micro_batch=2"], tmp_path / "cached"
    )
    assert losses == pytest.approx(plain_losses, abs=2e-2)  # bf16 rounding of the towers
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.fixture(scope="module")
def two_processes(
    shapes_dir: Path, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("grad_cache_ddp")
    cases = {
        name: (QUICKSTART, clip_run(shapes_dir, tokenizer_dir, N // 2, extra))
        for name, extra in DDP_CASES.items()
    }
    mp.spawn(train_worker, args=(cases, str(root)), nprocs=2, join=True)
    return root


DDP_CASES = {  # 2 processes x 4 pairs in micro-batches of 2
    "clip": ("train.grad_cache_micro_batch=2",),
    "siglip-accumulate": (
        "loss.name=siglip",
        "train.gradient_accumulation_steps=2",
        "train.max_steps=2",
        "train.max_grad_norm=null",  # clipping would hide a wrong gradient scale
        "train.grad_cache_micro_batch=2",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DDP_CASES))
def test_two_processes_with_grad_cache_equal_one_process_with_the_whole_batch(
    two_processes: Path, shapes_dir: Path, tokenizer_dir: Path, tmp_path: Path, case: str
) -> None:
    extra = [o for o in DDP_CASES[case] if not o.startswith("train.grad_cache")]
    losses, weights = train_in_one_process(
        QUICKSTART, clip_run(shapes_dir, tokenizer_dir, N, tuple(extra)), tmp_path
    )
    got_losses, got_weights = run_result(two_processes / case)
    assert len(set(losses)) == len(losses) > 1
    assert got_losses == pytest.approx(losses, abs=1e-5, rel=1e-5)
    assert_same_weights(got_weights, weights)


def test_micro_batch_errors_say_what_to_do(tiny_run: list[str]) -> None:
    def chunks(micro: int | None, batch: int = 8) -> int | None:
        return micro_batches_per_batch(TrainConfig(batch_size=batch, grad_cache_micro_batch=micro))

    assert chunks(None) is None and chunks(2) == 4 and chunks(8) == 1
    with pytest.raises(
        ConfigError, match=r"=3 does not divide train.batch_size=8: .*\(e.g. 2 or 4\)"
    ):
        chunks(3)
    with pytest.raises(ConfigError, match="=16 is larger than train.batch_size=8"):
        chunks(16)
    with pytest.raises(ConfigError, match="positive"):
        chunks(0)
    from mmcontrast.pipeline import train

    with pytest.raises(ConfigError, match="does not divide"):  # before any model is built
        train(load_recipe(None, [*tiny_run, "train.grad_cache_micro_batch=5"]))
    simclr = build_method(
        load_recipe(
            None, ["method=simclr", "model.vision.source=builtin", "model.vision.name=tiny_cnn"]
        )
    )
    with pytest.raises(ConfigError, match="method 'simclr' does not"):
        grad_cache.check_grad_cache_support(simclr, Accelerator(cpu=True))
