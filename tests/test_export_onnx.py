"""`lmtune export --format onnx` and `--backend onnx`: tiny runs of the encoder tasks exported to
ONNX give ONNX Runtime's outputs equal to torch's on batches of other sizes and lengths than the
traced one (the axes are dynamic); a LoRA run exports merged; predict and serve on ONNX Runtime
answer as on torch; bad requests are one line with exit status 2 and leave nothing half-written."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lmtune
from lmtune.cli import main
from lmtune.core.errors import LmtuneError
from lmtune.export import onnx_model
from lmtune.export.onnx_backend import OnnxModel, onnx_predictor
from lmtune.export.run import export
from lmtune.infer.saved_run import read_run

from . import test_question_answering as qa_test
from . import test_token_classification as ner_test
from .conftest import WORDS, tiny_config

TOLERANCE = 1e-4
ROOT = Path(__file__).resolve().parent.parent


def _train(cfg: dict) -> Path:
    lmtune.train(cfg, progress=False)
    return Path(cfg["output_dir"])


@pytest.fixture(scope="module")
def cls_run(tiny_bert, toy_data, tmp_path_factory) -> Path:
    return _train(tiny_config(tiny_bert, toy_data, tmp_path_factory.mktemp("cls") / "run", epochs=1))


def _write_pairs(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["text,text_pair,label"]
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        first = " ".join(rng.sample(WORDS["neutral"], 3))
        second = " ".join(rng.sample(WORDS["neutral"], 2) + rng.sample(WORDS[label], 2))
        lines.append(f"{first},{second},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def pair_run(tiny_bert, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pairs")
    data = {"train": _write_pairs(d / "train.csv", 32, 1), "validation": _write_pairs(d / "val.csv", 16, 2)}
    cfg = tiny_config(tiny_bert, data, d / "run", epochs=1)
    cfg["data"]["text_pair_column"] = "text_pair"
    return _train(cfg)


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ner")
    rng = random.Random(0)
    model = ner_test.build_ner_bert(d / "bert")
    train = ner_test.write_conll(d / "train.conll", [ner_test.sentence(rng) for _ in range(32)])
    val = ner_test.write_jsonl(d / "val.jsonl", [ner_test.sentence(rng) for _ in range(8)])
    return _train({"model": str(model), "task": "token_classification", "output_dir": str(d / "run"),
                   "data": {"train": str(train), "validation": str(val), "max_length": 32},
                   "train": {"epochs": 1, "batch_size": 8, "lr": 5e-3, "precision": "fp32"}})


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("qa")
    rng = random.Random(0)
    model = qa_test.build_qa_bert(d / "bert")
    train = qa_test.write_jsonl(d / "train.jsonl", [qa_test.example(rng) for _ in range(32)])
    val = qa_test.write_jsonl(d / "val.jsonl", [qa_test.example(rng) for _ in range(8)])
    return _train({"model": str(model), "task": "question_answering", "output_dir": str(d / "run"),
                   "data": {"train": str(train), "validation": str(val), "max_length": 48},
                   "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "precision": "fp32"}})


def _batches(texts: list[str], pairs: list[str] | None = None) -> list[tuple[list[str], list[str] | None]]:
    """Batches of 1, 3 and 7 inputs (cycled from `texts`), each of another padded length."""
    out = []
    for size, start in ((1, 0), (3, 1), (7, 2)):
        ids = [(start + i) % len(texts) for i in range(size)]
        out.append(([texts[i] for i in ids], [pairs[i] for i in ids] if pairs else None))
    return out


def assert_same_outputs(run: Path, texts: list[str], pairs: list[str] | None = None) -> Path:
    """Export the run to ONNX; ONNX Runtime's outputs equal those of the run loaded with lmtune
    (torch) within TOLERANCE, on batches of several sizes and lengths."""
    out = export(run, format="onnx", log=lambda line: None)
    info = json.loads((out / "lmtune.json").read_text())
    predictor, session = lmtune.load(run), OnnxModel(out)
    assert session.outputs == info["outputs"] == list(predictor.task.onnx_outputs)
    shapes = set()
    for batch_texts, batch_pairs in _batches(texts, pairs):
        enc = predictor.tokenizer(batch_texts, batch_pairs, padding=True, truncation=True,
                                  max_length=info["max_length"], return_tensors="pt")
        with torch.inference_mode():
            ours = predictor.model(**enc)
        theirs = session(**enc)
        shapes.add(tuple(enc["input_ids"].shape))
        for name in info["outputs"]:
            assert theirs[name].shape == getattr(ours, name).shape
            assert float((theirs[name] - getattr(ours, name)).abs().max()) <= TOLERANCE, name
    assert len({s[0] for s in shapes}) == 3 and len({s[1] for s in shapes}) >= 2, shapes
    onnx = onnx_predictor(read_run(run), log=lambda line: None)
    assert_close(onnx.predict(texts, pairs), predictor.predict(texts, pairs))
    return out


def assert_close(theirs, ours, where: str = "") -> None:
    """The same predictions: equal labels, texts and offsets, scores within TOLERANCE."""
    if isinstance(ours, float):
        assert abs(theirs - ours) <= TOLERANCE, where
    elif isinstance(ours, dict):
        assert theirs.keys() == ours.keys(), where
        for key in ours:
            assert_close(theirs[key], ours[key], f"{where}.{key}")
    elif isinstance(ours, (list, tuple)):
        assert len(theirs) == len(ours), where
        for i, (t, o) in enumerate(zip(theirs, ours)):
            assert_close(t, o, f"{where}[{i}]")
    else:
        assert theirs == ours, where


SENTIMENT = ["the movie was great", "awful boring plot really bad bad", "a film", "it was very good and fun",
             "terrible", "the actor was quite wonderful in every scene of the story"]


def test_classification_exports_and_agrees(cls_run):
    out = assert_same_outputs(cls_run, SENTIMENT)
    assert {"model.onnx", "config.json", "lmtune.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    info = json.loads((out / "lmtune.json").read_text())
    assert info["task"] == lmtune.load(cls_run).task_name and info["labels"] == ["negative", "positive"]
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and info["max_length"] > 0
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    assert not out.with_name("onnx.tmp").exists()


def test_text_pair_classification_exports_and_agrees(pair_run):
    assert_same_outputs(pair_run, SENTIMENT, list(reversed(SENTIMENT)))


def test_token_classification_exports_and_agrees(ner_run):
    assert_same_outputs(ner_run, ["Angela Merkel visited Paris .", "Google opened an office in Rome .",
                                  "the weather in London was good .", "John Smith met Maria Garcia in Madrid ."])


def test_question_answering_exports_and_agrees(qa_run):
    contexts = ["John visited Oslo.", "Anna visited Rome. John visited Oslo. Maria visited Paris.",
                "Maria visited Paris. Peter visited London."]
    assert_same_outputs(qa_run, ["Where did John go?", "Where did Anna go?", "Who visited Paris?"], contexts)


def test_lora_run_exports_merged_and_agrees(tiny_bert, toy_data, tmp_path):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=1)
    cfg["strategy"] = {"name": "lora", "r": 4}
    run = _train(cfg)
    assert (run / "model" / "adapter_config.json").is_file()
    assert_same_outputs(run, SENTIMENT)


# ---------------------------------------------------------------- ONNX Runtime as a backend


def test_predict_with_the_onnx_backend_answers_as_torch(cls_run, tmp_path, capsys):
    shutil.rmtree(cls_run / "export", ignore_errors=True)
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(SENTIMENT * 3) + "\n")
    rows, logs = {}, []
    for backend in ("torch", "onnx", "onnx"):  # the second onnx call uses the export the first wrote
        out = tmp_path / f"{backend}.jsonl"
        assert main(["predict", str(cls_run), str(inputs), "-o", str(out), "--overwrite", "--batch-size", "4",
                     "--backend", backend]) == 0
        rows[backend] = [json.loads(line) for line in out.read_text().splitlines()]
        logs.append(capsys.readouterr().err)
    assert ["exporting run to ONNX" in err for err in logs] == [False, True, False], logs
    assert (cls_run / "export" / "onnx" / "model.onnx").is_file()
    assert [r["label"] for r in rows["onnx"]] == [r["label"] for r in rows["torch"]] and len(rows["onnx"]) == 18
    for ours, theirs in zip(rows["torch"], rows["onnx"]):
        for label, p in ours["probabilities"].items():
            assert abs(theirs["probabilities"][label] - p) <= TOLERANCE


def test_the_onnx_backend_refuses_an_export_of_other_weights(cls_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(cls_run, run, ignore=shutil.ignore_patterns("export"))
    export(run, format="onnx", log=lambda line: None)
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # the same weights: still its own
    onnx_predictor(read_run(run), log=lambda line: None)
    with open(weights, "ab") as f:  # other weights (checked before they are loaded)
        f.write(b" ")
    with pytest.raises(LmtuneError, match="exported from other weights"):
        onnx_predictor(read_run(run), log=lambda line: None)


def test_serve_with_the_onnx_backend(cls_run):
    from fastapi.testclient import TestClient

    from lmtune.serve.app import create_app
    from lmtune.serve.options import ServeOptions

    texts = ["the movie was great", "awful boring plot"]
    expected = lmtune.load(cls_run).predict(texts)
    with TestClient(create_app(onnx_predictor(read_run(cls_run), log=lambda line: None),
                               ServeOptions())) as client:
        rows = client.post("/v1/predict", json={"inputs": texts}).json()["predictions"]
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    assert max(abs(r["score"] - e["score"]) for r, e in zip(rows, expected)) <= TOLERANCE


# ---------------------------------------------------------------- bad input


def lmtune_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmtune", *argv], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}, timeout=300)


def expect_one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_causal_lm_run_is_refused(tiny_llama, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}] * 4
    train = tmp_path / "chat.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = _train({"model": str(tiny_llama), "task": "causal_lm", "output_dir": str(tmp_path / "run"),
                  "data": {"train": str(train), "validation": str(train), "max_length": 32},
                  "train": {"epochs": 1, "batch_size": 2, "precision": "fp32"}, "eval": {"generate_rows": 0}})
    expect_one_line(lmtune_cli("export", str(run), "--format", "onnx"), "cannot be exported to ONNX", "gguf")
    expect_one_line(lmtune_cli("predict", str(run), str(train), "--backend", "onnx"), "--backend onnx")
    assert not (run / "export").exists()


def test_an_existing_output_and_an_unfinished_run_are_refused(cls_run, tmp_path):
    out = tmp_path / "onnx"
    done = lmtune_cli("export", str(cls_run), "--format", "onnx", "-o", str(out))
    assert done.returncode == 0 and "largest difference from torch" in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"wrote an ONNX model and its tokenizer to {out}"
    written = (out / "model.onnx").stat().st_mtime_ns
    expect_one_line(lmtune_cli("export", str(cls_run), "--format", "onnx", "-o", str(out)), str(out), "--overwrite")
    assert (out / "model.onnx").stat().st_mtime_ns == written
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(cls_run / "config.yaml", unfinished / "config.yaml")
    texts = tmp_path / "texts.txt"
    texts.write_text("the movie was great\n")
    expect_one_line(lmtune_cli("export", str(unfinished), "--format", "onnx"), "no model/ yet")
    expect_one_line(lmtune_cli("predict", str(unfinished), str(texts), "--backend", "onnx"), "no model/ yet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx", "texts.txt", "unfinished"]
    assert [p.name for p in unfinished.iterdir()] == ["config.yaml"]


def test_a_failed_export_leaves_nothing_behind(cls_run, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the exporter broke")

    monkeypatch.setattr(onnx_model, "_trace", broken)
    with pytest.raises(RuntimeError, match="the exporter broke"):
        export(cls_run, tmp_path / "onnx", format="onnx", log=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_onnx_package_is_one_line(cls_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript raises ImportError
    with pytest.raises(LmtuneError) as e:
        export(cls_run, tmp_path / "onnx", format="onnx", log=lambda line: None)
    assert str(e.value) == "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'lmtune[onnx]'"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the real MiniLM


@pytest.mark.slow
def test_minilm_classification_exports_and_agrees(tmp_path):
    data = ROOT / "examples" / "data" / "sentiment"
    cfg = {"model": "minilm-l6", "output_dir": str(tmp_path / "run"),
           "data": {"train": str(data / "train.csv"), "validation": str(data / "validation.csv"), "max_length": 64},
           "train": {"max_steps": 4, "batch_size": 8, "precision": "fp32"}}
    run = _train(cfg)
    texts = [line.split(",")[0] for line in (data / "test.csv").read_text().splitlines()[1:12]]
    assert_same_outputs(run, texts)
