"""A killed run resumes from its last checkpoint and ends with the same weights as an unbroken run;
a finished run folder is never overwritten unless asked."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lmtune
from lmtune.core.errors import LmtuneError
from lmtune.core.rundir import RunDir

from .conftest import tensorboard_events, tiny_config


class Killed(Exception):
    pass


def _kill_at(step: int):
    def callback(at: int, metrics: dict) -> None:
        if at >= step:
            raise Killed(at)

    return callback


def _final(run_dir):
    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def test_resume_gives_the_same_weights_as_an_unbroken_run(tiny_bert, toy_data, tmp_path):
    # dropout on, so that restoring the RNG state matters too
    common = dict(epochs=3, eval_steps=4, metric="loss", dropout=0.1)
    whole = lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "whole", **common), progress=False)

    broken_cfg = tiny_config(tiny_bert, toy_data, tmp_path / "broken", **common)
    with pytest.raises(Killed):  # killed in the middle of epoch 2, after the checkpoint of step 12
        lmtune.train(broken_cfg, progress=False, on_evaluate=_kill_at(16))
    run = RunDir(tmp_path / "broken")
    assert not run.finished
    state = json.loads((run.last / "loop_state.json").read_text())
    assert state["step"] == 12 and state["epoch"] == 1 and state["batches_in_epoch"] == 0

    with pytest.raises(LmtuneError, match=r"use resume=True to continue it or overwrite=True"):
        lmtune.train(broken_cfg, progress=False)
    resumed = lmtune.train(broken_cfg, progress=False, resume=True)

    a, b = _final(whole.output_dir), _final(resumed.output_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert resumed.metrics["validation"]["loss"] == pytest.approx(whole.metrics["validation"]["loss"], abs=1e-6)
    # the history holds each step once, as in the unbroken run
    steps = lambda r: [(h["step"], "eval" in h) for h in r.history]  # noqa: E731
    assert steps(resumed) == steps(whole)
    # and so do TensorBoard's scalars: what the killed run logged past its checkpoint is dropped
    def losses(r):
        return [(e.step, e.value) for e in tensorboard_events(r.output_dir / "tensorboard").Scalars("train/loss")]

    history = [(h["step"], pytest.approx(h["loss"], rel=1e-6)) for h in resumed.history if "loss" in h]
    assert losses(resumed) == history
    assert [step for step, _ in losses(resumed)] == [step for step, _ in losses(whole)]


def test_resume_in_the_middle_of_an_epoch(tiny_bert, toy_data, tmp_path):
    common = dict(epochs=2, eval_steps=5, metric="loss")
    whole = lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "whole", **common), progress=False)
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "broken", **common)
    with pytest.raises(Killed):
        lmtune.train(cfg, progress=False, on_evaluate=_kill_at(15))
    state = json.loads((tmp_path / "broken" / "checkpoints" / "last" / "loop_state.json").read_text())
    assert state["step"] == 10 and state["epoch"] == 0 and state["batches_in_epoch"] == 10  # 12 batches an epoch
    resumed = lmtune.train(cfg, progress=False, resume=True)
    a, b = _final(whole.output_dir), _final(resumed.output_dir)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_finished_run_is_not_overwritten_unless_asked(tiny_bert, toy_data, tmp_path):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=2, epochs=1)
    lmtune.train(cfg, progress=False)
    before = (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(LmtuneError, match="finished run"):
        lmtune.train(cfg, progress=False)
    with pytest.raises(LmtuneError, match="finished run"):
        lmtune.train(cfg, progress=False, resume=True)
    assert (tmp_path / "run" / "metrics.json").read_text() == before
    lmtune.train(cfg, progress=False, overwrite=True)
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_resume_refuses_a_changed_config(tiny_bert, toy_data, tmp_path):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=2, eval_steps=2)
    with pytest.raises(Killed):
        lmtune.train(cfg, progress=False, on_evaluate=_kill_at(4))
    cfg["train"]["lr"] = 1e-4
    with pytest.raises(LmtuneError, match=r"train\.lr"):
        lmtune.train(cfg, progress=False, resume=True)


@pytest.mark.slow
def test_resume_after_a_real_kill(tiny_bert, toy_data, tmp_path):
    """SIGKILL the command line in the middle of training, then resume: same weights as unbroken."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    from .conftest import wait_for_checkpoint

    common = dict(epochs=40, eval_steps=6, metric="loss", log_steps=6)
    whole = lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "whole", **common), progress=False)

    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "killed", **common)
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "train", str(path), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = wait_for_checkpoint(tmp_path / "killed", lambda s: s["step"] >= 60, proc)
    assert state is not None and state["step"] >= 60 and proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()

    resumed = lmtune.train(cfg, progress=False, resume=True)
    a, b = _final(whole.output_dir), _final(resumed.output_dir)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
