"""`lmtune train --resume` goes on with the config the run started with: from the config file without
its first overrides, or from the run folder alone; an override given again must agree, except for the
few keys a resumed run may change."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lmtune
from lmtune.cli import main

from .conftest import tiny_config
from .test_resume import Killed, _kill_at

COMMON = dict(epochs=2, eval_steps=4, metric="loss", lr=3e-3)  # epochs and lr: typed as overrides at the start


def _weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def _same_weights(a, b) -> None:
    a, b = _weights(a), _weights(b)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def whole(tiny_bert, toy_data, tmp_path_factory):
    """The run unbroken."""
    return lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path_factory.mktemp("whole") / "run", **COMMON),
                        progress=False)


@pytest.fixture
def runs(whole, tiny_bert, toy_data, tmp_path, monkeypatch):
    """The unbroken run, and the same run stopped at step 8 (started as `lmtune train cfg.yaml
    train.epochs=2 train.lr=0.003`), in the working directory; cfg.yaml lacks those two keys and
    says train.batch_size: 8 (as the run) and train.seed: 7 (edited since: the run has 42)."""
    monkeypatch.chdir(tmp_path)
    started = tiny_config(tiny_bert, toy_data, tmp_path / "broken", **COMMON)
    with pytest.raises(Killed):
        lmtune.train(started, progress=False, on_evaluate=_kill_at(8))
    file = {**started, "output_dir": "broken",
            "train": {k: v for k, v in started["train"].items() if k not in ("epochs", "lr")} | {"seed": 7}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(file))
    return whole.output_dir, tmp_path / "broken"


def test_resume_from_the_config_file_without_the_first_overrides(runs, capfd):
    whole, broken = runs
    assert main(["train", "cfg.yaml", "--resume", "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert "resuming broken with the config it started with" in err
    assert "these keep the run's values, not the config file's: train.seed 42 (file: 7)" in err
    _same_weights(whole, broken)


def test_resume_from_the_run_folder_with_a_key_that_may_change(runs, capfd):
    whole, broken = runs
    started = yaml.safe_load((broken / "config.yaml").read_text())
    assert main(["train", "broken", "--resume", "train.log_steps=1", "--no-progress"]) == 0
    assert "train.log_steps: 2 -> 1 from here on" in capfd.readouterr().err
    saved = yaml.safe_load((broken / "config.yaml").read_text())
    assert saved["train"]["log_steps"] == 1
    saved["train"]["log_steps"] = 2
    assert saved == started
    _same_weights(whole, broken)


def test_an_override_that_disagrees_with_the_run_is_refused(runs, capfd):
    _, broken = runs
    capfd.readouterr()
    before = (broken / "config.yaml").read_text()
    assert main(["train", "cfg.yaml", "--resume", "train.lr=0.5", "train.epochs=2"]) == 2
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("lmtune: error: train.lr=0.5: the run in broken started with train.lr=0.003")
    assert ("train.log_steps, train.threads, train.early_stopping_patience, train.keep_checkpoints, train.report, "
            "train.report_to may change") in err[0]
    assert (broken / "config.yaml").read_text() == before
