"""`mmcontrast embed` in 2 processes (torchrun, gloo): the same output as one process, the
shards split between the processes, and a rerun in 2 processes resuming 1 process's work."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import save_clip

from mmcontrast.search import embed_collection, read_embeddings

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def embed_in_two_processes(clip_dir: Path, data: Path, output: Path) -> list[list[int]]:
    """Run it; returns the shards (numbered from 1) each process logged, by rank."""
    logs = output.parent / f"{output.name}-logs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()), "--log-dir", str(logs), "--redirects", "3", "-m", "mmcontrast", "embed", str(clip_dir), str(data),
        "--output", str(output), "--shard-size", "5", "--batch-size", "2", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    launcher = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,  # its own process group: a hang is killed whole
    )  # fmt: skip
    try:
        output, _ = launcher.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        raise
    errors = {p.parent.name: p.read_text() for p in sorted(logs.rglob("stderr.log"))}
    assert launcher.returncode == 0, (output[-2000:], errors)
    assert "shard" not in errors["1"]  # the first process reports every process's shards
    found = re.findall(r"shard (\d+)/\d+ \(process (\d)\):", errors["0"])
    return [[int(n) for n, by in found if by == str(rank)] for rank in (0, 1)]


def test_two_processes_write_what_one_writes(
    shapes_dir: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    clip_dir = save_clip(tmp_path / "clip", tokenizer_dir)
    one = embed_collection(
        str(clip_dir), shapes_dir, tmp_path / "one", shard_size=5, batch_size=2,
        device="cpu", progress=False,
    )  # fmt: skip
    assert one.shards >= 4  # enough shards for both processes to take several

    shards = embed_in_two_processes(clip_dir, shapes_dir, tmp_path / "two")
    assert shards == [list(range(1, one.shards + 1, 2)), list(range(2, one.shards + 1, 2))]
    a, b = read_embeddings(tmp_path / "one"), read_embeddings(tmp_path / "two")
    np.testing.assert_allclose(b.images, a.images, rtol=1e-4, atol=1e-5)
    assert a.texts is not None and b.texts is not None
    np.testing.assert_allclose(b.texts, a.texts, rtol=1e-4, atol=1e-5)
    assert b.metadata.equals(a.metadata)
    assert b.manifest["shards"] == a.manifest["shards"]
    assert b.manifest["complete"] and b.manifest["count"] == one.count

    # a run interrupted after two shards in one process, finished by two processes
    partial = tmp_path / "partial"
    manifest_path = tmp_path / "one" / "embeddings.json"
    kept = json.loads(manifest_path.read_text())
    subprocess.run(["cp", "-r", str(tmp_path / "one"), str(partial)], check=True)
    kept["shards"], kept["complete"] = kept["shards"][:2], False
    (partial / "embeddings.json").write_text(json.dumps(kept))
    for i in range(2, one.shards):  # the later shards' files are gone, as if never written
        for kind, ext in (("img_emb", "npy"), ("text_emb", "npy"), ("metadata", "parquet")):
            (partial / kind / f"{kind}_{i:04d}.{ext}").unlink()
    shards = embed_in_two_processes(clip_dir, shapes_dir, partial)
    assert shards == [list(range(3, one.shards + 1, 2)), list(range(4, one.shards + 1, 2))]
    c = read_embeddings(partial)
    np.testing.assert_allclose(c.images, a.images, rtol=1e-4, atol=1e-5)
    assert c.manifest["shards"] == a.manifest["shards"]
