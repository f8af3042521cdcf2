"""What tests share besides fixtures: paths, tiny tower configs, drawn images, run overrides,
and the helpers of the multi-process tests. Fixtures live in ``conftest.py``.

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml): ``from helpers import ...``
works from every sub-folder, and ``mp.spawn`` workers defined here can be unpickled.
"""

from __future__ import annotations

import datetime
import gzip
import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image, ImageDraw
from safetensors.torch import load_file

if TYPE_CHECKING:
    from mmcontrast.methods.base import Method
    from mmcontrast.methods.image_text import ImageTextContrastive

ROOT = Path(__file__).resolve().parents[1]  # the repository
RECIPES = ROOT / "recipes"
QUICKSTART = RECIPES / "quickstart.yaml"

# ------------------------------------------------------------------ tiny towers and data

WORDS = "red green blue yellow circle square triangle star small big dark light shape of a the on".split()
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 30),
    "blue": (30, 30, 220),
    "yellow": (230, 220, 30),
}
SHAPES = ["circle", "square", "triangle", "star"]
TINY_OPEN_CLIP = {  # an open_clip model config small enough for CPU tests
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_VIT = {  # random ViT tower for CPU tests (32 px, 2 layers)
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
TINY_BERT = {  # random BERT tower for CPU tests (the tokenizer_dir vocabulary fits in 32)
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 32,
    "max_position_embeddings": 64,
}

TINY_CLIP_VISION = {  # halves of the tiny random CLIPModel / SiglipModel
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
TINY_CLIP_TEXT = {  # the tokenizer_dir vocabulary fits in 32
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 32,
    "max_position_embeddings": 64,
    # the tokenizer_dir's [PAD], [CLS], [SEP]: CLIP pools the text at the first eos token
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 3,
}


def save_clip(folder: Path, tokenizer_dir: Path) -> Path:
    """A tiny random transformers CLIPModel with its image processor and tokenizer."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config=TINY_CLIP_VISION, text_config=TINY_CLIP_TEXT, projection_dim=16
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


def save_siglip(folder: Path, tokenizer_dir: Path) -> Path:
    """A tiny random SiglipModel; its tokenizer stops at 12 tokens."""
    from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    SiglipModel(
        SiglipConfig(vision_config=TINY_CLIP_VISION, text_config=TINY_CLIP_TEXT)
    ).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, model_max_length=12)
    tokenizer.save_pretrained(folder)
    return folder


TINY_TIMM_DATA = {  # timm's data config of the tiny TimmWrapper vision tower (32 px)
    "input_size": [3, 32, 32],
    "interpolation": "bicubic",
    "crop_pct": 1.0,
    "crop_mode": "center",
    "mean": [0.5, 0.4, 0.3],
    "std": [0.2, 0.25, 0.3],
}


def save_vtde(
    folder: Path, tokenizer_dir: Path, vision: str = "clip", timm_data: dict | None = None
) -> Path:
    """A tiny random VisionTextDualEncoderModel: a CLIP vision tower (with a CLIP image
    processor) or timm's ``test_efficientnet`` through TimmWrapperModel (its processor saved
    as transformers saves it: the timm data config in processor_config.json), + BERT."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        CLIPImageProcessor,
        CLIPVisionConfig,
        TimmWrapperConfig,
        TimmWrapperImageProcessor,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
        VisionTextDualEncoderProcessor,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if vision == "clip":
        vision_config = CLIPVisionConfig(**TINY_CLIP_VISION)
    else:
        data = timm_data or TINY_TIMM_DATA
        vision_config = TimmWrapperConfig(
            architecture="test_efficientnet", hidden_size=256, num_labels=0, pretrained_cfg=data
        )
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision_config, BertConfig(**TINY_BERT), projection_dim=16, logit_scale_init_value=3.1
    )
    VisionTextDualEncoderModel(config).save_pretrained(folder)
    if vision == "clip":
        CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    else:
        images = TimmWrapperImageProcessor(pretrained_cfg=timm_data or TINY_TIMM_DATA)
        VisionTextDualEncoderProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(
            folder
        )
    return folder


def save_open_clip(root: Path, config: dict | None = None, name: str = "tiny-oc") -> Path:
    """A tiny random open_clip model as ``root/NAME.json`` (its config), ``root/NAME.safetensors``
    (its weights) and ``root/NAME-dir`` (a local-dir: folder, bilinear squash preprocessing);
    returns ``root``."""
    import open_clip
    from safetensors.torch import save_file

    config = config or TINY_OPEN_CLIP
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(root / f"{name}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    with torch.no_grad():
        model.logit_scale.fill_(3.3)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / f"{name}.safetensors"))
    folder = root / f"{name}-dir"
    folder.mkdir(exist_ok=True)
    save_file(state, str(folder / "open_clip_model.safetensors"))
    preprocess = {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config, "preprocess_cfg": preprocess})
    )
    return root


def draw(colour: str, shape: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(image)
    box = (6, 6, size - 6, size - 6)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(size // 2, 6), (6, size - 6), (size - 6, size - 6)], fill=fill)
    else:
        d.regular_polygon((size // 2, size // 2, size // 2 - 6), 5, fill=fill)
    return image


def bad_folder(root: Path) -> Path:
    """Six rows: two good, a corrupt file, a truncated PNG, a missing file, an empty caption."""
    from mmcontrast.data.imagefolder import write_imagefolder

    split = write_imagefolder(
        [
            {"image": draw("red", s), "text": f"a red {s}"}
            for s in ["circle", "square", "star", "triangle"]
        ],
        root,
        "train",
    )
    rows = [json.loads(line) for line in (split / "metadata.jsonl").read_text().splitlines()]
    (split / rows[2]["file_name"]).write_bytes(b"this is not a png")
    data = (split / rows[3]["file_name"]).read_bytes()
    (split / rows[3]["file_name"]).write_bytes(data[: len(data) // 2])
    rows.append({"file_name": "does_not_exist.png", "text": "a ghost"})
    rows.append({"file_name": rows[0]["file_name"], "text": "   "})
    (split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_idx(folder: Path, prefix: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Gzipped IDX files: magic 2051 (images) / 2049 (labels), big-endian sizes, uint8 data."""
    n, h, w = images.shape
    header = struct.pack(">IIII", 2051, n, h, w)
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(header + images.numpy().tobytes())
    )
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">II", 2049, n) + labels.to(torch.uint8).numpy().tobytes())
    )


# ------------------------------------------------------------------ runs


def flow(mapping: dict[str, int]) -> str:
    """A dict as a YAML flow mapping, for ``--set key={...}`` overrides."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def tiny_overrides(data: Path, tokenizer: Path, output: Path) -> list[str]:
    """``--set`` overrides for a run on random tiny ViT + BERT towers."""
    vit = flow(TINY_VIT)
    bert = flow(TINY_BERT)
    return [
        "model.vision.source=hf",
        "model.vision.name=vit",
        "model.vision.pretrained=false",
        f"model.vision.config_overrides={vit}",
        "model.text.source=hf",
        "model.text.name=bert",
        "model.text.pretrained=false",
        f"model.text.tokenizer={tokenizer}",
        f"model.text.config_overrides={bert}",
        "model.embed_dim=16",
        f"data.path={data}",
        f"train.output_dir={output}",
        "train.batch_size=8",
        "train.progress_bar=false",
        "train.trackers=[]",
        "train.log_every=1",
        "eval.batch_size=8",
    ]


def tiny_vision_overrides(data: Path, output: Path) -> list[str]:
    """A vision method's run on a tiny CNN at 16 px over the labelled shapes in ``data``
    (the ``labelled_dir`` fixture) into ``output``: batch 8, nothing printed or tracked."""
    return [
        "model.vision.source=builtin",
        "model.vision.name=tiny_cnn",
        "model.vision.image_size=16",
        f"data.path={data}",
        f"train.output_dir={output}",
        "train.batch_size=8",
        "train.progress_bar=false",
        "train.trackers=[]",
    ]


def train_stopped_and_resumed(
    recipe: Path | None,
    overrides: list[str],
    root: Path,
    stop_at: int = 5,
    when_stopped: Callable[[dict], None] | None = None,
) -> tuple[dict, dict, dict]:
    """Train ``recipe`` straight through into ``root/full``, and into ``root/split`` stopped
    at step ``stop_at`` (``when_stopped`` sees that summary) then resumed; returns the three
    summaries (full, first, second)."""
    from mmcontrast.config import load_recipe
    from mmcontrast.pipeline import train

    full = train(load_recipe(recipe, [*overrides, f"train.output_dir={root / 'full'}"]))
    split = [*overrides, f"train.output_dir={root / 'split'}"]
    first = train(load_recipe(recipe, [*split, f"train.stop_at_step={stop_at}"]))
    assert first.get("stopped_early") and "stopped_early" not in full
    if when_stopped is not None:
        when_stopped(first)
    second = train(load_recipe(recipe, split), resume="latest")
    return full, first, second


def assert_resume_is_exact(
    overrides: list[str], root: Path
) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Train a vision run (``overrides``, on the ``labelled_dir`` fixture: 32 images, batch 8)
    for 2 epochs straight through, and stopped at step 5 then resumed: both give the same 8
    finite losses and bit-identical final weights. Returns the straight run's history and
    weights, for a test's own checks of its method's state."""
    steps = [
        "train.epochs=2",  # 4 steps per epoch
        "train.checkpoint_every=3",
        "train.log_every=1",
        "eval.at_end=false",
        "eval.views_png=false",
    ]
    full, first, second = train_stopped_and_resumed(None, [*overrides, *steps], root)
    losses = [h["loss"] for h in full["history"]]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    resumed = first["history"] + second["history"]
    assert [h["loss"] for h in resumed] == losses
    a = load_file(str(root / "full" / "model.safetensors"))
    b = load_file(str(root / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return full["history"], a


# ------------------------------------------------------------------ model.init_from
# (models/test_init_from*.py, models/test_lora.py, methods/test_wise_ft.py, hub/test_export_sources.py)

TEXTS = ["a red circle", "the big blue square on a dark star", "green"]


def method_from(source: str | Path, *overrides: str) -> ImageTextContrastive:
    """The image-text method ``model.init_from=source`` builds (eval mode)."""
    from mmcontrast.config import load_recipe
    from mmcontrast.methods import build_method
    from mmcontrast.methods.image_text import ImageTextContrastive

    method = build_method(load_recipe(None, [f"model.init_from={source}", *overrides]))
    assert isinstance(method, ImageTextContrastive)
    return method.eval()


def pixels(n: int = 4) -> torch.Tensor:
    """``n`` normalised 32 px images of noise, the same on every call."""
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def embeddings(method: Method) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained dual encoder's normalised embeddings of :func:`pixels` and ``TEXTS``."""
    dual = method.trained_model()
    return dual.get_image_features(pixels()), dual.get_text_features(**dual.tokenize(TEXTS))


def train_from(
    source: str | Path,
    data: Path,
    output: Path,
    *extra: str,
    steps: int = 3,
    lr: float = 1e-3,
    at_start: bool | None = False,
    at_end: bool = False,
) -> Method:
    """Train from ``model.init_from=source`` on ``data`` into ``output`` for ``steps`` steps
    of 8 pairs (no trackers, no progress bar; ``extra`` overrides come last) and return the
    method it trained, in eval mode. ``eval.at_start`` / ``eval.at_end`` as given
    (``at_start=None``: the recipe's default, on for ``init_from`` runs)."""
    from mmcontrast.config import load_recipe
    from mmcontrast.methods import build_method
    from mmcontrast.pipeline import train

    overrides = [
        f"model.init_from={source}",
        f"data.path={data}",
        f"train.output_dir={output}",
        "train.batch_size=8",
        f"train.max_steps={steps}",
        f"train.lr={lr}",
        "train.progress_bar=false",
        "train.trackers=[]",
        "eval.batch_size=8",
        f"eval.at_end={str(at_end).lower()}",
        *([] if at_start is None else [f"eval.at_start={str(at_start).lower()}"]),
        *extra,
    ]
    built: list[Method] = []

    def keep(cfg: object) -> Method:
        built.append(build_method(cfg))  # type: ignore[arg-type]
        return built[-1]

    with mock.patch("mmcontrast.train.loop.build_method", keep):
        train(load_recipe(None, overrides))
    return built[0].eval()


# ------------------------------------------------------------------ 2 processes vs 1 process
# (train/test_global_negatives.py, train/test_grad_cache.py)

WORLD = 2  # gloo processes of the multi-process training tests
_BERT_WITHOUT_DROPOUT = (
    "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, "
    "vocab_size: 32, max_position_embeddings: 64, hidden_dropout_prob: 0.0, "
    "attention_probs_dropout_prob: 0.0}"
)

Case = tuple[str | Path | None, list[str]]  # (recipe, overrides)


def clip_run(shapes: Path, tokenizer: Path, batch: int, extra: tuple[str, ...] = ()) -> list[str]:
    """CLIP on tiny random ViT + BERT towers (no dropout), both towers trained, SGD."""
    return [
        *tiny_overrides(shapes, tokenizer, Path("unused")),
        f"model.text.config_overrides={_BERT_WITHOUT_DROPOUT}",
        "model.vision.weights=null",
        "model.vision.lock=false",
        "train.cache_locked_features=false",
        "data.max_train_samples=16",  # 2 steps per epoch: 3 steps cross an epoch
        f"train.batch_size={batch}",
        "train.max_steps=3",
        "train.warmup_steps=0",
        "train.optimizer=sgd",
        "train.lr=0.2",
        "eval.at_end=false",
        *extra,
    ]


def train_worker(rank: int, cases: dict[str, Case], root: str) -> None:
    """``mp.spawn`` target: train every case on this rank of ``WORLD`` gloo processes into
    ``root/<case>``; a case named ``*no-factor`` trains without the loop's x P."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD)
    )
    os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    os.environ.update(CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true")  # gloo on CPU
    torch.set_num_threads(1)
    from accelerate.state import AcceleratorState, GradientState

    from mmcontrast.config import load_recipe
    from mmcontrast.train import loop

    real_factor = loop._loss_factor
    for name, (recipe, overrides) in cases.items():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        dist.init_process_group(  # accelerate keeps it; train() destroys it at its end
            "gloo",
            init_method=f"file://{root}/init-{name}",
            rank=rank,
            world_size=WORLD,
            timeout=datetime.timedelta(seconds=120),
        )
        loop._loss_factor = (lambda n, m: 1) if name.endswith("no-factor") else real_factor  # type: ignore[assignment]
        cfg = load_recipe(recipe, [*overrides, f"train.output_dir={root}/{name}"])
        loop.train(cfg)


def run_result(folder: Path) -> tuple[list[float], dict[str, torch.Tensor]]:
    """A finished run's losses per step and final weights."""
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    return [h["loss"] for h in history], load_file(str(folder / "model.safetensors"))


def train_in_one_process(
    recipe: str | Path | None, overrides: list[str], folder: Path
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train in this process on CPU, one thread, into ``folder``; returns :func:`run_result`."""
    from mmcontrast.config import load_recipe
    from mmcontrast.pipeline import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only wait for each other
    try:
        with mock.patch.dict(os.environ, ACCELERATE_USE_CPU="true"):  # CPU on a GPU machine too
            train(load_recipe(recipe, [*overrides, f"train.output_dir={folder}"]))
    finally:
        torch.set_num_threads(threads)
    return run_result(folder)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        atol = 1e-5 * max(1.0, float(b[key].abs().max()))  # SGD steps grow some weights to ~10
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


# ------------------------------------------------------------------ jobs in gloo processes
# (the 2-process tests of losses/ and methods/)


def _gloo_worker(rank: int, root: Path, world: int, job: Callable[[int], Any]) -> None:
    """``mp.spawn`` target of :func:`run_in_gloo_processes`: ``job(rank)`` saved to
    ``root/rank<rank>.pt``, inside a gloo process group of ``world`` processes."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{root / 'init'}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        torch.set_num_threads(1)  # tiny tensors: more threads only wait for each other
        torch.save(job(rank), root / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_shares(rank: int, cases: list[Any], run_case: Callable[..., Any]) -> dict[Any, Any]:
    """In a 2-process job: ``run_case(case, dtype, start, stop, gather=True)`` on this
    process's share of each case (its ``sizes[rank]`` rows after the lower ranks'), in float64
    and float32; the results by ``(case.id, str(dtype))``."""
    results = {}
    for dtype in (torch.float64, torch.float32):
        for case in cases:
            start = sum(case.sizes[:rank])
            results[(case.id, str(dtype))] = run_case(
                case, dtype, start, start + case.sizes[rank], gather=True
            )
    return results


def run_in_gloo_processes(job: Callable[[int], Any], root: Path, world: int = WORLD) -> list[Any]:
    """``job(rank)`` in ``world`` real gloo processes (one thread each, a file rendezvous in
    ``root``); what each returned, by rank. ``job`` must be picklable: a module-level function
    (``functools.partial`` of one for arguments)."""
    mp.spawn(_gloo_worker, args=(Path(root), world, job), nprocs=world, join=True)
    # the jobs' own results (dicts, tuples): not only tensors
    return [torch.load(Path(root) / f"rank{r}.pt", weights_only=False) for r in range(world)]
