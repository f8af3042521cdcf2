"""Chaos test of training: a tiny run interrupted again and again, resumed each time, must end
exactly where the uninterrupted run ends.

Faults, drawn at random moments: SIGKILL (no warning), SIGTERM (a preemption: the run writes
a checkpoint and exits 143) and a full disk. The disk is a small tmpfs where the machine
lets this script mount one (root on Linux): the output folder lives there and the disk is
filled by a ballast file while the run writes, then emptied before the next attempt.
Elsewhere the full disk is an ``OSError(ENOSPC)`` injected into a checkpoint write.

After every fault the script checks that every ``checkpoints/step-*`` folder is complete
(state, weights, optimiser, schedule and config readable), and that the newest complete
checkpoint is no older than before the fault (no good checkpoint lost). Each attempt runs
``mmcontrast.pipeline.train(cfg, resume="auto")`` in a forked child (imports paid once, so
a fault costs a fraction of a second). At the end the weights must equal the uninterrupted
run's bit for bit, and the history's losses and learning rates line for line.

Run from the repository root::

    python scripts/chaos_train.py                    # 50 faults
    python scripts/chaos_train.py --faults 5 --steps 16   # the short version CI runs

Prints the faults survived and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # bit-identical resume is a CPU property

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
WORDS = "a the red green blue yellow circle square triangle star".split()
TINY = "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64"
TERMINATED = 128 + signal.SIGTERM
DISK_FULL = 75  # a child's exit status for an OSError (the command line's is 2)


def tiny_setup(root: Path) -> list[str]:
    """A shapes image-text folder, a word-level tokenizer and ``--set`` overrides for random
    ViT + BERT towers small enough that a step takes milliseconds."""
    from PIL import Image, ImageDraw
    from transformers import BertTokenizer

    from mmcontrast.data.imagefolder import write_imagefolder

    colours = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220),
               "yellow": (230, 220, 30)}  # fmt: skip
    rows = []
    for i, (name, rgb) in enumerate(colours.items()):
        for j, shape in enumerate(["circle", "square", "triangle", "star"]):
            for k in range(4):
                image = Image.new("RGB", (32, 32), (255 - 20 * k, 255, 255))
                box = (4 + k, 4 + j, 26 - i, 27)
                draw = ImageDraw.Draw(image)
                (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=rgb)
                rows.append({"image": image, "text": f"a {name} {shape}"})
    write_imagefolder(rows, root / "data", "train")
    write_imagefolder(rows[::4], root / "data", "test")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(root / "tokenizer")
    return [
        "model.vision.source=hf", "model.vision.name=vit", "model.vision.pretrained=false",
        "model.vision.weights=null",
        f"model.vision.config_overrides={TINY}, image_size: 32, patch_size: 8}}",
        "model.text.source=hf", "model.text.name=bert", "model.text.pretrained=false",
        f"model.text.tokenizer={root / 'tokenizer'}",
        f"model.text.config_overrides={TINY}, vocab_size: 32, max_position_embeddings: 64}}",
        "model.embed_dim=16", f"data.path={root / 'data'}", "data.num_workers=0",
        "train.batch_size=8", "train.progress_bar=false", "train.trackers=[]",
        "train.log_every=1", "train.warmup_steps=2", "eval.at_end=false", "eval.every=0",
    ]  # fmt: skip


def attempt(overrides: list[str], inject_enospc_at: int | None) -> None:
    """One training attempt in this (forked) process; exits with its status."""
    code = 0
    try:
        from mmcontrast.config import load_recipe
        from mmcontrast.pipeline import train
        from mmcontrast.train import checkpoint
        from mmcontrast.train.errors import TrainingStopped

        if inject_enospc_at is not None:
            checkpoint.save_config = _fails_at(checkpoint.save_config, inject_enospc_at)
        try:
            train(load_recipe(QUICKSTART, overrides), resume="auto")
        except TrainingStopped as err:
            code = err.exit_code
        except OSError:
            code = DISK_FULL
    except BaseException as err:  # noqa: BLE001 - any other failure is a crash to report
        print(f"crash: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _fails_at(write: Any, call: int) -> Any:
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return write(*args, **kwargs)

    return failing


def fork(overrides: list[str], inject_enospc_at: int | None = None, log: Path | None = None) -> int:
    """Start an attempt in a child process; its output goes to ``log``."""
    pid = os.fork()
    if pid == 0:
        if log is not None:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        attempt(overrides, inject_enospc_at)
    return pid


def wait(pid: int) -> int:
    """The child's exit status (128 + N for a signal N, like a shell)."""
    return _exit_status(os.waitpid(pid, 0)[1])


def _exit_status(status: int) -> int:
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class Disk:
    """Where the chaotic run writes: a tmpfs that can be filled, or a plain folder."""

    def __init__(self, root: Path, want_tmpfs: bool, size_mb: int = 96) -> None:
        self.path = root / "disk"
        self.path.mkdir()
        self.tmpfs = want_tmpfs and _mount_tmpfs(self.path, size_mb)
        self.ballast = self.path / "ballast"

    def fill(self) -> None:
        """Take every free byte (the run's next write fails with ENOSPC)."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 20, 4096, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def close(self) -> None:
        if self.tmpfs:
            subprocess.run(["umount", str(self.path)], check=False)


def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True,
    )
    return done.returncode == 0


def check_checkpoints(run: Path) -> int:
    """The newest complete checkpoint's step (-1: none); raises if a ``step-*`` folder is
    not whole."""
    from mmcontrast.train.checkpoint import list_checkpoints, read_state

    root = run / "checkpoints"
    folders = sorted(root.glob("step-*")) if root.is_dir() else []
    complete = list_checkpoints(root) if root.is_dir() else []
    for folder in folders:
        if folder not in complete:
            raise AssertionError(f"{folder} is not complete (unreadable trainer_state.json)")
        for name in ("model.safetensors", "optimizer.bin", "scheduler.json", "config.yaml"):
            file = folder / name
            if not file.is_file() or file.stat().st_size == 0:
                raise AssertionError(f"{folder} lacks {name} or it is empty")
        json.loads((folder / "scheduler.json").read_text())
    return read_state(complete[-1]).step if complete else -1


def history(run: Path) -> list[tuple[int, float, float]]:
    from mmcontrast.pipeline import read_history

    return [(r["step"], r["loss"], r["lr"]) for r in read_history(run / "history.jsonl")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=50, help="faults to inject (default 50)")
    parser.add_argument("--steps", type=int, default=60, help="steps of the run (default 60)")
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tmpfs", action="store_true", help="inject ENOSPC instead")
    args = parser.parse_args(argv)
    import mmcontrast.pipeline  # noqa: F401 - imported once here, not in every attempt

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="mmcontrast-chaos-"))
    disk = Disk(work, want_tmpfs=not args.no_tmpfs)
    start = time.perf_counter()
    try:
        base = tiny_setup(work) + [
            f"train.max_steps={args.steps}",
            f"train.checkpoint_every={args.checkpoint_every}",
            "train.keep_checkpoints=2",
        ]
        reference = work / "reference"
        tic = time.perf_counter()
        pid = fork([*base, f"train.output_dir={reference}"], None, work / "attempts.log")
        while not (reference / "history.jsonl").exists() and time.perf_counter() - tic < 300:
            time.sleep(0.005)  # the first step's line: the end of the start-up
        startup = time.perf_counter() - tic
        if wait(pid):
            print("the uninterrupted run failed")
            return 1
        training = time.perf_counter() - tic - startup
        how = "a tmpfs filled by a ballast file" if disk.tmpfs else "an injected ENOSPC"
        print(
            f"uninterrupted run: start-up {startup:.1f} s, {args.steps} steps in "
            f"{training:.1f} s; full disk: {how}"
        )
        # --resume auto --overwrite: an attempt killed before its first checkpoint is replaced
        run = [*base, f"train.output_dir={disk.path / 'run'}", "train.overwrite_output_dir=true"]
        chaos = Chaos(disk, run, reference, args.steps)
        chaos.run(args.faults, rng, startup, training / args.steps)
    finally:
        disk.close()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"faults {chaos.faults} ({dict(chaos.kinds)}), survived {chaos.survived}, "
        f"crashes {chaos.crashes}, struck while training {chaos.mid_run}, "
        f"attempts {chaos.attempts}, runs completed and equal to "
        f"the uninterrupted one {chaos.equal}/{chaos.completed}, "
        f"{time.perf_counter() - start:.0f} s"
    )
    ok = chaos.survived == chaos.faults == args.faults and chaos.crashes == 0
    return 0 if ok and chaos.completed and chaos.equal == chaos.completed else 1


class Chaos:
    """Attempts of one run on ``disk``, each cut short by a fault, resumed until it ends.

    A run that ends (an attempt outran its fault, or after the last fault) is compared with
    ``reference``, then started again while faults remain.
    """

    def __init__(self, disk: Disk, overrides: list[str], reference: Path, steps: int) -> None:
        self.disk, self.overrides, self.reference = disk, overrides, reference
        self.run_dir = disk.path / "run"
        self.log = reference.parent / "attempts.log"  # what the attempts printed
        self.faults = self.survived = self.crashes = self.attempts = 0
        self.completed = self.equal = self.mid_run = 0
        self.steps = steps
        self.kinds: dict[str, int] = {}
        self.newest = -1

    def run(self, faults: int, rng: random.Random, startup: float, per_step: float) -> None:
        """Faults strike after an attempt's start-up (``startup`` seconds, roughly), within
        the steps it has left (``per_step`` seconds each); one in ten during the start-up."""
        kinds = ["kill", "term", "disk"]
        while self.faults < faults and self.crashes <= 3 and self.attempts < 4 * faults:
            kind = kinds[self.faults] if self.faults < 3 else rng.choice(kinds)
            before = max(self.newest, 0)  # the step this attempt resumes from
            in_startup = rng.random() < 0.1
            if in_startup:  # while it builds the model and loads the checkpoint
                delay = rng.uniform(0, startup)
            else:  # once it trains again, within the steps it has left
                delay = rng.uniform(0, 1.1) * (self.steps - before) * per_step
            status = self.attempt(kind, delay, rng, None if in_startup else before)
            if status == 0:  # the run ended before the fault struck
                self.finished()
                continue
            self.faults += 1
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            if self.check(kind, status):
                self.survived += 1
            self.mid_run += self.last_logged() > before
        while self.crashes <= 3:  # no more faults: the run goes to its end
            if self.attempt(None, 0.0, rng) == 0:
                self.finished()
                return
            self.crashes += 1

    def attempt(
        self, kind: str | None, delay: float, rng: random.Random, after: int | None = None
    ) -> int:
        """An attempt with a fault ``delay`` seconds after its start, or (``after``) after
        it logs a step past ``after``; returns its exit status."""
        self.attempts += 1
        if kind == "disk" and not self.disk.tmpfs:
            return wait(fork(self.overrides, rng.randint(1, 3), self.log))
        pid = fork(self.overrides, None, self.log)
        if kind is None:
            return wait(pid)
        while after is not None and self.last_logged() <= after:
            ended, status = os.waitpid(pid, os.WNOHANG)
            if ended:  # before it trained a step: at the run's end, or a failure
                return _exit_status(status)
            time.sleep(0.005)
        time.sleep(delay)
        if kind == "disk":
            self.disk.fill()
        else:
            try:
                os.kill(pid, signal.SIGKILL if kind == "kill" else signal.SIGTERM)
            except ProcessLookupError:
                pass
        status = wait(pid)
        self.disk.free()
        return status

    def check(self, kind: str, status: int) -> bool:
        """Whether the run came through the fault: the exit status the fault should give, every
        checkpoint whole, and the newest no older than before."""
        expected = {"kill": 128 + signal.SIGKILL, "term": TERMINATED, "disk": DISK_FULL}[kind]
        problem = None
        if status != expected:
            problem = f"exit status {status}, expected {expected}"
            self.crashes += status not in (TERMINATED, DISK_FULL, 128 + signal.SIGKILL)
        else:
            try:
                now = check_checkpoints(self.run_dir)
            except AssertionError as err:
                problem = str(err)
            else:
                if now < self.newest:
                    problem = f"the newest checkpoint went back from step {self.newest} to {now}"
                self.newest = max(self.newest, now)
        if problem:
            print(f"fault {self.faults} ({kind}): {problem}")
            print(self.log.read_text()[-3000:])
        return problem is None

    def last_logged(self) -> int:
        """The last step in the run's history (past the resumed step: the fault struck while
        the attempt trained)."""
        path = self.run_dir / "history.jsonl"
        steps = [0]
        for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                pass
        return max(steps)

    def finished(self) -> None:
        self.completed += 1
        self.equal += equal_runs(self.reference, self.run_dir)
        shutil.rmtree(self.run_dir)
        self.newest = -1


def equal_runs(reference: Path, run: Path) -> bool:
    """Weights bit for bit, and every logged (step, loss, lr)."""
    import torch
    from safetensors.torch import load_file

    a = load_file(str(reference / "model.safetensors"))
    b = load_file(str(run / "model.safetensors"))
    same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    same_history = history(reference) == history(run)
    if not same_weights:
        print("the final weights differ from the uninterrupted run's")
    if not same_history:
        print("the loss history differs from the uninterrupted run's")
    return same_weights and same_history


if __name__ == "__main__":
    sys.exit(main())
