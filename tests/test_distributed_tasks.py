"""Every task under `lmtune train --nproc 2` on CPU, and a run that loses a process: it stops with
one clear line, its last checkpoint intact, and resumes on one process."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import lmtune

from .test_causal_lm import CHATS, _jsonl
from .test_masked_lm import _text
from .test_question_answering import build_qa_bert, example, write_jsonl as write_qa
from .test_token_classification import sentence, write_conll

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TRAIN = {"epochs": 2, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "log_steps": 1}


def _run(cfg: dict, tmp_path: Path, *flags: str, timeout: int = 900) -> subprocess.CompletedProcess:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "lmtune", "train", str(path), "--no-progress", *flags],
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def _task_config(task: str, tmp_path: Path, models: dict[str, Path]) -> tuple[dict, Path | None, str]:
    rng = random.Random(0)
    if task == "token_classification":
        train = write_conll(tmp_path / "t.conll", [sentence(rng) for _ in range(30)])
        val = write_conll(tmp_path / "v.conll", [sentence(rng) for _ in range(11)])
        return {"model": str(models["ner"]), "data": {"train": str(train), "validation": str(val), "max_length": 32}}, val, "f1"
    if task == "question_answering":
        train = write_qa(tmp_path / "t.jsonl", [example(rng) for _ in range(30)])
        val = write_qa(tmp_path / "v.jsonl", [example(rng) for _ in range(11)])
        return {"model": str(models["qa"]), "data": {"train": str(train), "validation": str(val), "max_length": 48}}, val, "f1"
    if task == "masked_lm":
        train, _ = _text(tmp_path / "t.txt", n_docs=30)
        val, _ = _text(tmp_path / "v.txt", n_docs=8, seed=1)  # masked once with train.seed, in each process alike
        return {"model": str(models["bert"]), "data": {"train": str(train), "validation": str(val), "max_length": 32}}, val, "loss"
    train = _jsonl(tmp_path / "t.jsonl", CHATS * 6)
    return {"model": str(models["llama"]), "data": {"train": str(train), "validation": str(train), "max_length": 64},
            "eval": {"generate_rows": 2, "max_new_tokens": 4}}, train, "loss"


@pytest.mark.parametrize("task", ["token_classification", "question_answering", "masked_lm", "causal_lm"])
def test_every_task_runs_on_two_processes(task, tmp_path, tiny_bert, tiny_llama, tmp_path_factory):
    from .test_token_classification import build_ner_bert

    models = {"bert": tiny_bert, "llama": tiny_llama}
    if task == "token_classification":
        models["ner"] = build_ner_bert(tmp_path_factory.mktemp("ner"))
    if task == "question_answering":
        models["qa"] = build_qa_bert(tmp_path_factory.mktemp("qa"))
    cfg, val, metric = _task_config(task, tmp_path, models)
    cfg.update(task=task, output_dir=str(tmp_path / "out"), train=TRAIN)
    proc = _run(cfg, tmp_path, "--nproc", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training on 2 x cpu" in proc.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["validation"]
    # the outputs of both processes gathered in order: the metrics of one process on the same weights
    alone = lmtune.load(tmp_path / "out").evaluate_file(val)
    shared = {k for k in metrics.keys() & alone.keys() if isinstance(metrics[k], (int, float))}
    assert {metric, "loss"} <= shared
    if task in ("masked_lm", "causal_lm"):
        assert "perplexity" in shared and metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-9)
    if task == "causal_lm":  # greedy generations on the same rows, scored alike
        assert {"rouge1", "bleu", "chrf", "generated_rows"} <= shared
    for k in sorted(shared):
        assert alone[k] == pytest.approx(metrics[k], rel=1e-5, abs=1e-6), k


def test_a_killed_process_stops_the_run_and_it_resumes_on_one(tiny_bert, tmp_path):
    import psutil

    from lmtune.core.rundir import existing_dir

    from .conftest import loop_state, wait_for_checkpoint, write_sentiment

    train = write_sentiment(tmp_path / "train.csv", 64, seed=1)
    cfg = {"model": str(tiny_bert), "output_dir": str(tmp_path / "out"), "data": {"train": str(train)},
           "train": {**TRAIN, "epochs": 200, "batch_size": 8}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "lmtune", "train", str(tmp_path / "run.yaml"), "--no-progress", "--nproc", "2"]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    state = tmp_path / "out" / "checkpoints" / "last" / "loop_state.json"
    assert wait_for_checkpoint(tmp_path / "out", lambda s: s["epoch"] >= 3, launcher), "no checkpoint of epoch 3"
    workers = [p for p in psutil.Process(launcher.pid).children(recursive=True) if "lmtune" in " ".join(p.cmdline())]
    assert len(workers) == 2, "two worker processes"
    workers[1].send_signal(signal.SIGKILL)
    _, err = launcher.communicate(timeout=600)
    assert launcher.returncode != 0
    assert "lmtune: error: process" in err and "--resume" in err
    assert "Traceback" not in err, err[-4000:]
    saved = loop_state(tmp_path / "out")  # intact: a whole checkpoint, never half of one
    last = existing_dir(state.parent)  # (a kill between a checkpoint's two renames leaves last.old)
    assert saved["step"] > 0 and (last / "model.safetensors").is_file()
    assert not (tmp_path / "out" / "metrics.json").exists()

    again = _run(cfg, tmp_path, "--resume", timeout=600)  # one process this time
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {last}" in again.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["train"]["steps"] > saved["step"]


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_a_run_stopped_mid_epoch_resumes_with_another_number_of_processes(tiny_bert, tmp_path, distributed):
    from .conftest import write_sentiment
    from .test_resume import Killed, _kill_at

    train = write_sentiment(tmp_path / "train.csv", 60, seed=1)
    val = write_sentiment(tmp_path / "val.csv", 12, seed=2)
    cfg = {"model": str(tiny_bert), "output_dir": str(tmp_path / "out"), "data": {"train": str(train), "validation": str(val)},
           "train": {**TRAIN, "epochs": 2, "batch_size": 4, "eval_steps": 5, "metric": "loss", "distributed": distributed}}
    with pytest.raises(Killed):  # one process, 15 batches an epoch: stopped after the checkpoint of step 10
        lmtune.train(cfg, progress=False, on_evaluate=_kill_at(15))
    last = tmp_path / "out" / "checkpoints" / "last" / "loop_state.json"
    assert json.loads(last.read_text())["batches_in_epoch"] == 10
    assert (last.parent / "sharded").is_dir() == (distributed == "fsdp")  # FSDP: torch.distributed.checkpoint

    proc = _run(cfg, tmp_path, "--resume", "--nproc", "2")  # the 20 examples left of epoch 1 in global batches of 8
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "written by 1 process(es), going on with 2: global batch 8, 21 steps in all" in proc.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 10 + 3 + 8  # then epoch 2: 60 examples in global batches of 8


def test_fsdp_shards_a_decoder_with_tied_embeddings_under_gradual_unfreezing(tiny_llama, tmp_path):
    """The LM head shares the embedding matrix, the loss runs chunk by chunk, and gradual unfreezing
    switches on parameters that FSDP has replaced by shards."""
    train = _jsonl(tmp_path / "chats.jsonl", CHATS * 4)
    cfg = {"model": str(tiny_llama), "task": "causal_lm", "output_dir": str(tmp_path / "out"),
           "data": {"train": str(train), "validation": str(train), "max_length": 64},
           "eval": {"generate_rows": 2, "max_new_tokens": 4},
           "strategy": {"name": "gradual", "unfreeze_every": 1, "unit": "step"},
           "train": {**TRAIN, "epochs": 2, "distributed": "fsdp"}}
    proc = _run(cfg, tmp_path, "--nproc", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gradual unfreezing: the embeddings unfrozen" in proc.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["validation"]
    alone = lmtune.load(tmp_path / "out").evaluate_file(train)  # the saved model loads whole, in one process
    assert alone["loss"] == pytest.approx(metrics["loss"], rel=1e-5)  # the sharded evaluation, gathered
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-9)
    assert alone["perplexity"] == pytest.approx(metrics["perplexity"], rel=1e-5)
    from safetensors.torch import load_file

    before, after = load_file(tiny_llama / "model.safetensors"), load_file(tmp_path / "out" / "model" / "model.safetensors")
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])  # trained, shards and all


def test_a_lora_run_stopped_on_one_process_resumes_on_two(tiny_bert, tmp_path):
    """A LoRA checkpoint holds what trains under the bare model's names, whatever the number of
    processes (no DDP wrapper's prefix): one process's loads into two, and theirs is named alike."""
    from safetensors.torch import load_file

    from lmtune.training.adapter_checkpoint import TRAINABLE

    from .conftest import write_sentiment
    from .test_resume import Killed, _kill_at

    train = write_sentiment(tmp_path / "train.csv", 60, seed=1)
    val = write_sentiment(tmp_path / "val.csv", 12, seed=2)
    cfg = {"model": str(tiny_bert), "output_dir": str(tmp_path / "out"), "data": {"train": str(train), "validation": str(val)},
           "strategy": {"name": "lora", "r": 4},
           "train": {**TRAIN, "epochs": 2, "batch_size": 4, "eval_steps": 5, "metric": "loss"}}
    with pytest.raises(Killed):  # one process: stopped after the checkpoint of step 10
        lmtune.train(cfg, progress=False, on_evaluate=_kill_at(15))
    last = tmp_path / "out" / "checkpoints" / "last"
    one = load_file(str(last / TRAINABLE)).keys()
    assert not (last / "model.safetensors").exists()

    proc = _run(cfg, tmp_path, "--resume", "--nproc", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "going on with 2" in proc.stderr
    assert load_file(str(last / TRAINABLE)).keys() == one  # written by two processes
