"""A run asked to stop (stop.request in its folder, or SIGTERM) stops cleanly after its step, with
its checkpoint at that step, stopped.json and exit status 3, and resumes to the same weights as an
unbroken run; process.json is there while it runs, failed.json when it fails."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lmtune
from lmtune.core.errors import LmtuneError
from lmtune.core.rundir import RunDir
from lmtune.training import loop, stopping

from .conftest import tiny_config

# dropout on, so that restoring the RNG state at the stopped step matters too; 60 steps: far more
# than the child takes between its first logged step and the test's request
COMMON = dict(max_steps=60, epochs=10, eval_steps=25, metric="loss", dropout=0.1, log_steps=1, report=False, report_to=[])


@pytest.fixture(scope="module")
def unbroken(tiny_bert, toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("unbroken") / "run"
    lmtune.train(tiny_config(tiny_bert, toy_data, out, **COMMON), progress=False)
    return load_file(str(out / "checkpoints" / "last" / "model.safetensors"))


def _start(cfg: dict, tmp_path: Path) -> subprocess.Popen:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen([sys.executable, "-m", "lmtune", "train", str(path), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_a_step(run: RunDir, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the child's history holds a logged step (polled: nothing to block on across processes);
    the timeout only guards against a hung child."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if run.history.is_file() and '"step"' in run.history.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"no step logged before the run ended (exit {proc.poll()}): {proc.stderr.read()}")


def _stopped_cleanly(run: RunDir, proc: subprocess.Popen) -> int:
    """The checks common to both ways of asking; returns the step it stopped at."""
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err
    stopped = json.loads(run.stopped.read_text())
    step = stopped["step"]
    assert 1 <= step < 60 and stopped["total_steps"] == 60 and stopped["at"]
    assert stopped["epoch"] == pytest.approx(step / 12, abs=1e-4)  # 12 batches an epoch
    state = json.loads((run.last / "loop_state.json").read_text())
    assert state["step"] == step
    assert not run.process.exists() and not run.stop_request.exists() and not run.finished
    lines = [line for line in err.splitlines() if line.startswith("stopped at step")]
    assert lines == [f"stopped at step {step} of 60: continue with lmtune train {run.path} --resume"], err
    return step


def _resumes_to(cfg: dict, run: RunDir, unbroken: dict) -> None:
    resumed = lmtune.train(cfg, progress=False, resume=True)
    assert resumed.metrics["train"]["steps"] == 60 and not run.stopped.exists()
    weights = load_file(str(run.last / "model.safetensors"))
    assert weights.keys() == unbroken.keys()
    for name in unbroken:
        torch.testing.assert_close(weights[name], unbroken[name], rtol=0, atol=1e-6, msg=name)


def test_a_stop_request_stops_the_run_at_a_checkpoint_and_resume_ends_as_an_unbroken_run(
        tiny_bert, toy_data, tmp_path, unbroken):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", **COMMON)
    run = RunDir(tmp_path / "run")
    proc = _start(cfg, tmp_path)
    _wait_for_a_step(run, proc)
    run.stop_request.write_text("")
    _stopped_cleanly(run, proc)
    _resumes_to(cfg, run, unbroken)


def test_sigterm_stops_the_run_as_cleanly(tiny_bert, toy_data, tmp_path, unbroken):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", **COMMON)
    run = RunDir(tmp_path / "run")
    proc = _start(cfg, tmp_path)
    _wait_for_a_step(run, proc)
    os.kill(proc.pid, signal.SIGTERM)
    _stopped_cleanly(run, proc)
    _resumes_to(cfg, run, unbroken)


@pytest.mark.parametrize(("error", "line"), [
    (RuntimeError("the disk is on fire\nand more"), "RuntimeError: the disk is on fire"),
    (LmtuneError("train.lr: too high", "train.epochs: too many"), "train.lr: too high; train.epochs: too many"),
])
def test_a_failed_run_leaves_failed_json_and_a_resume_clears_it(tiny_bert, toy_data, tmp_path, monkeypatch, error, line):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=4, eval_steps=2, report=False, report_to=[])
    run = RunDir(tmp_path / "run")

    def fails(*args, **kwargs):
        raise error

    with monkeypatch.context() as m:
        m.setattr(loop, "keep_if_best", fails)  # (inside the first evaluation, at step 2)
        with pytest.raises(type(error)):
            lmtune.train(cfg, progress=False)
    failed = json.loads(run.failed.read_text())
    assert failed["error"] == line and failed["at"]
    assert not run.process.exists() and not run.stopped.exists()
    lmtune.train(cfg, progress=False, resume=True)
    assert run.finished and not run.failed.exists()


def test_process_json_names_this_process_while_the_run_runs(tiny_bert, toy_data, tmp_path):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=2, eval_steps=1, report=False, report_to=[])
    run = RunDir(tmp_path / "run")
    seen, handlers = [], []
    before = signal.getsignal(signal.SIGTERM)

    def look(step: int, metrics: dict) -> None:
        seen.append(json.loads(run.process.read_text()))
        handlers.append(signal.getsignal(signal.SIGTERM))

    lmtune.train(cfg, progress=False, on_evaluate=look)
    assert len(seen) == 2
    assert {p["pid"] for p in seen} == {os.getpid()} and seen[0]["host"] == socket.gethostname()
    assert seen[0]["argv"] == sys.argv and "T" in seen[0]["started"]
    assert handlers[0] != before  # SIGTERM asks for a stop while the run runs, and only then
    assert signal.getsignal(signal.SIGTERM) == before
    assert not run.process.exists() and run.finished


def test_a_run_that_is_not_stoppable_ignores_a_stop_request(tiny_bert, toy_data, tmp_path):
    """(as a search's trials and a comparison's runs train: those are stopped as a whole)"""
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=4, eval_steps=1, report=False, report_to=[])
    run = RunDir(tmp_path / "run")
    handlers = []

    def ask(step: int, metrics: dict) -> None:
        run.stop_request.write_text("stop")
        handlers.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    result = lmtune.train(cfg, progress=False, on_evaluate=ask, stoppable=False)
    assert result.metrics["train"]["steps"] == 4 and handlers == [before] * 4
    assert not run.stop_request.exists() and not run.stopped.exists()


class TwoProcesses:
    """The first of two processes, exchanging nothing: main_decides reduces its own flag."""

    num_processes, is_main_process, device = 2, True, torch.device("cpu")

    def reduce(self, tensor, op):
        return tensor


def test_with_several_processes_the_stop_is_looked_for_every_log_steps_steps(tmp_path):
    run = RunDir(tmp_path)
    watch = stopping.StopWatch(run, TwoProcesses(), log_steps=5, enabled=True)
    assert not watch.requested(5)
    run.stop_request.write_text("")
    assert [step for step in range(1, 11) if watch.requested(step)] == [5, 10]
    run.stop_request.unlink()
    watch.signalled = True
    assert watch.requested(10) and not watch.requested(11)
