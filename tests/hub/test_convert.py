"""open_clip <-> transformers CLIPModel conversion on tiny random models (no network): round
trips keep every weight and embedding, the tokenizer gives open_clip's ids, unsupported configs
are refused, and local-dir: folders work in the open_clip tower and eval adapter."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
from helpers import draw
from safetensors.torch import save_file

from mmcontrast.config import TowerConfig
from mmcontrast.eval.adapters import load_eval_model
from mmcontrast.hub import clip_processor, convert
from mmcontrast.hub.convert import open_clip_to_transformers, transformers_to_open_clip
from mmcontrast.models.tower import build_tower

TINY = {  # vision width 64 / 2 layers / 2 heads, text width 32 / 2 layers / context 77
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CAPTIONS = [
    "a photo of a cat",
    "Hello, World!! It's 2024 -- isn't it?",
    "A RED Square; on a (dark-blue) background...",
    "  spaced   out\tTABS  ",
    "don't stop: 3.14 > 2",
    " ".join(f"word{i}" for i in range(80)),  # longer than 77 tokens: truncated
]


def write_config(folder: Path, name: str, **changes: Any) -> Path:
    """A tiny open_clip config JSON; ``vision_cfg``/``text_cfg`` changes are merged in."""
    cfg = copy.deepcopy(TINY)
    for key, value in changes.items():
        if key in ("vision_cfg", "text_cfg"):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def embeddings(model: Any, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[Any, Any]:
    """Image and text embeddings of an open_clip model or a transformers CLIPModel."""
    with torch.no_grad():
        if hasattr(model, "encode_image"):
            return model.encode_image(pixels), model.encode_text(tokens)
        image = model.get_image_features(pixel_values=pixels).pooler_output
        return image, model.get_text_features(input_ids=tokens).pooler_output


def close(a: tuple[Any, Any], b: tuple[Any, Any]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A seeded tiny open_clip model, its safetensors checkpoint, the transformers folder and
    the open_clip folder converted back from it."""
    root = tmp_path_factory.mktemp("convert")
    config = write_config(root, "tiny-convert-shared")
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-convert-shared").eval()
    checkpoint = root / "weights.safetensors"
    save_file(model.state_dict(), str(checkpoint))
    with warnings.catch_warnings():  # tokenizer and image processor convert exactly
        warnings.simplefilter("error", UserWarning)
        hf = open_clip_to_transformers(str(config), root / "hf", checkpoint=str(checkpoint))
        back = transformers_to_open_clip(hf, root / "open_clip")
    return {"model": model, "hf": hf, "open_clip": back, "root": root}


@pytest.mark.parametrize(("act", "suffix"), [("gelu", ".safetensors"), ("quick_gelu", ".pt")])
def test_round_trip_keeps_weights_and_embeddings(tmp_path: Path, act: str, suffix: str) -> None:
    from transformers import AutoModel

    config = write_config(tmp_path, f"tiny-convert-{act}", quick_gelu=act == "quick_gelu")
    open_clip.add_model_config(config)
    torch.manual_seed(1)
    source = open_clip.create_model(config.stem).eval()
    checkpoint = tmp_path / f"weights{suffix}"
    if suffix == ".pt":  # a training checkpoint: wrapped, saved from DistributedDataParallel
        state = {f"module.{k}": v for k, v in source.state_dict().items()}
        torch.save({"state_dict": state, "epoch": 3}, checkpoint)
    else:
        save_file(source.state_dict(), str(checkpoint))

    hf_dir = open_clip_to_transformers(config.stem, tmp_path / "hf", checkpoint=str(checkpoint))
    clip = AutoModel.from_pretrained(hf_dir).eval()
    assert type(clip).__name__ == "CLIPModel"
    assert clip.config.vision_config.hidden_act == clip.config.text_config.hidden_act == act
    oc_dir = transformers_to_open_clip(hf_dir, tmp_path / "open_clip")
    back = open_clip.create_model(f"local-dir:{oc_dir}").eval()

    pixels = torch.randn(3, 3, 32, 32)
    tokens = open_clip.get_tokenizer(config.stem)(CAPTIONS)
    expected = embeddings(source, pixels, tokens)
    close(embeddings(clip, pixels, tokens), expected)
    close(embeddings(back, pixels, tokens), expected)
    original, returned = source.state_dict(), back.state_dict()
    assert set(original) == set(returned)
    assert all(torch.equal(original[k], returned[k]) for k in original)
    model_cfg = json.loads((oc_dir / "open_clip_config.json").read_text())["model_cfg"]
    assert model_cfg["quick_gelu"] is (act == "quick_gelu")


def test_processor_tokenizer_gives_open_clip_ids(converted: dict[str, Any]) -> None:
    from transformers import AutoProcessor, CLIPTokenizer

    processor = AutoProcessor.from_pretrained(converted["hf"])
    expected = open_clip.get_tokenizer("tiny-convert-shared")(CAPTIONS)
    tokens = processor(text=CAPTIONS, padding="max_length", truncation=True, return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert ids.shape == expected.shape == (len(CAPTIONS), 77)
    # equal up to end-of-text; open_clip pads with 0, the converted tokenizer with <|endoftext|>
    assert torch.equal(ids.masked_fill(mask == 0, 0), expected)
    assert torch.equal(mask, (expected != 0).long())
    assert (ids[mask == 0] == 49407).all() and ids[-1, -1] == 49407  # truncated, ends in EOT
    assert processor.tokenizer.model_max_length == 77
    # vocab.json and merges.txt alone (a slow-tokenizer download) give the same ids
    bpe_only = converted["root"] / "bpe_only"
    bpe_only.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(converted["hf"] / name, bpe_only / name)
    slow = CLIPTokenizer(str(bpe_only / "vocab.json"), str(bpe_only / "merges.txt"))
    assert slow(CAPTIONS[1])["input_ids"] == expected[1][expected[1] != 0].tolist()


def test_converted_tokens_give_open_clip_embeddings(converted: dict[str, Any]) -> None:
    from transformers import AutoModel, AutoProcessor

    clip = AutoModel.from_pretrained(converted["hf"]).eval()
    processor = AutoProcessor.from_pretrained(converted["hf"])
    tokens = processor(text=CAPTIONS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        got = clip.get_text_features(**tokens).pooler_output
        expected = converted["model"].encode_text(open_clip.tokenize(CAPTIONS))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_image_processor_follows_open_clip_preprocessing(converted: dict[str, Any]) -> None:
    from transformers import AutoProcessor

    image_processor = AutoProcessor.from_pretrained(converted["hf"]).image_processor
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{converted['open_clip']}")
    assert image_processor.resample == 3  # bicubic
    assert image_processor.size["shortest_edge"] == 32 and image_processor.do_center_crop
    assert list(image_processor.image_mean) == list(open_clip.OPENAI_DATASET_MEAN)
    image = draw("red", "star", size=32)  # at the model's size: no resampling differences
    pixels = image_processor(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels, preprocess(image), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "preprocess",
    [
        {"interpolation": "bicubic", "resize_mode": "shortest"},
        {"interpolation": "bilinear", "resize_mode": "squash"},
    ],
)
def test_preprocess_cfg_round_trips(tmp_path: Path, preprocess: dict[str, Any]) -> None:
    cfg = {"size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4], **preprocess}
    clip_processor.clip_image_processor(cfg).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert clip_processor._preprocess_cfg_of(str(tmp_path), None, 32) == cfg
    with pytest.warns(UserWarning, match="cannot copy the image processor"):
        clip_processor._preprocess_cfg_of(str(tmp_path), None, 64)  # a different image size


def test_random_init_without_checkpoint(tmp_path: Path) -> None:
    from transformers import AutoModel

    # custom_text: open_clip's CustomTextCLIP keeps the text tower under "text."
    config = write_config(tmp_path, "tiny-convert-random", custom_text=True)
    hf_dir = open_clip_to_transformers(str(config), tmp_path / "hf")
    clip = AutoModel.from_pretrained(hf_dir)
    assert clip.config.projection_dim == 16
    assert clip.config.text_config.max_position_embeddings == 77
    assert clip.config.text_config.eos_token_id == 49407
    assert clip.config.vision_config.num_attention_heads == 2


def test_checkpoint_errors(tmp_path: Path, converted: dict[str, Any]) -> None:
    config = write_config(tmp_path, "tiny-convert-errors")
    with pytest.raises(FileNotFoundError, match="not found"):
        open_clip_to_transformers(str(config), tmp_path / "a", checkpoint="missing.safetensors")
    with pytest.raises(ValueError, match="neither a checkpoint file nor a pretrained tag"):
        open_clip_to_transformers(str(config), tmp_path / "b", checkpoint="laion2b_s34b_b79k")
    wrong = write_config(tmp_path, "tiny-convert-wider", embed_dim=24)
    checkpoint = converted["root"] / "weights.safetensors"
    with pytest.raises(ValueError, match="does not fit"):
        open_clip_to_transformers(str(wrong), tmp_path / "c", checkpoint=str(checkpoint))


@pytest.mark.parametrize(
    ("changes", "feature"),
    [
        ({"vision_cfg": {"ls_init_value": 1e-5}}, "layer scale"),
        ({"text_cfg": {"ls_init_value": 1e-5}}, "layer scale"),
        ({"vision_cfg": {"timm_model_name": "vit_tiny_patch16_224"}}, "timm"),
        ({"vision_cfg": {"layers": [1, 1, 1, 1]}}, "ResNet"),
        ({"vision_cfg": {"attentional_pool": True}}, "attentional pooling"),
        ({"vision_cfg": {"pool_type": "avg", "final_ln_after_pool": True}}, "image pooling 'avg'"),
        ({"vision_cfg": {"no_ln_pre": True}}, "no_ln_pre"),
        ({"vision_cfg": {"qk_norm": True}}, "custom attention blocks"),
        ({"text_cfg": {"hf_model_name": "bert-base-uncased"}}, "hf_model_name"),
        ({"text_cfg": {"pool_type": "eos"}}, "text pooling 'eos'"),
        ({"text_cfg": {"proj_bias": True}}, "proj_bias"),
        ({"text_cfg": {"no_causal_mask": True}}, "no_causal_mask"),
        ({"text_cfg": {"vocab_size": 32000}}, "vocab_size 32000"),
        ({"custom_text": True, "text_cfg": {"embed_cls": True}}, "embed_cls"),
        ({"multimodal_cfg": {"width": 32}}, "CoCa"),
        ({"init_logit_bias": -10.0}, "logit bias"),
    ],
)
def test_unsupported_open_clip_configs_are_refused(
    tmp_path: Path, changes: dict[str, Any], feature: str
) -> None:
    config = write_config(tmp_path, "tiny-convert-unsupported", **changes)
    with pytest.raises(ValueError, match="only standard ViT CLIP configs convert") as err:
        open_clip_to_transformers(str(config), tmp_path / "out")
    assert feature in str(err.value)
    assert not (tmp_path / "out").exists()


def save_clip(folder: Path, text: dict[str, Any] | None = None, **vision: Any) -> Path:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            **vision,
        },
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            **(text or {}),
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("text", "vision", "feature"),
    [
        ({"hidden_act": "gelu_new"}, {"hidden_act": "gelu_new"}, "'gelu_new'"),
        ({"hidden_act": "gelu"}, {"hidden_act": "quick_gelu"}, "activations"),
        ({"eos_token_id": 5}, {}, "eos_token_id 5"),
        ({"vocab_size": 1000}, {}, "vocab_size 1000"),
        ({}, {"num_channels": 1}, "1 image channels"),
    ],
)
def test_unsupported_transformers_configs_are_refused(
    tmp_path: Path, text: dict[str, Any], vision: dict[str, Any], feature: str
) -> None:
    source = save_clip(tmp_path / "clip", text, **vision)
    with pytest.raises(ValueError, match="cannot convert") as err:
        transformers_to_open_clip(source, tmp_path / "out")
    assert feature in str(err.value)


def test_transformers_side_checks(tmp_path: Path) -> None:
    from transformers import SiglipConfig

    siglip = tmp_path / "siglip"
    SiglipConfig().save_pretrained(siglip)
    with pytest.raises(ValueError, match="only transformers CLIPModel"):
        transformers_to_open_clip(siglip, tmp_path / "out")
    with pytest.raises(ValueError, match="could not read the transformers config"):
        transformers_to_open_clip(tmp_path / "nothing", tmp_path / "out")
    # a larger vocabulary converts (tokenised by open_clip's BPE), with a warning; an MLP
    # width that 61 / 56 (float) does not give back still converts exactly
    source = save_clip(
        tmp_path / "big_vocab", {"vocab_size": 49500}, hidden_size=56, intermediate_size=61
    )
    with pytest.warns(UserWarning) as record:
        out = transformers_to_open_clip(source, tmp_path / "big_vocab_oc")
    messages = " | ".join(str(w.message) for w in record)
    assert "vocab_size of 49500, not 49408" in messages
    assert "has no image processor" in messages
    assert open_clip.get_model_config(f"local-dir:{out}")["text_cfg"]["vocab_size"] == 49500


def test_failed_check_saves_nothing(
    tmp_path: Path, converted: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    to_transformers = convert.to_transformers_state

    def swap_q_and_k(*args: Any) -> dict[str, Any]:
        state = to_transformers(*args)
        q, k = (f"text_model.encoder.layers.1.self_attn.{p}_proj.weight" for p in "qk")
        state[q], state[k] = state[k], state[q]
        return state

    monkeypatch.setattr(convert, "to_transformers_state", swap_q_and_k)
    config = write_config(tmp_path, "tiny-convert-broken")
    with pytest.raises(RuntimeError, match="text embeddings of the converted model differ"):
        open_clip_to_transformers(str(config), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    monkeypatch.undo()
    to_open_clip = convert.to_open_clip_state

    def scale_image_projection(*args: Any) -> dict[str, Any]:
        state = to_open_clip(*args)
        state["visual.proj"] = state["visual.proj"] * 1.01
        return state

    monkeypatch.setattr(convert, "to_open_clip_state", scale_image_projection)
    with pytest.raises(RuntimeError, match="image embeddings of the converted model differ"):
        transformers_to_open_clip(converted["hf"], tmp_path / "oc")
    assert list((tmp_path / "oc").iterdir()) == []


def test_open_clip_tower_reads_local_dir(converted: dict[str, Any]) -> None:
    name = f"local-dir:{converted['open_clip']}"
    vision = build_tower(TowerConfig(source="open_clip", name=name), "vision")
    text = build_tower(TowerConfig(source="open_clip", name=name), "text")
    assert vision.width == text.width == 16
    assert vision.image_preprocess().size == 32
    pixels = torch.randn(2, 3, 32, 32)
    tokens = text.tokenizer()(CAPTIONS)
    assert tokens["input_ids"].shape == (len(CAPTIONS), 77)
    with torch.no_grad():
        got = (vision(pixel_values=pixels), text(**tokens))
    close(got, embeddings(converted["model"], pixels, tokens["input_ids"]))
    random = build_tower(TowerConfig(source="open_clip", name=name, pretrained=False), "vision")
    assert not torch.equal(random.model.proj, vision.model.proj)  # pretrained: false is honoured
    with pytest.raises(ValueError, match="brings its own weights"):
        build_tower(TowerConfig(source="open_clip", name=name, weights="x.pt"), "vision")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        build_tower(TowerConfig(source="open_clip", name="local-dir:/no/such/dir"), "vision")


def test_eval_adapter_reads_local_dir(converted: dict[str, Any]) -> None:
    folder = converted["open_clip"]
    pixels = torch.randn(2, 3, 32, 32)
    tokens = open_clip.tokenize(CAPTIONS)
    expected = embeddings(converted["model"], pixels, tokens)
    for spec in (f"open_clip:local-dir:{folder}", f"local-dir:{folder}"):
        adapter = load_eval_model(spec, device="cpu")
        assert adapter.family == "open_clip"
        assert adapter.describe()["name"] == f"local-dir:{folder}"
        close((adapter.encode_images(pixels), adapter.encode_texts(CAPTIONS)), expected)
    # the transformers folder, through the clip family, gives the same embeddings
    clip = load_eval_model(str(converted["hf"]), device="cpu")
    assert clip.family == "clip"
    close((clip.encode_images(pixels), clip.encode_texts(CAPTIONS)), expected)


def test_offline_hub_names_fail_clearly(tmp_path: Path) -> None:
    name = "hf-hub:nobody/no-such-open-clip-model"
    message = "Hugging Face Hub .* local-dir:DIR"
    with pytest.raises(ValueError, match=message):
        build_tower(TowerConfig(source="open_clip", name=name), "vision")
    with pytest.raises(ValueError, match=message):
        load_eval_model(f"open_clip:{name}", device="cpu")
    with pytest.raises(ValueError, match=message):
        load_eval_model(name, device="cpu")
    with pytest.raises(ValueError, match=message):
        open_clip_to_transformers(name, tmp_path / "out")
