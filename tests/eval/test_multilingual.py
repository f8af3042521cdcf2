"""Multilingual image-text training and retrieval per language (``data.group_column``).

A tiny XLM-RoBERTa text tower, random, with a sentencepiece (unigram) vocabulary trained here
on captions in English, German and French, learns from an imagefolder whose rows carry a
``lang`` column, with the settings of the ``multilingual-clip-xlmr`` recipe. Its evaluation scores the whole test split and each language among that
language's rows only (``en/image_retrieval_recall@1`` ...), checked against ranks computed by
hand from the saved model's embeddings. The grouped metrics themselves are checked on
hand-made embeddings where a group's answer differs from the whole split's.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import COLOURS, RECIPES, SHAPES, draw, flow, tiny_overrides

from mmcontrast import load_model
from mmcontrast.cli import main
from mmcontrast.config import DataConfig, load_recipe
from mmcontrast.data.imagefolder import write_imagefolder
from mmcontrast.data.pairs import load_pairs
from mmcontrast.eval.retrieval import (
    grouped_retrieval_metrics,
    retrieval_metrics,
    split_groups,
)
from mmcontrast.pipeline import train

RECIPE = RECIPES / "multilingual-clip-xlmr.yaml"
# Each language's caption of a coloured shape: a template, its colour and shape words.
LANGUAGES = {
    "en": ("a {c} {s}", {}, {}),
    "de": (
        "ein {s} in {c}",
        {"red": "Rot", "green": "Grün", "blue": "Blau", "yellow": "Gelb"},
        {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "star": "Stern"},
    ),
    "fr": (
        "{s} {c}",
        {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune"},
        {
            "circle": "un cercle",
            "square": "un carré",
            "triangle": "un triangle",
            "star": "une étoile",
        },
    ),
}
TINY_XLMR = {  # random XLM-R text tower for CPU tests; vocab_size from the tokenizer
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 40,  # XLM-R positions start after padding_idx (1)
    "type_vocab_size": 1,
}


def caption(lang: str, colour: str, shape: str) -> str:
    template, colours, shapes = LANGUAGES[lang]
    return template.format(c=colours.get(colour, colour), s=shapes.get(shape, shape))


def all_captions() -> list[str]:
    return [caption(lang, c, s) for lang in LANGUAGES for c in COLOURS for s in SHAPES]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def xlmr_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny XLM-RoBERTa tokenizer: a sentencepiece unigram model trained on the captions,
    converted by transformers as it converts XLM-R's own ``sentencepiece.bpe.model``."""
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(all_captions() * 4),
        model_writer=model,
        model_type="unigram",
        vocab_size=64,
        hard_vocab_limit=False,  # as many pieces as the few captions allow
        character_coverage=1.0,  # every accented letter gets a piece
        unk_id=0,  # XLM-R's order: <unk>, <s>, </s>; transformers puts <pad> at 1
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    source = tmp_path_factory.mktemp("xlmr-spm")
    (source / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    folder = tmp_path_factory.mktemp("xlmr-tokenizer")
    XLMRobertaTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def multilingual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imagefolder of coloured shapes captioned in en, de and fr, with a ``lang`` column:
    every image once per language (one row per language, as XTD and Multi30k are)."""
    root = tmp_path_factory.mktemp("multilingual")
    rows = [
        {"image": draw(c, s), "text": caption(lang, c, s), "lang": lang}
        for lang in LANGUAGES
        for c in COLOURS
        for s in SHAPES
    ]
    write_imagefolder(rows, root, "train")
    write_imagefolder(rows, root, "test")
    return root


def xlmr_overrides(data: Path, tokenizer_bert: Path, tokenizer: Path, output: Path) -> list[str]:
    """A tiny random ViT + XLM-R run (the ViT as in ``tiny_overrides``)."""
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer))
    return [
        *tiny_overrides(data, tokenizer_bert, output),
        "model.text.name=xlm-roberta",
        f"model.text.tokenizer={tokenizer}",
        f"model.text.config_overrides={flow({**TINY_XLMR, 'vocab_size': vocab})}",
        "model.text.max_length=32",
    ]


# ------------------------------------------------------------------ the tokenizer


def test_the_sentencepiece_tokenizer_tells_languages_apart(xlmr_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(xlmr_tokenizer_dir)
    assert type(tokenizer).__name__ == "XLMRobertaTokenizer"  # transformers' fast class
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token_id == 3 and tokenizer.mask_token_id == len(tokenizer) - 1
    captions = all_captions()
    ids = [tuple(tokenizer(text)["input_ids"]) for text in captions]
    assert len(set(ids)) == len(captions)  # every caption its own ids
    for text, row in zip(captions, ids, strict=True):
        assert row[0] == 0 and row[-1] == 2 and tokenizer.unk_token_id not in row, text
    for word in ("Grün", "carré", "étoile"):  # accented letters are pieces, not <unk>
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in pieces
        assert tokenizer.decode(pieces) == word


# ------------------------------------------------------------------ grouped retrieval


def naive_recall_at_1(images: torch.Tensor, texts: torch.Tensor, owner: list[int]) -> float:
    """text -> image recall@1 by a full similarity matrix (a tie counts against the text)."""
    sims = (
        torch.nn.functional.normalize(texts, dim=-1)
        @ torch.nn.functional.normalize(images, dim=-1).T
    )
    hits = [
        int((sims[t] >= sims[t, owner[t]]).sum()) == 1  # only its own image scores as high
        for t in range(len(owner))
    ]
    return sum(hits) / len(hits)


def test_each_group_is_scored_among_its_own_rows() -> None:
    # images 0, 1 are "en", 2, 3 "de", 4 in no group; each "de" caption lies closer to an
    # image of another group than to its own
    images = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.8, 0, 0.6], [0, 0.8, 0.6], [0, 0, 1.0]])
    texts = torch.tensor(
        [[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0.1], [0, 1.0, 0.1], [0, 0.1, 1.0], [0, 0, 1.0]]
    )
    owner = torch.tensor([0, 1, 2, 3, 3, 4])
    groups = ["en", "en", "de", "de", None]
    whole = retrieval_metrics(images, texts, owner, ks=(1,))
    assert whole["image_retrieval_recall@1"] == 3 / 6  # the de captions miss
    by_group = grouped_retrieval_metrics(images, texts, owner, groups, ks=(1,))
    assert list(by_group) == ["de", "en"]  # sorted; image 4 and its caption in no group
    de, en = by_group["de"], by_group["en"]
    assert de["image_retrieval_recall@1"] == 1.0  # among the de images, each finds its own
    assert en["image_retrieval_recall@1"] == 1.0 and en["text_retrieval_recall@1"] == 1.0
    assert de["image_retrieval_recall@1"] == naive_recall_at_1(images[2:4], texts[2:5], [0, 1, 1])
    assert set(de) == set(whole)  # the same keys per group

    split = {g.name: g for g in split_groups(groups, owner)}
    assert split["de"].images.tolist() == [2, 3] and split["de"].texts.tolist() == [2, 3, 4]
    assert split["de"].text_to_image.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="image_groups has 4 values for 5 images"):
        grouped_retrieval_metrics(images, texts, owner, groups[:4])


def test_group_values_and_a_missing_column(multilingual_dir: Path) -> None:
    table = load_pairs(DataConfig(path=str(multilingual_dir), group_column="lang"), "test")
    assert table.group_values([0, 16, 47]) == ["en", "de", "fr"]
    assert table.row_value(table.dataset[20], "lang") == "de"
    wrong = load_pairs(DataConfig(path=str(multilingual_dir), group_column="language"), "test")
    with pytest.raises(ValueError, match=r"group_column 'language' not found .*columns: .*lang"):
        wrong.check_group_column()


# ------------------------------------------------------------------ end to end


def test_the_multilingual_recipe_scores_each_language(
    multilingual_dir: Path, tokenizer_dir: Path, xlmr_tokenizer_dir: Path, tmp_path: Path
) -> None:
    """The shipped recipe (locked image tower, cached features, ``data.group_column: lang``)
    on tiny random towers in place of its Hub checkpoints."""
    run = tmp_path / "run"
    overrides = [
        *xlmr_overrides(multilingual_dir, tokenizer_dir, xlmr_tokenizer_dir, run),
        "train.mixed_precision='no'",
        "data.num_workers=0",
        "train.max_steps=3",
        "train.lr=1e-3",
        "eval.batch_size=64",  # the whole split in one batch, as embedded by hand below
    ]
    cfg = load_recipe(RECIPE, overrides)
    assert cfg.data.group_column == "lang" and cfg.model.vision.lock
    summary = train(cfg)
    metrics = summary["eval"]
    for lang in LANGUAGES:
        for key in (
            "image_retrieval_recall@1",
            "text_retrieval_recall@5",
            "image_retrieval_mean_rank",
        ):
            assert f"{lang}/{key}" in metrics
    assert "image_retrieval_recall@1" in metrics  # the whole split's, beside them

    result = json.loads((run / "eval" / "retrieval.json").read_text())
    assert result["metrics"] == pytest.approx(metrics)
    assert result["groups"]["column"] == "lang"
    assert result["groups"]["sizes"] == {
        lang: {"num_images": 16, "num_texts": 16} for lang in sorted(LANGUAGES)
    }
    assert "de:" in (run / "eval" / "retrieval.txt").read_text()
    assert (run / "curves.png").is_file()  # the training curves take the per-language keys
    history = [json.loads(line) for line in (run / "eval_history.jsonl").read_text().splitlines()]
    assert "fr/image_retrieval_recall@1" in history[-1]

    # by hand: the saved model's embeddings of the whole split, the German rows' ranks
    model = load_model(str(run), device="cpu")
    rows = [json.loads(line) for line in (multilingual_dir / "test" / "metadata.jsonl").open()]
    images = model.embed_images([str(multilingual_dir / "test" / r["file_name"]) for r in rows])
    texts = model.embed_texts([r["text"] for r in rows])
    german = [i for i, r in enumerate(rows) if r["lang"] == "de"]
    sims = texts[german] @ images[german].T  # [16 captions, 16 images], row i's image is i
    ranks = (sims >= sims.diagonal()[:, None]).sum(1)  # ties count against the caption
    assert metrics["de/image_retrieval_recall@1"] == pytest.approx(
        float((ranks <= 1).float().mean())
    )
    assert metrics["de/image_retrieval_recall@5"] == pytest.approx(
        float((ranks <= 5).float().mean())
    )
    assert metrics["de/image_retrieval_mean_rank"] == pytest.approx(float(ranks.float().mean()))
    by_image = (sims.T >= sims.diagonal()[:, None]).sum(1)  # image -> its one caption
    assert metrics["de/text_retrieval_recall@5"] == pytest.approx(
        float((by_image <= 5).float().mean())
    )

    # mmcontrast eval: the run's own group column, or another through --group-column
    out = tmp_path / "again"
    assert main(["eval", "--model", str(run), "--output", str(out), "--batch-size", "64"]) == 0
    again = json.loads((out / "retrieval.json").read_text())
    assert again["metrics"] == pytest.approx(metrics)  # training and eval agree
    assert again["eval_data"]["group_column"] == "lang"
    flag = ["eval", "--model", str(run), "--data", str(multilingual_dir), "--no-pictures"]
    assert main([*flag, "--output", str(tmp_path / "flag"), "--group-column", "lang"]) == 0
    by_flag = json.loads((tmp_path / "flag" / "retrieval.json").read_text())
    assert set(by_flag["groups"]["sizes"]) == {"de", "en", "fr"}
    assert main([*flag, "--output", str(tmp_path / "none")]) == 0  # other data: no groups
    assert "groups" not in json.loads((tmp_path / "none" / "retrieval.json").read_text())


def test_a_missing_group_column_fails_before_embedding(
    multilingual_dir: Path,
    tokenizer_dir: Path,
    xlmr_tokenizer_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    overrides = [
        *xlmr_overrides(multilingual_dir, tokenizer_dir, xlmr_tokenizer_dir, run),
        "train.max_steps=1",
        "eval.at_end=false",
    ]
    train(load_recipe(None, overrides))
    data = ["--data", str(multilingual_dir), "--output", str(tmp_path / "eval")]
    with mock.patch("mmcontrast.eval.tasks.embed_images", side_effect=AssertionError("embedded")):
        assert main(["eval", "--model", str(run), *data, "--group-column", "language"]) == 2
    error = capsys.readouterr().err
    assert "data.group_column 'language' not found" in error and "lang" in error


def test_the_examples_in_the_retrieval_docstrings_hold() -> None:
    import doctest

    from mmcontrast.eval import retrieval

    assert doctest.testmod(retrieval).failed == 0
