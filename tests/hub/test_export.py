"""Exports: plain transformers / timm load them and give mmcontrast's embeddings; cards parse.

Runs are tiny random models saved the way training saves them (``config.yaml`` +
``model.safetensors``), with weights and logit scale moved off their initial values so a
parameter that is not carried over shows up as a difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import QUICKSTART, TINY_BERT, TINY_OPEN_CLIP, TINY_VIT, flow
from PIL import Image

import mmcontrast
from mmcontrast.cli import main
from mmcontrast.config import load_recipe
from mmcontrast.hub.export import export
from mmcontrast.hub.transformers_export import NotExpressible
from mmcontrast.methods import build_method, load_trained
from mmcontrast.train.checkpoint import save_weights

VISION, TEXT = TINY_VIT, TINY_BERT
CAPTIONS = ["a red circle", "a blue square on white", "green"]
METRICS = {"image_retrieval_recall@1": 0.375, "text_retrieval_recall@1": 0.25}


def make_run(folder: Path, overrides: list[str], metrics: dict[str, float] | None = None) -> Path:
    """A 'trained' run: random weights, perturbed, saved with its config and an evaluation."""
    cfg = load_recipe(None, [f"train.output_dir={folder}", "data.path=shapes", *overrides])
    torch.manual_seed(0)
    method = build_method(cfg)
    with torch.no_grad():
        for name, param in method.named_parameters():
            if name.endswith("logit_scale"):
                param.fill_(3.1)
            elif name.endswith("logit_bias"):
                param.fill_(-4.2)
            else:
                param.add_(0.01 * torch.randn_like(param))
    save_weights(method, cfg, folder)
    if metrics:
        (folder / "eval").mkdir()
        result = {"task": "retrieval", "data": "shapes/test", "step": 7, "metrics": metrics}
        (folder / "eval" / "retrieval.json").write_text(json.dumps(result))
    return folder


def hf_text(tokenizer_dir: Path, pooling: str = "pooler") -> list[str]:
    return [
        "model.text.source=hf",
        "model.text.name=bert",
        "model.text.pretrained=false",
        f"model.text.tokenizer={tokenizer_dir}",
        f"model.text.config_overrides={flow(TEXT)}",
        f"model.text.pooling={pooling}",
        "model.text.max_length=16",
    ]


def vit_vision() -> list[str]:
    return [
        "model.vision.source=hf",
        "model.vision.name=vit",
        "model.vision.pretrained=false",
        f"model.vision.config_overrides={flow(VISION)}",
    ]


def pil_images(size: int, n: int = 2) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(1)
    arrays = torch.randint(0, 256, (n, size, size, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(a.numpy()) for a in arrays]


def assert_same_embeddings(run: Path, exported: Path, expected_class: str) -> None:
    """Plain transformers on the export (its own processor) == mmcontrast on the run."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(exported).eval()
    processor = AutoProcessor.from_pretrained(exported)
    assert type(model).__name__ == expected_class
    dual = load_trained(run).model
    size = (
        model.config.vision_config.image_size
        if expected_class != "VisionTextDualEncoderModel"
        else None
    )
    images = pil_images(size or dual.image_transform().transforms[1].size[0])
    padding = "max_length" if expected_class == "SiglipModel" else True  # as SigLIP trained
    inputs = processor(
        text=CAPTIONS, images=images, return_tensors="pt", padding=padding, truncation=True
    )
    with torch.no_grad():
        theirs = model(**inputs)
        ours_images = dual.get_image_features(
            torch.stack([dual.image_transform()(im) for im in images])
        )
        ours_texts = dual.get_text_features(**dual.tokenize(CAPTIONS))
    assert torch.allclose(theirs.image_embeds, ours_images, atol=1e-5)
    assert torch.allclose(theirs.text_embeds, ours_texts, atol=1e-5)
    assert torch.allclose(
        theirs.logits_per_image.new_tensor(dual.scale().item()), model.logit_scale.exp()
    )


@pytest.fixture(scope="module")
def hf_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path
) -> dict[str, Path]:
    """Tiny CLIP and SigLIP checkpoints in transformers format (towers for the recipes)."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    CLIPModel(
        CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=16)
    ).save_pretrained(root / "clip")
    SiglipModel(SiglipConfig(vision_config=VISION, text_config=TEXT)).save_pretrained(
        root / "siglip"
    )
    for name in ("clip", "siglip"):
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(root / name)
    return {"clip": root / "clip", "siglip": root / "siglip"}


def test_vit_bert_exports_as_vision_text_dual_encoder(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run(tmp_path / "run", [*vit_vision(), *hf_text(tokenizer_dir), "model.embed_dim=16"])
    result = export(run, tmp_path / "export")
    assert (result.library, result.kind) == ("transformers", "vision-text-dual-encoder")
    assert_same_embeddings(run, tmp_path / "export", "VisionTextDualEncoderModel")
    files = {p.name for p in (tmp_path / "export").iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "training_config.yaml"} <= files
    assert not list((tmp_path / "export").glob("*.bin"))  # safetensors only


def test_clip_towers_export_as_clip_model(tmp_path: Path, hf_checkpoints: dict[str, Path]) -> None:
    clip = hf_checkpoints["clip"]
    run = make_run(
        tmp_path / "run",
        [
            f"model.vision.name={clip}",
            f"model.text.name={clip}",
            "model.embed_dim=24",  # a new projection size: CLIPConfig.projection_dim follows it
        ],
    )
    result = export(run, tmp_path / "export")
    assert result.kind == "clip"
    assert_same_embeddings(run, tmp_path / "export", "CLIPModel")


def test_siglip_towers_export_as_siglip_model(
    tmp_path: Path, hf_checkpoints: dict[str, Path]
) -> None:
    from transformers import AutoModel

    siglip = hf_checkpoints["siglip"]
    run = make_run(
        tmp_path / "run",
        [
            f"model.vision.name={siglip}",
            f"model.text.name={siglip}",
            "model.projection=none",
            "model.embed_dim=32",
            "loss.name=siglip",
        ],
    )
    assert export(run, tmp_path / "export").kind == "siglip"
    assert_same_embeddings(run, tmp_path / "export", "SiglipModel")
    model = AutoModel.from_pretrained(tmp_path / "export")
    assert model.logit_bias.item() == pytest.approx(-4.2, abs=1e-6)


def test_timm_vision_tower_goes_through_timm_wrapper(tmp_path: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoModel

    run = make_run(
        tmp_path / "run",
        [
            "model.vision.source=timm",
            "model.vision.name=test_efficientnet",
            "model.vision.pretrained=false",
            "model.vision.image_size=48",
            *hf_text(tokenizer_dir),
            "model.embed_dim=16",
        ],
    )
    assert export(run, tmp_path / "export").kind == "vision-text-dual-encoder"
    model = AutoModel.from_pretrained(tmp_path / "export")
    assert type(model.vision_model).__name__ == "TimmWrapperModel"
    assert model.config.vision_config.hidden_size == load_trained(run).model.vision.width
    assert_same_embeddings(run, tmp_path / "export", "VisionTextDualEncoderModel")


def test_mlp_heads_fall_back_to_mmcontrast_format(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run(
        tmp_path / "run",
        [*vit_vision(), *hf_text(tokenizer_dir, pooling="mean"), "model.projection=mlp"],
    )
    with pytest.raises(NotExpressible, match="projection is 'mlp'"):
        export(run, tmp_path / "strict", format="transformers")
    result = export(run, tmp_path / "export")
    assert (result.library, result.kind) == ("mmcontrast", "mmcontrast")
    assert "projection is 'mlp'" in (result.reason or "")
    # self-contained: the run's tokenizer folder is not needed any more
    assert (tmp_path / "export" / "text_tower" / "tokenizer_config.json").is_file()
    model = mmcontrast.from_pretrained(str(tmp_path / "export"))
    dual = load_trained(run).model
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.get_image_features(pixels), dual.get_image_features(pixels))
        assert torch.allclose(
            model.get_text_features(**model.tokenize(CAPTIONS)),
            dual.get_text_features(**dual.tokenize(CAPTIONS)),
        )


def test_mean_pooled_text_tower_is_explained(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run(tmp_path / "run", [*vit_vision(), *hf_text(tokenizer_dir, pooling="mean")])
    with pytest.raises(NotExpressible, match="pools with 'mean'.*pooling: pooler"):
        export(run, tmp_path / "export", format="transformers")


def test_card_parses_and_carries_metrics(tmp_path: Path, tokenizer_dir: Path) -> None:
    from huggingface_hub import ModelCard

    run = make_run(tmp_path / "run", [*vit_vision(), *hf_text(tokenizer_dir)], metrics=METRICS)
    export(run, tmp_path / "export", model_id="someone/tiny-clip")
    card = ModelCard.load(tmp_path / "export" / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert "mmcontrast" in card.data.tags
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == METRICS
    assert card.data.model_name == "tiny-clip"
    assert 'AutoModel.from_pretrained("someone/tiny-clip")' in card.text
    assert "{{" not in card.text and "None" not in card.text.split("## Training")[0]
    assert (tmp_path / "export" / "eval" / "retrieval.json").is_file()


def test_export_refuses_to_overwrite(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run(tmp_path / "run", [*vit_vision(), *hf_text(tokenizer_dir)])
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(run, tmp_path / "export")
    assert (tmp_path / "export" / "keep.txt").read_text() == "mine"


def test_vision_backbones_export_in_their_library(tmp_path: Path) -> None:
    import timm
    from transformers import AutoModel

    simclr = ["method=simclr", "data.path=fashion_mnist"]
    run = make_run(
        tmp_path / "timm_run",
        [
            *simclr,
            "model.vision.source=timm",
            "model.vision.name=test_resnet",
            "model.vision.pretrained=false",
            "model.vision.image_size=32",
        ],
    )
    assert export(run, tmp_path / "timm").library == "timm"
    backbone = load_trained(run).backbone
    loaded = timm.create_model(
        f"local-dir:{tmp_path / 'timm'}", pretrained=True, num_classes=0
    ).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(pixels), backbone(pixel_values=pixels), atol=1e-5)

    run = make_run(tmp_path / "hf_run", [*simclr, *vit_vision()])
    assert export(run, tmp_path / "hf").library == "transformers"
    backbone = load_trained(run).backbone
    loaded = AutoModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.allclose(
            loaded(pixel_values=pixels).pooler_output, backbone(pixel_values=pixels), atol=1e-5
        )

    run = make_run(
        tmp_path / "builtin_run",
        [
            *simclr,
            "model.vision.source=builtin",
            "model.vision.name=tiny_cnn",
            "model.vision.pretrained=false",
        ],
    )
    result = export(run, tmp_path / "builtin")
    assert (result.library, result.kind) == ("mmcontrast", "backbone")
    loaded = mmcontrast.from_pretrained(str(tmp_path / "builtin"))
    backbone = load_trained(run).backbone
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=pixels), backbone(pixel_values=pixels))


def test_cli_export_then_dry_run_push(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path / "run", [*vit_vision(), *hf_text(tokenizer_dir)], metrics=METRICS)
    assert main(["export", str(run), "--output", str(tmp_path / "export")]) == 0
    assert "VisionTextDualEncoderModel" in capsys.readouterr().out
    assert main(["push", str(tmp_path / "export"), "--repo-id", "me/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "model.safetensors" in out and "https://huggingface.co/me/tiny/blob/main/config.json" in out
    )
    assert "pipeline_tag: zero-shot-image-classification" in out  # the card, in full
    assert main(["export", str(run), "--output", str(tmp_path / "export")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # no network here (HF_HUB_OFFLINE): one clear line, no traceback
    assert main(["push", str(tmp_path / "export"), "--repo-id", "me/tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmcontrast push: error:") and "Traceback" not in err
    assert "--dry-run" in err


def test_from_pretrained_unknown_name_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network here either way
    with pytest.raises(FileNotFoundError, match="not a local directory; HF_HUB_OFFLINE") as info:
        mmcontrast.from_pretrained("nobody/no-such-model-here")
    assert "`mmcontrast export` wrote" in str(info.value) and info.value.__cause__ is None


class RecordingHub:
    """Stands in for ``huggingface_hub.HfApi`` during training; sends nothing anywhere."""

    endpoint = "https://huggingface.co"
    token = None
    calls: list[tuple[str, dict[str, object]]] = []
    fail_with: BaseException | None = None

    def create_repo(self, **kwargs: object) -> str:
        RecordingHub.calls.append(("create_repo", kwargs))
        return f"{self.endpoint}/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs: object) -> object:
        folder = Path(str(kwargs["folder_path"]))
        RecordingHub.calls.append(
            ("upload_folder", {**kwargs, "files": sorted(p.name for p in folder.iterdir())})
        )
        if RecordingHub.fail_with is not None:
            raise RecordingHub.fail_with
        return None


def test_push_to_hub_during_training(
    tiny_run: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mmcontrast.hub import push

    secret = "hf_trainingSECRET987654"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setattr(push, "HfApi", RecordingHub)
    RecordingHub.calls = []
    overrides = [
        *tiny_run,
        "model.vision.weights=null",
        "model.text.pooling=pooler",
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "hub.push_to_hub=true",
        "hub.repo_id=someone/tiny-run",
        "hub.private=true",
    ]
    assert (
        main(
            [
                "train",
                str(QUICKSTART),
                *[x for o in [*overrides, "model.projection=linear"] for x in ("--set", o)],
            ]
        )
        == 0
    )
    uploads = [kw for name, kw in RecordingHub.calls if name == "upload_folder"]
    assert [kw["commit_message"] for kw in uploads] == [
        "mmcontrast: checkpoint at step 2",
        "mmcontrast: final model at step 4",
    ]
    assert all("model.safetensors" in kw["files"] and "README.md" in kw["files"] for kw in uploads)
    assert all(kw["private"] for name, kw in RecordingHub.calls if name == "create_repo")

    # a failing push is reported and training still finishes; the token never shows
    RecordingHub.calls = []
    RecordingHub.fail_with = RuntimeError(f"upload refused for token {secret}")
    try:
        overrides = [*overrides, "train.overwrite_output_dir=true"]
        assert (
            main(
                [
                    "train",
                    str(QUICKSTART),
                    *[x for o in overrides for x in ("--set", o)],
                ]
            )
            == 0
        )
    finally:
        RecordingHub.fail_with = None
    out = capsys.readouterr()
    assert "push to someone/tiny-run at step 4 failed" in out.out
    assert secret not in out.out + out.err + caplog.text


def test_push_to_hub_needs_a_repo_id(tiny_run: list[str]) -> None:
    from mmcontrast.config import ConfigError
    from mmcontrast.pipeline import train

    cfg = load_recipe(None, [*tiny_run, "hub.push_to_hub=true"])
    with pytest.raises(ConfigError, match="hub.repo_id"):
        train(cfg)


def test_cli_convert_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import open_clip

    config = tmp_path / "tiny-cli-oc.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP))
    assert main(["convert", str(config), "--output", str(tmp_path / "hf")]) == 0
    assert "CLIPModel" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "hf"), "--output", str(tmp_path / "oc")]) == 0
    model = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}", require_pretrained=True)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert main(["convert", str(tmp_path / "hf"), "--checkpoint", "x.pt", "--output", "y"]) == 2
    assert "--checkpoint is for open_clip sources" in capsys.readouterr().err


CLEAN_LOAD = """
import sys
sys.modules["mmcontrast"] = None  # any import of mmcontrast now fails: plain transformers only
import torch
from transformers import AutoModel, AutoProcessor
folder, pixels_file = sys.argv[1], sys.argv[2]
model = AutoModel.from_pretrained(folder).eval()
processor = AutoProcessor.from_pretrained(folder)
texts = processor(text=["a red circle", "green"], return_tensors="pt", padding=True, truncation=True)
with torch.no_grad():
    out = model(pixel_values=torch.load(pixels_file), **texts)
torch.save((out.image_embeds, out.text_embeds), pixels_file + ".out")
"""


def test_export_loads_without_mmcontrast(tmp_path: Path, tokenizer_dir: Path) -> None:
    import subprocess
    import sys

    run = make_run(tmp_path / "run", [*vit_vision(), *hf_text(tokenizer_dir)])
    export(run, tmp_path / "export")
    pixels = torch.randn(2, 3, 32, 32)
    torch.save(pixels, tmp_path / "pixels.pt")
    subprocess.run(
        [sys.executable, "-c", CLEAN_LOAD, str(tmp_path / "export"), str(tmp_path / "pixels.pt")],
        check=True,
        cwd=tmp_path,
    )
    images, texts = torch.load(tmp_path / "pixels.pt.out")
    dual = load_trained(run).model
    with torch.no_grad():
        assert torch.allclose(images, dual.get_image_features(pixels), atol=1e-5)
        assert torch.allclose(
            texts, dual.get_text_features(**dual.tokenize(["a red circle", "green"])), atol=1e-5
        )


def test_card_usage_snippet_runs_with_plain_transformers(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """The card's Python block, run as a Hub user would (mmcontrast not importable)."""
    import re
    import subprocess
    import sys

    run = make_run(tmp_path / "run", [*vit_vision(), *hf_text(tokenizer_dir)], metrics=METRICS)
    export(run, tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S)
    assert snippet is not None
    pil_images(40, n=1)[0].save(tmp_path / "example.png")
    code = 'import sys\nsys.modules["mmcontrast"] = None\n' + snippet.group(1)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tensor(" in result.stdout  # the printed caption scores
