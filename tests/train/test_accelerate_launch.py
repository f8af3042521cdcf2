"""`accelerate launch` with the configs in recipes/accelerate/: each one resolves through
accelerate's own loader and launcher, and the CPU one trains a tiny recipe in 2 processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import (
    DeepSpeedPlugin,
    DistributedType,
    FullyShardedDataParallelPlugin,
    patch_environment,
    prepare_deepspeed_cmd_env,
    prepare_multi_gpu_env,
)
from helpers import QUICKSTART, RECIPES

from mmcontrast.config import load_recipe
from mmcontrast.methods import build_method

CONFIGS = RECIPES / "accelerate"
EXPECTED = {
    "cpu-2proc.yaml": DistributedType.MULTI_GPU,  # torchrun's launcher; the trainer picks gloo
    "ddp.yaml": DistributedType.MULTI_GPU,
    "fsdp.yaml": DistributedType.FSDP,
    "deepspeed-zero2.yaml": DistributedType.DEEPSPEED,
}


def resolve(config: Path) -> tuple[Namespace, ClusterConfig, bool]:
    """What `accelerate launch --config_file CONFIG train.py` resolves, without launching."""
    args = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    return _validate_launch_command(args)


def accelerate_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def test_every_config_is_listed() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_own_loader(name: str) -> None:
    config = load_config_from_file(str(CONFIGS / name))  # unknown top-level keys raise
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == EXPECTED[name]
    # The launcher copies fsdp_config / deepspeed_config keys onto its arguments without
    # checking them: a misspelt key would be silently ignored, so check them here.
    known = vars(launch_command_parser().parse_args(["train.py"]))
    nested = [k if k.startswith("fsdp_") else f"fsdp_{k}" for k in config.fsdp_config]
    nested += list(config.deepspeed_config)
    assert [k for k in nested if k not in known] == []
    args, _, _ = resolve(CONFIGS / name)
    assert args.num_processes == config.num_processes and args.num_machines == 1
    assert not args.cpu  # `--cpu` would start one process (see cpu-2proc.yaml)


def test_ddp_config_uses_torchrun_on_all_gpus() -> None:
    args, _, _ = resolve(CONFIGS / "ddp.yaml")
    assert args.multi_gpu and not (args.use_fsdp or args.use_deepspeed)
    assert args.mixed_precision == "bf16" and args.gpu_ids == "all"


def test_readme_multi_node_command_gives_torchrun_one_node_of_eight() -> None:
    """The README's second machine: 16 processes over 2 machines, this one of rank 1."""
    flags = "--num_machines 2 --num_processes 16 --machine_rank 1"
    flags += " --main_process_ip 10.0.0.1 --main_process_port 29500"
    argv = ["--config_file", str(CONFIGS / "ddp.yaml"), *flags.split(), "-m", "mmcontrast"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    prepare_multi_gpu_env(args)  # sets torchrun's arguments on args (no port check off rank 0)
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    assert (args.rdzv_backend, args.rdzv_endpoint) == ("static", "10.0.0.1:29500")


def test_fsdp_config_builds_a_plugin_that_wraps_transformer_layers(
    tokenizer_dir: Path,
) -> None:
    """accelerate's FSDP plugin accepts the file, and its wrap policy finds every layer class
    it names in the model mmcontrast builds for recipes/clip-vit-b32-bert.yaml (tiny towers)."""
    args, _, _ = resolve(CONFIGS / "fsdp.yaml")
    assert args.use_fsdp
    with patch_environment(**accelerate_env(prepare_multi_gpu_env(args))):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FULL_SHARD
    assert plugin.transformer_cls_names_to_wrap == ["CLIPEncoderLayer", "BertLayer"]

    clip = "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, image_size: 32, patch_size: 8}"
    bert = "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, vocab_size: 32, max_position_embeddings: 64}"
    cfg = load_recipe(
        RECIPES / "clip-vit-b32-bert.yaml",
        [
            "model.vision.name=clip_vision_model",
            "model.vision.pretrained=false",
            f"model.vision.config_overrides={clip}",
            "model.text.name=bert",
            "model.text.pretrained=false",
            f"model.text.tokenizer={tokenizer_dir}",
            f"model.text.config_overrides={bert}",
            "model.embed_dim=16",
        ],
    )
    method = build_method(cfg)
    plugin.set_auto_wrap_policy(method)  # raises if a class name is not in the model
    wrapped = {type(m).__name__ for m in method.modules() if plugin.auto_wrap_policy(m, False, 0)}
    assert wrapped == {"CLIPEncoderLayer", "BertLayer"}


def test_deepspeed_config_builds_a_zero2_plugin() -> None:
    """The DeepSpeed config accelerate would hand to DeepSpeed (deepspeed itself is not needed)."""
    args, defaults, mixed_precision_from_file = resolve(CONFIGS / "deepspeed-zero2.yaml")
    assert args.use_deepspeed
    fields = [
        *defaults.deepspeed_config,
        *(["mixed_precision"] if mixed_precision_from_file else []),
    ]
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)  # as launch_command does
    _, env = prepare_deepspeed_cmd_env(args)
    with patch_environment(**accelerate_env(env)):
        plugin = DeepSpeedPlugin()
    ds = plugin.deepspeed_config
    assert plugin.zero_stage == 2 and ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    # filled from the recipe at prepare(): train.batch_size, train.gradient_accumulation_steps
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    assert ds["gradient_accumulation_steps"] == "auto"
    assert ds["gradient_clipping"] == 1.0


def run_with_timeout(command: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``command`` in its own process group; on timeout kill the whole group (the
    launcher and every training process) and fail with what they printed."""
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"`accelerate launch` did not finish in {timeout:.0f} s:\n{output[-4000:]}")
    return process.returncode, output


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_end_to_end(
    tiny_run: list[str], tmp_path: Path
) -> None:
    """`accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml -m mmcontrast train`:
    2 gloo processes train tiny towers for an epoch, checkpoint and evaluate."""
    run = tmp_path / "run"
    overrides = [
        *tiny_run,
        "model.vision.weights=null",
        "model.vision.lock=false",  # both towers train, so DDP synchronises both
        "train.cache_locked_features=false",
        "train.epochs=1",  # 32 pairs: 4 batches of 8, so 2 steps with 2 processes (4 with 1)
        "train.warmup_steps=1",
        "train.checkpoint_every=1",
        "eval.grid_png=false",
        "data.num_workers=0",
    ]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",  # the `accelerate` command
        "launch",
        "--config_file",
        str(CONFIGS / "cpu-2proc.yaml"),
        "-m",
        "mmcontrast",
        "train",
        str(QUICKSTART),
    ]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    code, output = run_with_timeout(command, env, timeout=300)
    assert code == 0, output[-4000:]

    for name in ["config.yaml", "model.safetensors", "history.jsonl", "curves.png"]:
        assert (run / name).is_file(), name
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2]  # each step took 2 x train.batch_size pairs
    assert all(math.isfinite(h["loss"]) and h["pairs_per_s"] > 0 for h in history)
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-00000001", "step-00000002"]
    last: dict[str, Any] = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    assert last["step"] == 2
    rng_files = sorted(p.name for p in checkpoints[-1].glob("random_states_*.pkl"))
    assert rng_files == ["random_states_0.pkl", "random_states_1.pkl"]  # one per process
    record = json.loads((run / "eval" / "retrieval.json").read_text())
    assert record["num_images"] == 16 and record["num_texts"] == 32
    assert all(math.isfinite(v) for v in record["metrics"].values())


@pytest.mark.slow
def test_accelerate_launch_two_processes_streaming_and_resuming(
    shapes_dir: Path, tiny_run: list[str], tmp_path: Path
) -> None:
    """2 gloo processes stream tar shards (each its own shards), stop, and resume."""
    from mmcontrast.cli import main

    shards = tmp_path / "shards"
    assert main(["shards", str(shapes_dir), "--output", str(shards), "--shard-size", "6"]) == 0
    run = tmp_path / "run"
    overrides = [
        *tiny_run,
        f"data.path={shards}",
        "data.streaming=true",
        "data.shuffle_buffer=4",
        "data.num_workers=1",
        "model.vision.weights=null",
        "train.cache_locked_features=false",
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "eval.grid_png=false",
    ]
    command = [
        sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
        "--config_file", str(CONFIGS / "cpu-2proc.yaml"), "-m", "mmcontrast", "train", str(QUICKSTART),
    ]  # fmt: skip
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    code, output = run_with_timeout([*command, "--set", "train.stop_at_step=2"], env, 300)
    assert code == 0, output[-4000:]
    assert not (run / "model.safetensors").exists()
    code, output = run_with_timeout([*command, "--resume"], env, 300)
    assert code == 0, output[-4000:]
    assert "resumed from" in output and (run / "model.safetensors").is_file()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for rank in (0, 1):  # each process kept its own stream (6 shards: 3 each) and count
        state = json.loads(
            (run / "checkpoints" / "step-00000004" / f"data_state_rank{rank}.json").read_text()
        )
        assert state["consumed"] == 4 and list(state["positions"]) == [str(rank)]
    record = json.loads((run / "eval" / "retrieval.json").read_text())
    assert record["num_images"] == 16  # the streamed test split, read whole
