"""CPU inference: chunks give the same embeddings as one big batch, chunk size follows image
area, and the allocator setting the CLI makes at start-up is taken."""

import platform
import sys

import pytest
import torch
from torch import nn

from mmcontrast.cpu_allocator import reuse_freed_memory
from mmcontrast.data.feature_cache import CPU_CHUNK_PIXELS, cpu_chunk_size, forward_in_chunks


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)
def test_reuse_freed_memory_is_taken_by_glibc():
    assert reuse_freed_memory()
    assert reuse_freed_memory(64 << 20)  # the setting may be made again, e.g. lowered


def test_reuse_freed_memory_leaves_user_tuning_and_bad_limits_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert not reuse_freed_memory()
    with pytest.raises(ValueError, match="2 GiB"):
        reuse_freed_memory(4 << 30)  # would wrap to 0 as a C int: everything through mmap


def test_chunk_size_follows_image_area_on_cpu_only():
    assert cpu_chunk_size(torch.zeros(128, 3, 224, 224)) == CPU_CHUNK_PIXELS // (224 * 224)
    assert cpu_chunk_size(torch.zeros(128, 3, 448, 448)) == max(1, CPU_CHUNK_PIXELS // 448**2)
    assert cpu_chunk_size(torch.zeros(4, 3, 2048, 2048)) == 1
    assert cpu_chunk_size(torch.zeros(128, 3, 32, 32)) == CPU_CHUNK_PIXELS // 32**2
    assert cpu_chunk_size(torch.zeros(128, 3, 224, 224, device="meta")) == 128  # not CPU


def test_forward_in_chunks_matches_one_batch_in_eval_mode():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
    ).eval()
    pixels = torch.randn(37, 3, 224, 224)
    sizes: list[int] = []

    def encode(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return net(x).flatten(1)

    with torch.no_grad():
        chunked = forward_in_chunks(encode, pixels)
        whole = net(pixels).flatten(1)
    step = cpu_chunk_size(pixels)
    assert sizes == [step] * (37 // step) + ([37 % step] if 37 % step else [])
    torch.testing.assert_close(chunked, whole)
