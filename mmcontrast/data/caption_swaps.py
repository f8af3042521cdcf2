"""Hard-negative captions: the same words, two of them swapped, so the meaning changes.

NegCLIP (Yuksekgonul et al. 2023, "When and why vision-language models behave like
bags-of-words, and what to do about it?", https://arxiv.org/abs/2210.01936) shows that
contrastive image-text models often ignore word order, and fixes it by adding, for every
caption, a negative made by swapping parts of it ("the horse is eating the grass" ->
"the grass is eating the horse"). The same swaps test a model: ARO's VG-Relation and
VG-Attribution ask whether the image scores its true caption above the swapped one.

Three kinds of swap, each exchanging two spans of words and nothing else:

* ``noun``: the nouns of two noun phrases, their determiners and adjectives left in
  place: "a white horse next to a brown dog" -> "a white dog next to a brown horse".
  A noun is the run of unlisted words that ends a noun phrase ("fire hydrant").
* ``attribute``: two adjectives of different noun phrases, both listed attributes
  (colour, size, material...), or two counts: "a red car and a blue bus" ->
  "a blue car and a red bus"; "two dogs and three cats" -> "three dogs and two cats".
* ``relation``: the two sides of an asymmetric relation, whole noun phrases ("of" phrases
  included): "a cat on a mat" -> "a mat on a cat", "a man riding a horse" -> "a horse
  riding a man"; or two different relations of the caption: "a cat on a mat under a
  table" -> "a cat under a mat on a table" (prepositions with prepositions, verbs with
  verbs).

Swaps whose result would mean the same are not made: two attributes of one noun phrase
("a big red car"), items of one list ("a red and blue car", "a cat and a dog"), the sides
of a symmetric relation ("next to", "near", "beside"). The spans move whole: every swap
keeps the caption's words (the multiset), its spacing and punctuation; an article before
a moved word is re-chosen ("an old car" -> "a red car"), and a capital at the start of a
sentence-case caption stays at the start. There are no random shuffles (ARO's order
perturbations): the swaps of a caption are a fixed list, the same on every call.

Limits: English only. There is no parser: words are classed by the closed lists of
:mod:`mmcontrast.data.caption_lexicon`, any other word is a noun unless it looks like a
participle after a noun ("a dog sleeping on a couch"). So an unlisted adjective counts as
part of the noun ("a wry smile"), an unlisted verb may be read as a noun, agreement is not
repaired ("one dogs"), and a few swaps read oddly, as NegCLIP's parser-made ones do.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mmcontrast.data.caption_lexicon import (
    ATTRIBUTES,
    AUXILIARIES,
    BOUNDARIES,
    CONJUNCTIONS,
    COUNTS,
    DETERMINERS,
    INTENSIFIERS,
    PARTICIPLE_NOUNS,
    PREPOSITIONS,
    SYMMETRIC_PREPOSITIONS,
    VERB_RELATIONS,
    VERBS,
)

__all__ = ["SWAP_KINDS", "check_kinds", "hard_negative", "swaps"]

SWAP_KINDS = ("noun", "attribute", "relation")

WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
RELATIONS = {phrase: "preposition" for phrase in PREPOSITIONS}
RELATIONS |= {phrase: "symmetric" for phrase in SYMMETRIC_PREPOSITIONS}
RELATIONS |= {phrase: "verb" for phrase in VERB_RELATIONS}
LONGEST_RELATION = max(len(phrase) for phrase in RELATIONS)
PHRASE_WORDS = frozenset(("det", "count", "attribute", "modifier", "noun"))
ADJECTIVES = frozenset(("attribute", "count", "modifier"))
LIST_GAP = frozenset(" ,&")  # what may stand between the items of a list
SENTENCE_ENDS = frozenset(".!?;")  # no swap crosses them
VOWEL_SOUND_EXCEPTIONS = ("uni", "use", "usu", "uti", "ure", "eu", "one", "once", "ewe")
SILENT_H = ("hour", "honest", "honour", "honor", "heir")


Span = tuple[int, int]  # words [start, end)
Pair = tuple[Span, Span]


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: words ``[start, end)``, its noun ``[noun_start, end)`` if it has one."""

    start: int
    end: int
    noun_start: int | None  # None: no noun (a predicate, "the car is red")


@dataclass(frozen=True)
class Relation:
    """A relation phrase ``[start, end)`` with the noun phrases on either side."""

    start: int
    end: int
    kind: str  # "preposition", "symmetric" or "verb"
    left: Span  # the noun phrase before it, with its "of" phrases
    right: Span


@dataclass
class Parse:
    """A caption cut into words and the text between them, the words classed."""

    words: list[str]  # as written (in a sentence-case caption, sentence starts lowered)
    gaps: list[str]  # len(words) + 1: before the first word, between words, after the last
    classes: list[str]
    sentence_case: bool
    lower: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.lower = [w.lower() for w in self.words]

    def plain(self, start: int, end: int) -> bool:
        """Whether only spaces separate the words ``start`` to ``end`` (no punctuation)."""
        return all(not self.gaps[i].strip() for i in range(start + 1, end + 1))

    def one_sentence(self, start: int, end: int) -> bool:
        """Whether no full stop, "!", "?" or ";" separates the words ``start`` to ``end``."""
        return not any(set(self.gaps[i]) & SENTENCE_ENDS for i in range(start + 1, end + 1))


def swaps(caption: str) -> dict[str, list[str]]:
    """Every distinct swapped caption, by kind (see the module docstring for the rules).

    None equals the caption (ignoring case); a kind with no applicable rule maps to ``[]``.

    >>> swaps("A cat on a mat.")["relation"]
    ['A mat on a cat.']
    >>> swaps("a red car and a blue bus")["attribute"]
    ['a blue car and a red bus']
    """
    return {kind: list(found) for kind, found in zip(SWAP_KINDS, _swaps(caption), strict=True)}


def hard_negative(
    caption: str, generator: torch.Generator, kinds: Sequence[str] = SWAP_KINDS
) -> str | None:
    """One swapped caption drawn from ``generator``: a kind, then one of its swaps.

    The kind is drawn uniformly among ``kinds`` that have a swap for this caption, then a
    swap uniformly among that kind's, so a caption with many noun swaps does not crowd out
    its one relation swap. The same generator state gives the same negative.

    Returns:
        The negative, or None when no rule of ``kinds`` applies to the caption.

    Raises:
        ValueError: ``kinds`` is empty or names a kind not in ``SWAP_KINDS``.
    """
    kinds = check_kinds(kinds)
    found = swaps(caption)
    available = [kind for kind in kinds if found[kind]]
    if not available:
        return None
    kind = available[int(torch.randint(len(available), (1,), generator=generator))]
    return found[kind][int(torch.randint(len(found[kind]), (1,), generator=generator))]


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """``kinds`` as a tuple, each one of ``SWAP_KINDS``.

    Raises:
        ValueError: ``kinds`` is a string, empty, or names an unknown kind.
    """
    if isinstance(kinds, str) or not kinds or any(k not in SWAP_KINDS for k in kinds):
        raise ValueError(f"swap kinds must be a non-empty list of {SWAP_KINDS}, got {kinds!r}")
    return tuple(kinds)


@functools.lru_cache(maxsize=2**16)
def _swaps(caption: str) -> tuple[tuple[str, ...], ...]:
    parse = parse_caption(caption)
    phrases = noun_phrases(parse)
    found = relations(parse, phrases)
    free = free_items(parse, phrases, found)
    spans = {
        "noun": noun_swaps(parse, phrases, free),
        "attribute": attribute_swaps(parse, phrases, free),
        "relation": relation_swaps(parse, found),
    }
    out = []
    for kind in SWAP_KINDS:
        pairs = [(a, b) for a, b in spans[kind] if parse.one_sentence(a[0], b[1] - 1)]
        texts = dict.fromkeys(render(parse, a, b) for a, b in pairs)
        out.append(tuple(t for t in texts if t.lower() != caption.lower()))
    return tuple(out)


# ------------------------------------------------------------------ reading the caption


def parse_caption(caption: str) -> Parse:
    """Words, the text between them, and each word's class."""
    matches = list(WORD.finditer(caption))
    words = [m.group() for m in matches]
    edges = [0, *(x for m in matches for x in m.span()), len(caption)]
    gaps = [caption[edges[2 * i] : edges[2 * i + 1]] for i in range(len(words) + 1)]
    sentence_case = bool(words) and words[0][0].isupper() and caption != caption.upper()
    for i in range(len(words)) if sentence_case else ():
        if _starts_sentence(gaps, i) and not (len(words[i]) > 1 and words[i].isupper()):
            words[i] = words[i][0].lower() + words[i][1:]  # capitalised again when rendered
    parse = Parse(words, gaps, [""] * len(words), sentence_case)
    lower = parse.lower
    i = 0
    while i < len(words):
        for size in range(min(LONGEST_RELATION, len(words) - i), 0, -1):
            phrase = tuple(lower[i : i + size])
            if phrase in RELATIONS and parse.plain(i, i + size - 1):
                parse.classes[i : i + size] = ["relation"] + ["relation+"] * (size - 1)
                i += size
                break
        else:
            parse.classes[i] = _word_class(lower[i])
            i += 1
    for i in range(len(words)):
        if _modifies_next(parse, i):  # "a sleeping cat", "a cutting board"
            parse.classes[i] = "modifier"
        elif parse.classes[i] == "noun" and _participle(parse, i):  # "a dog sleeping on"
            parse.classes[i] = "verb"
    return parse


def _starts_sentence(gaps: list[str], i: int) -> bool:
    """Whether word ``i`` starts a sentence: the first word, or one after ".", "!" or "?"."""
    return i == 0 or bool(set(gaps[i]) & frozenset(".!?"))


def _word_class(word: str) -> str:
    if word in DETERMINERS:
        return "det"
    if word in COUNTS or word.isdigit():
        return "count"
    if word in ATTRIBUTES:
        return "attribute"
    if word in INTENSIFIERS:
        return "modifier"
    if word in AUXILIARIES:
        return "auxiliary"
    if word in VERBS:
        return "verb"
    if word in BOUNDARIES:
        return "boundary"
    return "noun"


def _before(parse: Parse, i: int) -> str | None:
    """The class of the word before ``i``, if no punctuation separates them."""
    return parse.classes[i - 1] if i > 0 and parse.plain(i - 1, i) else None


def _after(parse: Parse, i: int) -> str | None:
    """The class of the word after ``i``, if no punctuation separates them."""
    return parse.classes[i + 1] if i + 1 < len(parse.words) and parse.plain(i, i + 1) else None


def _modifies_next(parse: Parse, i: int) -> bool:
    """A one-word verb before a noun modifies it if a determiner, an adjective, a relation
    or the caption's start comes before it ("a sleeping cat", "smiling face")."""
    one_word_verb = parse.classes[i] == "verb" or (
        parse.classes[i] == "relation"
        and _after(parse, i) != "relation+"
        and RELATIONS[(parse.lower[i],)] == "verb"
    )
    before = _before(parse, i) if i else "start"
    return (
        one_word_verb
        and before in ("start", "relation", "relation+", "det", "count", "attribute", "modifier")
        and _after(parse, i) in ("noun", "attribute")
    )


def _participle(parse: Parse, i: int) -> bool:
    """An -ing or -ed word right after a noun, unless it reads as a noun itself: a word of
    ``PARTICIPLE_NOUNS`` ("an office building") is a verb only before a determiner."""
    word = parse.lower[i]
    if len(word) <= 4 or not word.endswith(("ing", "ed")) or word.endswith(("eed", "bed")):
        return False
    if _before(parse, i) != "noun":
        return False
    after = _after(parse, i)
    if after in ("det", "count"):
        return True
    return word not in PARTICIPLE_NOUNS and after not in PHRASE_WORDS


def noun_phrases(parse: Parse) -> list[Phrase]:
    """Maximal runs of determiners, counts, adjectives and nouns, split at punctuation and
    at a determiner after a noun (a list of adjectives stays one: "a black and white cat",
    "a red, white and blue flag"); the noun is the run of nouns at the end (the last word
    alone if it is a listed adjective, as in "a glass", unless the phrase is a predicate:
    no determiner and not after a relation, "of" or the caption's start)."""
    classes = parse.classes
    runs: list[list[int]] = []
    for i, cls in enumerate(classes):
        if cls not in PHRASE_WORDS:
            continue
        current = runs[-1] if runs else []
        joins = bool(current) and current[-1] == i - 1 and parse.plain(i - 1, i)
        if joins and cls == "det":
            joins = all(classes[j] in ("det", "count") for j in current)
        adjectives = bool(current) and classes[current[-1]] == cls == "attribute"
        if joins or (adjectives and _joined(parse, current[-1], i)):  # "black and white"
            current.append(i)
        else:
            runs.append([i])
    phrases = []
    for run in runs:
        start, end = run[0], run[-1] + 1
        last = classes[end - 1]
        has_det = any(classes[j] == "det" for j in run)
        noun_slot = (
            start == 0 or classes[start - 1].startswith("relation") or _is_of(parse, start - 1)
        )
        noun_start: int | None = None
        if last == "noun" or (last == "attribute" and (has_det or noun_slot)):
            noun_start = end - 1
            while noun_start > start and classes[noun_start - 1] == "noun":
                noun_start -= 1
        phrases.append(Phrase(start, end, noun_start))
    return phrases


def _is_of(parse: Parse, i: int) -> bool:
    return parse.lower[i] == "of" and parse.classes[i] == "boundary"


def relations(parse: Parse, phrases: list[Phrase]) -> list[Relation]:
    """Relation phrases with a noun phrase right after them and one before them (past
    auxiliaries, adverbs and, for prepositions, verbs: "a cat is sitting on a mat"); an
    "of" phrase belongs to its side ("a glass of milk on a table")."""
    ending = {p.end - 1: p for p in phrases if p.noun_start is not None}
    starting = {p.start: p for p in phrases if p.noun_start is not None}
    classes = parse.classes
    found = []
    for start, cls in enumerate(classes):
        if cls != "relation":
            continue
        end = start + 1
        while end < len(classes) and classes[end] == "relation+":
            end += 1
        kind = RELATIONS[tuple(parse.lower[start:end])]
        skip = {"auxiliary", "modifier"} | ({"verb"} if kind != "verb" else set())
        j = start - 1
        while j >= 0 and classes[j] in skip:
            j -= 1
        left, right = ending.get(j), starting.get(end)
        if left is None or right is None or not parse.plain(j, end):
            continue
        left_start, right_end = left.start, right.end
        while left_start - 2 in ending and _is_of(parse, left_start - 1):
            if not parse.plain(left_start - 2, left_start):
                break
            left_start = ending[left_start - 2].start
        while right_end + 1 in starting and _is_of(parse, right_end):
            if not parse.plain(right_end - 1, right_end + 1):
                break
            right_end = starting[right_end + 1].end
        found.append(Relation(start, end, kind, (left_start, left.end), (right.start, right_end)))
    return found


# ------------------------------------------------------------------ the three kinds of swap


def noun_swaps(parse: Parse, phrases: list[Phrase], free: list[Pair]) -> list[Pair]:
    """The nouns of every two noun phrases, unless that only reorders ``free`` items."""
    nouns = [(p.noun_start, p.end) for p in phrases if p.noun_start is not None]
    return [
        (s, t)
        for x, s in enumerate(nouns)
        for t in nouns[x + 1 :]
        if not _reorders(parse, s, t, free)
    ]


def attribute_swaps(parse: Parse, phrases: list[Phrase], free: list[Pair]) -> list[Pair]:
    """Two different listed adjectives (or two counts) of different noun phrases, neither
    the noun, unless they are items of one list of adjectives ("a red and blue car") or
    the swap only reorders ``free`` items ("a red car and a blue car")."""
    found = []  # (word, phrase, group)
    for p in phrases:
        for i in range(p.start, p.noun_start if p.noun_start is not None else p.end):
            if parse.classes[i] in ("attribute", "count"):
                found.append((i, p, parse.classes[i]))
    lower = parse.lower
    return [
        ((i, i + 1), (j, j + 1))
        for x, (i, p, group) in enumerate(found)
        for j, q, other in found[x + 1 :]
        if p != q
        and group == other
        and lower[i] != lower[j]
        and not _joined(parse, i, j, ADJECTIVES)
        and not _reorders(parse, (i, i + 1), (j, j + 1), free)
    ]


def relation_swaps(parse: Parse, found: list[Relation]) -> list[Pair]:
    """The two sides of each asymmetric relation; and every two different relations of
    the same sort (prepositions, verbs), unless both are symmetric."""
    pairs = [(r.left, r.right) for r in found if r.kind != "symmetric"]
    for x, r in enumerate(found):
        for s in found[x + 1 :]:
            if (r.kind == "verb") != (s.kind == "verb") or r.kind == s.kind == "symmetric":
                continue
            if _words(parse, r.start, r.end) != _words(parse, s.start, s.end):
                pairs.append(((r.start, r.end), (s.start, s.end)))
    return pairs


def free_items(parse: Parse, phrases: list[Phrase], found: list[Relation]) -> list[Pair]:
    """Pairs of spans whose order does not matter: two items of one list ("a cat, a dog
    and a bowl of milk"; an item takes its "of" phrases) and the two sides of a symmetric
    relation ("a cat next to a dog")."""
    items: list[list[int]] = []  # [start, end] of each item
    for p in phrases:
        if items and items[-1][1] + 1 == p.start and _is_of(parse, p.start - 1):
            if parse.plain(p.start - 2, p.start):
                items[-1][1] = p.end
                continue
        items.append([p.start, p.end])
    lists: list[list[Span]] = []
    for n, (start, end) in enumerate(items):
        if n and _joined(parse, items[n - 1][1] - 1, start):
            lists[-1].append((start, end))
        else:
            lists.append([(start, end)])
    pairs = [(a, b) for one in lists for x, a in enumerate(one) for b in one[x + 1 :]]
    return pairs + [(r.left, r.right) for r in found if r.kind == "symmetric"]


def _reorders(parse: Parse, s: Span, t: Span, free: list[Pair]) -> bool:
    """Whether swapping spans ``s`` and ``t`` only exchanges two ``free`` items."""
    for a, b in free:
        if a[0] <= s[0] and s[1] <= a[1] and b[0] <= t[0] and t[1] <= b[1]:
            first, second = _words(parse, *a), _words(parse, *b)
            moved, back = _words(parse, *t), _words(parse, *s)
            new_first = first[: s[0] - a[0]] + moved + first[s[1] - a[0] :]
            new_second = second[: t[0] - b[0]] + back + second[t[1] - b[0] :]
            if new_first == second and new_second == first:
                return True
    return False


def _words(parse: Parse, start: int, end: int) -> list[str]:
    """Words ``[start, end)`` lower-cased, "an" read as "a"."""
    return ["a" if w == "an" else w for w in parse.lower[start:end]]


def _joined(parse: Parse, i: int, j: int, items: frozenset[str] = frozenset()) -> bool:
    """Whether words ``i`` and ``j`` are neighbours in a list: between them only
    conjunctions (and words of the classes ``items``), at least one conjunction or comma,
    and no punctuation but commas and "&"."""
    if j <= i:
        return False
    gaps = parse.gaps[i + 1 : j + 1]
    if any(set(gap) - LIST_GAP for gap in gaps):
        return False
    between = range(i + 1, j)
    joined = any(parse.lower[k] in CONJUNCTIONS for k in between) or any(
        "," in gap or "&" in gap for gap in gaps
    )
    return joined and all(
        parse.lower[k] in CONJUNCTIONS or parse.classes[k] in items for k in between
    )


# ------------------------------------------------------------------ writing the result


def render(parse: Parse, first: Span, second: Span) -> str:
    """The caption with the word spans ``first`` and ``second`` exchanged (``first`` before
    ``second``, not overlapping): gaps inside a span move with it, the others stay put."""
    (a, b), (c, d) = first, second
    n = len(parse.words)
    order = [*range(a), *range(c, d), *range(b, c), *range(a, b), *range(d, n)]
    boundaries = {a: a, a + d - c: b, d - (b - a): c, d: d}  # new position -> original gap
    gaps = [
        parse.gaps[boundaries[k]] if k in boundaries else parse.gaps[order[k]] for k in range(n)
    ]
    words = [parse.words[o] for o in order]
    for k in range(n - 1):
        if words[k].lower() in ("a", "an") and order[k + 1] != order[k] + 1:
            words[k] = _article(words[k], words[k + 1])
    for k in range(n) if parse.sentence_case else ():
        if _starts_sentence(gaps, k):
            words[k] = words[k][0].upper() + words[k][1:]
    return "".join(g + w for g, w in zip(gaps, words, strict=True)) + parse.gaps[n]


def _article(article: str, word: str) -> str:
    """``a`` or ``an`` for ``word``, written in the case of ``article``."""
    lower = word.lower()
    if not lower[:1].isalpha():
        return article
    vowel = lower[0] in "aeiou" and not lower.startswith(VOWEL_SOUND_EXCEPTIONS)
    chosen = "an" if vowel or lower.startswith(SILENT_H) else "a"
    if article.isupper() and len(article) > 1:
        return chosen.upper()
    return chosen[0].upper() + chosen[1:] if article[0].isupper() else chosen
