"""A LoRA run's checkpoints hold what trains, not the frozen base model, and resume to the same
weights as an unbroken run; a checkpoint that holds the whole model still resumes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmtune
from lmtune.core.config import LoraStrategy
from lmtune.core.errors import LmtuneError
from lmtune.training import adapter_checkpoint, strategies
from lmtune.training.adapter_checkpoint import TRAINABLE, load_trainable, trainable_state

from .conftest import tiny_config
from .test_resume import Killed, _kill_at

# 3 epochs of 12 batches, a checkpoint every 4 steps; dropout on, so that the restored RNG matters
COMMON = dict(epochs=3, eval_steps=4, metric="loss", dropout=0.1, lr=1e-2)


def _lora(tiny_bert, toy_data, out) -> dict:
    cfg = tiny_config(tiny_bert, toy_data, out, **COMMON)
    cfg["strategy"] = {"name": "lora", "r": 4}
    return cfg


def _assert_same_weights(a_dir, b_dir) -> None:
    for path in ("model/adapter_model.safetensors", f"checkpoints/last/{TRAINABLE}"):
        a, b = load_file(str(a_dir / path)), load_file(str(b_dir / path))
        assert a.keys() == b.keys() and a, path
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_lora_checkpoint_holds_only_what_trains_and_resumes_exactly(tiny_bert, toy_data, tmp_path):
    whole = lmtune.train(_lora(tiny_bert, toy_data, tmp_path / "whole"), progress=False)
    cfg = _lora(tiny_bert, toy_data, tmp_path / "broken")
    with pytest.raises(Killed):  # after the checkpoint of step 12
        lmtune.train(cfg, progress=False, on_evaluate=_kill_at(16))
    last = tmp_path / "broken" / "checkpoints" / "last"
    assert not (last / "model.safetensors").exists()  # no copy of the base model
    saved = load_file(str(last / TRAINABLE))
    # the adapters and the new head's trained copy (not the frozen original beside it)
    assert saved and all("lora_" in k or ".modules_to_save." in k for k in saved)
    assert any("classifier.modules_to_save" in k for k in saved)
    assert (last / "optimizer.bin").is_file() and (last / "random_states_0.pkl").is_file()

    resumed = lmtune.train(cfg, progress=False, resume=True)
    _assert_same_weights(whole.output_dir, resumed.output_dir)
    assert resumed.metrics["validation"]["loss"] == pytest.approx(whole.metrics["validation"]["loss"], abs=1e-6)


def test_a_lora_checkpoint_that_holds_the_whole_model_still_resumes(tiny_bert, toy_data, tmp_path, monkeypatch):
    whole = lmtune.train(_lora(tiny_bert, toy_data, tmp_path / "whole"), progress=False)
    cfg = _lora(tiny_bert, toy_data, tmp_path / "broken")
    with monkeypatch.context() as m:  # checkpoints as accelerate writes them by itself: the whole model
        m.setattr(adapter_checkpoint, "leave_out_frozen_base", lambda accelerator: None)
        with pytest.raises(Killed):
            lmtune.train(cfg, progress=False, on_evaluate=_kill_at(16))
    last = tmp_path / "broken" / "checkpoints" / "last"
    assert (last / "model.safetensors").is_file() and not (last / TRAINABLE).exists()
    resumed = lmtune.train(cfg, progress=False, resume=True)
    _assert_same_weights(whole.output_dir, resumed.output_dir)


def test_a_checkpoint_of_other_adapters_is_refused_in_one_line(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    def plan(**lora):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
        return strategies.apply(model, LoraStrategy(name="lora", r=4, **lora), 1e-3, 0.0).model

    every_layer = plan()
    path = tmp_path / TRAINABLE
    save_file(trainable_state(every_layer, every_layer.state_dict()), str(path))
    load_trainable(plan(), path)  # the same adapters: loads
    with pytest.raises(LmtuneError, match=rf"{TRAINABLE} does not match the model being trained: unexpected") as e:
        load_trainable(plan(target_modules=["query"]), path)
    assert len(e.value.problems) == 1 and "\n" not in e.value.problems[0]
