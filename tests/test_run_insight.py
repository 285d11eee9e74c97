"""What every run leaves to look at: the training sample scored at each evaluation, the diagnosis,
validation samples, TensorBoard events, the forgetting check and report.html (a report that cannot
be built is a warning, never a failed run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lmtune
from tests.conftest import tensorboard_events, tiny_config


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted({events.parent for events in run.rglob("events.out.tfevents*")}):
        acc = tensorboard_events(folder)
        for tag in acc.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return found


def test_a_run_scores_its_training_sample_diagnoses_itself_and_writes_its_report(tiny_bert, toy_data, tmp_path):
    run = tmp_path / "run"
    result = lmtune.train(tiny_config(tiny_bert, toy_data, run, epochs=3), progress=False)

    evals = [r for r in _history(run) if "eval" in r]
    assert len(evals) == 3
    # the training sample is at most as large as validation (32 rows): its per-class supports say so
    assert sum(c["support"] for c in result.metrics["train_sample"]["per_class"].values()) == 32
    assert all(0.0 <= r["train_eval"]["accuracy"] <= 1.0 and "per_class" not in r["train_eval"] for r in evals)
    steps = [r for r in _history(run) if "lrs" in r]
    assert steps and all(r["lrs"] and max(r["lrs"].values()) == pytest.approx(r["lr"]) for r in steps)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["diagnosis"]["verdict"] in {"overfitting", "underfitting", "healthy"}
    assert metrics["diagnosis"] == result.metrics["diagnosis"]

    samples = [json.loads(line) for line in (run / "validation_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 32 and {s["predicted"] for s in samples} <= {"negative", "positive"}
    accuracy = sum(s["predicted"] == s["label"] for s in samples) / 32
    assert accuracy == pytest.approx(metrics["validation"]["accuracy"])

    scalars = _scalars(run)
    assert [step for step, _ in scalars["eval/accuracy"]] == [r["step"] for r in evals]
    assert [v for _, v in scalars["eval/accuracy"]] == pytest.approx([r["eval"]["accuracy"] for r in evals])
    assert "train_sample/accuracy" in scalars and "train/loss" in scalars

    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "positive" in html


def test_report_and_trackers_can_be_turned_off(tiny_bert, toy_data, tmp_path):
    run = tmp_path / "run"
    lmtune.train({**tiny_config(tiny_bert, toy_data, run, epochs=1, report=False, report_to=[]),
                  "eval": {"train_sample": 0}}, progress=False)
    assert not (run / "report.html").exists()
    assert not list(run.rglob("events.out.tfevents*"))
    assert all("train_eval" not in r for r in _history(run))


def test_a_report_that_fails_is_a_warning(tiny_bert, toy_data, tmp_path, monkeypatch, capsys):
    import lmtune.report

    def broken(path):
        raise RuntimeError("no matplotlib today")

    monkeypatch.setattr(lmtune.report, "write_run_report", broken)
    run = tmp_path / "run"
    result = lmtune.train(tiny_config(tiny_bert, toy_data, run, epochs=1, report_to=[]), progress=False)
    assert (run / "metrics.json").exists() and result.metrics["validation"]["accuracy"] >= 0
    assert "warning: report.html was not written: RuntimeError: no matplotlib today" in capsys.readouterr().err


def test_forgetting_scores_the_general_text_against_the_base_model(tiny_llama, tmp_path, monkeypatch):
    from lmtune.training.evaluation import Evaluation

    passes = []
    perplexity = Evaluation.perplexity
    monkeypatch.setattr(Evaluation, "perplexity", lambda self, *a: passes.append(1) or perplexity(self, *a))
    train = tmp_path / "train.jsonl"
    rows = [{"text": "the bike shop opens at nine and closes at six on tuesday"}] * 12
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    result = lmtune.train({
        "model": str(tiny_llama), "task": "causal_lm", "output_dir": str(run),
        "data": {"train": str(train), "validation": str(train), "max_length": 32},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "log_steps": 1, "report_to": []},
        "eval": {"forgetting": True},
    }, progress=False)
    evals = [r["forgetting"] for r in _history(run) if "eval" in r]
    assert len(evals) == 2 and len({e["base_perplexity"] for e in evals}) == 1
    base = evals[0]["base_perplexity"]
    assert all(e["change"] == pytest.approx(e["perplexity"] / base - 1, abs=1e-3) for e in evals)
    # tuned hard on one sentence, the model got worse at general text
    assert result.metrics["forgetting"]["perplexity"] != pytest.approx(base)
    assert result.metrics["forgetting"]["base_perplexity"] == pytest.approx(base)
    # the last evaluation's model is the final one: its figure is reused, not scored again
    assert result.metrics["forgetting"] == evals[-1] and len(passes) == 1 + 2
