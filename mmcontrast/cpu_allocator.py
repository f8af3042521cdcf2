"""Keep freed memory in the process on glibc, so CPU tensors stop paying page faults.

glibc hands allocations above its mmap threshold (128 KB, raised as it goes up to 32 MB)
to fresh ``mmap`` pages and gives them back on free, and trims the heap's free top. A CPU
forward of a convolutional network allocates activations of tens of MB per layer, so every
batch faults in and zeroes new pages: on 2 cores EfficientNet-Lite0 spent as long in the
kernel as computing (``scripts/BENCHMARKS.md``). Raising both thresholds makes freed blocks
reusable, the effect PyTorch's CPU tuning guide gets from jemalloc or tcmalloc, without a
preloaded library. The CLI calls :func:`reuse_freed_memory` once at start-up; the cost is
that up to ``limit`` bytes freed stay with the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
DEFAULT_LIMIT = 1 << 30


def reuse_freed_memory(limit: int = DEFAULT_LIMIT) -> bool:
    """Serve blocks below ``limit`` bytes from the heap and keep up to ``limit`` freed.

    Returns whether the allocator took the setting (False off glibc, e.g. macOS or musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))
