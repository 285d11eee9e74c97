"""Next-sentence prediction beside masked LM (masked_lm with data.nsp: true) on a tiny random BERT:
the sentence splitter, seeded pair building, a run that reports nsp_accuracy, LoRA, resume, bad
input through the command line, and a classification run from the saved model."""

from __future__ import annotations

import json
import random
import time

import pytest
import torch
import yaml

import lmtune
from lmtune.cli import main
from lmtune.core.errors import LmtuneError
from lmtune.core.models import load_tokenizer
from lmtune.core.rundir import RunDir
from lmtune.infer.predict import Predictor
from lmtune.tasks import masked_lm
from lmtune.tasks.run_config import validate
from lmtune.tasks.sentence_pairs import IS_NEXT, RANDOM, build_pairs, pair_features, split_sentences

from .conftest import WORDS, build_tiny_llama, write_sentiment
from .test_bad_input import PREFIX
from .test_resume import Killed, _final, _kill_at

VOCAB = [w for ws in WORDS.values() for w in ws]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(VOCAB) for _ in range(rng.randint(3, 7))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])


def _documents(path, n_docs=24, seed=0, sentences=(2, 5)):
    rng = random.Random(seed)
    docs = [" ".join(_sentence(rng) for _ in range(rng.randint(*sentences))) for _ in range(n_docs)]
    path.write_text("\n\n".join(docs) + "\n")
    return path


def _cfg(model, out, train, **more):
    return {
        "model": str(model), "task": "masked_lm", "output_dir": str(out),
        "data": {"train": str(train), "max_length": 32, "nsp": True},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "precision": "fp32", "log_steps": 1, **more},
    }


# ---------------------------------------------------------------- sentences and pairs


@pytest.mark.parametrize("text, expected", [
    ("It rained. We stayed in! Did you? Yes.", ["It rained.", "We stayed in!", "Did you?", "Yes."]),
    ("Mr. Smith met Dr. Jones at 5 p.m. on Monday. They talked.",
     ["Mr. Smith met Dr. Jones at 5 p.m. on Monday.", "They talked."]),
    ("Prices rose 3.5 percent in the U.S. Army stores. Then they fell.",
     ["Prices rose 3.5 percent in the U.S. Army stores.", "Then they fell."]),
    ("Use a solvent, e.g. Acetone or i.e. Something. Done", ["Use a solvent, e.g. Acetone or i.e. Something.", "Done"]),
    ('He said "Stop." Then he left. "Why?" She asked.', ['He said "Stop."', "Then he left.", '"Why?"', "She asked."]),
    ("J. R. R. Tolkien wrote it. 1954 saw it printed.", ["J. R. R. Tolkien wrote it.", "1954 saw it printed."]),
    ("no capital after. this stays one sentence", ["no capital after. this stays one sentence"]),
    ("Wrapped over\nlines. Still one\nparagraph", ["Wrapped over lines.", "Still one paragraph"]),
    ("  ", []),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_pairs_are_seeded_about_half_random_and_never_self():
    rng = random.Random(1)
    docs = [[f"d{d} s{s}." for s in range(rng.randint(1, 8))] for d in range(1000)]
    docs[3] = ["Same.", "Same.", "Same."]  # a repeated sentence is never its own "random" partner
    a, b = build_pairs(docs, seed=7), build_pairs(docs, seed=7)
    assert a == b and a != build_pairs(docs, seed=8)
    assert len(a) == sum(len(d) - 1 for d in docs)
    share = sum(label == RANDOM for _, _, label in a) / len(a)
    assert share == pytest.approx(0.5, abs=0.05)
    where = {s: d for d, doc in enumerate(docs) for s in doc}
    for first, second, label in a:
        if label == IS_NEXT:
            doc = docs[where[first]]
            assert doc[doc.index(first) + 1] == second or first == second == "Same."
        else:
            assert second != first and where[second] != where[first]


def test_pair_features_have_segments_and_fit(tiny_bert):
    tok = load_tokenizer(tiny_bert)
    long = " ".join(["good"] * 40)
    [f, g] = pair_features([("the movie was good .", long, IS_NEXT), (long, "sad .", RANDOM)], tok, 16)
    assert f["input_ids"][0] == tok.cls_token_id and len(f["input_ids"]) == 16 and len(g["input_ids"]) == 16
    sep = f["input_ids"].index(tok.sep_token_id)
    assert f["token_type_ids"] == [0] * (sep + 1) + [1] * (16 - sep - 1)
    assert f["input_ids"][1:sep] == tok("the movie was good .", add_special_tokens=False)["input_ids"]
    assert g["input_ids"][-3:] == [tok.convert_tokens_to_ids("sad"), tok.convert_tokens_to_ids("."), tok.sep_token_id]
    words = [w for w in f["word_ids"] if w >= 0]
    assert len(set(words)) == len(words)  # each word of both segments numbered apart
    assert [f["next_sentence_label"], g["next_sentence_label"]] == [IS_NEXT, RANDOM]
    torch.manual_seed(0)  # (the masking draws from torch's generator)
    batch = masked_lm.collator(tok)([f, g])
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["next_sentence_label"].tolist() == [IS_NEXT, RANDOM]
    # the special tokens of the pair are never masked (a masked word may become any token, [SEP] too:
    # the positions are the features' own)
    for row, feature in enumerate([f, g]):
        specials = [i for i, t in enumerate(feature["input_ids"]) if t in (tok.sep_token_id, tok.cls_token_id)]
        assert len(specials) == 3 and all(batch["labels"][row, i] == -100 for i in specials)


def test_one_document_per_line_txt(tiny_bert, tmp_path):
    train = tmp_path / "lines.txt"
    train.write_text("\nGood movie. Great actor.\nBad plot. Dull scene.\n\n\nSad story. Ugly film.\n\n \nFine.\n")
    cfg = _cfg(tiny_bert, tmp_path / "r", train)
    cfg["data"]["validation"] = str(train)
    data = masked_lm.load_data(validate(cfg))
    # blank lines (any number, or only spaces) separate the documents; lines inside one are spaces
    assert [r["text"] for r in data.train.rows] == [
        "Good movie. Great actor.\nBad plot. Dull scene.", "Sad story. Ugly film.", "Fine."]
    one = tmp_path / "one.txt"
    one.write_text("Good movie. Great actor.\nBad plot. Dull scene.\nSad story. Ugly film.\n")
    cfg = _cfg(tiny_bert, tmp_path / "r", one)
    cfg["data"]["validation"] = str(one)
    data = masked_lm.load_data(validate(cfg))
    assert [r["text"] for r in data.train.rows] == ["Good movie. Great actor.", "Bad plot. Dull scene.", "Sad story. Ugly film."]
    assert data.train.lines == [1, 2, 3]


# ---------------------------------------------------------------- runs


def _history_evals(run_dir):
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [r["eval"] for r in rows if "eval" in r]


def test_nsp_run_reports_nsp_accuracy_and_feeds_a_classifier(tiny_bert, tmp_path, capsys):
    train = _documents(tmp_path / "docs.txt", n_docs=40)
    result = lmtune.train(_cfg(tiny_bert, tmp_path / "nsp", train, eval_steps=4), progress=False)
    assert "has no next-sentence classifier" in capsys.readouterr().err
    metrics = result.metrics["validation"]
    assert 0 <= metrics["nsp_accuracy"] <= 1 and metrics["nsp_loss"] > 0 and metrics["nsp_pairs"] > 0
    assert metrics["loss"] > 0 and metrics["masked_tokens"] > 0
    saved = json.loads((tmp_path / "nsp" / "metrics.json").read_text())
    assert saved["validation"]["nsp_accuracy"] == pytest.approx(metrics["nsp_accuracy"])
    evals = _history_evals(tmp_path / "nsp")
    assert len(evals) >= 2 and all("nsp_accuracy" in e and "nsp_loss" in e for e in evals)
    assert "nsp_accuracy" in (tmp_path / "nsp" / "report.html").read_text()

    # the saved model: the NSP head trained (it is saved), fill-mask and a classifier start from it
    from transformers import AutoModelForMaskedLM, BertForPreTraining

    model_dir = tmp_path / "nsp" / "model"
    pre = BertForPreTraining.from_pretrained(model_dir)
    fresh = BertForPreTraining.from_pretrained(tiny_bert)
    assert not torch.equal(pre.cls.seq_relationship.weight, fresh.cls.seq_relationship.weight)
    mlm = AutoModelForMaskedLM.from_pretrained(model_dir)
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(mlm.state_dict()[key], pre.state_dict()[key])
    [[top]] = lmtune.load(tmp_path / "nsp").predict(["the movie was [MASK] ."])
    assert len(top) == 5
    cls = lmtune.train({
        "model": str(model_dir), "task": "classification", "output_dir": str(tmp_path / "cls"),
        "data": {"train": str(write_sentiment(tmp_path / "s.csv", 40)), "max_length": 32},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2, "precision": "fp32"},
    }, progress=False)
    assert 0 <= cls.metrics["validation"]["accuracy"] <= 1


def test_lora_nsp_run_trains_the_nsp_head(tiny_bert, tmp_path):
    train = _documents(tmp_path / "docs.txt", n_docs=30)
    raw = _cfg(tiny_bert, tmp_path / "lora", train)
    raw["strategy"] = {"name": "lora", "r": 4}
    result = lmtune.train(raw, progress=False)
    assert "nsp_accuracy" in result.metrics["validation"]
    adapter = json.loads((tmp_path / "lora" / "model" / "adapter_config.json").read_text())
    assert any("seq_relationship" in m for m in adapter["modules_to_save"])
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "lora" / "model" / "adapter_model.safetensors"))
    head = [k for k in saved if "seq_relationship" in k]
    assert head
    from transformers import BertForPreTraining

    fresh = BertForPreTraining.from_pretrained(tiny_bert).cls.seq_relationship.weight
    weight = next(v for k, v in saved.items() if "seq_relationship" in k and k.endswith("weight"))
    assert not torch.equal(weight, fresh)
    # the run loads back with its head, and scores a file like its validation set
    metrics = Predictor.from_run(tmp_path / "lora").evaluate_file(train)
    assert "nsp_accuracy" in metrics


def test_resume_of_an_nsp_run_gives_the_same_weights(tiny_bert, tmp_path):
    train = _documents(tmp_path / "docs.txt", n_docs=40)
    common = dict(epochs=3, eval_steps=4, metric="nsp_accuracy", dropout=0.1, batch_size=4)
    whole = lmtune.train(_cfg(tiny_bert, tmp_path / "whole", train, **common), progress=False)
    broken = _cfg(tiny_bert, tmp_path / "broken", train, **common)
    with pytest.raises(Killed):
        lmtune.train(broken, progress=False, on_evaluate=_kill_at(9))
    assert not RunDir(tmp_path / "broken").finished
    resumed = lmtune.train(broken, progress=False, resume=True)
    a, b = _final(whole.output_dir), _final(resumed.output_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    for key in ("loss", "nsp_accuracy", "nsp_loss"):
        assert resumed.metrics["validation"][key] == pytest.approx(whole.metrics["validation"][key], abs=1e-6)


# ---------------------------------------------------------------- bad input


def _cli_error(capsys, tmp_path, raw) -> str:
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw))
    code = main(["train", str(config)])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err and out == "", err
    lines = [line for line in err.splitlines() if not line.startswith("warning: other processes")]  # a busy CPU
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    assert not (tmp_path / "out").exists()
    return lines[0][len(PREFIX):]


def test_nsp_on_a_causal_model_is_one_line(tiny_llama, tmp_path, capsys):
    train = _documents(tmp_path / "docs.txt")
    msg = _cli_error(capsys, tmp_path, _cfg(tiny_llama, tmp_path / "out", train))
    assert "data.nsp" in msg and "of type llama" in msg and "no next-sentence" in msg


def test_nsp_on_a_model_family_without_an_nsp_head(tmp_path, capsys):
    from transformers import RobertaConfig, RobertaForMaskedLM

    folder = tmp_path / "roberta"
    config = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40)
    RobertaForMaskedLM(config).save_pretrained(folder)
    capsys.readouterr()  # (its progress bar)
    train = _documents(tmp_path / "docs.txt")
    msg = _cli_error(capsys, tmp_path, _cfg(folder, tmp_path / "out", train))
    assert "of type roberta" in msg and "no next-sentence" in msg


def test_one_sentence_in_total_is_one_line(tiny_bert, tmp_path, capsys):
    train = tmp_path / "one.txt"
    train.write_text("\n\nThe movie was good.\n\n\n")
    msg = _cli_error(capsys, tmp_path, _cfg(tiny_bert, tmp_path / "out", train))
    assert "found 1 document and 1 sentence" in msg and "data.nsp" in msg


def test_one_document_is_one_line(tiny_bert, tmp_path, capsys):
    train = tmp_path / "one.csv"
    train.write_text('text\n"Good movie. Great actor. Bad plot."\n')
    cfg = _cfg(tiny_bert, tmp_path / "out", train)
    cfg["data"]["validation"] = str(train)
    msg = _cli_error(capsys, tmp_path, cfg)
    assert "found 1 document and 3 sentences" in msg and "other documents" in msg


def test_nsp_metric_without_nsp(tiny_bert, tmp_path):
    train = _documents(tmp_path / "docs.txt")
    raw = _cfg(tiny_bert, tmp_path / "out", train, metric="nsp_accuracy")
    raw["data"]["nsp"] = False
    with pytest.raises(LmtuneError, match="train.metric: nsp_accuracy is reported with data.nsp: true only"):
        lmtune.train(raw, progress=False)


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
def test_nsp_on_minilm(tmp_path, capsys):
    started = time.perf_counter()
    result = lmtune.train({
        "model": "minilm-l6", "task": "masked_lm", "output_dir": str(tmp_path / "mini"),
        "data": {"train": "examples/data/text/bike_manual.txt", "nsp": True, "max_length": 64},
        "train": {"max_steps": 4, "batch_size": 8, "eval_steps": 2, "lr": 1e-4, "precision": "fp32"},
    }, progress=False)
    err = capsys.readouterr().err
    assert "minilm-l6 has no next-sentence classifier" in err
    metrics = result.metrics["validation"]
    assert 0 <= metrics["nsp_accuracy"] <= 1 and metrics["perplexity"] > 1
    assert time.perf_counter() - started < 60


def test_a_held_out_split_of_one_document_says_so(tiny_bert, tmp_path, capsys):
    train = _documents(tmp_path / "docs.txt", n_docs=5)
    cfg = _cfg(tiny_bert, tmp_path / "out", train)
    cfg["data"]["validation_size"] = 0.2  # one document of five
    msg = _cli_error(capsys, tmp_path, cfg)
    assert msg.startswith(f"the validation split held out of {train}: data.nsp draws")
    assert "found 1 document" in msg and msg.endswith("raise data.validation_size or give data.validation")


@pytest.mark.slow
def test_nsp_on_two_processes(tiny_bert, tmp_path):
    # every process builds the same pairs (seeded by train.seed alone): the gathered metrics are those
    # of one process scoring the same weights
    from .test_distributed_tasks import TRAIN, _run

    train = _documents(tmp_path / "docs.txt", n_docs=30)
    val = _documents(tmp_path / "val.txt", n_docs=8, seed=1)
    cfg = _cfg(tiny_bert, tmp_path / "out", train)
    cfg["data"]["validation"] = str(val)
    cfg["train"] = TRAIN
    proc = _run(cfg, tmp_path, "--nproc", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training on 2 x cpu" in proc.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["validation"]
    tok = load_tokenizer(tiny_bert)
    pairs = masked_lm.prepare(masked_lm.load_data(validate(cfg)).validation, tok, validate(cfg), [])[0]
    assert metrics["nsp_pairs"] == len(pairs) and 0 <= metrics["nsp_accuracy"] <= 1
    alone = Predictor.from_run(tmp_path / "out").evaluate_file(val)  # the masked LM alone: MLM metrics
    for key in ("loss", "perplexity", "masked_tokens"):
        assert alone[key] == pytest.approx(metrics[key], rel=1e-5), key
