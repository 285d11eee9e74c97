"""`lmtune eval` of a finished run gives exactly the run's own final validation metrics: the saved
model is loaded with the attention kernel the run used (recorded in model/lmtune.json), not with
transformers' default."""

from __future__ import annotations

import json
import random

import pytest

import lmtune
from lmtune.cli import main

from .conftest import tiny_config
from .test_question_answering import build_qa_bert, example, write_jsonl


def _eval(capsys, run, data_file) -> dict:
    capsys.readouterr()
    assert main(["eval", str(run), str(data_file)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _loaded_kernel(run) -> str:
    predictor = lmtune.load(str(run))
    return predictor.accelerator.unwrap_model(predictor.model).config._attn_implementation


def test_classification_eval_gives_the_runs_own_metrics(tmp_path, tiny_bert, toy_data, capsys):
    # eager, as train.attention: auto picks on CPU for short inputs; transformers' default is SDPA
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=1, attention="eager")
    lmtune.train(cfg, progress=False)
    recorded = json.loads((tmp_path / "run" / "model" / "lmtune.json").read_text())["attention"]
    assert recorded == "eager" and _loaded_kernel(tmp_path / "run") == recorded
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["validation"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), str(toy_data["validation"])]) == 0
    printed = capsys.readouterr()
    again = json.loads(printed.out.strip().splitlines()[-1])
    assert again.pop("examples") == 32
    assert again == final  # exactly: the same kernel, batches and arithmetic
    # each class's metrics under the names of the metrics themselves (f1, as f1_macro), in the JSON and the table
    assert all(set(row) == {"precision", "recall", "f1", "support"} for row in again["per_class"].values())
    header = next(line for line in printed.err.splitlines() if line.startswith("label")).split()
    assert header == ["label", "precision", "recall", "f1", "support"]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_question_answering_eval_gives_the_runs_own_metrics(tmp_path, capsys, attention):
    model = build_qa_bert(tmp_path / "qa-bert")
    rng = random.Random(0)
    train = write_jsonl(tmp_path / "train.jsonl", [example(rng) for _ in range(48)])
    val = write_jsonl(tmp_path / "val.jsonl", [example(rng) for _ in range(24)])
    cfg = {"model": str(model), "task": "question_answering", "output_dir": str(tmp_path / "run"),
           "data": {"train": str(train), "validation": str(val), "max_length": 40, "doc_stride": 8},
           "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "precision": "fp32", "attention": attention}}
    lmtune.train(cfg, progress=False)
    assert _loaded_kernel(tmp_path / "run") == attention
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["validation"]
    assert _eval(capsys, tmp_path / "run", val) == final


def test_a_causal_lm_run_generates_and_evaluates_with_its_kernel(tmp_path, tiny_llama, capsys):
    from .test_causal_lm import INSTRUCTIONS, _cfg, _jsonl

    train = _jsonl(tmp_path / "i.jsonl", INSTRUCTIONS)
    cfg = _cfg(tiny_llama, tmp_path, train)
    cfg["train"].update(epochs=1, attention="eager", compile=False)
    cfg["eval"] = {"generate_rows": 0}
    lmtune.train(cfg, progress=False)
    assert json.loads((tmp_path / "run" / "model" / "lmtune.json").read_text())["attention"] == "eager"
    assert lmtune.load(str(tmp_path / "run")).model.config._attn_implementation == "eager"
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["validation"]
    again = _eval(capsys, tmp_path / "run", train)
    assert again["loss"] == pytest.approx(final["loss"], rel=1e-6)
