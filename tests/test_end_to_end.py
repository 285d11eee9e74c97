"""End to end on the real bundled MiniLM-L6 and the review set the repo ships: the command line
trains, evaluates and predicts; plain transformers loads the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmtune.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "run"
    code = main([
        "train", str(ROOT / "examples" / "sentiment.yaml"), f"output_dir={out}", "train.epochs=2",
        f"data.train={ROOT}/examples/data/sentiment/train.csv",
        f"data.validation={ROOT}/examples/data/sentiment/validation.csv",
        f"data.test={ROOT}/examples/data/sentiment/test.csv", "--no-progress",
    ])
    assert code == 0
    return out


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_train_beats_chance_and_writes_the_run(sentiment_run):
    metrics = json.loads((sentiment_run / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] >= 0.8
    assert metrics["test"]["accuracy"] >= 0.8
    assert (sentiment_run / "model" / "model.safetensors").is_file()
    assert (sentiment_run / "checkpoints" / "last" / "loop_state.json").is_file()


def test_eval_prints_metrics_as_last_line(sentiment_run, capsys):
    assert main(["eval", str(sentiment_run), str(ROOT / "examples/data/sentiment/test.csv")]) == 0
    metrics = _last_json(capsys.readouterr().out)
    saved = json.loads((sentiment_run / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"], abs=0.02)
    assert set(metrics["per_class"]) == {"negative", "positive"}
    assert {"f1_macro", "f1_micro", "precision_macro", "recall_macro"} <= set(metrics)


def test_predict_writes_one_line_per_input(sentiment_run, tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_text("An absolute delight from start to finish.\n\nBroken on arrival and support never answered.\n")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(sentiment_run), str(inputs), "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["positive", "negative"]
    assert all(set(r["probabilities"]) == {"negative", "positive"} for r in rows)
    assert main(["predict", str(sentiment_run), str(inputs), "-o", str(out)]) == 2  # no silent overwrite


def test_plain_transformers_pipeline_loads_the_model(sentiment_run):
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(sentiment_run / "model"))
    out = clf(["I loved every minute of it, wonderful.", "Dreadful. I want my money back."])
    assert [o["label"] for o in out] == ["positive", "negative"]


def test_cli_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "lmtune", "models"], capture_output=True, text=True)
    assert proc.returncode == 0 and "minilm-l6" in proc.stdout and "smollm2-135m" in proc.stdout


def test_gguf_model_is_imported_once_into_a_trainable_folder(tmp_path, monkeypatch):
    from lmtune.core import models

    folder = models.resolve("smollm2-135m")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert models.resolve("smollm2-135m") == folder  # cached
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model, "hf_quantizer", None) is None
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0])


def test_corrupt_gguf_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    train = tmp_path / "t.csv"
    train.write_text("text,label\na,x\nb,y\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {bad}\ndata:\n  train: {train}\noutput_dir: {tmp_path / 'run'}\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "broken.gguf" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_lora_chat_sft_on_smollm2_lowers_the_loss_and_generates(tmp_path, capsys):
    """A few steps of LoRA SFT on the bundled SmolLM2 and the shop chats the repo ships."""
    common = ["--no-progress", "eval.generate_rows=2", "eval.max_new_tokens=16", "train.batch_size=4",
              "data.max_length=256"]
    base = tmp_path / "base"
    assert main(["train", str(ROOT / "examples/chat_sft.yaml"), f"output_dir={base}", "train.max_steps=1",
                 "train.lr=1e-12", *common]) == 0
    tuned = tmp_path / "tuned"
    assert main(["train", str(ROOT / "examples/chat_sft.yaml"), f"output_dir={tuned}", "train.max_steps=8",
                 "train.lr=1e-3", *common]) == 0
    before = json.loads((base / "metrics.json").read_text())["validation"]
    after = json.loads((tuned / "metrics.json").read_text())["validation"]
    assert after["loss"] < before["loss"] - 0.05
    assert {"rouge1", "rougeL", "bleu", "chrf"} <= set(after)
    assert (tuned / "model" / "adapter_config.json").is_file()
    capsys.readouterr()
    assert main(["generate", str(tuned), "--prompt", "When are you open?", "--max-new-tokens", "12"]) == 0
    assert len(capsys.readouterr().out.strip()) > 0
