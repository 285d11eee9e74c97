"""A run is never silent: step lines without a progress bar, the final generation pass announced, why
the precision is fp32, a warning when other processes keep the CPU busy; and train.threads."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import lmtune
import lmtune.training.loop as training
from lmtune.cli import main
from lmtune.core import runtime

from .conftest import tiny_config


def test_no_progress_prints_the_step_lines_instead_of_a_bar(tiny_bert, toy_data, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=4, epochs=1)))
    assert main(["train", "cfg.yaml", "--no-progress"]) == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("step ") and ": loss " in line]
    assert [line.split(":")[0] for line in lines] == ["step 2/4", "step 4/4"]  # every train.log_steps (2)
    assert all(", lr " in line and " samples/s, " in line and " tokens/s" in line for line in lines)
    assert ", ETA " in lines[0] and lines[-1].endswith(" tokens/s")  # the time to the end, evaluations included
    assert "it/s" not in err and "step/s" not in err  # no bar


def test_the_generation_pass_of_a_causal_lm_is_announced(tiny_llama, tmp_path, capfd):
    rows = [{"instruction": "translate", "input": "the cat sits", "output": "ein cat sits"},
            {"instruction": "what price ?", "input": "", "output": "twelve euro"}] * 4
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": str(tiny_llama), "task": "causal_lm", "output_dir": str(tmp_path / "run"),
           "data": {"train": str(data), "validation": str(data), "max_length": 64},
           "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "precision": "fp32"},
           "eval": {"generate_rows": 3, "max_new_tokens": 4}}
    result = lmtune.train(cfg, progress=False)
    err = capfd.readouterr().err
    assert err.count("generating 3 validation rows for ROUGE/BLEU/chrF (eval.generate_rows: 3; 0: none)") == 1
    assert result.metrics["validation"]["generated_rows"] == 3


def test_fp32_by_auto_says_why(tiny_bert, toy_data, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(runtime, "bf16_available", lambda: False)
    lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=2, epochs=1, precision="auto"), progress=False)
    err = capfd.readouterr().err
    assert "train.precision: auto -> fp32: this CPU has no fast bf16 (no AMX, no AVX-512 BF16)" in err
    assert "precision fp32," in err and "precision no," not in err


def test_busy_cpu_note_only_when_the_cores_are_taken():
    assert runtime.busy_cpu_note(0.3, 2, 2) is None
    assert runtime.busy_cpu_note(0.9, 2, 2) is None  # less than a core busy
    assert runtime.busy_cpu_note(3.0, 16, 16) is None  # a few cores of many
    note = runtime.busy_cpu_note(1.8, 2, 2)
    assert note.startswith("warning: other processes are keeping the CPU busy (load 1.8 on 2 cores)")
    assert "train.threads (now 2)" in note


def test_the_cpu_load_counts_other_runnable_threads():
    assert 0.0 <= runtime.other_cpu_load() < 10_000


@pytest.mark.parametrize("load, warned", [(1000.0, True), (0.0, False)])
def test_a_busy_cpu_is_warned_of_once_at_the_start(tiny_bert, toy_data, tmp_path, monkeypatch, capfd, load, warned):
    monkeypatch.setattr(training, "other_cpu_load", lambda: load)
    lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=2, epochs=1), progress=False)
    err = capfd.readouterr().err
    assert err.count("other processes are keeping the CPU busy") == int(warned)
    assert err.find("CPU busy") < err.find("training on ") if warned else True


def test_train_threads_sets_the_threads_of_the_run_and_gives_them_back(tiny_bert, toy_data, tmp_path, capfd):
    before = torch.get_num_threads()
    threads = 1 if before > 1 else 2
    during = []
    lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=2, epochs=1, eval_steps=1, threads=threads),
                 progress=False, on_evaluate=lambda step, metrics: during.append(torch.get_num_threads()))
    assert during == [threads, threads]
    assert torch.get_num_threads() == before
    assert f"training on 1 x cpu ({threads} thread" in capfd.readouterr().err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["threads"] == threads


def test_train_threads_must_be_auto_or_a_positive_number(tmp_path):
    from lmtune.tasks.run_config import validate
    from lmtune.core.errors import LmtuneError

    with pytest.raises(LmtuneError, match=r"train\.threads: expected auto or a whole number of threads, at least 1"):
        validate({"model": "minilm-l6", "output_dir": str(tmp_path), "data": {"train": "x.csv"}, "train": {"threads": 0}},
                 check_files=False)
