"""Image inference on CPU: one batch against the chunks `forward_in_chunks` uses, with and
without `reuse_freed_memory` (what the CLI sets at start-up).

Caching a locked tower's features forwards images in these chunks. Each row runs
in a fresh process (the allocator's state carries over otherwise) and prints images/s and
the seconds spent in the kernel, mostly page faults. Models are timm's, built from config
with random weights (no download).

    python scripts/bench_cpu_chunks.py --models tf_efficientnet_lite0 resnet18 --images 384
    python scripts/bench_cpu_chunks.py --write    # also record it in BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import timm
import torch
from bench_report import (  # scripts/bench_report.py
    add_write_flag,
    command_line,
    cpu_name,
    markdown_table,
    publish,
    text_table,
)

from mmcontrast.cpu_allocator import reuse_freed_memory
from mmcontrast.data.feature_cache import cpu_chunk_size, forward_in_chunks

HEADING = "## CPU inference: chunks and the allocator"
MODES = [("batch", False, False), ("chunks", True, False), ("chunks + reuse", True, True),
         ("batch + reuse", False, True)]  # fmt: skip


@torch.inference_mode()
def measure(name: str, size: int, batch: int, images: int, chunked: bool, reuse: bool) -> dict:
    if reuse:
        reuse_freed_memory()
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0).eval().to(memory_format=torch.channels_last)
    pixels = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    encode = (lambda x: forward_in_chunks(model, x)) if chunked else model
    encode(pixels)  # warm-up
    before, tic, done = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
    while done < images:
        encode(pixels)
        done += len(pixels)
    seconds, after = time.perf_counter() - tic, resource.getrusage(resource.RUSAGE_SELF)
    return {"img_s": done / seconds, "sys_s": after.ru_stime - before.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0", "resnet18"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=384, help="images timed per row")
    add_write_flag(parser)
    args = parser.parse_args()
    chunk = cpu_chunk_size(torch.zeros(args.batch, 3, args.size, args.size))
    rows = []
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for name in args.models:
            for mode, chunked, reuse in MODES:
                job = (name, args.size, args.batch, args.images, chunked, reuse)
                rows.append({"model": name, "mode": mode, **pool.apply(measure, job)})
    for row in rows:
        first = next(r for r in rows if r["model"] == row["model"])
        row["speedup"] = row["img_s"] / first["img_s"]
    setup = (f"{cpu_name()}, {torch.get_num_threads()} threads; batch {args.batch} at "
             f"{args.size} px, chunks of {chunk}")  # fmt: skip
    print(setup)
    cols = [
        ("model", lambda r: r["model"]),
        ("forward", lambda r: r["mode"]),
        ("img/s", lambda r: f"{r['img_s']:.1f}"),
        ("kernel s", lambda r: f"{r['sys_s']:.1f}"),
        ("vs batch", lambda r: f"{r['speedup']:.2f}x"),
    ]
    print(text_table(rows, cols, left=2))
    section = "\n".join([
        HEADING, "",
        f"`{command_line('scripts/bench_cpu_chunks.py')}` ({time.strftime('%Y-%m-%d')}): "
        f"{setup}; timm models from config with random weights, {args.images} images per "
        "row, each row in a fresh process. \"chunks\" is `forward_in_chunks` (what "
        "locked-feature caching uses); \"reuse\" is "
        "`mmcontrast.cpu_allocator.reuse_freed_memory()` (glibc's mmap and trim thresholds "
        "raised), which the CLI sets at start-up; \"kernel s\" is system time, mostly page "
        "faults on freshly mapped activations.", "",
        markdown_table(rows, cols), "",
    ])  # fmt: skip
    publish(HEADING, section, args.write)


if __name__ == "__main__":
    main()
