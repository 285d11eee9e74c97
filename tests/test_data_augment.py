"""EDA operations on hand-made inputs: seeded, never empty, protected words untouched."""

from __future__ import annotations

import random

import pytest

from lmtune.cli import main
from lmtune.data.augment import AugmentOptions, augment_rows, augment_words, embedding_neighbours, read_synonyms
from lmtune.errors import LmtuneError

WORDS = "the plot was good and the actors were great".split()
SYN = {"plot": ["story"], "good": ["fine"], "actors": ["cast"], "great": ["superb"]}


def only(op: str, p: float = 1.0, **kw) -> AugmentOptions:
    probs = {"p_delete": 0.0, "p_swap": 0.0, "p_insert": 0.0, "p_synonym": 0.0, f"p_{op}": p}
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
    from lmtune.config import validate

    (tmp_path / "t.conll").write_text("Paris B-LOC\n")
    with pytest.raises(LmtuneError, match="data.augment: defined for classification only so far, not for task token_classification"):
        validate({"model": "minilm-l6", "task": "token_classification",
                  "data": {"train": str(tmp_path / "t.conll"), "augment": {}}})
