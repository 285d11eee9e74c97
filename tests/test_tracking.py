"""Experiment tracking: a real Accelerator with lmtune's tracker options writes TensorBoard event
files into the run folder, with the history records as scalars and the config as HParams; a
missing tracker package is a one-line error before any work; no trackers, no files."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from tensorboard.plugins.hparams import plugin_data_pb2

from lmtune.core import tracking
from lmtune.tasks.run_config import validate
from lmtune.core.errors import LmtuneError
from lmtune.core.rundir import RunDir
from lmtune.core.runtime import make_accelerator

from .conftest import tensorboard_events, tiny_config

STEP = {"step": 2, "epoch": 0, "loss": 0.75, "lr": 1e-3, "lrs": {"layer.0": 5e-4, "head": 1e-3, "head.no_decay": 1e-3},
        "samples_per_second": 40.5, "tokens_per_second": 1200.0}
LATER = {**STEP, "step": 4, "loss": 0.5, "lr": 8e-4, "lrs": {"layer.0": 4e-4, "head": 8e-4, "head.no_decay": 8e-4}}
EVAL = {"step": 4, "epoch": 0, "eval": {"accuracy": 0.625, "f1_macro": 0.6, "loss": 0.69, "note": "text", "ok": True},
        "train_eval": {"accuracy": 0.875, "loss": 0.4},
        "forgetting": {"perplexity": 13.5, "base_perplexity": 10.0, "change": 0.35}}


@pytest.fixture
def cfg(tiny_bert, toy_data, tmp_path):
    return validate(tiny_config(tiny_bert, toy_data, tmp_path / "run"))


def _tracked_run(cfg, run_path, records):
    accelerator = make_accelerator("fp32", **tracking.accelerator_options(["tensorboard"], run_path))
    tracking.start(accelerator, cfg, run_path.name)
    for record in records:
        tracking.log(accelerator, record)
    tracking.end(accelerator)
    return accelerator


def test_scalars_land_in_the_run_folder_at_their_steps(cfg, tmp_path):
    run_path = tmp_path / "run"
    _tracked_run(cfg, run_path, [STEP, LATER, EVAL])
    assert [p.relative_to(run_path).parts[0] for p in run_path.rglob("*") if p.is_file()] == ["tensorboard"]
    events = tensorboard_events(run_path / "tensorboard")
    assert set(events.Tags()["scalars"]) == {
        "train/loss", "train/lr", "train/lr/layer.0", "train/lr/head", "train/lr/head.no_decay",
        "train/samples_per_second", "train/tokens_per_second",
        "eval/accuracy", "eval/f1_macro", "eval/loss", "train_sample/accuracy", "train_sample/loss",
        "forgetting/perplexity", "forgetting/change",
    }

    def series(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert series("train/loss") == [(2, 0.75), (4, 0.5)]
    assert series("train/lr/layer.0") == [(2, pytest.approx(5e-4)), (4, pytest.approx(4e-4))]
    assert series("train/tokens_per_second") == [(2, 1200.0), (4, 1200.0)]
    assert series("eval/accuracy") == [(4, 0.625)]
    assert series("train_sample/accuracy") == [(4, 0.875)]
    assert series("forgetting/change") == [(4, pytest.approx(0.35))]
    assert series("forgetting/perplexity") == [(4, 13.5)]


def test_the_config_is_recorded_as_hyperparameters_of_the_run(cfg, tmp_path):
    run_path = tmp_path / "run"
    _tracked_run(cfg, run_path, [STEP])
    content = tensorboard_events(run_path / "tensorboard").PluginTagToContent("hparams")
    # the session start only, beside the scalars: TensorBoard pairs the run's config with its metrics
    assert list(content) == ["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info.hparams
    assert hparams["train.lr"].number_value == pytest.approx(3e-3)
    assert hparams["train.batch_size"].number_value == 8
    assert hparams["task"].string_value == "classification"
    assert hparams["train.report_to"].string_value == '["tensorboard"]'
    assert hparams["train.dropout"].string_value == "null"
    # every key of config.yaml, and nothing else
    saved = yaml.safe_load(cfg.to_yaml())
    assert set(hparams) == set(tracking.hyperparameters(cfg)) and "data.train" in hparams
    assert len(hparams) == sum(len(v) if isinstance(v, dict) else 1 for v in saved.values())


def test_hyperparameters_are_scalars_only(cfg):
    values = tracking.hyperparameters(cfg)
    assert all(isinstance(v, (bool, int, float, str)) for v in values.values())
    # (as in config.yaml: the keys of other tasks, eval.forgetting here, are left out)
    assert values["train.epochs"] == 2 and values["train.report"] is True and "eval.forgetting" not in values
    assert values["output_dir"].endswith("run")


def test_scalars_of_a_record_skip_what_is_not_a_number():
    assert tracking.scalars({"step": 3, "epoch": 1, "eval": {"accuracy": 1, "per_class": {"a": 1.0}, "verdict": "ok",
                                                             "stopped": True}}) == {"eval/accuracy": 1.0}
    assert tracking.scalars({"step": 3, "loss": float("nan")})["train/loss"] != 0  # (NaN is a number: it shows)


def test_no_trackers_no_files(cfg, tmp_path):
    run_path = tmp_path / "run"
    run_path.mkdir()
    assert tracking.accelerator_options([], run_path) == {}
    accelerator = make_accelerator("fp32", **tracking.accelerator_options([], run_path))
    tracking.start(accelerator, cfg, "run")
    tracking.log(accelerator, STEP)
    tracking.end(accelerator)
    assert accelerator.trackers == [] and list(run_path.iterdir()) == []


def test_a_second_run_in_the_same_process_gets_its_own_folder(cfg, tmp_path):
    _tracked_run(cfg, tmp_path / "first", [STEP])
    _tracked_run(cfg, tmp_path / "second", [LATER])
    assert [e.step for e in tensorboard_events(tmp_path / "first" / "tensorboard").Scalars("train/loss")] == [2]
    assert [e.step for e in tensorboard_events(tmp_path / "second" / "tensorboard").Scalars("train/loss")] == [4]


def test_wandb_and_mlflow_name_the_run_and_the_environment_names_the_project(cfg, monkeypatch):
    calls = []

    class Recorder:
        log_with = ["wandb"]
        trackers: list = []

        def init_trackers(self, project, config=None, init_kwargs=None):
            calls.append((project, init_kwargs))

    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    tracking.start(Recorder(), cfg, "sst2-lora")
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    tracking.start(Recorder(), cfg, "sst2-lora")
    assert calls == [("lmtune", {"wandb": {"name": "sst2-lora"}, "mlflow": {"run_name": "sst2-lora"}}),
                     ("mine", {"wandb": {"name": "sst2-lora"}, "mlflow": {"run_name": "sst2-lora"}})]


def test_a_missing_tracker_package_is_one_line_naming_the_key_and_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("mlflow", "wandb") else real(name, *a))
    tracking.check_installed(["tensorboard"])
    with pytest.raises(LmtuneError) as e:
        tracking.check_installed(["tensorboard", "mlflow"])
    assert e.value.problems == ["train.report_to: mlflow needs the mlflow package, which is not installed: "
                                "pip install mlflow (or leave mlflow out of train.report_to)"]
    with pytest.raises(LmtuneError) as e:
        tracking.check_installed(["mlflow", "wandb"])
    assert [p.split(":")[1].strip() for p in e.value.problems] == ["mlflow needs the mlflow package, which is not installed",
                                                                    "wandb needs the wandb package, which is not installed"]


def test_train_refuses_a_missing_tracker_with_exit_2_and_writes_nothing(tiny_bert, toy_data, tmp_path, monkeypatch, capsys):
    from lmtune.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(tiny_config(tiny_bert, toy_data, tmp_path / "run")))
    assert main(["train", str(tmp_path / "cfg.yaml"), "train.report_to=[tensorboard, mlflow]", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == ["lmtune: error: train.report_to: mlflow needs the mlflow package, which is not installed: "
                                "pip install mlflow (or leave mlflow out of train.report_to)"]
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_may_change_its_trackers_and_report(cfg, tmp_path):
    run = RunDir(tmp_path / "run")
    run.start(cfg.to_yaml(), resume=False, overwrite=False)
    (run.path / "history.jsonl").write_text("{}\n")  # an unfinished run
    changed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"report": False, "report_to": []})})
    run.start(changed.to_yaml(), resume=True, overwrite=False)
    assert yaml.safe_load(run.config.read_text())["train"]["report_to"] == []
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": 7})})
    with pytest.raises(LmtuneError, match=r"train.seed \(42 -> 7\)"):
        run.start(other.to_yaml(), resume=True, overwrite=False)
