"""Text augmentation with the EDA operations (Wei & Zou, 2019), seeded: random deletion, random
swap, random insertion and synonym replacement, each applied with its own probability per word.

Synonyms come from a file the user gives (JSON `{"word": ["synonym", ...]}` or lines
`word<TAB>synonym,synonym`) and/or from the nearest neighbours of a word in a model's input
embeddings (cosine similarity), among whole-word vocabulary entries that are alphabetic and not
stop words. Embedding neighbours include antonyms ("bad" sits next to "good"), so a neighbour is
only taken when it keeps the word's sentiment polarity (see polarity.py); a synonym file is taken
as written. Negations ("not", "never", "n't", ...) and the words the user protects (label-bearing
words, say) are never replaced, deleted or moved; in a text row, the three words after a negation
(its reach) are not moved either, and nothing is inserted within it. Deletion never empties a text. Augmented rows
are copies of their source with the text changed; `augmented_from` says which line they came
from. A copy that comes out the same as its source or as an earlier copy of it is not kept, and
is counted in `Skipped`.

Tagged sentences (named entities) keep their tags aligned: the word operations touch only words
tagged O, an entity moves and stays as a whole, and with `p_entity` an entity is replaced by another
mention of the same type from the training data. The tags of the result are written afresh in the
sentence's tag scheme.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..core.errors import LmtuneError
from ..core.models import load_tokenizer
from .polarity import is_negation, negated, polarity_safe

STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves
""".split())


@dataclass
class AugmentOptions:
    p_delete: float = 0.1
    p_swap: float = 0.1
    p_insert: float = 0.1
    p_synonym: float = 0.1
    p_entity: float = 0.1  # tagged sentences: an entity replaced by another mention of its type
    n_per_example: int = 1
    protect: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_section(cls, a: Any) -> "AugmentOptions":
        """From a config's data.augment section."""
        return cls(p_delete=a.p_delete, p_swap=a.p_swap, p_insert=a.p_insert, p_synonym=a.p_synonym,
                   p_entity=a.p_entity, n_per_example=a.n_per_example, protect=frozenset(w.lower() for w in a.protect))


@dataclass
class Skipped:
    """Augmented copies asked for but not kept, by why."""

    empty: int = 0  # the text was empty
    unchanged: int = 0  # the operations left the text as it was
    repeated: int = 0  # the same as an earlier copy of its source

    @property
    def total(self) -> int:
        return self.empty + self.unchanged + self.repeated

    def by_reason(self) -> dict[str, int]:
        return {k: v for k, v in (("unchanged", self.unchanged), ("repeated", self.repeated), ("empty", self.empty)) if v}

    def describe(self, asked: int) -> str:
        """One line: how many copies of `asked` were skipped and why ('' when none were)."""
        if not self.total:
            return ""
        why = {"unchanged": "the same as their source (the random operations changed nothing: short texts, low "
                            "probabilities, few synonyms)",
               "repeated": "the same as an earlier copy of their source",
               "empty": "for empty texts"}
        return f"{self.total} of {asked} copies skipped: " + "; ".join(f"{n} {why[k]}" for k, n in self.by_reason().items())


def read_synonyms(path: str | Path) -> dict[str, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise LmtuneError(f"{path}: synonym file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LmtuneError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise LmtuneError(f'{path}: expected {{"word": ["synonym", ...], ...}}')
        return {k.lower(): [str(x) for x in v] for k, v in data.items()}
    out: dict[str, list[str]] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        word, tab, rest = line.partition("\t")
        if not tab or not rest.strip():
            raise LmtuneError(f"{path}:{n}: expected 'word<TAB>synonym,synonym'")
        out.setdefault(word.strip().lower(), []).extend(s.strip() for s in rest.split(",") if s.strip())
    return out


def embedding_neighbours(model_path: str | Path, words: set[str], k: int = 5) -> dict[str, list[str]]:
    """For each word that is one whole-word token of the model's vocabulary, its k nearest
    whole-word, alphabetic, non-stop-word vocabulary entries by cosine similarity of the input
    embeddings."""
    import torch
    from transformers import AutoModel

    tokenizer = load_tokenizer(model_path)
    model = AutoModel.from_pretrained(model_path)
    table = model.get_input_embeddings().weight.detach().float()
    vocab = tokenizer.get_vocab()
    candidates = [(w, i) for w, i in vocab.items() if w.isalpha() and w.isascii() and len(w) > 2 and w.lower() not in STOP_WORDS]
    if not candidates:
        raise LmtuneError(f"{model_path}: no whole-word vocabulary entries to take synonyms from")
    cand_ids = torch.tensor([i for _, i in candidates])
    cand = torch.nn.functional.normalize(table[cand_ids], dim=-1)
    queries = [(w, vocab[w]) for w in sorted(words) if w in vocab and w.isalpha() and w not in STOP_WORDS]
    if not queries:
        return {}
    q = torch.nn.functional.normalize(table[torch.tensor([i for _, i in queries])], dim=-1)
    top = (q @ cand.T).topk(min(k + 1, len(candidates)), dim=-1).indices
    out = {}
    for (word, _), row in zip(queries, top.tolist()):
        out[word] = [candidates[j][0] for j in row if candidates[j][0].lower() != word][:k]
    return out


def gather_synonyms(file: str | None, model_path: str | Path | None, words: set[str]) -> dict[str, list[str]]:
    """Synonyms of `words` from a synonym file and/or a model's input-embedding neighbours (only
    those that keep the word's polarity: neighbours include antonyms)."""
    synonyms = read_synonyms(file) if file else {}
    if model_path is not None:
        for word, near in polarity_safe(embedding_neighbours(model_path, words)).items():
            synonyms.setdefault(word, []).extend(near)
    return synonyms


def augment_words(words: list[str], o: AugmentOptions, synonyms: dict[str, list[str]], rng: random.Random) -> list[str]:
    """One augmented copy of a list of words."""
    protected = [w.lower() in o.protect or is_negation(w) for w in words]
    # never moved: those, and the words a negation governs ("not bad" must not become "bad ... not")
    pinned = [p or n for p, n in zip(protected, negated(words))]

    def synonym_of(word: str) -> str | None:
        options = [s for s in synonyms.get(word.lower(), []) if s.lower() != word.lower()]
        return rng.choice(options) if options else None

    out = list(words)
    for i, w in enumerate(out):  # synonym replacement
        if not protected[i] and w.lower() not in STOP_WORDS and rng.random() < o.p_synonym:
            s = synonym_of(w)
            if s is not None:
                out[i] = s
    inserts = [w for i, w in enumerate(words) if not protected[i] and rng.random() < o.p_insert]
    for w in inserts:  # random insertion: a synonym of a word, anywhere out of a negation's reach
        s = synonym_of(w)
        if s is not None:
            pos = rng.choice([p for p, reached in enumerate(negated([*out, ""])) if not reached])
            out.insert(pos, s)
            protected.insert(pos, False)
            pinned.insert(pos, False)
    movable = [i for i in range(len(out)) if not pinned[i]]
    for _ in range(sum(rng.random() < o.p_swap for _ in out)):  # random swap
        if len(movable) >= 2:
            a, b = rng.sample(movable, 2)
            out[a], out[b] = out[b], out[a]
    kept = [w for i, w in enumerate(out) if protected[i] or rng.random() >= o.p_delete]  # random deletion
    return kept or [rng.choice(out)]  # never empty


def augment_stream(
    rows: Iterable[tuple[int, dict[str, Any]]], text_column: str, o: AugmentOptions,
    synonyms: dict[str, list[str]], seed: int, skipped: Skipped | None = None,
) -> Iterator[dict[str, Any]]:
    """`n_per_example` augmented copies of each (line, row) in turn; a file of any size streams
    through. A copy the same as its source or an earlier copy of it is left out, and counted in
    `skipped` when given."""
    rng = random.Random(seed)
    skipped = skipped if skipped is not None else Skipped()
    for line, row in rows:
        words = str(row.get(text_column) or "").split()
        if not words:
            skipped.empty += o.n_per_example
            continue
        source = " ".join(words)  # (a copy that only respaces the text is no copy)
        seen = {source}
        for _ in range(o.n_per_example):
            new = " ".join(augment_words(words, o, synonyms, rng))
            if new in seen:
                skipped.unchanged += new == source
                skipped.repeated += new != source
                continue
            seen.add(new)
            yield {**row, text_column: new, "augmented_from": line}


def augment_rows(
    rows: list[dict[str, Any]], lines: list[int], text_column: str, o: AugmentOptions,
    synonyms: dict[str, list[str]], seed: int, skipped: Skipped | None = None,
) -> list[dict[str, Any]]:
    return list(augment_stream(zip(lines, rows), text_column, o, synonyms, seed, skipped))


# ---------------------------------------------------------------- tagged sentences

Unit = tuple[str | None, list[str]]  # (entity type, its words) or (None, [one O word])


def tag_units(units: list[Unit], scheme: str) -> list[str]:
    """Per-word tags of a sentence of O words and entities, in IOB1, IOB2 or BIOES."""
    tags: list[str] = []
    previous = None
    for kind, words in units:
        if kind is None:
            tags += ["O"] * len(words)
        elif scheme == "BIOES":
            tags += [f"S-{kind}"] if len(words) == 1 else [f"B-{kind}", *[f"I-{kind}"] * (len(words) - 2), f"E-{kind}"]
        elif scheme == "IOB1":  # B- only where an entity of the same type ends just before
            tags += [f"{'B' if previous == kind else 'I'}-{kind}", *[f"I-{kind}"] * (len(words) - 1)]
        else:
            tags += [f"B-{kind}", *[f"I-{kind}"] * (len(words) - 1)]
        previous = kind
    return tags


def augment_tagged(
    tokens: list[str], entities: list[tuple[str, int, int]], o: AugmentOptions, synonyms: dict[str, list[str]],
    mentions: dict[str, list[tuple[str, ...]]], rng: random.Random, scheme: str,
) -> tuple[list[str], list[str]]:
    """One augmented copy of a tagged sentence: (tokens, tags). `entities` are (type, first word,
    last word) spans; the other words are O. Synonym replacement, insertion, swap and deletion act
    on O words only (protected ones excepted); each entity is replaced, with p_entity, by another
    training mention of its type; deletion never removes an entity or empties the sentence."""
    starts = {a: (kind, b) for kind, a, b in entities}
    units: list[Unit] = []
    i = 0
    while i < len(tokens):
        if i in starts:
            kind, last = starts[i]
            words = list(tokens[i : last + 1])
            others = [m for m in mentions.get(kind, ()) if list(m) != words]
            if others and rng.random() < o.p_entity:
                words = list(rng.choice(others))
            units.append((kind, words))
            i = last + 1
        else:
            units.append((None, [tokens[i]]))
            i += 1

    def free(unit: Unit) -> bool:  # an O word that may change
        return unit[0] is None and unit[1][0].lower() not in o.protect and not is_negation(unit[1][0])

    def synonym_of(word: str) -> str | None:
        options = [s for s in synonyms.get(word.lower(), []) if s.lower() != word.lower()]
        return rng.choice(options) if options else None

    for k, unit in enumerate(units):  # synonym replacement
        if free(unit) and unit[1][0].lower() not in STOP_WORDS and rng.random() < o.p_synonym:
            s = synonym_of(unit[1][0])
            if s is not None:
                units[k] = (None, [s])
    for unit in [u for u in units if free(u) and rng.random() < o.p_insert]:  # random insertion
        s = synonym_of(unit[1][0])
        if s is not None:
            units.insert(rng.randrange(len(units) + 1), (None, [s]))
    movable = [k for k, u in enumerate(units) if free(u)]
    for _ in range(sum(rng.random() < o.p_swap for _ in units)):  # random swap of two O words
        if len(movable) >= 2:
            a, b = rng.sample(movable, 2)
            units[a], units[b] = units[b], units[a]
    kept = [u for u in units if not free(u) or rng.random() >= o.p_delete]  # random deletion
    units = kept or [rng.choice(units)]
    return [w for _, words in units for w in words], tag_units(units, scheme)


def augment_sentences(
    rows: list[dict[str, Any]], lines: list[int], spans_of: Any, o: AugmentOptions, synonyms: dict[str, list[str]],
    seed: int, scheme: str, skipped: Skipped | None = None,
) -> list[dict[str, Any]]:
    """`n_per_example` augmented copies of each {"tokens", "tags"} row (copies the same as their
    source or an earlier copy of it are left out, and counted in `skipped` when given).
    `spans_of(tags)` gives a sentence's entities; the mentions to swap in are those of all rows."""
    mentions: dict[str, set[tuple[str, ...]]] = {}
    parsed = []
    for row in rows:
        entities = spans_of(row["tags"])
        parsed.append(entities)
        for kind, a, b in entities:
            mentions.setdefault(kind, set()).add(tuple(row["tokens"][a : b + 1]))
    pool = {kind: sorted(m) for kind, m in mentions.items()}
    rng = random.Random(seed)
    skipped = skipped if skipped is not None else Skipped()
    out = []
    for row, line, entities in zip(rows, lines, parsed):
        source = (tuple(row["tokens"]), tuple(row["tags"]))
        seen = {source}
        for _ in range(o.n_per_example):
            tokens, tags = augment_tagged(row["tokens"], entities, o, synonyms, pool, rng, scheme)
            new = (tuple(tokens), tuple(tags))
            if new in seen:
                skipped.unchanged += new == source
                skipped.repeated += new != source
                continue
            seen.add(new)
            out.append({**row, "tokens": tokens, "tags": tags, "augmented_from": line})
    return out
