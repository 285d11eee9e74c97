"""Token classification (NER) on a tiny BERT: reading CoNLL and JSON rows, subword alignment and
windows, entity spans with character offsets, seqeval metrics, and a short training run."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import lmtune
from lmtune.tasks.token_classification import TokenClassificationData
from lmtune.tasks.run_config import validate
from lmtune.core.errors import LmtuneError
from lmtune.data.conll import read_conll
from lmtune.tasks import token_classification as tc

from .conftest import build_tiny_bert, report_sections

# "merkel" and "garcia" are not in the vocabulary: they split into mer ##kel and gar ##cia
VOCAB = (
    "angela mer ##kel john smith maria gar ##cia peter brown visited works for in opened an office the "
    "weather was good met and paris berlin london madrid rome google siemens acme . ,"
).split()
PER = ["Angela Merkel", "John Smith", "Maria Garcia", "Peter Brown", "Merkel"]
LOC = ["Paris", "Berlin", "London", "Madrid", "Rome"]
ORG = ["Google", "Siemens", "Acme"]
TEMPLATES = [
    "{PER} visited {LOC} .",
    "{PER} works for {ORG} in {LOC} .",
    "{ORG} opened an office in {LOC} .",
    "the weather in {LOC} was good .",
    "{PER} met {PER} in {LOC} .",
]


def build_ner_bert(path: Path) -> Path:
    return build_tiny_bert(path, words=VOCAB)


@pytest.fixture(scope="session")
def ner_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ner_bert(tmp_path_factory.mktemp("ner-bert"))


@pytest.fixture(scope="session")
def tokenizer(ner_bert):
    from lmtune.core.models import load_tokenizer

    return load_tokenizer(ner_bert)


def sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    tokens, tags = [], []
    for part in rng.choice(TEMPLATES).split():
        if part.startswith("{"):
            kind = part[1:-1]
            words = rng.choice({"PER": PER, "LOC": LOC, "ORG": ORG}[kind]).split()
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        else:
            tokens.append(part)
            tags.append("O")
    return tokens, tags


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    path.write_text("\n\n".join("\n".join(f"{t} {g}" for t, g in zip(*s)) for s in sentences) + "\n")
    return path


def write_jsonl(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    path.write_text("".join(json.dumps({"tokens": t, "tags": g}) + "\n" for t, g in sentences))
    return path


def data_cfg(**data: object) -> SimpleNamespace:
    return SimpleNamespace(data=TokenClassificationData.model_construct(train="", **data))


# ---------------------------------------------------------------- reading


def test_conll_reader_skips_docstart_strips_bom_and_splits_on_blank_lines(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text(
        "\ufeff-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"
        "-DOCSTART- -X- -X- O\n"
        "\ufeffBRUSSELS NNP B-NP B-LOC\n",
        encoding="utf-8",
    )
    table = read_conll(f)
    assert [r["tokens"] for r in table.rows] == [["EU", "rejects"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert [r["tags"] for r in table.rows] == [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert table.lines == [3, 8, 11] and table.where_token(1, 1) == f"{f}:9"
    assert read_conll(f, 1).rows[0]["tags"] == ["NNP", "VBZ"]  # tag_column_index picks a column
    # tab-separated columns may hold a space inside the token
    g = tmp_path / "b.conll"
    g.write_text("New York\tB-LOC\n")
    assert read_conll(g).rows[0] == {"tokens": ["New York"], "tags": ["B-LOC"]}


def test_conll_line_without_tag_names_file_and_line(tmp_path):
    f = tmp_path / "bad.conll"
    f.write_text("EU B-ORG\n\nrejects\n")
    with pytest.raises(LmtuneError, match=rf"{f}:3: expected at least 2 columns"):
        read_conll(f)
    with pytest.raises(LmtuneError, match=rf"{f}:1: expected at least 4 columns"):
        read_conll(f, 3)


def test_jsonl_rows_and_mismatched_lengths(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"words": ["EU", "rejects"], "ner": ["B-ORG", "O"]}\n{"words": ["a", "b"], "ner": ["O"]}\n')
    d = TokenClassificationData.model_construct(train="", tokens_column="words", tags_column="ner")
    with pytest.raises(LmtuneError, match=rf"{f}:2: 2 tokens in 'words' but 1 tags"):
        tc.read_sentences(f, d)
    f.write_text('{"words": ["EU", "rejects"], "ner": ["B-ORG", "O"]}\n')
    assert tc.read_sentences(f, d).rows == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}]


def test_labels_and_unknown_or_malformed_tags(tmp_path, ner_bert):
    train = write_conll(tmp_path / "train.conll", [(["Paris", "Google"], ["B-LOC", "B-ORG"]), (["x"], ["O"])])
    val = write_conll(tmp_path / "val.conll", [(["Rome"], ["B-LOC"]), (["Angela", "Merkel", "met"], ["B-PER", "I-PER", "O"])])
    cfg = validate(
        {"model": str(ner_bert), "task": "token_classification", "output_dir": str(tmp_path / "run"),
         "data": {"train": str(train), "validation": str(val)}}
    )
    assert cfg.train.metric == "f1"
    with pytest.raises(LmtuneError, match="data.tag_column_index: 0 is the token column"):
        validate({**cfg.model_dump(mode="json"), "data": {"train": str(train), "tag_column_index": 0}})
    with pytest.raises(LmtuneError, match=rf"{val}:3: tag 'B-PER' never appears in the training data"):
        tc.load_data(cfg)
    cfg.data.validation = None
    cfg.data.validation_size = 0.5
    data = tc.load_data(cfg)
    assert data.labels == ["O", "B-LOC", "B-ORG"]
    write_conll(train, [(["Paris"], ["S-LOC"])])
    with pytest.raises(LmtuneError, match=r"train.conll:1: tag 'S-LOC' .*set data.tag_scheme: BIOES"):
        tc.load_data(cfg)


# ---------------------------------------------------------------- alignment and windows


def test_first_subword_alignment_and_entity_spans_with_offsets(tokenizer):
    tokens = ["Angela", "Merkel", "visited", "Paris", "."]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O"]
    labels = ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
    ids = {t: i for i, t in enumerate(labels)}
    table = tc.Table(Path("x"), ["tokens", "tags"], [{"tokens": tokens, "tags": tags}], [1])
    [f], windowed = tc.prepare(table, tokenizer, data_cfg(max_length=32), labels)
    assert windowed == 0
    assert tokenizer.convert_ids_to_tokens(f["input_ids"]) == ["[CLS]", "angela", "mer", "##kel", "visited", "paris", ".", "[SEP]"]
    assert f["labels"] == [-100, ids["B-PER"], ids["I-PER"], -100, ids["O"], ids["B-LOC"], ids["O"], -100]
    [g], _ = tc.prepare(table, tokenizer, data_cfg(max_length=32, label_all_subwords=True), labels)
    assert g["labels"][3] == ids["I-PER"]  # the second subword of Merkel
    single = tc.Table(Path("x"), ["tokens", "tags"], [{"tokens": ["Merkel"], "tags": ["B-PER"]}], [1])
    [h], _ = tc.prepare(single, tokenizer, data_cfg(max_length=32, label_all_subwords=True), labels)
    assert h["labels"] == [-100, ids["B-PER"], ids["I-PER"], -100]  # a B- word continues as I-

    # back from subwords to words to entities on raw text: the labels as predictions
    text = "Angela Merkel visited Paris."  # the full stop touches the entity
    wins, _, encoding, _ = tc.windows(tokenizer, [text], 32, 8, split_into_words=False)
    assert [w for _, w, first in wins[0].words if first] == [0, 1, 2, 3, 4]
    probs = np.full((len(wins[0].features["input_ids"]), len(labels)), 0.1 / (len(labels) - 1))
    for pos, tag in zip([1, 2, 4, 5, 6], tags):
        probs[pos] = 0.1 / (len(labels) - 1)
        probs[pos, ids[tag]] = 0.9
    probs[2, ids["I-PER"]], probs[2, ids["O"]] = 0.7, 0.3  # Merkel less sure
    [entities] = tc.decode([probs], labels, wins, [text], encoding)
    assert entities == [
        {"text": "Angela Merkel", "type": "PER", "start": 0, "end": 13, "score": pytest.approx(0.8)},
        {"text": "Paris", "type": "LOC", "start": 22, "end": 27, "score": pytest.approx(0.9)},
    ]
    # the same probabilities for the pre-split sentence give one tag per token
    wins, _, encoding, _ = tc.windows(tokenizer, [tokens], 32, 8, split_into_words=True)
    assert tc.decode([probs], labels, wins, [tokens], encoding) == [tags]


def test_spans_follow_the_tag_schemes():
    assert tc.spans(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG"]) == [
        ("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("ORG", 6, 6)
    ]
    assert tc.spans(["S-PER", "B-LOC", "I-LOC", "E-LOC", "I-LOC", "S-LOC", None, "E-ORG"]) == [
        ("PER", 0, 0), ("LOC", 1, 3), ("LOC", 4, 4), ("LOC", 5, 5), ("ORG", 7, 7)
    ]


def test_long_sentences_are_windowed_and_each_word_labelled_once(tokenizer):
    rng = random.Random(3)
    tokens, tags = [], []
    while len(tokens) < 40:
        t, g = sentence(rng)
        tokens += t
        tags += g
    labels = tc.tag_order(tags)
    ids = {t: i for i, t in enumerate(labels)}
    table = tc.Table(Path("x"), ["tokens", "tags"], [{"tokens": ["the", "weather"], "tags": ["O", "O"]},
                                                     {"tokens": tokens, "tags": tags}], [1, 2])
    cfg = data_cfg(max_length=12, doc_stride=4)
    wins, windowed, encoding, lost = tc.windows(tokenizer, [r["tokens"] for r in table.rows], 12, 4, split_into_words=True)
    assert windowed == 1 and lost == 0 and len(wins) > 5
    firsts = [w for win in wins if win.sample == 1 for _, w, first in win.words if first]
    assert firsts == list(range(len(tokens)))  # every word once, in order
    features, windowed = tc.prepare(table, tokenizer, cfg, labels)
    assert windowed == 1 and len(features) == len(wins)
    assert all(len(f["input_ids"]) <= 12 for f in features)
    assert [x for f in features[1:] for x in f["labels"] if x != -100] == [ids[t] for t in tags]
    # every subword labelled exactly once with label_all_subwords
    all_sub, _ = tc.prepare(table, tokenizer, data_cfg(max_length=12, doc_stride=4, label_all_subwords=True), labels)
    subwords = len(encoding["input_ids"][1]) - 2
    assert sum(x != -100 for f in all_sub[1:] for x in f["labels"]) == subwords > len(tokens)


# ---------------------------------------------------------------- metrics


def test_seqeval_metrics_on_a_hand_worked_example():
    labels = tc.tag_order(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG"])
    assert labels == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-PER"]
    ids = {t: i for i, t in enumerate(labels)}
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"], ["O", "B-LOC", "I-LOC"]]
    preds = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "B-LOC"], ["O", "I-LOC", "I-LOC"]]

    def padded(rows):
        out = np.full((len(rows), 8), -100, dtype=np.int32)  # position 0 is [CLS]
        for i, row in enumerate(rows):
            out[i, 1 : 1 + len(row)] = [ids[t] for t in row]
        return out

    outputs = {"references": padded(refs), "predictions": padded(preds),
               "loss_sum": np.array([1.0, 2.0, 3.0]), "tokens": np.array([4, 3, 3])}
    # IOB2 strict: the prediction I-LOC I-LOC is no entity; 2 of 3 predicted, 2 of 5 true entities right
    m = tc.compute_metrics(outputs, labels, data_cfg(tag_scheme="IOB2"))
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.7) and m["loss"] == pytest.approx(0.6) and m["tokens"] == 10
    assert m["per_class"]["PER"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}  # the metrics' names
    assert m["per_class"]["LOC"]["f1"] == 0.0 and m["per_class"]["ORG"]["f1"] == 1.0
    # IOB1 (conlleval rules): I-LOC I-LOC is the LOC entity, so 3 of 4 predicted are right
    m1 = tc.compute_metrics(outputs, labels, data_cfg(tag_scheme="IOB1"))
    assert m1["precision"] == pytest.approx(3 / 4) and m1["recall"] == pytest.approx(3 / 5)
    assert m1["f1"] == pytest.approx(2 / 3)
    none = tc.compute_metrics({**outputs, "references": np.zeros((1, 3), np.int32), "predictions": np.zeros((1, 3), np.int32)}, labels, data_cfg())
    assert none["f1"] == 0.0 and none["accuracy"] == 1.0


def test_metrics_merge_the_windows_of_a_long_sentence_before_seqeval(tokenizer):
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    labels = ["O", "B-LOC", "B-ORG", "B-PER", "I-PER"]
    ids = {t: i for i, t in enumerate(labels)}
    max_length, stride = 16, 4
    for seed in range(200):  # a long sentence whose windows cut an entity (Angela | Merkel) in two
        rng = random.Random(seed)
        tokens, tags = [], []
        while len(tokens) < 45:
            t, g = sentence(rng)
            tokens, tags = tokens + t, tags + g
        wins, *_ = tc.windows(tokenizer, [tokens], max_length, stride, split_into_words=True)
        firsts = [[w for _, w, first in win.words if first] for win in wins]
        cut = [words[0] for words in firsts[1:] if tags[words[0]].startswith("I-")]
        if cut:
            break
    else:
        pytest.fail("no sentence with an entity across a window boundary")
    sentences = [(tokens, tags), sentence(rng), sentence(rng)]
    # predictions: the true tags with some words changed, and the cut entity's second part missed
    wrong = random.Random(1)
    predicted = [[wrong.choice(labels) if wrong.random() < 0.2 else t for t in g] for _, g in sentences]
    predicted[0][cut[0] - 1 : cut[0] + 1] = [tags[cut[0] - 1], "O"]
    table = tc.Table(Path("x"), ["tokens", "tags"], [{"tokens": t, "tags": g} for t, g in sentences], [1, 2, 3])
    cfg = data_cfg(max_length=max_length, doc_stride=stride, tag_scheme="IOB2")
    features, windowed = tc.prepare(table, tokenizer, cfg, labels)
    wins, *_ = tc.windows(tokenizer, [t for t, _ in sentences], max_length, stride, split_into_words=True)
    assert windowed == 1 and len(features) == len(wins) > 3
    references = np.full((len(features), max_length), -100, np.int32)
    predictions = references.copy()
    for k, (f, win) in enumerate(zip(features, wins)):  # as eval_step gives them: at the labelled positions
        references[k, : len(f["labels"])] = f["labels"]
        for pos, w, first in win.words:
            if first:
                predictions[k, pos] = ids[predicted[win.sample][w]]
    outputs = {"references": references, "predictions": predictions,
               "loss_sum": np.ones(len(features)), "tokens": np.ones(len(features))}
    m = tc.compute_metrics(outputs, labels, cfg, features)
    y_true = [g for _, g in sentences]
    assert m["f1"] == pytest.approx(f1_score(y_true, predicted, mode="strict", scheme=IOB2))
    assert m["precision"] == pytest.approx(precision_score(y_true, predicted, mode="strict", scheme=IOB2))
    assert m["recall"] == pytest.approx(recall_score(y_true, predicted, mode="strict", scheme=IOB2))
    assert tc.sentence_tags(outputs, labels, features) == (y_true, predicted)  # 3 sentences, not the windows
    # scored per window, the cut entity would count as two parts: another figure
    per_window = tc.compute_metrics(outputs, labels, cfg)
    assert (per_window["precision"], per_window["recall"]) != (m["precision"], m["recall"])


# ---------------------------------------------------------------- training and prediction


def test_train_predict_and_evaluate_end_to_end(ner_bert, tmp_path):
    rng = random.Random(0)
    train = write_conll(tmp_path / "train.conll", [sentence(rng) for _ in range(64)])
    val = write_jsonl(tmp_path / "val.jsonl", [sentence(rng) for _ in range(16)])
    cfg = {
        "model": str(ner_bert),
        "task": "token_classification",
        "output_dir": str(tmp_path / "run"),
        "data": {"train": str(train), "validation": str(val), "max_length": 32},
        "train": {"epochs": 6, "batch_size": 8, "lr": 5e-3, "precision": "fp32", "dropout": 0.0, "log_steps": 4},
    }
    result = lmtune.train(cfg, progress=False)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["validation"]) >= {"f1", "precision", "recall", "accuracy", "loss", "per_class"}
    assert metrics["validation"]["f1"] >= 0.8  # the toy set is easy
    assert json.loads((run / "data.json").read_text())["labels"][0] == "O"
    assert {"diagnosis", "metrics", "loss", "per_class", "sentences"} <= report_sections(run)

    predictor = lmtune.load(run)
    text = "Angela Merkel visited Paris."
    [entities] = predictor.predict([text])
    assert all(e["text"] == text[e["start"] : e["end"]] and 0 < e["score"] <= 1 for e in entities)
    assert [(e["text"], e["type"]) for e in entities] == [("Angela Merkel", "PER"), ("Paris", "LOC")]
    assert predictor.predict([[], ["Paris", "."]]) == [[], ["B-LOC", "O"]]
    again = predictor.evaluate_file(val)
    assert again["f1"] == pytest.approx(result.metrics["validation"]["f1"], abs=1e-6)

    from lmtune.cli import main

    out = tmp_path / "pred.jsonl"
    assert main(["predict", str(run), str(val), "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16 and all(len(r["tags"]) == len(r["tokens"]) for r in rows)

    # sentences longer than max_length (32): one prediction per sentence, and metrics over whole sentences
    long = []
    for _ in range(4):
        tokens, tags = [], []
        while len(tokens) < 40:
            t, g = sentence(rng)
            tokens, tags = tokens + t, tags + g
        long.append((tokens, tags))
    long_file = write_conll(tmp_path / "long.conll", long)
    predicted = predictor.predict([t for t, _ in long])
    assert len(predicted) == 4 and [len(p) for p in predicted] == [len(t) for t, _ in long]
    assert len(predictor.predict([" ".join(long[0][0])])) == 1  # a raw text: one list of entities
    seen = []
    real_scores = tc.entity_scores

    def counting(y_true, y_pred, scheme):
        seen.append(len(y_true))
        return real_scores(y_true, y_pred, scheme)

    import unittest.mock

    with unittest.mock.patch.object(tc, "entity_scores", counting):
        metrics = predictor.evaluate_file(long_file)
    assert seen == [4] and metrics["examples"] == 4  # seqeval saw 4 sentences, not their windows
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    expected = f1_score([g for _, g in long], predicted, mode="strict", scheme=IOB2)
    assert metrics["f1"] == pytest.approx(expected, abs=1e-9) and metrics["f1"] > 0.5
