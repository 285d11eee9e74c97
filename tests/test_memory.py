"""The memory estimate of a training step, the micro-batches it picks, and the guard that refuses a run
that cannot fit: micro-batches give the whole batch's gradients, a run too large for the free memory
stops before it trains with one line, a step that runs out of GPU memory is redone in halved
micro-batches, and the default runs of the real SmolLM2 stay well within a 24 GB machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import lmtune
from lmtune.core import memory
from lmtune.core.errors import LmtuneError

from .conftest import tiny_config

SMOLLM2 = memory.Shape(layers=30, hidden=576, intermediate=1536, heads=9, kv_hidden=192)


def test_shape_is_read_from_llama_and_bert_configs(tiny_llama, tiny_bert):
    from transformers import AutoConfig

    assert memory.Shape.of(AutoConfig.from_pretrained(tiny_llama)) == memory.Shape(2, 32, 64, 4, 16)
    assert memory.Shape.of(AutoConfig.from_pretrained(tiny_bert)) == memory.Shape(2, 32, 64, 2, 32)


def test_activations_grow_with_tokens_and_shrink_with_each_saving():
    def act(tokens: int = 8192, length: int = 256, **flags: bool) -> int:
        flags = {"adapters": False, "checkpointing": False, "eager": False, "half": False, **flags}
        return memory.activation_bytes(SMOLLM2, tokens, length, **flags)

    assert act(tokens=4096) * 2 == pytest.approx(act(), rel=1e-6)
    assert act(adapters=True) > act()
    assert act(eager=True) > act()
    assert act(eager=True, length=512) > act(eager=True)
    assert act(checkpointing=True) < act() / 2
    assert act(half=True) < act()
    # measured on CPU in fp32, 8 x 256 tokens, eager attention, at the peak of a run: LoRA 8.0 GiB and
    # full fine-tuning 7.7 GiB in all; the estimate stays within 15% of both
    lora = memory.training_estimate(SMOLLM2, 545_000_000, 2_442_240, 8, 256, adapters=True, checkpointing=False,
                                    eager=True, half=False)
    full = memory.training_estimate(SMOLLM2, 545_000_000, 134_515_008, 8, 256, adapters=False, checkpointing=False,
                                    eager=True, half=False)
    assert lora.total / 2**30 == pytest.approx(8.0, rel=0.15)
    assert full.total / 2**30 == pytest.approx(7.7, rel=0.15)


def test_the_micro_batch_is_the_largest_half_that_fits():
    def estimate(micro: int) -> memory.Estimate:
        return memory.Estimate(weights=0, gradients=0, optimizer=0, activations=micro * 100, runtime=0)

    assert memory.micro_batch_for(10_000, 32, estimate) == 32
    assert memory.micro_batch_for(3_200, 32, estimate) == 32
    assert memory.micro_batch_for(3_199, 32, estimate) == 16
    assert memory.micro_batch_for(900, 32, estimate) == 8
    assert memory.micro_batch_for(500, 24, estimate) == 3
    assert memory.micro_batch_for(1, 32, estimate) == 1


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def test_micro_batches_train_the_same_weights_as_whole_batches(tiny_bert, toy_data, tmp_path):
    whole = tiny_config(tiny_bert, toy_data, tmp_path / "whole", epochs=1, dropout=0.0, report=False, report_to=[])
    split = tiny_config(tiny_bert, toy_data, tmp_path / "split", epochs=1, dropout=0.0, report=False, report_to=[],
                        micro_batch_size=3)  # 8 = 3 + 3 + 2: parts of unequal size
    a = lmtune.train(whole, progress=False)
    b = lmtune.train(split, progress=False)
    assert a.metrics["train"]["micro_batch_size"] == 8 and b.metrics["train"]["micro_batch_size"] == 3
    wa, wb = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=2e-5, rtol=1e-4, msg=key)
    losses = lambda r: [h["loss"] for h in r.history if "loss" in h]  # noqa: E731
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)
    from safetensors.torch import load_file

    base = load_file(tiny_bert / "model.safetensors")
    assert any(not torch.equal(base[k], wa[f"bert.{k}"]) for k in base if f"bert.{k}" in wa)  # (it trained)
    assert a.metrics["train"]["samples"] == b.metrics["train"]["samples"]


CHATS = [
    {"messages": [{"role": "user", "content": "when does the bike shop open" + " please" * (i % 5)},
                  {"role": "assistant", "content": "the shop opens at nine" + " on tuesday" * (i % 3)}]}
    for i in range(12)
]


def test_micro_batches_weigh_causal_tokens_not_rows(tiny_llama, tmp_path):
    """Rows of a causal batch train different numbers of tokens: each part weighs in by its tokens."""
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    runs = {}
    for name, micro in (("whole", "auto"), ("split", 1)):
        cfg = {
            "model": str(tiny_llama), "task": "causal_lm", "output_dir": str(tmp_path / name),
            "data": {"train": str(data), "validation": str(data), "max_length": 64},
            "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "log_steps": 1,
                      "micro_batch_size": micro, "report": False, "report_to": [], "compile": False},
            "eval": {"generate_rows": 0},
        }
        runs[name] = lmtune.train(cfg, progress=False)
    wa, wb = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=2e-5, rtol=1e-4, msg=key)
    la = [h["loss"] for h in runs["whole"].history if "loss" in h]
    lb = [h["loss"] for h in runs["split"].history if "loss" in h]
    assert la == pytest.approx(lb, abs=1e-5)


def _forward_fails_over(monkeypatch: pytest.MonkeyPatch, rows: int, after_calls: int = 0) -> None:
    """A GPU's out-of-memory error, on CPU: a training forward of more than `rows` rows raises it (from
    the `after_calls`-th training forward on), before it computes anything."""
    from transformers import BertForSequenceClassification

    forward = BertForSequenceClassification.forward
    calls = [0]

    def failing(self, *args, **kwargs):
        if self.training:
            calls[0] += 1
            if calls[0] > after_calls and kwargs["input_ids"].shape[0] > rows:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", failing)


def test_out_of_memory_halves_the_micro_batch_and_redoes_the_step(tiny_bert, toy_data, tmp_path, monkeypatch, capsys):
    """Micro-batches of 8 and of 4 run out of memory in the first step: it is redone in micro-batches of
    2, and the run trains the same weights as one given micro-batches of 2 from the start."""
    by_hand = tiny_config(tiny_bert, toy_data, tmp_path / "by_hand", epochs=1, dropout=0.0, report=False, report_to=[],
                          micro_batch_size=2)
    a = lmtune.train(by_hand, progress=False)
    _forward_fails_over(monkeypatch, rows=2)
    halved = tiny_config(tiny_bert, toy_data, tmp_path / "halved", epochs=1, dropout=0.0, report=False, report_to=[],
                         micro_batch_size=8)
    b = lmtune.train(halved, progress=False)
    err = capsys.readouterr().err
    assert ("step 1: out of memory with micro-batches of 8; going on from the same step with micro-batches of 4 "
            "(each batch of 8 in 2)") in err
    assert ("step 1: out of memory with micro-batches of 4; going on from the same step with micro-batches of 2 "
            "(each batch of 8 in 4)") in err
    assert b.metrics["train"]["micro_batch_size"] == 2
    assert b.metrics["train"]["estimated_peak_mb"] == a.metrics["train"]["estimated_peak_mb"]
    assert b.metrics["train"]["samples"] == a.metrics["train"]["samples"] == 96
    assert b.metrics["train"]["steps"] == a.metrics["train"]["steps"]
    wa, wb = _weights(tmp_path / "by_hand"), _weights(tmp_path / "halved")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize(("micro", "accumulate", "after_calls", "message"), [
    (1, 1, 0, "step 1: out of memory with micro-batches of 1 example; set train.gradient_checkpointing: true, "
              "or a shorter data.max_length"),
    (8, 2, 1, "step 1: out of memory in batch 2 of the 2 accumulated for the step; set train.micro_batch_size: 4, "
              "or train.gradient_checkpointing: true, or a shorter data.max_length"),
])
def test_out_of_memory_that_halving_cannot_mend_stops_with_one_line(tiny_bert, toy_data, tmp_path, monkeypatch,
                                                                     micro, accumulate, after_calls, message):
    _forward_fails_over(monkeypatch, rows=0, after_calls=after_calls)
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=1, report=False, report_to=[],
                      micro_batch_size=micro, gradient_accumulation_steps=accumulate)
    with pytest.raises(LmtuneError) as e:
        lmtune.train(cfg, progress=False)
    assert str(e.value) == message


def test_auto_splits_a_batch_over_the_budget_and_says_so(tiny_bert, toy_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory, "CPU_SHARE", 1e-9)  # nothing fits: the smallest micro-batch
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**40)  # (and the guard lets it train)
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=1, report=False, report_to=[])
    result = lmtune.train(cfg, progress=False)
    assert result.metrics["train"]["micro_batch_size"] == 1
    assert result.metrics["train"]["estimated_peak_mb"] > 0
    err = capsys.readouterr().err
    assert "train.micro_batch_size: auto -> 1: each batch of 8 in 8 micro-batches" in err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["batch_size"] == 8


def test_a_run_that_cannot_fit_stops_before_training_and_leaves_no_folder(tiny_bert, toy_data, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 1)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=1)
    with pytest.raises(LmtuneError) as e:
        lmtune.train(cfg, progress=False)
    message = str(e.value)
    assert message.startswith("memory: the run needs about ") and "this machine has 0.0 GiB free" in message
    assert "nothing lmtune can change fits it" in message  # (not even a micro-batch of one: the process alone is more)
    assert "\n" not in message and message.endswith("(train.memory_guard: false trains anyway)")
    assert not (tmp_path / "run").exists()
    cfg["train"]["memory_guard"] = False  # the user knows better: it trains
    assert lmtune.train(cfg, progress=False).metrics["train"]["steps"] > 0


# ---------------------------------------------------------------- the real model at its defaults

# A 24 GB machine keeps more than half of itself free while a default run trains: the bound is 12 GiB
# (the budget that picks the micro-batch is 10 GiB; the rest is the estimate's error).
BOUND_KB = 12 * 2**20


def _dialogue_rows(n: int) -> list[dict[str, str]]:
    names = ["Anna", "Ben", "Cara", "Dev"]
    rows = []
    for i in range(n):
        turns = [f"{names[(i + t) % 4]}: shall we meet at the station at {t % 12 + 1} to take the train to the lake "
                 f"and bring sandwiches, water and a map for the walk number {i}?" for t in range(12)]
        rows.append({"dialogue": "\n".join(turns), "summary": f"{names[i % 4]} and friends meet at the station for a walk."})
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_the_default_causal_run_of_smollm2_fits_a_24_gb_machine(strategy, tmp_path):
    """The default batch (32) and length (auto: 256 here) of a causal-LM run on the real SmolLM2, two
    optimizer steps in a process of its own, its peak resident set read back from the kernel."""
    pytest.importorskip("gguf")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in _dialogue_rows(72)))
    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(json.dumps(r) + "\n" for r in _dialogue_rows(4)))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lmtune", "train", "model=smollm2-135m", "task=causal_lm",
           "data.prompt_template=Summarize the dialogue:\n{dialogue}", "data.response_column=summary",
           f"data.train={train}", f"data.validation={validation}", f"strategy.name={strategy}",
           f"output_dir={run}", "train.max_steps=2", "eval.generate_rows=0", "train.report=false"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # a parent of its own, whose only child is the run: the kernel's largest resident set of its children
    measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
               "print('maxrss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", measure, *cmd], env=env, capture_output=True, text=True)
    out = proc.stderr + proc.stdout
    assert proc.returncode == 0, out[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    resolved = json.loads((run / "data.json").read_text())["resolved"]
    assert resolved["max_length"]["value"] == 256 and yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_size"] == 32
    assert metrics["train"]["micro_batch_size"] < 32
    peak_kb = int(proc.stdout.split("maxrss_kb")[-1])
    assert metrics["train"]["peak_memory_mb"] * 1024 <= peak_kb * 1.01
    assert peak_kb < BOUND_KB, f"peak {peak_kb / 2**20:.1f} GiB over {BOUND_KB / 2**20:.0f} GiB:\n{out[-2000:]}"
    assert "plan: a step's peak about " in out and "; fits" in out
