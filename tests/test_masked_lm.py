"""Masked LM on a tiny random BERT: masking statistics, whole-word masking, blocks, deterministic
validation masks, metrics and the MLM -> classification chain."""

from __future__ import annotations

import csv
import math
import random

import numpy as np
import pytest
import torch

import lmtune
from lmtune.tasks.run_config import validate
from lmtune.core.errors import LmtuneError
from lmtune.core.models import load_tokenizer
from lmtune.infer.predict import Predictor
from lmtune.tasks import masked_lm

from .conftest import WORDS, report_sections, write_sentiment


def _text(path, n_docs=30, seed=0):
    rng = random.Random(seed)
    vocab = [w for ws in WORDS.values() for w in ws]
    docs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 40))) for _ in range(n_docs)]
    path.write_text("\n\n".join(docs) + "\n")
    return path, docs


def _cfg(model, tmp_path, train, **data):
    return {
        "model": str(model), "task": "masked_lm", "output_dir": str(tmp_path / "mlm"),
        "data": {"train": str(train), "max_length": 32, **data},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "log_steps": 1},
    }


def test_masking_statistics(tiny_bert):
    tok = load_tokenizer(tiny_bert)
    rng = random.Random(0)
    ids = [[tok.cls_token_id] + [rng.randint(5, len(tok) - 1) for _ in range(62)] + [tok.sep_token_id] for _ in range(400)]
    special = [[1] + [0] * 62 + [1] for _ in ids]
    features = [{"input_ids": i, "special_tokens_mask": s, "word_ids": list(range(64))} for i, s in zip(ids, special)]
    torch.manual_seed(0)
    batch = masked_lm.Collator(tok, 0.15, whole_word=False)(features)
    original = torch.tensor(ids)
    masked = batch["labels"] != -100
    assert (batch["labels"][masked] == original[masked]).all()
    assert not masked[:, 0].any() and not masked[:, -1].any()  # special tokens never masked
    share = masked.sum().item() / (400 * 62)
    assert share == pytest.approx(0.15, abs=0.01)
    inputs = batch["input_ids"][masked]
    n = masked.sum().item()
    as_mask = (inputs == tok.mask_token_id).sum().item() / n
    unchanged = (inputs == original[masked]).sum().item() / n
    assert as_mask == pytest.approx(0.8, abs=0.02)
    assert unchanged == pytest.approx(0.1, abs=0.02)  # (a random token may hit the original: ~2% here)
    assert 1 - as_mask - unchanged == pytest.approx(0.1, abs=0.02)
    assert (batch["input_ids"][~masked] == original[~masked]).all()


def test_whole_word_masking_masks_all_subwords_together():
    g = torch.Generator().manual_seed(0)
    word_ids = torch.tensor([[-1] + [w // 3 for w in range(300)] + [-1]])  # 100 words of 3 subwords
    inputs = torch.arange(302).unsqueeze(0) + 10
    out, labels = masked_lm.whole_word_mask(inputs, word_ids, 0.15, 4, 400, g)
    masked = (labels != -100)[0]
    assert not masked[0] and not masked[-1]
    per_word = masked[1:-1].view(100, 3)
    assert ((per_word.sum(1) == 0) | (per_word.sum(1) == 3)).all()
    assert 5 <= per_word.all(1).sum().item() <= 30


def test_blocks_fill_max_length_and_cover_all_tokens(tiny_bert, tmp_path):
    tok = load_tokenizer(tiny_bert)
    _, docs = _text(tmp_path / "t.txt")
    blocks = masked_lm.make_blocks(docs, tok, 16)
    assert all(len(b["input_ids"]) <= 16 for b in blocks)
    assert all(len(b["input_ids"]) == 16 for b in blocks[:-1])
    assert all(b["input_ids"][0] == tok.cls_token_id and b["input_ids"][-1] == tok.sep_token_id for b in blocks)
    inner = [t for b in blocks for t in b["input_ids"][1:-1]]
    expected = []
    for i, d in enumerate(docs):
        expected += ([tok.sep_token_id] if i else []) + tok(d, add_special_tokens=False)["input_ids"]
    assert inner == expected
    # special tokens (including the [SEP] between documents) are never maskable
    for b in blocks:
        for t, s in zip(b["input_ids"], b["special_tokens_mask"]):
            assert s == (t in (tok.cls_token_id, tok.sep_token_id))


def test_validation_masks_are_deterministic(tiny_bert, tmp_path):
    train, _ = _text(tmp_path / "t.txt")
    cfg = validate(_cfg(tiny_bert, tmp_path, train))
    tok = load_tokenizer(tiny_bert)
    data = masked_lm.load_data(cfg)
    a, _ = masked_lm.prepare(data.validation, tok, cfg, [])
    torch.manual_seed(123)
    b, _ = masked_lm.prepare(data.validation, tok, cfg, [])
    assert a == b and all("labels" in f for f in a)
    assert sum(lab != -100 for f in a for lab in f["labels"]) > 0
    batch1 = masked_lm.collator(tok, cfg)(a)
    batch2 = masked_lm.collator(tok, cfg)(a)
    assert torch.equal(batch1["input_ids"], batch2["input_ids"]) and torch.equal(batch1["labels"], batch2["labels"])
    # training blocks are masked afresh in every batch
    train_feats, _ = masked_lm.prepare(data.train, tok, cfg, [])
    assert "labels" not in train_feats[0]


def test_compute_metrics_perplexity_is_exp_loss():
    out = masked_lm.compute_metrics({"loss_sum": np.array([3.0, 5.0]), "tokens": np.array([2, 2])}, [])
    assert out["loss"] == pytest.approx(2.0) and out["perplexity"] == pytest.approx(math.exp(2.0))


def test_mlm_then_classification_chain(tiny_bert, tmp_path):
    train, _ = _text(tmp_path / "t.txt", n_docs=40)
    raw = _cfg(tiny_bert, tmp_path, train, whole_word_mask=True)
    result = lmtune.train(raw, progress=False)
    metrics = result.metrics["validation"]
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-6)
    adapted = tmp_path / "mlm" / "model"
    assert (adapted / "config.json").is_file()
    assert {"diagnosis", "metrics", "loss", "perplexity"} <= report_sections(tmp_path / "mlm")

    # the validation loss by hand: the held-out documents masked once with train.seed, each block
    # through the saved model alone, -log p(original token) averaged over the masked tokens
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    cfg = validate(raw)
    tok = load_tokenizer(tiny_bert)
    held_out = masked_lm.load_data(cfg).validation
    blocks = masked_lm.make_blocks([r["text"] for r in held_out.rows], tok, 32)
    features, _ = masked_lm.prepare(held_out, tok, cfg, [])
    assert len(features) == len(blocks)
    model = AutoModelForMaskedLM.from_pretrained(adapted, attn_implementation="eager").eval()
    nll, masked = 0.0, 0
    for block, feature in zip(blocks, features):
        labels = torch.tensor(feature["labels"])
        where = labels != -100
        # a masked position's label is the token that was there; the others keep their token
        assert torch.equal(labels[where], torch.tensor(block["input_ids"])[where])
        assert [i for i, w in zip(feature["input_ids"], where) if not w] == [i for i, w in zip(block["input_ids"], where) if not w]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([feature["input_ids"]])).logits[0].double()
        nll -= torch.log_softmax(logits[where], -1).gather(1, labels[where, None]).sum().item()
        masked += int(where.sum())
    assert metrics["masked_tokens"] == masked > 0
    assert metrics["loss"] == pytest.approx(nll / masked, rel=1e-5)

    data = write_sentiment(tmp_path / "s.csv", 60)
    val = write_sentiment(tmp_path / "v.csv", 20, seed=5)
    cls = lmtune.train({
        "model": str(adapted), "task": "classification", "output_dir": str(tmp_path / "cls"),
        "data": {"train": str(data), "validation": str(val), "max_length": 32},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2, "precision": "fp32", "log_steps": 1},
    }, progress=False)
    # the classifier's validation accuracy, counted from its predictions and the file's labels
    with open(val, newline="") as f:
        gold = list(csv.DictReader(f))
    predicted = Predictor.from_run(tmp_path / "cls").predict([r["text"] for r in gold])
    hits = sum(p["label"] == r["label"] for p, r in zip(predicted, gold))
    assert cls.metrics["validation"]["accuracy"] == pytest.approx(hits / 20)
    # the classifier started from the adapted body, which training had moved away from the base
    key = "bert.encoder.layer.0.attention.self.query.weight"
    base = AutoModelForMaskedLM.from_pretrained(tiny_bert).state_dict()[key]
    mlm = AutoModelForMaskedLM.from_pretrained(adapted).state_dict()[key]
    start = AutoModelForSequenceClassification.from_pretrained(adapted, num_labels=2).state_dict()[key]
    assert not torch.equal(base, mlm) and torch.equal(start, mlm)

    # eval scores a file masked once with the run's seed (the same numbers twice); predict fills masks
    predictor = Predictor.from_run(tmp_path / "mlm")
    first, second = predictor.evaluate_file(train), predictor.evaluate_file(train)
    assert first["masked_tokens"] > 0 and first["loss"] == pytest.approx(second["loss"])
    [[top]] = predictor.predict(["the movie was [MASK] ."])
    # the 5 likeliest tokens at the mask, by hand from the model's logits
    enc = tok("the movie was [MASK] .", return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits[0, 4].double(), -1)
    assert enc["input_ids"][0, 4] == tok.mask_token_id
    scores, ids = probs.topk(5)
    assert [t["token"] for t in top] == tok.convert_ids_to_tokens(ids.tolist())
    assert [t["score"] for t in top] == pytest.approx(scores.tolist(), abs=2e-6)
    with pytest.raises(LmtuneError, match="no \\[MASK\\] token"):
        predictor.predict(["no mask here"])


def test_lora_masked_lm_saves_and_loads(tiny_bert, tmp_path):
    # the MLM head's bias is its decoder's: LoRA leaves the module holding the tied decoder out of
    # modules_to_save (peft's copy would save one tensor under two names) and trains its dense layer
    train, _ = _text(tmp_path / "t.txt")
    raw = _cfg(tiny_bert, tmp_path, train)
    raw["strategy"] = {"name": "lora", "r": 4}
    raw["train"]["epochs"] = 1
    lmtune.train(raw, progress=False)
    import json

    adapter = json.loads((tmp_path / "mlm" / "model" / "adapter_config.json").read_text())
    assert "cls.predictions.transform.dense" in adapter["modules_to_save"]
    assert "cls.predictions" not in adapter["modules_to_save"]
    [[top]] = Predictor.from_run(tmp_path / "mlm").predict(["the movie was [MASK] ."])
    assert len(top) == 5
