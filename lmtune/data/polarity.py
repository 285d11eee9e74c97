"""The sentiment polarity of English words, so that augmentation does not flip a text's label.

Words come from the VADER lexicon (Hutto & Gilbert, 2014), shipped inside the vaderSentiment
package: about 7,500 words and emoticons rated from -4 (most negative) to +4 (most positive). A
word it lacks has no polarity. Negations are VADER's list ("not", "never", "without", ...) with
"no", "nobody" and every "...n't" form added.
"""

from __future__ import annotations

import string
from functools import lru_cache
from importlib.resources import files

from vaderSentiment.vaderSentiment import NEGATE

NEGATIONS = frozenset(NEGATE) | {"no", "nobody", "n't"}
NEGATION_SCOPE = 3  # a negation governs this many words after it ("not at all bad"), as VADER counts
EDGE_PUNCTUATION = string.punctuation + "“”«»…"


@lru_cache(maxsize=1)
def lexicon() -> dict[str, float]:
    """Word -> mean valence, from -4 to +4."""
    text = (files("vaderSentiment") / "vader_lexicon.txt").read_text(encoding="utf-8")
    out = {}
    for line in text.splitlines():
        word, _, rest = line.partition("\t")
        if rest:
            out[word] = float(rest.split("\t", 1)[0])
    return out


def _bare(word: str) -> str:
    """A word as the lexicon spells it: lower case, without punctuation around it."""
    return word.lower().replace("’", "'").strip(EDGE_PUNCTUATION)


def is_negation(word: str) -> bool:
    bare = _bare(word)
    return bare in NEGATIONS or bare.endswith("n't")


def negated(words: list[str]) -> list[bool]:
    """Per word: whether a negation stands among the NEGATION_SCOPE words before it."""
    negation = [is_negation(w) for w in words]
    return [any(negation[max(0, i - NEGATION_SCOPE) : i]) for i in range(len(words))]


def polarity(word: str) -> int:
    """+1 for a positive word, -1 for a negative one, 0 for a word without sentiment."""
    words = lexicon()
    valence = words.get(word.lower(), words.get(_bare(word), 0.0))  # as written first: emoticons
    return (valence > 0) - (valence < 0)


def keeps_polarity(word: str, replacement: str) -> bool:
    """Whether `replacement` may stand for `word` without changing what a text says about its
    subject: the same polarity (positive for positive, negative for negative, none for none), and
    no negation brought in or taken away."""
    return polarity(word) == polarity(replacement) and not is_negation(word) and not is_negation(replacement)


def polarity_safe(synonyms: dict[str, list[str]]) -> dict[str, list[str]]:
    """The synonyms that keep their word's polarity (see `keeps_polarity`); words left with none are
    left out."""
    out = {}
    for word, options in synonyms.items():
        kept = [s for s in options if keeps_polarity(word, s)]
        if kept:
            out[word] = kept
    return out
