"""EDA operations on hand-made inputs: seeded, never empty, protected words untouched."""

from __future__ import annotations

import random

import pytest

from lmtune.cli import main
from lmtune.core.errors import LmtuneError
from lmtune.data.augment import AugmentOptions, augment_rows, augment_words, embedding_neighbours, read_synonyms

WORDS = "the plot was good and the actors were great".split()
SYN = {"plot": ["story"], "good": ["fine"], "actors": ["cast"], "great": ["superb"]}


def only(op: str, p: float = 1.0, **kw) -> AugmentOptions:
    probs = {"p_delete": 0.0, "p_swap": 0.0, "p_insert": 0.0, "p_synonym": 0.0, "p_entity": 0.0, f"p_{op}": p}
    return AugmentOptions(**probs, **kw)


def test_synonym_replacement_uses_the_synonyms_and_skips_stop_words():
    out = augment_words(WORDS, only("synonym"), SYN, random.Random(0))
    assert out == "the story was fine and the cast were superb".split()


def test_deletion_never_empties_and_keeps_protected_words():
    for seed in range(20):
        assert len(augment_words(["one"], only("delete"), {}, random.Random(seed))) == 1
    out = augment_words(WORDS, only("delete", protect=frozenset({"good"})), {}, random.Random(1))
    assert "good" in out and 1 <= len(out) <= 2


def test_swap_keeps_the_words_and_insertion_adds_synonyms():
    swapped = augment_words(WORDS, only("swap", 0.3), SYN, random.Random(2))
    assert sorted(swapped) == sorted(WORDS) and swapped != WORDS
    inserted = augment_words(WORDS, only("insert"), SYN, random.Random(3))
    assert len(inserted) == len(WORDS) + 4 and {"story", "fine", "cast", "superb"} <= set(inserted)
    assert [w for w in inserted if w not in {"story", "fine", "cast", "superb"}] == WORDS


def test_rows_are_seeded_and_marked(tmp_path):
    rows = [{"text": " ".join(WORDS), "label": "pos"}]
    a = augment_rows(rows, [2], "text", AugmentOptions(n_per_example=3), SYN, seed=7)
    b = augment_rows(rows, [2], "text", AugmentOptions(n_per_example=3), SYN, seed=7)
    assert a == b and a and all(r["augmented_from"] == 2 and r["label"] == "pos" for r in a)


def test_synonym_files_and_embedding_neighbours(tmp_path, tiny_bert):
    (tmp_path / "s.tsv").write_text("good\tfine, nice\n# comment\n")
    assert read_synonyms(tmp_path / "s.tsv") == {"good": ["fine", "nice"]}
    (tmp_path / "bad.tsv").write_text("good fine\n")
    with pytest.raises(LmtuneError, match="bad.tsv:1: expected 'word<TAB>synonym"):
        read_synonyms(tmp_path / "bad.tsv")
    near = embedding_neighbours(tiny_bert, {"good", "the", "zzz"}, k=3)
    assert set(near) == {"good"} and len(near["good"]) == 3 and "good" not in near["good"]
    assert not any(w in {"the", "a", "it"} or w.startswith("[") for w in near["good"])


def test_command_writes_rows_and_marked_copies(tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text("text,label\n" + "\n".join(f"{' '.join(WORDS)} {i},pos" for i in range(5)) + "\n")
    (tmp_path / "syn.json").write_text('{"good": ["fine"]}')
    assert main(["data", "augment", str(src), "-o", str(tmp_path / "out.csv"), "--synonyms", str(tmp_path / "syn.json"),
                 "--n-per-example", "2", "--p-delete", "0.3"]) == 0
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "text,label,augmented_from" and len(lines) == 1 + 5 + 10
    assert all(line.endswith(",") for line in lines[1:6])  # originals: no source line


def test_training_augments_the_training_split_only(tiny_bert, tmp_path):
    import json

    import lmtune

    from .conftest import write_sentiment

    train = write_sentiment(tmp_path / "train.csv", 40, seed=1)
    val = write_sentiment(tmp_path / "val.csv", 12, seed=2)
    result = lmtune.train({
        "model": str(tiny_bert), "output_dir": str(tmp_path / "run"),
        "data": {"train": str(train), "validation": str(val), "max_length": 32,
                 "augment": {"n_per_example": 2, "protect": ["good", "bad"]}},
        "train": {"epochs": 1, "batch_size": 8, "precision": "fp32"},
    }, progress=False)
    record = json.loads((result.output_dir / "data.json").read_text())
    assert record["prep"]["augment"]["original"] == 40 and 40 < record["prep"]["augment"]["augmented"] <= 80
    assert record["examples"]["train"] == 40 + record["prep"]["augment"]["augmented"]
    assert record["examples"]["validation"] == 12  # never augmented


def test_augmentation_on_another_task_is_a_config_error(tmp_path):
    from lmtune.tasks.run_config import validate

    (tmp_path / "t.jsonl").write_text('{"text": "a b c"}\n')
    with pytest.raises(LmtuneError, match="data.augment applies to tasks classification and token_classification only, not to this run.s task masked_lm"):
        validate({"model": "minilm-l6", "task": "masked_lm", "data": {"train": str(tmp_path / "t.jsonl"), "augment": {}}})


# ---------------------------------------------------------------- tagged sentences (NER)

SENTENCE = "Angela Merkel met the new mayor of New York in Paris today".split()
ENTITIES = [("PER", 0, 1), ("LOC", 7, 8), ("LOC", 10, 10)]
MENTIONS = {"PER": [("Angela", "Merkel"), ("Bob",)], "LOC": [("Berlin",), ("New", "York"), ("Paris",), ("Rio", "de", "Janeiro")]}
TAG_SYN = {"met": ["saw"], "mayor": ["governor"], "today": ["now"], "new": ["fresh"]}


def _entities_of(tokens, tags):
    from lmtune.tasks.token_classification import spans

    return [(kind, tuple(tokens[a : b + 1])) for kind, a, b in spans(tags)]


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "BIOES"])
def test_tagged_augmentation_keeps_entities_whole_and_tags_aligned(scheme):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from lmtune.data.augment import augment_tagged, tag_units
    from lmtune.data.readers import Table
    from lmtune.tasks.token_classification import check_tags

    probs = st.floats(0, 1)

    @settings(max_examples=150, deadline=None)
    @given(p=st.tuples(probs, probs, probs, probs, probs), seed=st.integers(0, 10**6))
    def check(p, seed):
        o = AugmentOptions(p_delete=p[0], p_swap=p[1], p_insert=p[2], p_synonym=p[3], p_entity=p[4],
                           protect=frozenset({"of"}))
        tokens, tags = augment_tagged(SENTENCE, ENTITIES, o, TAG_SYN, MENTIONS, random.Random(seed), scheme)
        assert len(tokens) == len(tags) and tokens
        check_tags(Table("x", [], [{"tokens": tokens, "tags": tags}], [1]), scheme)  # well-formed in the scheme
        got = _entities_of(tokens, tags)
        assert sorted(k for k, _ in got) == ["LOC", "LOC", "PER"]  # no entity lost, split or retyped
        assert all(words in MENTIONS[kind] for kind, words in got)
        o_words = [t for t, g in zip(tokens, tags) if g == "O"]
        allowed = {w for w in SENTENCE} | {s for v in TAG_SYN.values() for s in v}
        assert set(o_words) <= allowed and o_words.count("of") == 1  # protected: never deleted

    check()
    # the tags written afresh read back as the same entities, adjacent ones of one type included
    units = [("LOC", ["Paris"]), ("LOC", ["New", "York"]), (None, ["and"]), ("PER", ["Bob"])]
    tags = tag_units(units, scheme)
    assert _entities_of(["Paris", "New", "York", "and", "Bob"], tags) == [
        ("LOC", ("Paris",)), ("LOC", ("New", "York")), ("PER", ("Bob",))]


def test_entity_replacement_and_o_word_operations_on_a_hand_made_sentence():
    from lmtune.data.augment import augment_tagged

    tags_in = ["B-PER", "I-PER", "O", "O", "O", "O", "O", "B-LOC", "I-LOC", "O", "B-LOC", "O"]
    tokens, tags = augment_tagged(SENTENCE, ENTITIES, only("entity"), {}, MENTIONS, random.Random(0), "IOB2")
    got = _entities_of(tokens, tags)
    assert [g[1] for g in got] != [("Angela", "Merkel"), ("New", "York"), ("Paris",)]  # every entity replaced
    assert [k for k, _ in got] == ["PER", "LOC", "LOC"]
    assert [t for t, g in zip(tokens, tags) if g == "O"] == [t for t, g in zip(SENTENCE, tags_in) if g == "O"]
    tokens, tags = augment_tagged(SENTENCE, ENTITIES, only("delete"), {}, MENTIONS, random.Random(0), "IOB2")
    assert tokens == ["Angela", "Merkel", "New", "York", "Paris"] and tags == ["B-PER", "I-PER", "B-LOC", "I-LOC", "B-LOC"]
    tokens, _ = augment_tagged(SENTENCE, ENTITIES, only("synonym"), TAG_SYN, MENTIONS, random.Random(0), "IOB2")
    assert tokens == "Angela Merkel saw the fresh governor of New York in Paris now".split()  # New York kept whole


def test_command_augments_a_conll_file_with_tags_aligned(tmp_path, capsys):
    import json

    src = tmp_path / "train.conll"
    src.write_text("Angela B-PER\nMerkel I-PER\nmet O\nthe O\nmayor O\n\nBob B-PER\nlives O\nin O\nBerlin B-LOC\n")
    out = tmp_path / "aug.jsonl"
    assert main(["data", "augment", str(src), "-o", str(out), "--n-per-example", "3", "--p-entity", "1",
                 "--p-delete", "0.3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["augmented_from"] for r in rows[:2]] == [None, None] and len(rows) > 2
    assert all(r["augmented_from"] in (1, 7) and len(r["tokens"]) == len(r["tags"]) for r in rows[2:])
    persons = {tuple(w) for r in rows[2:] for k, w in _entities_of(r["tokens"], r["tags"]) if k == "PER"}
    assert persons == {("Angela", "Merkel"), ("Bob",)}  # swapped between the sentences
    assert main(["data", "augment", str(src), "-o", str(tmp_path / "aug.csv")]) == 2
    assert "name it .jsonl" in capsys.readouterr().err


def test_token_classification_training_augments_the_training_sentences_only(tmp_path):
    import json

    import lmtune

    from .test_token_classification import build_ner_bert, sentence, write_conll

    rng = random.Random(0)
    train = write_conll(tmp_path / "train.conll", [sentence(rng) for _ in range(24)])
    val = write_conll(tmp_path / "val.conll", [sentence(rng) for _ in range(8)])
    result = lmtune.train({
        "model": str(build_ner_bert(tmp_path / "bert")), "task": "token_classification", "output_dir": str(tmp_path / "run"),
        "data": {"train": str(train), "validation": str(val), "max_length": 32,
                 "augment": {"n_per_example": 2, "p_entity": 0.5, "embedding_synonyms": False}},
        "train": {"epochs": 1, "batch_size": 8, "precision": "fp32"},
    }, progress=False)
    record = json.loads((result.output_dir / "data.json").read_text())
    assert record["prep"]["augment"]["original"] == 24 and 24 < record["prep"]["augment"]["augmented"] <= 48
    assert record["examples"]["train"] == 24 + record["prep"]["augment"]["augmented"]
    assert record["examples"]["validation"] == 8


# ---------------------------------------------------------------- polarity and skipped copies

REVIEW = "Not bad at all for the price".split()


def test_polarity_of_words_and_negations():
    from lmtune.data.polarity import is_negation, keeps_polarity, polarity

    assert (polarity("good"), polarity("Bad,"), polarity("price")) == (1, -1, 0)
    assert all(is_negation(w) for w in ("Not", "never", "don't", "isn’t", "n't", "no", "without"))
    assert not is_negation("nothingness") and not is_negation("note")
    assert keeps_polarity("bad", "awful") and keeps_polarity("price", "cost")
    assert not keeps_polarity("bad", "good") and not keeps_polarity("price", "scam") and not keeps_polarity("bad", "price")
    assert not keeps_polarity("good", "not") and not keeps_polarity("never", "always")


def test_embedding_neighbours_that_would_flip_polarity_are_left_out(monkeypatch):
    from lmtune.data import augment

    near = {"bad": ["good", "awful", "poor"], "price": ["cost", "bargain", "scam"], "not": ["never"], "all": ["every"]}
    monkeypatch.setattr(augment, "embedding_neighbours", lambda model, words: near)
    synonyms = augment.gather_synonyms(None, "a model", {w.lower() for w in REVIEW})
    assert synonyms == {"bad": ["awful", "poor"], "price": ["cost"], "all": ["every"]}
    for seed in range(20):  # "Not bad at all" never becomes "Not good at all"
        out = augment_words(REVIEW, only("synonym"), synonyms, random.Random(seed))
        assert out[0] == "Not" and out[1] in ("awful", "poor") and out[-1] == "cost"


def test_negations_are_never_replaced_deleted_or_moved_and_keep_their_reach():
    for seed in range(20):
        deleted = augment_words(REVIEW, only("delete"), {}, random.Random(seed))
        assert deleted == ["Not"]
        swapped = augment_words(REVIEW, only("swap", 0.5), {}, random.Random(seed))
        assert swapped[:4] == REVIEW[:4] and sorted(swapped) == sorted(REVIEW)  # "bad at all" stays in its reach
        inserted = augment_words(REVIEW, only("insert"), {"price": ["cost"], "bad": ["awful"]}, random.Random(seed))
        at = inserted.index("Not")  # (words may come before it, none between it and what it governs)
        assert inserted[at : at + 4] == REVIEW[:4] and sorted(inserted) == sorted([*REVIEW, "cost", "awful"])
        replaced = augment_words(["I", "don't", "like", "it"], only("synonym"), {"don't": ["do"]}, random.Random(seed))
        assert replaced[1] == "don't"


def test_skipped_copies_are_counted_with_their_reason():
    from lmtune.data.augment import Skipped

    rows = [{"text": "good film"}, {"text": "plot"}, {"text": ""}, {"text": "the  plot was good"}]
    skipped = Skipped()
    new = augment_rows(rows, [2, 3, 4, 5], "text", only("synonym", n_per_example=3), SYN, seed=0, skipped=skipped)
    # "good film" -> "fine film" once (then repeats); "plot" -> "story" once; "" nothing; "the plot was good" once
    assert sorted(r["text"] for r in new) == ["fine film", "story", "the story was fine"]
    assert (skipped.repeated, skipped.unchanged, skipped.empty) == (6, 0, 3)
    assert len(new) + skipped.total == 3 * len(rows)
    unchanged = Skipped()  # a copy that only respaces its row is no copy
    assert augment_rows([{"text": "the  plot"}], [2], "text", only("delete", 0.0), {}, 0, unchanged) == []
    assert unchanged.by_reason() == {"unchanged": 1}
    assert skipped.describe(12) == ("9 of 12 copies skipped: 6 the same as an earlier copy of their source; "
                                    "3 for empty texts")


def test_command_says_how_many_copies_it_skipped_and_why(tmp_path, capsys):
    import json

    src = tmp_path / "in.csv"
    texts = ["ok", "fine", "great film", "a good plot", "the plot", "bad", "so dull", "nice", "the actors were great",
             "it was good", "meh"]
    src.write_text("text,label\n" + "".join(f"{t},pos\n" for t in texts))
    assert main(["data", "augment", str(src), "-o", str(tmp_path / "out.csv"), "--n-per-example", "2"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["rows"] == 11 and summary["augmented"] + summary["skipped"] == 22 and summary["skipped"] > 0
    assert sum(summary["skipped_by_reason"].values()) == summary["skipped"]
    assert f"{summary['skipped']} of 22 copies skipped: " in captured.err and "the same as their source" in captured.err
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 1 + 11 + summary["augmented"]
    with pytest.raises(SystemExit):
        main(["data", "augment", "--help"])
    assert "Copies keep their row's label" in " ".join(capsys.readouterr().out.split())
