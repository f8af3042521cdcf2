"""A run started from a whole model (``model.init_from``) exports back to its source's library.

For each kind of source (tiny random models saved to folders, no network): a transformers
CLIPModel (with LoRA on its vision tower), SiglipModel and VisionTextDualEncoderModel, and
an open_clip model (a ``local-dir:`` folder, and a config JSON plus weights file of a SigLIP-
style model), a run trained for two steps exports to that library, which loads the export
alone and gives the run's tokens and normalised embeddings (1e-5): transformers through its
own processor on non-square images, open_clip from ``local-dir:`` in a process without
mmcontrast or peft. The exported image processors preprocess as training did (bicubic or
bilinear, centre crop or squash); mmcontrast's own format of such runs reloads as trained.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    TEXTS,
    TINY_OPEN_CLIP,
    flow,
    save_clip,
    save_open_clip,
    save_siglip,
    save_vtde,
    train_from,
)
from PIL import Image
from safetensors.torch import load_file, save_file

import mmcontrast
from mmcontrast.config import load_recipe
from mmcontrast.eval.adapters import load_eval_model
from mmcontrast.eval.adapters.base import features_of
from mmcontrast.hub.export import export
from mmcontrast.methods import load_trained
from mmcontrast.methods.init_source import open_init_source
from mmcontrast.models.dual_encoder import DualEncoder
from mmcontrast.models.tower import resolved_preprocess

SHAPES = [(50, 37), (37, 50), (45, 32), (32, 32)]  # (width, height): odd margins included
TOLERANCE = 1e-5
LORA = f"model.vision.lora={flow({'rank': 2})}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, str]:
    """``model.init_from`` of each kind of source."""
    root = tmp_path_factory.mktemp("export_sources")
    save_open_clip(root / "open_clip")
    # a SigLIP-style config; not named *siglip*: open_clip would pick its SigLIP tokenizer
    siglip_style = {**TINY_OPEN_CLIP, "init_logit_bias": -7.5}
    save_open_clip(root / "open_clip", siglip_style, name="tiny-oc-bias")
    oc = root / "open_clip"
    return {
        "clip": str(save_clip(root / "clip", tokenizer_dir)),
        "siglip": str(save_siglip(root / "siglip", tokenizer_dir)),
        "vtde": str(save_vtde(root / "vtde", tokenizer_dir)),
        "open_clip": f"open_clip:local-dir:{oc / 'tiny-oc-dir'}",
        "open_clip-siglip": (
            f"open_clip:{oc / 'tiny-oc-bias.json'}:{oc / 'tiny-oc-bias.safetensors'}"
        ),
    }


RUNS = {  # kind -> (source, extra overrides)
    "clip": ("clip", [LORA]),
    "siglip": ("siglip", []),
    "vtde": ("vtde", []),
    "open_clip": ("open_clip", []),
    "open_clip-siglip": ("open_clip-siglip", []),
}


@pytest.fixture(scope="module")
def runs(
    sources: dict[str, str], shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each kind trained for two steps (trained lazily: a test asks for the kinds it needs)."""
    root = tmp_path_factory.mktemp("export_source_runs")

    class Runs(dict):
        def __missing__(self, kind: str) -> Path:
            source, extra = RUNS[kind]
            run = root / kind
            train_from(sources[source], shapes_dir, run, *extra, steps=2, lr=1e-2)
            self[kind] = run
            return run

    return Runs()


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SHAPES]


def pixels(size: int = 32) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))


def run_model(run: Path) -> DualEncoder:
    dual = load_trained(run).trained_model()
    assert isinstance(dual, DualEncoder)
    return dual.eval()


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    ("kind", "cls", "padding"),
    [
        ("clip", "CLIPModel", True),
        ("siglip", "SiglipModel", "max_length"),
        ("vtde", "VisionTextDualEncoderModel", True),
    ],
)
def test_transformers_sources_export_to_their_class(
    runs: dict[str, Path], tmp_path: Path, kind: str, cls: str, padding: bool | str
) -> None:
    """Plain transformers, through the export's own processor on non-square images."""
    from transformers import AutoModel, AutoProcessor

    result = export(runs[kind], tmp_path / "export")
    assert result.library == "transformers"
    weights = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert not any("lora" in key for key in weights)  # merged: no peft needed
    model = AutoModel.from_pretrained(tmp_path / "export").eval()
    assert type(model).__name__ == cls
    processor = AutoProcessor.from_pretrained(tmp_path / "export")
    inputs = processor(
        text=TEXTS, images=images(), padding=padding, truncation=True, return_tensors="pt"
    )
    dual = run_model(runs[kind])
    tokens = dual.tokenize(TEXTS)
    assert torch.equal(inputs["input_ids"], tokens["input_ids"])
    ours_pixels = torch.stack([dual.image_transform()(image) for image in images()])
    assert_close(inputs["pixel_values"], ours_pixels)
    with torch.no_grad():
        outputs = model(**inputs)
        assert_close(outputs.image_embeds, dual.get_image_features(ours_pixels))
        assert_close(outputs.text_embeds, dual.get_text_features(**tokens))
        theirs = features_of(model.get_image_features(pixel_values=pixels()))
        assert_close(F.normalize(theirs, dim=-1), dual.get_image_features(pixels()))


def test_lora_run_trained_its_adapters(runs: dict[str, Path], sources: dict[str, str]) -> None:
    """The CLIP run's LoRA moved its image embeddings: the export above carries them."""
    from mmcontrast.methods import build_method

    trained = load_trained(runs["clip"])
    assert any("lora_" in key for key in trained.state_dict())
    start: Any = build_method(load_recipe(None, [f"model.init_from={sources['clip']}"]))
    with torch.no_grad():
        before = start.trained_model().eval().get_image_features(pixels())
        after = run_model(runs["clip"]).get_image_features(pixels())
    assert (before - after).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("kind", "resize"), [("clip", ("bicubic", "shortest")), ("siglip", ("bicubic", "squash"))]
)
def test_exported_image_processor_preprocesses_as_training(
    runs: dict[str, Path], tmp_path: Path, kind: str, resize: tuple[str, str]
) -> None:
    from transformers import AutoImageProcessor

    export(runs[kind], tmp_path / "export")
    dual = run_model(runs[kind])
    pre = resolved_preprocess(dual.vision)
    assert (pre.interpolation, pre.resize) == resize  # as the source's own processor says
    processor = AutoImageProcessor.from_pretrained(tmp_path / "export")
    expected = {"clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor"}[kind]
    assert type(processor).__name__ == expected
    for image in images():
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert_close(theirs, dual.image_transform()(image))


@pytest.mark.parametrize("kind", ["open_clip", "open_clip-siglip"])
def test_open_clip_sources_export_to_open_clip(
    runs: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    """open_clip alone (no mmcontrast, no peft importable) loads the folder as trained."""
    out = tmp_path / "export"
    result = export(runs[kind], out)
    assert (result.library, result.kind) == ("open_clip", "open_clip")
    assert {"open_clip_config.json", "open_clip_model.safetensors"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "open_clip_config.json").read_text())
    dual = run_model(runs[kind])
    pre = resolved_preprocess(dual.vision)
    assert config["preprocess_cfg"] == {
        "mean": pre.mean,
        "std": pre.std,
        "interpolation": pre.interpolation,
        "resize_mode": pre.resize,
    }
    expected = {  # the local-dir folder's preprocessing; open_clip's defaults for a config
        "open_clip": ("bilinear", "squash"),
        "open_clip-siglip": ("bicubic", "shortest"),
    }[kind]
    assert (pre.interpolation, pre.resize) == expected

    inputs = tmp_path / "inputs.safetensors"
    save_file({"pixels": pixels()}, str(inputs))
    code = (
        "import sys, json; sys.modules['mmcontrast'] = None; sys.modules['peft'] = None\n"
        "import open_clip, torch\n"
        "from safetensors.torch import load_file, save_file\n"
        f"name = 'local-dir:{out}'\n"
        "model, _, preprocess = open_clip.create_model_and_transforms(name)\n"
        "model.eval()\n"
        f"tokens = open_clip.get_tokenizer(name)({TEXTS!r})\n"
        f"pixels = load_file({str(inputs)!r})['pixels']\n"
        "with torch.no_grad():\n"
        "    out = {'image': model.encode_image(pixels, normalize=True),\n"
        "           'text': model.encode_text(tokens, normalize=True), 'tokens': tokens,\n"
        "           'scale': model.logit_scale.detach().reshape(1)}\n"
        "    if model.logit_bias is not None:\n"
        "        out['bias'] = model.logit_bias.detach().reshape(1)\n"
        f"save_file(out, {str(tmp_path / 'theirs.safetensors')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    theirs = load_file(str(tmp_path / "theirs.safetensors"))
    tokens = dual.tokenize(TEXTS)["input_ids"]
    assert torch.equal(theirs["tokens"], tokens)
    with torch.no_grad():
        assert_close(theirs["image"], dual.get_image_features(pixels()))
        assert_close(theirs["text"], dual.get_text_features(input_ids=tokens))
    assert theirs["scale"].item() == pytest.approx(dual.logit_scale.item())
    if kind == "open_clip-siglip":
        assert dual.logit_bias is not None
        assert theirs["bias"].item() == pytest.approx(dual.logit_bias.item())
    else:
        assert "bias" not in theirs
        assert any("--format transformers" in note for note in result.notes)

    # the export folder as written, no prefix: an eval model and an init_from source
    evaluated = load_eval_model(str(out), "cpu")
    assert evaluated.family == "open_clip"
    with torch.no_grad():
        assert_close(F.normalize(evaluated.encode_images(pixels()), dim=-1), theirs["image"])
    assert open_init_source(str(out)).name == f"open_clip:local-dir:{out}"


def test_open_clip_card_snippet_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    out = tmp_path / "export"
    export(runs["open_clip"], out)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "open_clip"
    blocks = re.findall(r"```python\n(.*?)```", card.text, re.S)
    assert len(blocks) == 1 and f'"local-dir:{out}"' in blocks[0]
    images()[0].save(tmp_path / "example.png")
    namespace: dict[str, Any] = {}
    exec(blocks[0].replace("example.png", str(tmp_path / "example.png")), namespace)
    assert namespace["logits"].shape == (1, 3)


def test_open_clip_source_converts_to_clip_model_on_request(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModel, AutoTokenizer

    result = export(runs["open_clip"], tmp_path / "export", format="transformers")
    assert (result.library, result.kind) == ("transformers", "clip")
    model = AutoModel.from_pretrained(tmp_path / "export").eval()
    assert type(model).__name__ == "CLIPModel"
    dual = run_model(runs["open_clip"])
    tokens = dual.tokenize(TEXTS)["input_ids"]
    theirs = AutoTokenizer.from_pretrained(tmp_path / "export")(
        TEXTS, padding="max_length", max_length=tokens.shape[1], return_tensors="pt"
    )
    ids = theirs["input_ids"].masked_fill(theirs["attention_mask"] == 0, 0)  # open_clip pads 0
    assert torch.equal(ids, tokens)
    with torch.no_grad():
        image = features_of(model.get_image_features(pixel_values=pixels()))
        text = features_of(model.get_text_features(**theirs))
        assert_close(F.normalize(image, dim=-1), dual.get_image_features(pixels()))
        assert_close(F.normalize(text, dim=-1), dual.get_text_features(input_ids=tokens))
    # a SigLIP-style open_clip model has no CLIPModel: the reason, not a wrong model
    with pytest.raises(ValueError, match="logit bias"):
        export(runs["open_clip-siglip"], tmp_path / "siglip", format="transformers")


@pytest.mark.parametrize("kind", ["open_clip", "open_clip-siglip", "clip", "siglip", "vtde"])
def test_mmcontrast_format_of_init_from_runs_reloads(
    runs: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    """The native export names the resolved towers (no init_from) and reloads as trained."""
    out = tmp_path / "export"
    result = export(runs[kind], out, format="mmcontrast")
    assert (result.library, result.kind) == ("mmcontrast", "mmcontrast")
    assert "init_from: null" in (out / "config.yaml").read_text()
    loaded = mmcontrast.from_pretrained(str(out))
    dual = run_model(runs[kind])
    assert isinstance(loaded, DualEncoder)
    assert resolved_preprocess(loaded.vision) == resolved_preprocess(dual.vision)
    tokens = dual.tokenize(TEXTS)
    assert torch.equal(loaded.tokenize(TEXTS)["input_ids"], tokens["input_ids"])  # padding too
    with torch.no_grad():
        assert_close(loaded.get_image_features(pixels()), dual.get_image_features(pixels()))
        assert_close(loaded.get_text_features(**tokens), dual.get_text_features(**tokens))
    assert loaded.scale().item() == pytest.approx(dual.scale().item())

