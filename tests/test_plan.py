"""The memory and time plan: `lmtune plan` (estimate by part, verdict, what would fit, time from a probe),
train.memory_limit and what it chooses (micro-batch, evaluation batch, gradient checkpointing), and the
one-line errors of a limit that nothing fits and of a limit that is not one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lmtune
from lmtune.cli.main import main
from lmtune.core import memory
from lmtune.core.errors import LmtuneError
from lmtune.tasks.run_config import as_config
from lmtune.training.plan import padded_tokens, plan

from .conftest import tiny_config


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


@pytest.mark.parametrize("text, size, share", [("12GiB", 12 * 2**30, None), ("12 GB", 12 * 10**9, None),
                                                ("800MiB", 800 * 2**20, None), ("60%", None, 0.6)])
def test_memory_limits_are_read_in_their_forms(text, size, share):
    limit = memory.parse_limit(text)
    assert (limit.size, limit.share) == (size, share)


@pytest.mark.parametrize("text", ["12 potatoes", "0%", "150%", "12", "-1GiB", "1KB"])
def test_a_nonsense_limit_is_one_line_that_lists_the_accepted_forms(tiny_bert, toy_data, tmp_path, text):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", memory_limit=text)
    with pytest.raises(LmtuneError) as e:
        as_config(cfg)
    (problem,) = e.value.problems
    assert problem.startswith("train.memory_limit: ") and "expected auto, a size such as 12GiB" in problem
    assert "60%" in problem


def test_padded_tokens_count_each_micro_batch_at_its_longest():
    lengths = [5, 3, 8, 2]
    assert padded_tokens(lengths, [[0, 1, 2, 3]], 4, 1) == 4 * 8
    assert padded_tokens(lengths, [[0, 1, 2, 3]], 2, 1) == 2 * 8 + 2 * 3
    assert padded_tokens(lengths, [[0, 1], [2, 3]], 2, 2) == (2 * 5 + 2 * 8) * 2


def _limit_between(low: int, high: int) -> str:
    return f"{(low + high) // 2}B"


def test_batch_size_auto_under_a_small_limit_trains_as_the_same_micro_batches_by_hand(tiny_bert, toy_data, tmp_path, capsys):
    """A limit between the estimates of micro-batches of 8 and 16: auto picks 8 with accumulation to
    the batch of 32, and the weights are those of a run given micro-batches of 8 by hand."""
    base = tiny_config(tiny_bert, toy_data, tmp_path / "probe", epochs=1, batch_size="auto", report=False, report_to=[])
    p = plan(base, probe_steps=0).memory
    assert p.batch_size == 32
    limit = _limit_between(p.estimate_for(8, False).total, p.estimate_for(16, False).total)
    auto = tiny_config(tiny_bert, toy_data, tmp_path / "auto", epochs=1, batch_size="auto", memory_limit=limit,
                       report=False, report_to=[])
    result = lmtune.train(auto, progress=False)
    assert result.metrics["train"]["micro_batch_size"] == 8
    assert "train.micro_batch_size: auto -> 8: each batch of 32 in 4 micro-batches" in capsys.readouterr().err
    hand = tiny_config(tiny_bert, toy_data, tmp_path / "hand", epochs=1, batch_size=32, micro_batch_size=8,
                       report=False, report_to=[])
    lmtune.train(hand, progress=False)
    wa, wb = _weights(tmp_path / "auto"), _weights(tmp_path / "hand")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=0, rtol=0, msg=key)
    whole = plan(tiny_config(tiny_bert, toy_data, tmp_path / "probe", epochs=1, batch_size=32, micro_batch_size=32),
                 probe_steps=0).memory
    assert whole.micro_batch == 32  # (without the limit, the whole batch fits)


def test_the_evaluation_batch_is_halved_to_fit_the_limit(tiny_bert, toy_data, tmp_path):
    base = tiny_config(tiny_bert, toy_data, tmp_path / "run", batch_size=32)
    p = plan(base, probe_steps=0).memory
    assert p.eval_batch == 64  # 2 x batch_size where it fits
    limit = max(p.estimate_for(1, False).total, p.eval_estimate_for(32).total) + 1  # a step fits, an evaluation of 64 not
    assert limit < p.eval_estimate.total
    below = {**base, "train": {**base["train"], "memory_limit": f"{limit}B", "micro_batch_size": 1}}
    tight = plan(below, probe_steps=0)
    assert tight.memory.length == p.length and tight.memory.eval_batch == 32


def test_checkpointing_auto_turns_on_only_where_it_is_needed(tiny_llama, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hello how much does a bike cost"},
                          {"role": "assistant", "content": "twelve euro on tuesday " * 6}]}] * 16
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": str(tiny_llama), "task": "causal_lm", "output_dir": str(tmp_path / "run"),
           "data": {"train": str(data), "validation": str(data), "max_length": 64},
           "train": {"epochs": 1, "batch_size": 4, "precision": "fp32", "report": False, "report_to": [], "compile": False,
                     "micro_batch_size": 1},
           "eval": {"generate_rows": 0}}
    p = plan(cfg, probe_steps=0).memory
    assert not p.checkpointing  # nothing to fit: off
    without, with_ = p.estimate_for(1, False).total, p.estimate_for(1, True).total
    assert with_ < without
    cfg["train"]["memory_limit"] = _limit_between(with_, without)
    assert plan(cfg, probe_steps=0).memory.checkpointing
    cfg["train"]["gradient_checkpointing"] = False  # told off: the limit cannot be met, and the error says what would
    with pytest.raises(LmtuneError) as e:
        lmtune.train(cfg, progress=False)
    message = str(e.value)
    assert message.startswith(f"train.memory_limit: {cfg['train']['memory_limit']} is less than the smallest step")
    assert "the smallest change that fits: train.gradient_checkpointing: true" in message and "\n" not in message
    assert not (tmp_path / "run").exists()


def test_a_limit_nothing_fits_is_one_line_and_exit_2(tiny_bert, toy_data, tmp_path, capsys):
    args = ["train", f"model={tiny_bert}", f"data.train={toy_data['train']}", f"data.validation={toy_data['validation']}",
            f"output_dir={tmp_path / 'run'}", "train.memory_limit=1MiB", "train.report_to=[]"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err[-1]) and err[-1].startswith("lmtune: error: train.memory_limit: 1MiB is less than the smallest step")
    assert "weights" in err[-1] and "runtime" in err[-1] and "Traceback" not in "\n".join(err)


def test_lmtune_plan_prints_the_breakdown_the_verdict_and_a_time_from_a_probe(tiny_bert, toy_data, tmp_path, capsys):
    args = ["plan", f"model={tiny_bert}", f"data.train={toy_data['train']}", f"data.validation={toy_data['validation']}",
            f"output_dir={tmp_path / 'run'}", "train.epochs=2", "train.batch_size=8", "--probe", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "plan: a step's peak about" in out and "weights" in out and "activations" in out
    assert "instead, gradient checkpointing on" in out and "LoRA (r 8)" in out
    assert "an evaluation in batches of 16" in out and "; fits" in out
    assert "time: about" in out and "24 steps" in out and "measured on 2 steps" in out
    assert not (tmp_path / "run").exists()  # nothing written
    assert main([*args, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["memory"]["fits"] is True and record["memory"]["micro_batch_size"] == 8
    assert set(record["memory"]["parts_mb"]) == set(memory.PARTS)
    assert record["time"]["steps"] == 24 and record["time"]["total_s"] > record["time"]["train_s"] > 0
    assert main([*args[:-2], "--probe", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["time"] is None


def test_a_plan_that_does_not_fit_names_the_changes_that_would(tiny_bert, toy_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory, "available_bytes", lambda: 1)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    args = ["plan", f"model={tiny_bert}", f"data.train={toy_data['train']}", f"data.validation={toy_data['validation']}",
            "--probe", "0"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "does NOT fit" in captured.out
    assert captured.err.startswith("lmtune: error: memory: the run needs about") and captured.err.count("\n") == 1


def test_a_run_logs_its_plan_before_training_and_its_time_after_the_first_steps(tiny_bert, toy_data, tmp_path, capsys):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=2, batch_size=8, report=False, report_to=[])
    lmtune.train(cfg, progress=False)
    err = capsys.readouterr().err
    plan_at, trained_at = err.index("plan: a step's peak about"), err.index("step 2/24")
    assert plan_at < trained_at and "; fits" in err[:trained_at]
    time_line = next(line for line in err.splitlines() if line.startswith("time: about"))
    assert "to go: 21 steps of about" in time_line and "and 2 evaluations" in time_line
    assert ", ETA " in next(line for line in err.splitlines() if line.startswith("step 4/24"))


def test_max_length_auto_stays_within_what_a_micro_batch_of_one_fits(tiny_llama, tmp_path, monkeypatch, capsys):
    """With activations of 1 MiB a token and a limit that leaves 100 MiB for them, auto takes 96
    tokens (a multiple of 8) where the inputs and the length rule would allow more."""
    monkeypatch.setattr(memory, "activation_bytes", lambda shape, tokens, length, **flags: tokens * 2**20)
    weights = sum(f.stat().st_size for f in tiny_llama.glob("*.safetensors"))
    limit = memory.RUNTIME + 4 * weights + 100 * 2**20
    rows = [{"messages": [{"role": "user", "content": "hello what does a bike cost " * 16},
                          {"role": "assistant", "content": "twelve euro on tuesday " * 16}]}] * 8
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": str(tiny_llama), "task": "causal_lm", "output_dir": str(tmp_path / "run"),
           "data": {"train": str(data), "validation": str(data)},
           "train": {"epochs": 1, "batch_size": 4, "precision": "fp32", "report": False, "report_to": [], "compile": False,
                     "memory_guard": False, "memory_limit": f"{limit}B"},
           "eval": {"generate_rows": 0}}
    p = plan(cfg, probe_steps=0)
    assert p.cfg.data.max_length == 96
    assert any(n.startswith("data.max_length: auto -> 96") and "a micro-batch of one within" in n for n in p.notes)
    cfg["train"]["memory_limit"] = "auto"
    assert plan(cfg, probe_steps=0).cfg.data.max_length > 96  # (the inputs' own length: nothing to fit)
