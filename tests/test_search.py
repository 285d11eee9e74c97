"""`lmtune search`: trials on a tiny BERT, the budget, the target, pruning, conditional keys, resume
after kill -9, parallel workers, best.yaml, failed trials and bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmtune.core.errors import LmtuneError
from lmtune.tune import search

from .conftest import tiny_config

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")


def search_config(tiny_bert: Path, toy_data: dict, out: Path, space: dict, **spec: object) -> dict:
    raw = tiny_config(tiny_bert, toy_data, out, epochs=2)
    raw["search"] = {"space": space, "trials": 3, "pruner": "none", **spec}
    return raw


def study_of(folder: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=folder.resolve().name, storage=f"sqlite:///{(folder / 'study.db').resolve()}")


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "trials.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_conditional_keys_are_drawn_only_with_their_strategy(tiny_bert, toy_data, tmp_path):
    space = {"strategy.name": {"choice": ["full", "lora"]}, "strategy.r": {"choice": [2, 4]},
             "train.lr": {"loguniform": [1e-3, 1e-2]}}
    result = search.run(search_config(tiny_bert, toy_data, tmp_path / "s", space, trials=5))
    assert result.trials == 5
    trials = study_of(tmp_path / "s").trials
    drawn = {t.params["strategy.name"] for t in trials}
    assert drawn == {"full", "lora"}, "five seeded draws should give both strategies"
    for t in trials:
        saved = yaml.safe_load((tmp_path / "s" / "trials" / f"{t.number:04d}" / "config.yaml").read_text())
        assert saved["strategy"]["name"] == t.params["strategy.name"]
        assert saved["train"]["lr"] == pytest.approx(t.params["train.lr"])
        if t.params["strategy.name"] == "lora":
            assert saved["strategy"]["r"] == t.params["strategy.r"]
        else:
            assert "strategy.r" not in t.params and "r" not in saved["strategy"]
    # the leaderboard: one row per trial, the best first, with the run's own measurements
    table = rows(tmp_path / "s")
    assert len(table) == 5 and table[0]["trial"] == str(result.best_trial)
    values = [float(r["accuracy"]) for r in table]
    assert values == sorted(values, reverse=True)
    lora = next(r for r in table if r["strategy.name"] == "lora")
    full = next(r for r in table if r["strategy.name"] == "full")
    assert 0 < int(lora["trainable_parameters"]) < int(full["trainable_parameters"])
    assert float(full["peak_memory_mb"]) > 0
    assert (tmp_path / "s" / "history.png").stat().st_size > 1000
    assert (tmp_path / "s" / "importances.png").is_file()


def test_history_plot_has_whole_trial_numbers_a_step_for_the_best_and_the_legend_outside():
    import io

    fig = search.history_figure([(0, 0.6), (2, 0.7), (1, 0.5)], "accuracy", "maximize")
    fig.savefig(io.BytesIO(), format="png")  # lays the figure out
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks == [0, 1, 2]
    points, best = ax.get_lines()
    assert list(points.get_ydata()) == [0.6, 0.5, 0.7]  # in trial order
    assert best.get_drawstyle() == "steps-post"
    assert list(best.get_ydata())[:3] == [0.6, 0.6, 0.7]
    legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.y1 <= box.y0, "the legend is below the axes, not over the points"
    low_is_good = search.history_figure([(0, 0.6), (1, 0.7), (2, 0.4)], "loss", "minimize").axes[0].get_lines()[1]
    assert list(low_is_good.get_ydata())[:3] == [0.6, 0.6, 0.4]


def test_best_yaml_reproduces_the_best_trial(tiny_bert, toy_data, tmp_path):
    space = {"train.lr": {"loguniform": [1e-4, 1e-2]}}
    result = search.run(search_config(tiny_bert, toy_data, tmp_path / "s", space, trials=2))
    best = yaml.safe_load((tmp_path / "s" / "best.yaml").read_text())
    assert "search" not in best and best["output_dir"] == str(tmp_path / "s" / "best")
    proc = subprocess.run([sys.executable, "-m", "lmtune", "train", str(tmp_path / "s" / "best.yaml"), "--no-progress"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout.strip().splitlines()[-1])
    assert again["validation"]["accuracy"] == pytest.approx(result.best_value, abs=1e-9)
    trained = json.loads((tmp_path / "s" / "trials" / f"{result.best_trial:04d}" / "metrics.json").read_text())
    assert again["validation"]["loss"] == pytest.approx(trained["validation"]["loss"], rel=1e-4)


def test_trials_keep_their_model_and_no_checkpoints(tiny_bert, toy_data, tmp_path):
    space = {"train.lr": {"loguniform": [1e-4, 1e-2]}}
    result = search.run(search_config(tiny_bert, toy_data, tmp_path / "s", space, trials=2))
    folders = sorted((tmp_path / "s" / "trials").iterdir())
    folders = [f for f in folders if f.is_dir()]
    assert len(folders) == 2
    for folder in folders:
        assert (folder / "model").is_dir(), folder
        assert not (folder / "checkpoints").exists(), f"{folder} kept its checkpoints"
        assert yaml.safe_load((folder / "config.yaml").read_text())["train"]["keep_checkpoints"] == "none"
    assert (tmp_path / "s" / "trials" / f"{result.best_trial:04d}" / "model").is_dir()
    # the best trial's model stays even though no checkpoint does; best.yaml is the user's config
    assert "keep_checkpoints" not in yaml.safe_load((tmp_path / "s" / "best.yaml").read_text()).get("train", {})


def test_a_config_that_names_its_checkpoints_keeps_them_in_every_trial(tiny_bert, toy_data, tmp_path):
    raw = search_config(tiny_bert, toy_data, tmp_path / "s", {"train.lr": {"loguniform": [1e-4, 1e-2]}}, trials=1)
    raw["train"]["keep_checkpoints"] = "last"
    search.run(raw)
    assert (tmp_path / "s" / "trials" / "0000" / "checkpoints" / "last").is_dir()


def test_stop_when_ends_the_search_at_the_first_trial_that_reaches_it(tiny_bert, toy_data, tmp_path):
    # lr 1e-9 learns nothing (accuracy at chance), 3e-3 learns the toy set (as in test_training)
    space = {"train.lr": {"choice": [1e-9, 3e-3]}}
    raw = search_config(tiny_bert, toy_data, tmp_path / "s", space, trials=8,
                        stop_when={"metric": "accuracy", "at_least": 0.9})
    raw["train"].update(epochs=6, dropout=0.0)
    result = search.run(raw)
    trials = sorted(study_of(tmp_path / "s").trials, key=lambda t: t.number)
    reached = [t for t in trials if t.value >= 0.9]
    assert result.target_reached and reached
    assert reached[0] is trials[-1], "the search goes on until, and only until, a trial reaches the target"
    assert len(trials) < 8


def test_a_hopeless_trial_is_pruned_after_its_first_evaluations(tiny_bert, toy_data, tmp_path):
    space = {"train.lr": {"choice": [3e-3, 1e-9]}}
    raw = search_config(tiny_bert, toy_data, tmp_path / "s", space, trials=6, pruner="median", metric="loss")
    raw["train"].update(epochs=3, eval_steps=4, dropout=0.0)  # 36 steps a run, evaluated every 4
    search.run(raw)
    trials = study_of(tmp_path / "s").trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, [(t.params, t.state.name, t.intermediate_values) for t in trials]
    for t in pruned:
        assert t.params["train.lr"] == 1e-9
        history = (tmp_path / "s" / "trials" / f"{t.number:04d}" / "history.jsonl").read_text().splitlines()
        evals = [json.loads(line) for line in history if "eval" in json.loads(line)]
        assert 2 <= len(evals) and evals[-1]["step"] < 36, "a pruned trial stops before its last step, not at its first evaluation"
        # reported by training examples seen (8 a step): comparable across batch sizes
        assert sorted(t.intermediate_values) == [e["step"] * 8 for e in evals]
    assert any(r["state"] == "pruned" and r["note"].startswith("pruned after") for r in rows(tmp_path / "s"))


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tiny_bert, toy_data, tmp_path, monkeypatch):
    from lmtune.training import loop as training

    real = training.train

    def train(config, **kwargs):
        if config["train"]["batch_size"] == 16:
            raise RuntimeError("CPU out of memory: tried to allocate 8 GB\nmore lines of detail")
        result = real(config, **kwargs)
        if config["train"]["batch_size"] == 4:  # a diverged run
            result.metrics["validation"]["accuracy"] = float("nan")
        return result

    monkeypatch.setattr(training, "train", train)
    space = {"train.batch_size": {"choice": [8, 16, 4]}}
    result = search.run(search_config(tiny_bert, toy_data, tmp_path / "s", space, trials=6, seed=3))
    table = rows(tmp_path / "s")
    assert len(table) == 6 and result.trials == 6
    notes = {"16": "RuntimeError: CPU out of memory: tried to allocate 8 GB",
             "4": "validation accuracy is NaN: the run diverged (a lower train.lr?)"}
    for r in table:
        if r["train.batch_size"] == "8":
            assert r["state"] == "complete" and r["note"] == ""
        else:
            assert r["state"] == "fail" and r["note"] == notes[r["train.batch_size"]]
    assert {r["train.batch_size"] for r in table} == {"8", "16", "4"}, "six seeded draws give every choice"


def _trial_running(folder: Path, number: int) -> bool:
    return (folder / "trials" / f"{number:04d}" / "config.yaml").is_file()


def test_a_search_killed_during_its_second_trial_resumes_without_losing_or_repeating(tiny_bert, toy_data, tmp_path):
    folder = tmp_path / "s"
    space = {"train.lr": {"loguniform": [1e-4, 1e-2]}}
    raw = search_config(tiny_bert, toy_data, folder, space, trials=3)
    raw["train"]["epochs"] = 4
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "lmtune", "search", str(config)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # only a guard against a hung search
    while proc.poll() is None and not _trial_running(folder, 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = study_of(folder).trials
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    first = before[0].params

    again = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert "trial 1 was running when the search stopped" in again.stderr
    trials = study_of(folder).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    assert complete[0].number == 0 and complete[0].params == first, "the finished trial is kept"
    assert trials[1].state.name == "FAIL" and trials[1].user_attrs["interrupted"]
    retried = [t for t in complete if t.user_attrs.get("retry_of") == 1]
    assert len(retried) == 1 and retried[0].params == trials[1].params, "the killed trial runs again, once"
    params = [json.dumps(t.params, sort_keys=True) for t in complete]
    assert len(set(params)) == 3, "no finished trial is repeated"
    assert json.loads(again.stdout.strip().splitlines()[-1])["trials"] == 3
    for t in complete:  # finished trials keep no checkpoints
        assert not (folder / "trials" / f"{t.number:04d}" / "checkpoints").exists()
        assert (folder / "trials" / f"{t.number:04d}" / "model").is_dir()


def test_parallel_workers_write_one_study(tiny_bert, toy_data, tmp_path):
    folder = tmp_path / "s"
    raw = search_config(tiny_bert, toy_data, folder, {"train.lr": {"loguniform": [1e-4, 1e-2]}}, trials=4, parallel=2)
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "lmtune", "search", str(config)], env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    trials = study_of(folder).trials
    assert [t.state.name for t in trials].count("COMPLETE") >= 4
    assert len({t.number for t in trials}) == len(trials)
    for t in trials:  # every trial's own run folder, finished
        assert (folder / "trials" / f"{t.number:04d}" / "metrics.json").is_file()
    assert len(rows(folder)) == len(trials)


KILL_ONCE = '''
import os, signal
import lmtune.training.loop as training
_train = training.train
def train(*args, **kwargs):
    marker = os.environ["LMTUNE_TEST_KILL_ONCE"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer does
    return _train(*args, **kwargs)
training.train = train
'''


def test_a_worker_killed_by_sigkill_fails_its_trial_as_killed_and_the_search_goes_on(tiny_bert, toy_data, tmp_path):
    folder = tmp_path / "s"
    raw = search_config(tiny_bert, toy_data, folder, {"train.lr": {"loguniform": [1e-4, 1e-2]}}, trials=3, parallel=2)
    raw["train"]["max_steps"] = 2
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILL_ONCE)  # (started with every worker process)
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(hooks), *filter(None, [ENV.get("PYTHONPATH")])]),
               LMTUNE_TEST_KILL_ONCE=str(tmp_path / "killed-one"))
    proc = subprocess.run([sys.executable, "-m", "lmtune", "search", str(config)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    states = {t.number: t.state.name for t in study_of(folder).trials}
    killed = [r for r in rows(folder) if r["note"] == "killed (out of memory?)"]
    assert len(killed) == 1 and killed[0]["state"] == "fail"
    assert f"trial {killed[0]['trial']} was killed (out of memory?)" in proc.stderr
    assert sorted(states.values()).count("COMPLETE") == 2  # the budget of 3 counts the killed trial
    assert "retry" not in proc.stderr  # (its values are not tried again)


def test_bad_search_configs_are_reported_at_once_and_nothing_is_written(tiny_bert, toy_data, tmp_path):
    folder = tmp_path / "s"
    space = {
        "train.lrr": {"loguniform": [1e-5, 1e-3]},
        "train.weight_decay": {"uniform": [0.1, 0.0]},
        "train.batch_size": {"choice": []},
        "strategy.r": {"choice": [4, 8]},
        "train.epochs": {"int": [1, 3], "choice": [1]},
    }
    raw = search_config(tiny_bert, toy_data, folder, space, stop_when={"metric": "bleu", "at_least": 0.5},
                        storage="sqlite:////no/such/folder/study.db")
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "lmtune", "search", str(config)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith("lmtune: error: ") for line in lines), proc.stderr
    text = proc.stderr
    assert "search.space.train.lrr: not a config key of task classification (did you mean 'train.lr'?)" in text
    assert "search.space.train.weight_decay.uniform: the range [0.1, 0.0] is empty or reversed" in text
    assert "search.space.train.batch_size.choice: empty" in text
    assert "search.space.train.epochs: give exactly one of" in text
    assert "search.stop_when.metric: 'bleu' is not reported by task classification" in text
    assert "search.storage: cannot open sqlite:////no/such/folder/study.db" in text
    assert "search.space.strategy.r: a key of strategy lora, which this search never draws (it draws full)" in text
    assert len(lines) == 7
    assert not folder.exists()

    # once the space is right: a value a trial could not take, then an existing folder
    raw["search"] = {"space": {"train.batch_size": {"uniform": [4, 8]}}}
    with pytest.raises(LmtuneError, match="train.batch_size: expected auto or a whole number of examples"):
        search.prepare(raw)
    folder.mkdir()
    (folder / "search.yaml").write_text("x: 1\n")
    raw["search"] = {"space": {"train.lr": {"loguniform": [1e-5, 1e-3]}}}
    with pytest.raises(LmtuneError, match=r"holds a search; use resume=True to continue it or overwrite=True"):
        search.prepare(raw)
