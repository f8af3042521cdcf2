"""The English word lists behind the caption swaps (:mod:`mmcontrast.data.caption_swaps`).

NegCLIP (Yuksekgonul et al. 2023, "When and why vision-language models behave like
bags-of-words, and what to do about it?", https://arxiv.org/abs/2210.01936) finds noun
phrases, adjectives and relations with spaCy's parser. No parser model can be installed
offline (spaCy's English models and NLTK's tagger data come from outside PyPI), so the
swaps read words through these closed lists instead: small, hand-written, aimed at the
vocabulary of photo and icon captions (COCO, Visual Genome, the emoji demo set), and
English only. A word found in no list is taken as a content word (a noun) by the chunker.

Every list is lower case. Multi-word relations are tuples of words, matched longest first.
"""

from __future__ import annotations

DETERMINERS = frozenset(
    "a an the this these those some any each every another either neither no his her its "
    "their my your our whose both all half several many few much more most such".split()
)

COUNTS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen twenty thirty dozen".split()
)

# Adjectives a swap may exchange, by what they describe (the groups only document them).
ATTRIBUTE_GROUPS: dict[str, frozenset[str]] = {
    "colour": frozenset(
        "white black blue green red brown yellow gray grey orange pink purple violet silver "
        "gold golden tan beige maroon navy teal turquoise cyan magenta crimson ivory khaki "
        "blond blonde colorful colourful multicolored multicoloured".split()
    ),
    "pattern": frozenset("striped spotted checkered plaid floral dotted patterned".split()),
    "size": frozenset(
        "big small large little tiny huge giant enormous tall short long wide narrow thick "
        "thin fat skinny".split()
    ),
    "shape": frozenset(
        "round square circular rectangular triangular oval flat curved pointed pointy".split()
    ),
    "material": frozenset(
        "wooden wood metal metallic plastic glass stone brick concrete paper leather cotton "
        "wool woolen woollen steel iron rubber ceramic marble cardboard denim silk straw "
        "wicker".split()
    ),
    "age": frozenset("old young new ancient modern elderly antique vintage".split()),
    "state": frozenset(
        "wet dry empty full open closed clean dirty broken hot cold warm cool frozen fresh "
        "ripe raw cooked sliced fried grilled rotten shiny dull bright dark light pale clear "
        "cloudy sunny snowy rainy foggy heavy soft hard smooth rough sharp curly fluffy furry "
        "hairy bald messy neat tidy crowded busy quiet lit wrinkled torn folded happy sad "
        "angry sleepy tired".split()
    ),
}
ATTRIBUTES = frozenset().union(*ATTRIBUTE_GROUPS.values())

INTENSIFIERS = frozenset("very quite really extremely fairly rather too so".split())

# Relations whose two sides can be exchanged to change the meaning (asymmetric ones).
# "with" reads as "has" here ("a man with a hat" -> "a hat with a man"); ARO's per-relation
# accuracy leaves it out, with "near", "next to", "beside", "by" and "around", as too often
# true both ways.
PREPOSITIONS: frozenset[tuple[str, ...]] = frozenset(
    tuple(phrase.split())
    for phrase in [
        "on", "onto", "upon", "atop", "in", "into", "inside", "inside of", "within", "under",
        "underneath", "beneath", "below", "above", "over", "behind", "in front of",
        "on top of", "at", "against", "through", "across", "along", "around", "toward",
        "towards", "from", "out of", "off of", "past", "beyond", "outside", "outside of",
        "among", "with", "without", "left of", "right of", "to the left of",
        "to the right of", "on the left of", "on the right of", "on the left side of",
        "on the right side of", "at the top of", "at the bottom of", "in the middle of",
        "in the center of", "in the centre of", "on the side of", "on the edge of",
        "at the edge of", "in the back of", "on the back of",
    ]
)  # fmt: skip

# Relations that read the same both ways: their sides are never exchanged.
SYMMETRIC_PREPOSITIONS: frozenset[tuple[str, ...]] = frozenset(
    tuple(phrase.split())
    for phrase in [
        "next to", "beside", "besides", "alongside", "near", "near to", "nearby", "close to",
        "adjacent to", "across from", "opposite", "opposite to", "far from", "by",
    ]
)  # fmt: skip

# Transitive verbs whose subject and object can be exchanged ("a man riding a horse").
VERB_RELATIONS: frozenset[tuple[str, ...]] = frozenset(
    tuple(phrase.split())
    for phrase in [
        "riding", "rides", "holding", "holds", "wearing", "wears", "eating", "eats",
        "carrying", "carries", "pulling", "pulls", "pushing", "pushes", "chasing", "chases",
        "watching", "looking at", "looks at", "staring at", "stares at", "feeding", "feeds",
        "hitting", "kicking", "kicks", "throwing", "throws", "catching", "catches",
        "drinking", "biting", "licking", "licks", "touching", "hugging", "hugs", "following",
        "follows", "covering", "cutting", "using", "reading", "playing with", "plays with",
        "driving", "drives", "petting", "brushing", "chewing", "sniffing", "attacking",
        "leading", "surrounding", "surrounds", "approaching", "facing",
    ]
)  # fmt: skip

# Verbs and participles that end a noun phrase without being a relation of their own.
VERBS = frozenset(
    "sitting sits sat seated standing stands stood lying lies laying lays resting rests "
    "hanging hangs perched parked placed located situated positioned displayed shown seen "
    "floating floats flying flies leaning leans waiting waits walking walks running runs "
    "playing plays sleeping sleeps swimming swims jumping jumps grazing grazes posing poses "
    "smiling smiles looking looks going goes coming comes moving moves traveling travelling "
    "covered filled topped stacked piled surrounded attached mounted painted dressed stopped "
    "stuck kept made getting taking making trying doing talking working cooking preparing "
    "skiing surfing skateboarding snowboarding".split()
)

AUXILIARIES = frozenset(
    "is are was were be been being am has have had does do did can could will would may "
    "might should must".split()
)

# Words that end a noun phrase: conjunctions, pronouns, particles and other function words.
BOUNDARIES = frozenset(
    "and or but nor while as then plus also yet because where when who which that whom if "
    "than it they them he him she we us you i me itself themselves himself herself there "
    "here someone somebody everyone everybody to for of like about during before after "
    "until up down out off away back together not just".split()
)

# Conjunctions: phrases joined only by these (and commas) are a list, whose order is free.
CONJUNCTIONS = frozenset("and or nor plus".split())

# Words ending in -ing or -ed that are nouns: a participle only before a determiner.
PARTICIPLE_NOUNS = frozenset(
    "building ceiling clothing painting ring king wing string swing spring thing something "
    "anything nothing everything evening morning pudding icing frosting topping stuffing "
    "filling dressing railing awning bedding sibling duckling seedling earring lightning "
    "housing parking landing wedding dumpling bowling herring offspring scaffolding siding "
    "flooring lettering seating wiring opening crossing sled shed bed hundred".split()
)

COPULAS = frozenset("is are was were be been being am looks seems appears".split())
