"""Evaluation of any CLIP-like model: adapters on tiny random models saved to folders, built
from config (no network), against the models' own libraries; the eval CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import (
    COLOURS,
    QUICKSTART,
    SHAPES,
    TEXTS,
    TINY_CLIP_TEXT,
    TINY_CLIP_VISION,
    TINY_OPEN_CLIP,
    TINY_TIMM_DATA,
    draw,
    save_clip,
    save_siglip,
    save_vtde,
)
from PIL import Image

from mmcontrast.cli import main
from mmcontrast.config import DataConfig, load_recipe
from mmcontrast.data.pairs import load_pairs
from mmcontrast.data.transforms import image_transform
from mmcontrast.eval.adapters import load_eval_model
from mmcontrast.eval.embed import embed_images, embed_texts
from mmcontrast.methods import build_method
from mmcontrast.methods.image_text import ImageTextContrastive
from mmcontrast.models.tower import resolved_preprocess


def save_dual_encoder(folder: Path, tokenizer_dir: Path) -> Path:
    from transformers import (
        AutoTokenizer,
        BertConfig,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    torch.manual_seed(0)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        ViTConfig(**TINY_CLIP_VISION), BertConfig(**TINY_CLIP_TEXT), projection_dim=16
    )
    VisionTextDualEncoderModel(config=config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


def save_open_clip(folder: Path) -> tuple[Path, Path]:
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "tiny-eval-oc.json"
    config_path.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-eval-oc")
    checkpoint = folder / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return config_path, checkpoint


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_models")
    return {
        "clip": save_clip(root / "clip", tokenizer_dir),
        "siglip": save_siglip(root / "siglip", tokenizer_dir),
        "vision-text-dual-encoder": save_dual_encoder(root / "vtde", tokenizer_dir),
    }


@pytest.fixture(scope="module")
def labelled_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Imagefolder with captions and a shape label: train 16 pairs, test 8 (two captions)."""
    from mmcontrast.data.imagefolder import write_imagefolder

    root = tmp_path_factory.mktemp("labelled_shapes")
    rows = [
        {"image": draw(c, s), "text": f"a {c} {s}", "label": s} for c in COLOURS for s in SHAPES
    ]
    write_imagefolder(rows, root, "train")
    test = [
        {"image": draw(c, s, size=40), "text": [f"a {c} {s}", f"the {s}"], "label": s}
        for c in ("red", "blue")
        for s in SHAPES
    ]
    write_imagefolder(test, root, "test")
    return root


def _images(n: int = 5) -> list[Image.Image]:
    return [
        draw(c, s, size=24 + 4 * i)
        for i, (c, s) in enumerate(zip(list(COLOURS) * 2, SHAPES * 2, strict=True))
    ][:n]


@pytest.mark.parametrize("family", ["clip", "siglip", "vision-text-dual-encoder"])
def test_transformers_families_equal_plain_transformers(
    family: str, hf_models: dict[str, Path], shapes_dir: Path
) -> None:
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    folder = hf_models[family]
    adapter = load_eval_model(str(folder), device="cpu")
    assert adapter.family == family

    reference = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    table = load_pairs(DataConfig(path=str(shapes_dir)), "test")
    images = [Image.open(table.image(i)).convert("RGB") for i in range(len(table))]
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        expected_images = reference.get_image_features(pixel_values=pixels).pooler_output
        padding = "max_length" if family == "siglip" else True
        tokens = tokenizer(TEXTS, padding=padding, truncation=True, return_tensors="pt")
        if family == "siglip":
            assert tokens["input_ids"].shape[1] == 12  # padded to the maximum length
        expected_texts = reference.get_text_features(**tokens).pooler_output
    embedded = embed_images(adapter, table, batch_size=5)
    assert embedded.rows == list(range(len(table)))
    torch.testing.assert_close(embedded.features, expected_images, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embed_texts(adapter, TEXTS, 2), expected_texts, atol=1e-5, rtol=1e-5)
    assert adapter.describe()["model_type"] == reference.config.model_type


def test_timm_dual_encoder_evaluates_as_timm_and_training_preprocess(
    tmp_path: Path, tokenizer_dir: Path, labelled_shapes: Path
) -> None:
    """A VisionTextDualEncoderModel with a timm vision tower (TimmWrapperModel), whose
    processor AutoImageProcessor cannot read back: its images go through timm's own
    evaluation transform (crop_pct included), the pixels ``model.init_from`` training uses
    (one uint8 level apart: PIL's resize and torchvision's round differently), and the
    embeddings are plain transformers'. ``mmcontrast eval --model FOLDER`` runs."""
    from transformers import AutoModel, AutoTokenizer, TimmWrapperImageProcessor

    data = {**TINY_TIMM_DATA, "crop_pct": 0.875}
    folder = save_vtde(tmp_path / "vtde", tokenizer_dir, "timm", timm_data=data)
    adapter = load_eval_model(str(folder), device="cpu")
    assert adapter.family == "vision-text-dual-encoder"

    timm_processor = TimmWrapperImageProcessor(pretrained_cfg=data)
    method = build_method(load_recipe(None, [f"model.init_from={folder}"]))
    assert isinstance(method, ImageTextContrastive)
    pre = resolved_preprocess(method.model.vision)
    assert pre.crop_pct == 0.875
    one_level = 1.01 / 255 / min(pre.std)
    images = [*_images(), draw("red", "star", size=48).resize((50, 37))]  # one not square
    pixels = torch.stack([adapter.image_transform()(im) for im in images])
    expected_pixels = timm_processor(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, expected_pixels, atol=0, rtol=0)
    training = torch.stack([image_transform(pre)(im) for im in images])
    assert (training - pixels).abs().max() <= one_level

    reference = AutoModel.from_pretrained(folder).eval()
    tokens = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference.get_image_features(pixel_values=expected_pixels).pooler_output
        expected_texts = reference.get_text_features(**tokens).pooler_output
    torch.testing.assert_close(adapter.encode_images(pixels), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adapter.encode_texts(TEXTS), expected_texts, atol=1e-5, rtol=1e-5)

    out = tmp_path / "results"
    args = ["eval", "--model", str(folder), "--data", str(labelled_shapes), "--task", "retrieval"]
    assert main([*args, "--output", str(out), "--batch-size", "4"]) == 0
    record = json.loads(next(out.rglob("retrieval.json")).read_text())
    assert record["model"]["family"] == "vision-text-dual-encoder" and record["num_images"] == 8


def test_open_clip_checkpoint_equals_open_clip(tmp_path: Path) -> None:
    import open_clip

    config_path, checkpoint = save_open_clip(tmp_path)
    adapter = load_eval_model(f"open_clip:{config_path}:{checkpoint}", device="cpu")
    assert adapter.family == "open_clip"
    reference, _, preprocess = open_clip.create_model_and_transforms(
        "tiny-eval-oc", pretrained=str(checkpoint)
    )
    reference.eval()
    images = _images()
    with torch.no_grad():
        expected = reference.encode_image(torch.stack([preprocess(im) for im in images]))
        expected_text = reference.encode_text(open_clip.get_tokenizer("tiny-eval-oc")(TEXTS))
    pixels = torch.stack([adapter.image_transform()(im) for im in images])
    torch.testing.assert_close(adapter.encode_images(pixels), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(adapter.encode_texts(TEXTS), expected_text, atol=1e-6, rtol=1e-6)
    # detection without the family prefix, and a bare name gives random weights
    assert load_eval_model(str(config_path), device="cpu").family == "open_clip"


def test_family_prefix_and_bad_specs(hf_models: dict[str, Path], tmp_path: Path) -> None:
    assert load_eval_model(f"clip:{hf_models['clip']}", "cpu").family == "clip"
    with pytest.raises(ValueError, match="not one of"):
        load_eval_model(f"siglip:{hf_models['clip']}", "cpu")
    with pytest.raises(ValueError, match="cannot tell which kind of model"):
        load_eval_model(str(tmp_path), "cpu")  # an empty folder
    with pytest.raises(ValueError, match="no pretrained tag"):
        load_eval_model("open_clip:ViT-B-32:no_such_tag", "cpu")
    with pytest.raises(ValueError, match="could not read the config of Hub model"):
        load_eval_model("nobody/no-such-model-here", "cpu")  # offline in tests
    folder = tmp_path / "no_processor"
    folder.mkdir()
    (folder / "config.json").write_text((hf_models["clip"] / "config.json").read_text())
    with pytest.raises(ValueError, match="lacks its image processor or tokenizer"):
        load_eval_model(str(folder), "cpu")


def test_cli_compares_models_on_all_tasks(
    hf_models: dict[str, Path], labelled_shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config_path, checkpoint = save_open_clip(tmp_path / "oc")
    models = [str(hf_models["clip"]), f"open_clip:{config_path}:{checkpoint}"]
    out = tmp_path / "results"
    args = ["eval", "--data", str(labelled_shapes), "--output", str(out), "--batch-size", "4"]
    for model in models:
        args += ["--model", model]
    for task in ["retrieval", "zeroshot", "knn", "linear"]:
        args += ["--task", task]
    assert main([*args, "--templates", "photo"]) == 0
    printed = capsys.readouterr().out
    assert "| model |" in printed

    def strict(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    comparison = json.loads((out / "comparison.json").read_text(), parse_constant=strict)
    assert list(comparison) == models
    assert comparison[models[0]]["zeroshot"]["acc5"] is None  # 4 classes: NaN, written as null
    for folder in [out / p.name for p in out.iterdir() if p.is_dir()]:
        for task in ["retrieval", "zeroshot", "knn", "linear"]:
            record = json.loads((folder / f"{task}.json").read_text())
            assert record["task"] == task and record["versions"]["torch"] == torch.__version__
            assert record["model"]["family"] in ("clip", "open_clip")
            assert record["eval_data"]["split"] == "test"
        assert (folder / "retrieval_grid.png").is_file()
        assert (folder / "zeroshot_confusion.png").is_file()
        zeroshot = json.loads((folder / "zeroshot.json").read_text())
        assert zeroshot["num_images"] == 8 and zeroshot["num_classes"] == 4
        assert zeroshot["class_names"] == sorted(SHAPES)
        retrieval = json.loads((folder / "retrieval.json").read_text())
        assert retrieval["num_images"] == 8 and retrieval["num_texts"] == 16
        knn = json.loads((folder / "knn.json").read_text())
        assert knn["num_bank"] == 16 and knn["num_queries"] == 8
    assert (out / "comparison.md").read_text().count("\n") == 4  # header, rule, two models


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--data is needed"),
        (["--data", "LABELLED", "--task", "zeroshot", "--label-column", "colour"], "colour"),
        (["--data", "LABELLED", "--task", "zeroshot", "--templates", "nope"], "openai_imagenet"),
    ],
)
def test_cli_eval_errors_are_clear(
    extra: list[str],
    message: str,
    labelled_shapes: Path,
    hf_models: dict[str, Path],
    capsys: pytest.CaptureFixture,
) -> None:
    extra = [str(labelled_shapes) if x == "LABELLED" else x for x in extra]
    assert main(["eval", "--model", str(hf_models["clip"]), *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_training_eval_sharded_over_two_processes(tiny_run: list[str], tmp_path: Path) -> None:
    """2 CPU processes embed half the evaluation images each (gather_for_metrics): same
    retrieval numbers as evaluating the saved weights in one process."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    overrides = [
        *tiny_run,
        "model.vision.weights=null",
        "train.max_steps=2",
        "eval.grid_png=false",
        "eval.batch_size=3",  # 16 images: uneven last batches, padded then dropped
        "data.num_workers=0",
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "mmcontrast",
        "train",
        str(QUICKSTART),
    ]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = json.loads((run / "eval" / "retrieval.json").read_text())
    assert sharded["num_images"] == 16 and sharded["num_texts"] == 32
    assert main(["eval", "--model", str(run), "--output", str(tmp_path / "single")]) == 0
    single = json.loads((tmp_path / "single" / "retrieval.json").read_text())
    assert sharded["metrics"] == pytest.approx(single["metrics"], abs=1e-9)
    assert (run / "curves.png").is_file()
    history = (run / "eval_history.jsonl").read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["step"] == 2


def test_templates_from_a_file_equal_the_named_set(
    hf_models: dict[str, Path], labelled_shapes: Path, tmp_path: Path
) -> None:
    """``--templates FILE``: one template per line (a FLYP run's own prompts, say)."""
    from mmcontrast.eval.templates import TEMPLATE_SETS

    photo = [t if isinstance(t, str) else t("{c}") for t in TEMPLATE_SETS["photo"]]
    (tmp_path / "templates.txt").write_text("\n".join(photo) + "\n\n")
    scored = {}
    for name, templates in (("set", "photo"), ("file", str(tmp_path / "templates.txt"))):
        args = ["eval", "--model", str(hf_models["clip"]), "--data", str(labelled_shapes)]
        args += ["--task", "zeroshot", "--templates", templates, "--no-pictures"]
        assert main([*args, "--output", str(tmp_path / name), "--batch-size", "4"]) == 0
        scored[name] = json.loads((tmp_path / name / "zeroshot.json").read_text())
    assert scored["file"]["templates"] == photo
    assert scored["file"]["metrics"] == scored["set"]["metrics"]


def test_zeroshot_candidates_include_a_class_the_test_split_lacks(
    hf_models: dict[str, Path], tmp_path: Path
) -> None:
    """A class with training images but none in the scored split is still a candidate (as in
    a benchmark's class list): leaving it out would make the task easier than it is."""
    from mmcontrast.data.imagefolder import write_imagefolder

    root = tmp_path / "data"
    write_imagefolder([{"image": draw("red", s), "label": s} for s in SHAPES], root, "train")
    write_imagefolder([{"image": draw("blue", s), "label": s} for s in SHAPES[:-1]], root, "test")
    args = ["eval", "--model", str(hf_models["clip"]), "--data", str(root), "--task", "zeroshot"]
    assert main([*args, "--output", str(tmp_path / "out"), "--no-pictures"]) == 0
    record = json.loads((tmp_path / "out" / "zeroshot.json").read_text())
    assert record["class_names"] == sorted(SHAPES) and record["num_images"] == len(SHAPES) - 1
