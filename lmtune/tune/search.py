"""`lmtune search CONFIG`: train, evaluate, adjust the hyperparameters, repeat until good enough.

A search is an Optuna study (TPE sampler, seeded) whose trials are ordinary lmtune runs. Every
evaluation of a trial is reported to the pruner through `train(on_evaluate=...)`, so a hopeless trial
stops after its first evaluations; `search.stop_when` ends the search at the first trial that reaches a
target. The search folder holds:

    study.db        the study (SQLite), unless search.storage names another database
    search.yaml     the config the search was started with
    trials/0007/    one run folder per trial (trials/0007.log: what that run printed)
    trials.csv      the leaderboard: state, values, metric, wall time, trainable parameters, peak memory
    best.yaml       a plain run config (no search section) that reproduces the best trial
    history.png     each trial's value and the best so far; importances.png (Optuna's) once enough trials finished

`--resume` after a kill (even kill -9) continues the same study: finished trials stay, a trial that was
running is marked failed and its values are tried again. `search.parallel: N` runs N worker processes
that share the study; with `search.storage` several machines can do the same on one study.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..core.config import RunConfig, SearchConfig, apply_overrides, read_yaml
from ..core.errors import LmtuneError, one_line, option
from ..core.rundir import flatten, write_text_atomic
from ..report import report_run
from ..tasks import get_task
from ..tasks.run_config import validate
from . import KILLED, search_space

WORKER_ENV = "LMTUNE_SEARCH_WORKER"  # the number of a search.parallel process
INTERRUPTED = "interrupted"  # user attribute of a trial that was running when its search was killed


@dataclass
class Search:
    """A checked search: its config, where it lives and what it optimises."""

    raw: dict[str, Any]  # the config as given, search section included
    base: RunConfig
    spec: SearchConfig
    folder: Path
    metric: str
    direction: str  # maximize | minimize
    storage_url: str
    study_name: str

    @property
    def local(self) -> bool:
        """The study lives in the search folder (no other machine works on it)."""
        return self.spec.storage is None


def _metric_problems(spec: SearchConfig, base: RunConfig) -> list[str]:
    task = get_task(base.task)
    problems = []
    if spec.metric is not None and spec.metric not in task.METRICS:
        problems.append(f"search.metric: {spec.metric!r} is not reported by task {base.task}; "
                        f"choose one of {', '.join(task.METRICS)}")
    if spec.stop_when is not None:
        stop = spec.stop_when
        if stop.metric not in task.METRICS:
            problems.append(f"search.stop_when.metric: {stop.metric!r} is not reported by task {base.task}; "
                            f"choose one of {', '.join(task.METRICS)}")
        if (stop.at_least is None) == (stop.at_most is None):
            problems.append("search.stop_when: give exactly one of at_least (a score) or at_most (a loss)")
    return problems


def _storage_problem(url: str) -> str | None:
    """Whether the storage URL opens (a database the machine can reach), without creating anything."""
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure to open is the user's to fix
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"search.storage: cannot open {url}: {reason}"
    return None


def _folder_problem(folder: Path, resume: bool, overwrite: bool) -> str | None:
    if folder.exists() and not folder.is_dir():
        return f"output_dir {folder} exists and is not a folder"
    busy = folder.is_dir() and any(folder.iterdir())
    if busy and not (resume or overwrite):
        return (f"output_dir {folder} holds a search; use {option('--resume', 'resume=True')} to continue it "
                f"or {option('--overwrite', 'overwrite=True')} to start again")
    if resume and not overwrite and not (folder / "search.yaml").is_file():
        return f"output_dir {folder}: no search to resume there (no search.yaml)"
    return None


def prepare(raw: dict[str, Any], *, resume: bool = False, overwrite: bool = False) -> Search:
    """Check everything a search needs, every problem at once (LmtuneError), before anything is
    written: the run config, the space, the metrics, the folder and the storage."""
    raw = dict(raw)
    if not isinstance(raw.get("search"), dict):
        raise LmtuneError("search: missing; lmtune search needs a search section with a space, e.g. "
                          "search: {space: {train.lr: {loguniform: [1e-5, 1e-3]}}}")
    base = validate(raw)  # the schema of every section, the search section's too
    spec = base.search
    assert spec is not None
    problems = search_space.space_problems(spec, base) + _metric_problems(spec, base)
    if not problems:
        problems += search_space.corner_problems(spec, base, raw)
    folder = Path(base.output_dir or "runs/search")
    problem = _folder_problem(folder, resume, overwrite)
    problems += [problem] if problem else []
    url = spec.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    if spec.storage is not None:
        problem = _storage_problem(spec.storage)
        problems += [problem] if problem else []
    if problems:
        raise LmtuneError(*problems)
    metric = spec.metric or base.train.metric or get_task(base.task).METRICS[0]
    greater = get_task(base.task).GREATER_IS_BETTER[metric]
    direction = spec.direction if spec.direction != "auto" else ("maximize" if greater else "minimize")
    return Search(raw, base, spec, folder, metric, direction, url, spec.study or folder.resolve().name)


# ---------------------------------------------------------------- the study


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # lmtune prints its own line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_study(s: Search, *, create: bool) -> Any:
    """The study, created (or joined: a shared storage) or loaded, with the seeded sampler and the pruner."""
    optuna = _optuna()
    if s.local:
        storage = optuna.storages.RDBStorage(s.storage_url, engine_kwargs={"connect_args": {"timeout": 120}})
    else:  # other machines may run trials: one that stops beating its heart for 3 minutes is retried
        storage = optuna.storages.RDBStorage(
            s.storage_url, heartbeat_interval=60, grace_period=180,
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1),
        )
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3),
        "none": lambda: optuna.pruners.NopPruner(),
    }[s.spec.pruner]()
    study = optuna.create_study(storage=storage, pruner=pruner, study_name=s.study_name, direction=s.direction,
                                load_if_exists=not create or not s.local)
    # The sampler's seed: the search's, moved on by the trials the study holds and by the worker's
    # number, so that a resumed search or a second worker does not draw the same values again.
    seed = s.spec.seed if s.spec.seed is not None else s.base.train.seed
    seed += len(study.get_trials(deepcopy=False)) + 100_003 * int(os.environ.get(WORKER_ENV, "0"))
    # TPE after a few random trials: a third of the budget, at least 3 and at most 10
    startup = max(3, min(10, s.spec.trials // 3))
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, group=True)
    return study


def fail_killed(study: Any, pid: int) -> list[int]:
    """Mark the trials that the killed worker `pid` was running as failed, killed (not tried again: they
    would be killed again); their numbers."""
    from optuna.trial import TrialState

    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("pid") == pid:
            study._storage.set_trial_user_attr(t._trial_id, "error", KILLED)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            numbers.append(t.number)
    return numbers


def retry_interrupted(study: Any) -> list[int]:
    """Mark the trials that were running when the search was killed as failed (interrupted) and
    queue their values again; returns their numbers. Only for a study no other process works on."""
    from optuna.trial import TrialState

    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        numbers.append(t.number)
    return numbers


def counted(study: Any) -> int:
    """Trials that use up the budget: finished (complete, pruned, failed on their own) or running."""
    from optuna.trial import TrialState

    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED))
        for t in study.get_trials(deepcopy=False)
    )


def target_reached_by(s: Search, study: Any) -> Any:
    """The first complete trial that reached search.stop_when, or None."""
    from optuna.trial import TrialState

    if s.spec.stop_when is None:
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if s.spec.stop_when.reached(t.user_attrs.get("stop_value")):
            return t
    return None


# ---------------------------------------------------------------- trials


def objective(s: Search, trial: Any) -> float:
    """One trial: draw its values, train its run folder, report every evaluation to the pruner."""
    import optuna

    from ..training.loop import train

    values = search_space.draw(trial, s.spec.space, s.base)
    run_dir = s.folder / "trials" / f"{trial.number:04d}"
    raw = search_space.trial_config(s.raw, values)
    raw["output_dir"] = str(run_dir)
    if s.spec.metric is not None:  # the run keeps its best checkpoint by the metric searched for
        raw.setdefault("train", {})["metric"] = s.spec.metric
    trial.set_user_attr("config", copy.deepcopy(raw))  # (best.yaml: a whole run, checkpoints as the config says)
    # A finished trial keeps its model/ and no checkpoints (they are for resuming a killed trial, and
    # take most of a trial's disk), unless the config says which to keep.
    raw.setdefault("train", {}).setdefault("keep_checkpoints", "none")
    trial.set_user_attr("run", str(run_dir))
    trial.set_user_attr("pid", os.getpid())  # (a worker that dies names its trial by it)
    pruned_at: list[int] = []
    # Evaluations are reported by the training examples seen, so that trials of other batch sizes
    # are compared at the same amount of data; the pruner is asked from a trial's second evaluation
    # on (a slow start is not a hopeless trial).
    t = validate(raw, check_files=False).train
    per_step = t.batch_size * t.gradient_accumulation_steps
    evaluations: list[int] = []

    def on_evaluate(step: int, metrics: dict[str, Any]) -> bool:
        seen = step * per_step
        trial.report(float(metrics[s.metric]), seen)
        evaluations.append(seen)
        if len(evaluations) >= 2 and trial.should_prune():
            pruned_at.append(seen)
            return True
        return False

    start = time.perf_counter()
    log = run_dir.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "w", encoding="utf-8") as out, contextlib.redirect_stderr(out):
            result = train(raw, on_evaluate=on_evaluate, progress=False, stoppable=False)
            report_run(result.output_dir, t.report)
    except Exception as e:
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        trial.set_user_attr("error", one_line(e))
        raise
    trained = result.metrics["train"]
    trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
    for key in ("trainable_parameters", "peak_memory_mb"):
        trial.set_user_attr(key, trained.get(key))
    validation = result.metrics["validation"]
    if s.spec.stop_when is not None:
        trial.set_user_attr("stop_value", validation.get(s.spec.stop_when.metric))
    if pruned_at:
        raise optuna.TrialPruned(f"pruned after {pruned_at[0]} training examples")
    value = float(validation[s.metric])
    if value != value:  # Optuna fails a trial whose value is NaN; say why
        trial.set_user_attr("error", f"validation {s.metric} is NaN: the run diverged (a lower train.lr?)")
    return value


def run_trials(s: Search, study: Any, deadline: float | None) -> None:
    """This process's share of the search: trials until the budget, the target or the deadline."""
    def after_trial(study: Any, trial: Any) -> None:
        print_trial(s, study, trial)
        if counted(study) >= s.spec.trials or target_reached_by(s, study) is not None:
            study.stop()

    if counted(study) >= s.spec.trials or target_reached_by(s, study) is not None:
        return
    timeout = None if deadline is None else max(deadline - time.time(), 0.0)
    if timeout == 0.0:
        return
    study.optimize(lambda trial: objective(s, trial), timeout=timeout, callbacks=[after_trial],
                   catch=(Exception,), gc_after_trial=True)


def print_trial(s: Search, study: Any, trial: Any) -> None:
    """The progress line of a finished trial."""
    state = trial.state.name.lower()
    shown = f"{s.metric} {trial.value:.4f}" if trial.value is not None else trial.user_attrs.get("error", "")
    if state == "pruned" and trial.intermediate_values:
        seen = max(trial.intermediate_values)
        shown = f"pruned after {seen} training examples ({s.metric} {trial.intermediate_values[seen]:.4f})"
    try:
        best = study.best_trial
        best_text = f"; best {s.metric} {best.value:.4f} (trial {best.number})"
    except ValueError:
        best_text = ""
    seconds = trial.user_attrs.get("seconds")
    print(f"trial {trial.number} {state}: {shown}{best_text}; {search_space.describe(trial.params)}"
          + (f" ({seconds:.0f} s)" if seconds is not None else ""), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the whole search


@dataclass
class SearchResult:
    folder: Path
    best_trial: int | None
    best_value: float | None
    trials: int  # finished trials
    target_reached: bool


def _workers(s: Search, config_path: Path) -> None:
    """search.parallel processes on one study, each with its share of the CPU threads (or a GPU)."""
    import torch

    n = s.spec.parallel
    gpus = torch.cuda.device_count()

    def start(i: int) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // n)), **{WORKER_ENV: str(i)})
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        return subprocess.Popen([sys.executable, "-m", "lmtune", "search", str(config_path), "--worker"], env=env)

    procs, codes = [start(i) for i in range(n)], []
    while procs:  # a worker killed (out of memory?) fails its trial; while trials remain, another takes its place
        for proc in procs:
            proc.wait()
        killed = [p for p in procs if p.returncode == -signal.SIGKILL]
        codes += [p.returncode for p in procs if p.returncode != -signal.SIGKILL]
        procs = []
        if killed:
            study = open_study(s, create=False)
            for proc in killed:
                for number in fail_killed(study, proc.pid):
                    print(f"trial {number} was {KILLED}: its worker process ended by SIGKILL; its values are not "
                          f"tried again", file=sys.stderr, flush=True)
            if counted(study) < s.spec.trials and target_reached_by(s, study) is None:
                procs = [start(i) for i in range(len(killed))]
    failed = [c for c in codes if c != 0]
    if failed:
        raise LmtuneError(f"search.parallel: {len(failed)} of {n} worker processes ended with an error "
                          f"(exit {failed[0]}); the study keeps what they finished: {option('--resume', 'resume=True')} continues it")


def run(raw: dict[str, Any], *, resume: bool = False, overwrite: bool = False, worker: bool = False) -> SearchResult:
    """The search as the config says (see the module's docstring). search.timeout counts from now
    (a resumed search gets it afresh)."""
    s = prepare(raw, resume=resume or worker, overwrite=overwrite and not worker)
    deadline = None if s.spec.timeout is None else time.time() + s.spec.timeout
    if worker:  # one of search.parallel processes: the folder and study exist already
        run_trials(s, open_study(s, create=False), deadline)
        return summary(s, open_study(s, create=False))
    if overwrite and s.folder.is_dir():
        shutil.rmtree(s.folder)
    s.folder.mkdir(parents=True, exist_ok=True)
    config_path = s.folder / "search.yaml"
    if config_path.is_file():  # a resumed search goes on with the config it started with
        saved, now = flatten(yaml.safe_load(config_path.read_text())), flatten(s.raw)
        changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        if changed:
            raise LmtuneError(f"cannot resume {s.folder}: the config differs from its search.yaml in "
                              + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed))
    else:
        write_text_atomic(config_path, yaml.safe_dump(s.raw, sort_keys=False))
    study = open_study(s, create=not resume)
    if resume and s.local:
        for number in retry_interrupted(study):
            print(f"trial {number} was running when the search stopped: marked failed, its values queued again",
                  file=sys.stderr)
    print(f"search: {s.spec.trials} trials of {s.base.task} on {s.base.model}, {s.direction} validation "
          f"{s.metric}" + (f", until {_target_text(s)}" if s.spec.stop_when else "")
          + f"; study {s.study_name} in {s.storage_url}", file=sys.stderr, flush=True)
    if s.spec.parallel > 1:
        _workers(s, config_path)
    else:
        run_trials(s, study, deadline)
    result = summary(s, study)
    write_outputs(s, study)
    return result


def _target_text(s: Search) -> str:
    stop = s.spec.stop_when
    assert stop is not None
    return f"{stop.metric} {'>=' if stop.at_least is not None else '<='} {stop.at_least if stop.at_least is not None else stop.at_most}"


def summary(s: Search, study: Any) -> SearchResult:
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not t.user_attrs.get(INTERRUPTED)]
    try:
        best = study.best_trial
    except ValueError:
        best = None
    return SearchResult(
        s.folder, best.number if best else None, best.value if best else None, len(finished),
        target_reached_by(s, study) is not None,
    )


# ---------------------------------------------------------------- outputs


def leaderboard(s: Search, study: Any) -> list[dict[str, Any]]:
    """One row per trial, the best first (complete trials by their metric, then the rest by number)."""
    trials = study.get_trials(deepcopy=False)
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    rows = []
    for t in trials:
        note = t.user_attrs.get("error", "")
        if t.user_attrs.get(INTERRUPTED):
            note = "interrupted (the search was stopped); its values were tried again"
        elif t.user_attrs.get("retry_of") is not None:
            note = f"retry of trial {t.user_attrs['retry_of']}"
        if t.state.name == "PRUNED" and t.intermediate_values:
            note = f"pruned after {max(t.intermediate_values)} training examples"
        rows.append({
            "trial": t.number,
            "state": t.state.name.lower(),
            s.metric: t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                          if t.intermediate_values else None),
            **{p: t.params.get(p) for p in params},
            "seconds": t.user_attrs.get("seconds"),
            "trainable_parameters": t.user_attrs.get("trainable_parameters"),
            "peak_memory_mb": t.user_attrs.get("peak_memory_mb"),
            "run": t.user_attrs.get("run"),
            "note": note,
        })
    sign = -1 if s.direction == "maximize" else 1
    rows.sort(key=lambda r: (r["state"] != "complete", sign * (r[s.metric] or 0) if r["state"] == "complete" else r["trial"]))
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def write_outputs(s: Search, study: Any) -> None:
    """trials.csv, the printed leaderboard, best.yaml and the plots. Plots never fail a search."""
    rows = leaderboard(s, study)
    if rows:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(s.folder / "trials.csv", buf.getvalue())
        shown = [c for c in rows[0] if c not in ("run", "note")] + ["note"]
        print(_table(rows[:15], shown), file=sys.stderr)
    try:
        best = study.best_trial
    except ValueError:
        print("no trial completed: no best.yaml", file=sys.stderr)
    else:
        config = dict(best.user_attrs["config"], output_dir=str(s.folder / "best"))
        header = (f"# trial {best.number} of the search in {s.folder}: validation {s.metric} {best.value:.4f}\n"
                  f"# reproduce it with: lmtune train {s.folder / 'best.yaml'}\n")
        write_text_atomic(s.folder / "best.yaml", header + yaml.safe_dump(config, sort_keys=False))
        reached = target_reached_by(s, study)
        print(f"best: trial {best.number}, validation {s.metric} {best.value:.4f}"
              + (f"; target {_target_text(s)} reached by trial {reached.number}" if reached is not None else "")
              + f"; {s.folder / 'best.yaml'}", file=sys.stderr)
    for problem in write_plots(s, study):
        print(f"warning: {problem}", file=sys.stderr)


def write_plots(s: Search, study: Any) -> list[str]:
    """history.png, and importances.png once four trials completed; returns the problems met."""
    from optuna.trial import TrialState

    problems = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return problems
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    try:
        history_figure([(t.number, t.value) for t in complete], s.metric, s.direction).savefig(
            s.folder / "history.png", dpi=100)
    except Exception as e:  # noqa: BLE001 - a plot is a convenience, never a failed search
        problems.append(f"history.png not drawn: {one_line(e)}")
    if len(complete) >= 4 and any(len({repr(t.params.get(k)) for t in complete}) > 1 for k in complete[0].params):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plots.plot_param_importances(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.tight_layout()
            fig.savefig(s.folder / "importances.png", dpi=100)
            plt.close(fig)
        except Exception as e:  # noqa: BLE001
            problems.append(f"importances.png not drawn: {one_line(e)}")
    return problems


def history_figure(trials: list[tuple[int, float]], metric: str, direction: str) -> Any:
    """The optimisation history: each completed trial's validation value by trial number, and the best
    so far as a step (it holds until a later trial beats it). Whole trial numbers on the x axis, the
    legend below the axes so that it covers no point, for 2 trials as for 50."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    trials = sorted(trials)
    numbers = [n for n, _ in trials]
    values = [v for _, v in trials]
    best = list(itertools.accumulate(values, max if direction == "maximize" else min))
    fig = Figure(figsize=(7.0, 4.2), layout="tight")
    ax = fig.subplots()
    ax.grid(True, alpha=0.3)
    ax.plot(numbers, values, "o", markersize=5, zorder=3, label=f"validation {metric} of the trial")
    # the step runs on to the last trial's right edge, so a best reached last shows as a step too
    ax.step([*numbers, numbers[-1] + 0.5], [*best, best[-1]], where="post", color="C3", label="best so far")
    ax.set_xlim(numbers[0] - 0.5, numbers[-1] + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"Search history ({direction} {metric})", fontsize="medium")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small", frameon=False)
    return fig


def load_raw(path: str | None, overrides: list[str]) -> dict[str, Any]:
    """The search config: the YAML file with its overrides, output_dir defaulting to runs/<name>."""
    if path is None:
        raise LmtuneError("lmtune search needs a config file with a search section")
    raw = apply_overrides(read_yaml(path), overrides)
    if raw.get("output_dir") is None:
        raw["output_dir"] = str(Path("runs") / Path(path).stem)
    return raw
