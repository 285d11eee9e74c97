"""Next-sentence prediction (masked_lm with data.nsp: true): documents split into sentences, then
sentence pairs, tokenized as [CLS] A [SEP] B [SEP].

Sentences. A small rule-based splitter: a sentence ends at `.`, `!` or `?` (a run of them, then any
closing quotes or brackets) followed by white space and a capital letter or a digit (after any
opening quotes or brackets). A period does not end a sentence after a common abbreviation (Mr.,
Dr., e.g., i.e., vs., ...), after a single letter (an initial: "J. Smith"), or inside dotted
initials (U.S., a.m.); decimals (3.5) never split, as no space follows their period. Text without
final punctuation is the last sentence. Line breaks inside a document are spaces.

Pairs. Each sentence but the last of its document is the first segment A of one pair; B is the
true next sentence half the time (label 0, transformers' "is next") and a random sentence of
another document the other half (label 1), never one with the same text as A or as the true next.
The draws are seeded (train.seed): every process of a run, and a resumed run, builds the same pairs.
"""

from __future__ import annotations

import random
import re
from typing import Any

from ..core.errors import LmtuneError
from ..core.models import describe
from ..data.table import Table

IS_NEXT, RANDOM = 0, 1  # the labels of transformers' next_sentence_label
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs e.g i.e cf fig figs approx dept est vol gen col lt sgt capt rev mt "
    "inc ltd corp co jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_CANDIDATE = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+")
_OPENING = "\"'\u201c\u2018(["
_DOTTED = re.compile(r"^(?:[a-z]\.)+[a-z]$")  # u.s, a.m, e.g (the final period is the candidate's)
DOCUMENTS_RULE = ("blank lines separate the documents of a .txt file (one without any blank line holds a "
                  "document per line); each row of a .csv, .tsv or .jsonl file is a document")
SENTENCE_RULE = "a sentence ends with . ! or ? before a capital letter or a digit"


def _abbreviation(text: str, end: int) -> bool:
    """Whether the period at text[end] closes an abbreviation, an initial or dotted initials."""
    start = max(text.rfind(" ", 0, end), text.rfind("\n", 0, end)) + 1
    word = text[start:end].lstrip(_OPENING).lower()
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or bool(_DOTTED.match(word))


def split_sentences(text: str) -> list[str]:
    """The sentences of a document, by the rules in this module's docstring."""
    text = " ".join(text.split())
    sentences, start = [], 0
    for m in _CANDIDATE.finditer(text):
        following = text[m.end():].lstrip(_OPENING)
        if not following or not (following[0].isupper() or following[0].isdigit()):
            continue
        punctuation = m.group().rstrip().rstrip("\"'\u201d\u2019)]")
        if punctuation == "." and _abbreviation(text, m.start()):
            continue
        sentences.append(text[start:m.end()].strip())
        start = m.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def documents_per_line(table: Table) -> Table:
    """A .txt file read as one document (no blank line in it) holds a document per line."""
    if len(table.rows) != 1 or not str(table.path).lower().endswith(".txt"):
        return table
    column = table.columns[0]
    lines = table.rows[0][column].split("\n")
    if len(lines) < 2:
        return table
    rows = [{column: line} for line in lines]
    return Table(table.path, table.columns, rows, [table.lines[0] + i for i in range(len(lines))])


def _random_other(documents: list[list[str]], pool: list[tuple[int, int]], d: int, avoid: set[str],
                  rng: random.Random) -> str | None:
    """A sentence of a document other than d whose text is not in `avoid`, or None where there is none."""
    for _ in range(50):
        od, os_ = pool[rng.randrange(len(pool))]
        if od != d and documents[od][os_] not in avoid:
            return documents[od][os_]
    left = [documents[od][os_] for od, os_ in pool if od != d and documents[od][os_] not in avoid]
    return rng.choice(left) if left else None


def build_pairs(documents: list[list[str]], seed: int) -> list[tuple[str, str, int]]:
    """(A, B, label) for each sentence but the last of each document: B the next sentence
    (IS_NEXT) or, with probability 1/2, a random sentence of another document (RANDOM)."""
    rng = random.Random(seed)
    pool = [(d, s) for d, doc in enumerate(documents) for s in range(len(doc))]
    pairs = []
    for d, doc in enumerate(documents):
        for i in range(len(doc) - 1):
            other = _random_other(documents, pool, d, {doc[i], doc[i + 1]}, rng) if rng.random() < 0.5 else None
            pairs.append((doc[i], doc[i + 1], IS_NEXT) if other is None else (doc[i], other, RANDOM))
    return pairs


def table_pairs(table: Table, column: str, seed: int, held_out: bool = False) -> list[tuple[str, str, int]]:
    """The pairs of a table's documents; LmtuneError where none can be made (`held_out`: the table
    is the validation split held out of the training file)."""
    documents = [split_sentences(r[column]) for r in table.rows]
    documents = [d for d in documents if d]
    sentences = sum(len(d) for d in documents)
    found = f"found {len(documents)} document{'s' * (len(documents) != 1)} and {sentences} sentence{'s' * (sentences != 1)}"
    where, hint = str(table.path), ""
    if held_out:
        where = f"the validation split held out of {table.path}"
        hint = "; raise data.validation_size or give data.validation"
    if not any(len(d) > 1 for d in documents):
        raise LmtuneError(f"{where}: data.nsp needs a document of two sentences or more to make a pair; "
                          f"{found} ({SENTENCE_RULE}; {DOCUMENTS_RULE}){hint}")
    if len(documents) < 2:
        raise LmtuneError(f"{where}: data.nsp draws its random second sentences from other documents; "
                          f"{found} ({DOCUMENTS_RULE}){hint}")
    return build_pairs(documents, seed)


def pair_features(pairs: list[tuple[str, str, int]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """[CLS] A [SEP] B [SEP], cut to max_length longest segment first, with token_type_ids,
    special_tokens_mask, word_ids (a number per word across both segments; -1 on special tokens) and
    next_sentence_label."""
    enc = tokenizer([a for a, _, _ in pairs], [b for _, b, _ in pairs], truncation="longest_first",
                    max_length=max_length, return_special_tokens_mask=True, return_token_type_ids=True)
    fast = getattr(tokenizer, "is_fast", False)
    features = []
    for i, (_, _, label) in enumerate(pairs):
        ids, special = enc["input_ids"][i], enc["special_tokens_mask"][i]
        keys = list(zip(enc.sequence_ids(i), enc.word_ids(i))) if fast else list(range(len(ids)))
        numbers: dict[Any, int] = {}
        word_ids = [-1 if s else numbers.setdefault(k, len(numbers)) for k, s in zip(keys, special)]
        features.append({"input_ids": ids, "token_type_ids": enc["token_type_ids"][i], "special_tokens_mask": special,
                         "word_ids": word_ids, "next_sentence_label": label})
    return features


def nsp_model_class(model: str) -> str:
    """The transformers class of the model's pretraining heads with a next-sentence classifier
    (BertForPreTraining); LmtuneError naming the model type where its architecture has none."""
    import inspect

    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_PRETRAINING_MAPPING_NAMES

    model_type = describe(str(model)).model_type
    name = MODEL_FOR_PRETRAINING_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, name, None) if name else None
    if cls is None or "next_sentence_label" not in inspect.signature(cls.forward).parameters:
        raise LmtuneError(f"data.nsp: model {model} is of type {model_type}, whose architecture has no next-sentence "
                          "prediction head (BERT-style encoders such as minilm-l6 have one); set data.nsp: false")
    return name
