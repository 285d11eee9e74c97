"""Extractive question answering on a tiny BERT: reading SQuAD and flat rows, broken answers,
windows over long contexts, span selection, the official SQuAD metric, and a short run."""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import lmtune
from lmtune.tasks.question_answering import QuestionAnsweringData
from lmtune.core.errors import LmtuneError
from lmtune.tasks import question_answering as qa

from .conftest import build_tiny_bert, report_sections

NAMES = "john maria peter anna".split()
CITIES = "paris berlin london madrid rome oslo".split()
VOCAB = NAMES + CITIES + "where did go who visited lives in and then . ? , the a".split()


def build_qa_bert(path: Path) -> Path:
    return build_tiny_bert(path, words=VOCAB, max_positions=128)


@pytest.fixture(scope="module")
def qa_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qa_bert(tmp_path_factory.mktemp("qa-bert"))


@pytest.fixture(scope="module")
def tokenizer(qa_bert: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qa_bert)


def example(rng: random.Random) -> dict:
    """A context of who went where; the question asks where one of them went."""
    people = rng.sample(NAMES, 3)
    cities = rng.sample(CITIES, 3)
    context = " ".join(f"{p.capitalize()} visited {c.capitalize()}." for p, c in zip(people, cities))
    k = rng.randrange(3)
    answer = cities[k].capitalize()
    return {"question": f"Where did {people[k].capitalize()} go?", "context": context,
            "answers": {"text": [answer], "answer_start": [context.index(answer)]}}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_cfg(**kw) -> QuestionAnsweringData:
    return QuestionAnsweringData(train="x.jsonl", **kw)


# ---------------------------------------------------------------- the SQuAD metric


def test_normalisation_and_scores_follow_the_official_script():
    assert qa.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert qa.normalize_answer("an apple, a pear") == "apple pear"
    assert qa.exact_match("the Broncos", "Broncos.") == 1.0
    # 2 shared tokens; precision 2/3, recall 2/2 -> F1 0.8
    assert qa.token_f1("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    assert qa.token_f1("Carolina Panthers", "Denver Broncos") == 0.0
    # maximum over gold answers, mean over questions
    scores = qa.squad_scores(["Denver Broncos", "in Santa Clara"], [["Broncos", "Denver Broncos"], ["Santa Clara, California"]])
    assert scores["exact_match"] == pytest.approx(0.5)
    # second: pred {in, santa, clara} vs gold {santa, clara, california}: 2 shared, P=R=2/3
    assert scores["f1"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert "no_answer_f1" not in scores


def _official_normalize(s: str) -> str:
    """normalize_answer of the official SQuAD v1.1 evaluation script, as it is written there."""
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _official_f1(prediction: str, gold: str) -> float:
    """f1_score of the official script (v1.1: both sides non-empty)."""
    pred, ref = _official_normalize(prediction).split(), _official_normalize(gold).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def test_exact_match_and_f1_of_three_questions_counted_by_hand():
    predictions = ["The Denver Broncos!", "the Panthers", "Santa Clara, California"]
    golds = [["Broncos", "denver broncos"], ["Carolina Panthers", "Panthers."], ["Levi's Stadium in Santa Clara", "Levi's Stadium"]]
    # 1: "denver broncos" == "denver broncos" (the second gold answer); 2: "panthers" == "panthers";
    # 3: no exact match; against "levis stadium in santa clara": 2 shared tokens (santa, clara) of
    # 3 predicted and 5 gold, P = 2/3, R = 2/5, F1 = 2PR / (P + R) = 1/2; against "levis stadium": 0
    scores = qa.squad_scores(predictions, golds)
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert [_official_normalize(p) for p in predictions] == ["denver broncos", "panthers", "santa clara california"]
    # repeated tokens count as often as both sides have them: 1 shared of 2 predicted, P = 1/2, R = 1
    assert qa.token_f1("Paris, Paris", "Paris") == pytest.approx(2 / 3) == _official_f1("Paris, Paris", "Paris")


def test_unanswerable_questions_score_the_empty_answer():
    scores = qa.squad_scores(["", "Paris", "", "Rome"], [[], [], ["Paris"], ["Rome"]])
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["no_answer_exact_match"] == pytest.approx(0.5)
    assert scores["has_answer_exact_match"] == pytest.approx(0.5)


# ---------------------------------------------------------------- reading


def test_squad_json_and_flat_rows_read_the_same(tmp_path):
    context = "Anna visited Rome. John visited Oslo."
    squad = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "a", "question": "Where did Anna go?", "answers": [{"text": "Rome", "answer_start": 13}]},
        {"id": "b", "question": "Where did Peter go?", "answers": [], "is_impossible": True},
    ]}]}]}
    (tmp_path / "s.json").write_text(json.dumps(squad))
    table = qa.read_questions(tmp_path / "s.json", data_cfg())
    assert [r["id"] for r in table.rows] == ["a", "b"]
    assert table.rows[0]["answers"] == [{"text": "Rome", "start": 13}] and table.rows[1]["answers"] == []
    assert table.where(1).endswith("data[0].paragraphs[0].qas[1]")
    flat = write_jsonl(tmp_path / "f.jsonl", [{"question": "Where did Anna go?", "context": context,
                                                "answers": {"text": ["Rome"], "answer_start": [13]}}])
    assert qa.read_questions(flat, data_cfg()).rows[0]["answers"] == table.rows[0]["answers"]


def test_empty_context_and_missing_columns_are_clear_errors(tmp_path):
    bad = write_jsonl(tmp_path / "b.jsonl", [{"question": "Q?", "context": " ", "answers": {"text": [], "answer_start": []}}])
    with pytest.raises(LmtuneError, match=r"b.jsonl:1: empty or missing context"):
        qa.read_questions(bad, data_cfg())
    other = write_jsonl(tmp_path / "o.jsonl", [{"q": "Q?", "context": "c", "answers": {}}])
    with pytest.raises(LmtuneError, match="no column 'question'; columns are: q, context, answers"):
        qa.read_questions(other, data_cfg())


def test_broken_answers_are_counted_dropped_or_fatal(tmp_path):
    rng = random.Random(0)
    rows = [example(rng) for _ in range(20)]
    rows[3]["answers"]["answer_start"] = [0]  # points at a name, not the city
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    table, note = qa.drop_broken_answers(qa.read_questions(path, data_cfg()), 0.1)
    assert len(table) == 19 and "1 of 20 answers" in note and "t.jsonl:4" in note
    with pytest.raises(LmtuneError, match="more than data.max_broken_answers=0.01"):
        qa.drop_broken_answers(qa.read_questions(path, data_cfg()), 0.01)


def test_split_by_context_keeps_each_context_on_one_side(tmp_path):
    rng = random.Random(1)
    rows = []
    for _ in range(30):
        base = example(rng)
        for _ in range(rng.randint(1, 4)):  # several questions per context
            rows.append(base)
    table = qa.read_questions(write_jsonl(tmp_path / "t.jsonl", rows), data_cfg())
    train, val = qa.split_by_context(table, 0.2, seed=3)
    assert len(train) + len(val) == len(table) and 0 < len(val) < len(table) / 2
    assert not {r["context"] for r in train.rows} & {r["context"] for r in val.rows}


# ---------------------------------------------------------------- windows and spans


def test_answer_across_a_window_boundary_is_found_in_the_next_window(tokenizer):
    words = [f"{NAMES[i % 4].capitalize()} visited {CITIES[i % 6].capitalize()}." for i in range(12)]
    context = " ".join(words)  # 48 tokens; windows of 32 with the question
    # the 6th sentence's city: find a place where it straddles the first window's end
    wins, cut = qa.windows(tokenizer, ["Where did John go?"], [context], 32, 8)
    assert cut == 0 and len(wins) > 1 and all(len(w["input_ids"]) <= 32 for w in wins)
    first_end = max(o[1] for o in wins[0]["_offsets"] if o is not None)
    # an answer that starts inside window 0 and ends after it: "<last word of window 0> <next word>"
    start = max(o[0] for o in wins[0]["_offsets"] if o is not None)
    end = context.index(" ", first_end + 1) if " " in context[first_end + 1 :] else len(context)
    answer = {"text": context[start:end], "start": start}
    assert qa.answer_positions(wins[0], answer, 0) == (0, 0)  # not whole in window 0
    holding = [w for w in wins[1:] if qa.answer_positions(w, answer, 0) != (0, 0)]
    assert holding, "a later window must hold the whole answer"
    w = holding[0]
    s, e = qa.answer_positions(w, answer, 0)
    assert context[w["_offsets"][s][0] : w["_offsets"][e][1]] == answer["text"]
    # logits that point at that span in that window give back the gold text and offsets
    width = 32
    start_logits = np.full((len(wins), width), -5.0, np.float32)
    end_logits = np.full((len(wins), width), -5.0, np.float32)
    k = wins.index(w)
    start_logits[k, s], end_logits[k, e] = 8.0, 8.0
    [best] = qa.best_answers(start_logits, end_logits, wins, 1, [context], 30, allow_none=False)
    assert (best["answer"], best["start"], best["end"]) == (answer["text"], start, end)
    assert 0.5 < best["score"] <= 1.0


def test_no_answer_wins_only_when_allowed_and_cls_scores_higher(tokenizer):
    context = "Anna visited Rome."
    wins, _ = qa.windows(tokenizer, ["Where did John go?"], [context], 32, 8)
    n = len(wins[0]["input_ids"])
    s = np.zeros((1, n), np.float32)
    e = np.zeros((1, n), np.float32)
    rome = next(i for i, o in enumerate(wins[0]["_offsets"]) if o and context[o[0] : o[1]] == "Rome")
    s[0, rome], e[0, rome] = 2.0, 2.0
    s[0, 0], e[0, 0] = 3.0, 3.0  # [CLS]
    assert qa.best_answers(s, e, wins, 1, [context], 30, allow_none=True)[0]["answer"] == ""
    assert qa.best_answers(s, e, wins, 1, [context], 30, allow_none=False)[0]["answer"] == "Rome"
    # an answer longer than max_answer_length is never picked
    anna = next(i for i, o in enumerate(wins[0]["_offsets"]) if o and context[o[0] : o[1]] == "Anna")
    s[0, anna] = 10.0
    e[0, :] = -20.0
    e[0, rome] = 2.0  # "Anna visited Rome" (3 tokens) scores 12, "Rome" 4
    assert qa.best_answers(s, e, wins, 1, [context], 3, allow_none=False)[0]["answer"] == "Anna visited Rome"
    assert qa.best_answers(s, e, wins, 1, [context], 2, allow_none=False)[0]["answer"] == "Rome"


def test_prepare_labels_answers_and_cls_for_windows_without_them(tokenizer, tmp_path):
    rng = random.Random(2)
    rows = [example(rng) for _ in range(4)]
    table = qa.read_questions(write_jsonl(tmp_path / "t.jsonl", rows), data_cfg())
    cfg = SimpleNamespace(data=data_cfg(max_length=64, doc_stride=8))
    features, cut = qa.prepare(table, tokenizer, cfg, [])
    assert cut == 0 and len(features) == 4
    for f, row in zip(features, rows):
        s, e = f["start_positions"], f["end_positions"]
        text = row["context"][f["_offsets"][s][0] : f["_offsets"][e][1]]
        assert text == row["answers"]["text"][0]
    batch = qa.collator(tokenizer)(features)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}


# ---------------------------------------------------------------- a short run


def test_train_evaluate_and_predict_end_to_end(qa_bert, tmp_path):
    rng = random.Random(0)
    train = write_jsonl(tmp_path / "train.jsonl", [example(rng) for _ in range(96)])
    val = write_jsonl(tmp_path / "val.jsonl", [example(rng) for _ in range(24)])
    cfg = {
        "model": str(qa_bert),
        "task": "question_answering",
        "output_dir": str(tmp_path / "run"),
        "data": {"train": str(train), "validation": str(val), "max_length": 48},
        "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "precision": "fp32", "log_steps": 4},
    }
    result = lmtune.train(cfg, progress=False)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())["validation"]
    assert set(metrics) >= {"exact_match", "f1", "loss", "examples"} and metrics["examples"] == 24
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    losses = [h["eval"]["loss"] for h in history if "eval" in h]
    assert losses[-1] < losses[0]
    assert {"diagnosis", "metrics", "loss", "answers"} <= report_sections(run)

    predictor = lmtune.load(run)
    again = predictor.evaluate_file(val)
    assert again["f1"] == pytest.approx(result.metrics["validation"]["f1"], abs=1e-6)
    context = "Anna visited Rome. John visited Oslo."
    [answer] = predictor.predict(["Where did John go?"], [context])
    assert answer["answer"] == context[answer["start"] : answer["end"]] and answer["answer"]
    assert predictor.predict([{"question": "Where did John go?", "context": context}]) == [answer]

    from lmtune.cli import main

    out = tmp_path / "pred.jsonl"
    assert main(["predict", str(run), str(val), "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24 and set(rows[0]) == {"question", "answer", "score", "start", "end"}
    # the validation scores, from the predicted answers and the gold ones by the official formulas
    gold = [json.loads(line) for line in val.read_text().splitlines()]
    assert [r["question"] for r in rows] == [g["question"] for g in gold]
    em = [max(float(_official_normalize(r["answer"]) == _official_normalize(a)) for a in g["answers"]["text"])
          for r, g in zip(rows, gold)]
    f1 = [max(_official_f1(r["answer"], a) for a in g["answers"]["text"]) for r, g in zip(rows, gold)]
    assert metrics["exact_match"] == pytest.approx(sum(em) / 24)
    assert metrics["f1"] == pytest.approx(sum(f1) / 24)
