"""Keep freed memory in the process on glibc, so CPU tensors stop paying page faults.

glibc hands allocations above its mmap threshold (128 KB, raised as it goes up to 32 MB)
to fresh ``mmap`` pages and gives them back on free, and trims the heap's free top. A CPU
forward of a convolutional network allocates activations of tens of MB per layer, so every
batch faults in and zeroes new pages: on 2 cores EfficientNet-Lite0 spent as long in the
kernel as computing (``scripts/BENCHMARKS.md``, "CPU inference"). Raising both thresholds
makes freed blocks reusable, the effect PyTorch's CPU tuning guide gets from jemalloc or
tcmalloc, without a preloaded library. The CLI calls :func:`reuse_freed_memory` once at
start-up. The cost: memory freed inside the heap stays with the process (its resident size
is its peak, not its current use), like with those allocators.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
DEFAULT_LIMIT = 1 << 30
OLD_GLIBC_MMAP_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)  # 32 MB, before 2.35
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def reuse_freed_memory(limit: int = DEFAULT_LIMIT) -> bool:
    """Serve blocks below ``limit`` bytes from the heap and keep up to ``limit`` of free top.

    Older glibc refuses mmap thresholds above 32 MB; that ceiling is used there. Nothing is
    changed when the user tunes malloc through the environment (``GLIBC_TUNABLES``,
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``).

    Returns:
        Whether glibc took both settings (False off glibc, e.g. macOS or musl, or when the
        environment tunes malloc).
    """
    if not 0 < limit < 2**31:
        raise ValueError(
            f"limit must be between 1 byte and 2 GiB (mallopt takes an int), got {limit}"
        )
    if not sys.platform.startswith("linux") or any(os.environ.get(k) for k in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_set = mallopt(M_MMAP_THRESHOLD, limit) or mallopt(
        M_MMAP_THRESHOLD, min(limit, OLD_GLIBC_MMAP_MAX)
    )
    return bool(mmap_set) and bool(mallopt(M_TRIM_THRESHOLD, limit))
