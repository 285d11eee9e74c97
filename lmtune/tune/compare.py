"""`lmtune compare CONFIG --strategies full,lora,...`: the same data, seed and budget (epochs or
train.max_steps) for each strategy, each its own run, then a table, a plot and a reading.

    OUTPUT_DIR/<strategy>/          one run folder per strategy (with --seeds: <strategy>-seed<N>/)
    OUTPUT_DIR/compare.csv          one row per strategy: means over the seeds and their sd
    OUTPUT_DIR/compare.md           the same table and the reading
    OUTPUT_DIR/compare.json         every run's numbers, the table rows and the reading
    OUTPUT_DIR/compare.png          validation metric against trainable parameters and wall time

Every run has the config as it is but for `strategy` (and `train.seed` with --seeds). A strategy's
settings come from the config's own `strategy` section when it names that strategy, then the
required-key defaults (strategy_choice.required_settings: partial freezes half the layers), then
`--set STRATEGY.key=value`. The "train" metric scores the final model on a seeded sample of at most
1,000 training examples through training's own evaluation (training.train(train_sample_rows=...)).
Each run trains in a fresh process of its own, so that its peak memory and wall time are its own.
"""

from __future__ import annotations

import copy
import csv
import difflib
import io
import shutil
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core import models
from ..core.config import STRATEGY_CLASSES, RunConfig, apply_overrides
from ..core.errors import LmtuneError, option
from ..core.rundir import write_json_atomic, write_text_atomic
from ..report import report_run
from ..tasks import get_task
from ..tasks.run_config import load_config, validate
from ..training.strategy_choice import required_settings
from . import KILLED

COMPARABLE = tuple(name for name in STRATEGY_CLASSES if name != "auto")
TRAIN_SAMPLE_ROWS = 1000


@dataclass
class PlannedRun:
    strategy: str
    seed: int
    cfg: RunConfig


@dataclass
class ComparePlan:
    output_dir: Path
    strategies: list[str]
    seeds: list[int] | None  # None: the config's train.seed, one run per strategy
    metric: str
    greater: bool  # whether a larger value of the metric is better
    runs: list[PlannedRun]
    overwrite: bool


@dataclass
class RunRow:
    """One run's numbers."""

    strategy: str
    seed: int
    output_dir: str
    validation: float
    train: float | None  # the metric on the training sample (None when the task reports it on validation only)
    gap: float | None  # how much better on training than on validation (positive: overfitting)
    trainable_parameters: int
    parameters: int
    wall_seconds: float  # the whole run: loading, training, evaluation, saving
    train_seconds: float
    samples_per_second: float
    peak_memory_mb: float | None


@dataclass(frozen=True)
class Spread:
    mean: float
    sd: float | None  # sample standard deviation over the seeds; None for one seed

    def show(self, digits: int) -> str:
        return f"{self.mean:,.{digits}f}" + (f" ± {self.sd:,.{digits}f}" if self.sd is not None else "")


@dataclass
class Summary:
    """One strategy over its seeds."""

    strategy: str
    seeds: int
    validation: Spread
    train: Spread | None
    gap: Spread | None
    trainable_parameters: int
    parameters: int
    wall_seconds: Spread
    samples_per_second: Spread
    peak_memory_mb: Spread | None


@dataclass
class Comparison:
    output_dir: Path
    metric: str
    greater: bool
    rows: list[RunRow]
    summaries: list[Summary]
    reading: str
    files: dict[str, Path] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)  # runs that did not finish, and why

    def table(self) -> str:
        return render_table(self.summaries, self.metric, markdown=False)


# ---------------------------------------------------------------- checking the request


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def _strategy_problems(names: list[str]) -> list[str]:
    problems = []
    flag = option("--strategies", "strategies")
    if not all(names):
        problems.append(f"{flag} {','.join(names)!r}: expected comma-separated names, e.g. full,lora")
    for name in filter(None, names):
        if name == "auto":
            problems.append(f"{flag}: auto picks one strategy for a run; compare the strategies themselves "
                            f"({', '.join(COMPARABLE)})")
        elif name not in COMPARABLE:
            close = difflib.get_close_matches(name, COMPARABLE, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{flag}: unknown strategy {name!r}{hint}; expected some of {', '.join(COMPARABLE)}")
    repeated = sorted({n for n in names if names.count(n) > 1 and n})
    if repeated:
        problems.append(f"{flag}: {', '.join(repeated)} given more than once")
    return problems


def _parse_sets(sets: list[str], compared: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """`STRATEGY.key=value` items as {strategy: [key=value, ...]} and the problems found."""
    by_strategy: dict[str, list[str]] = {}
    problems = []
    flag, strategies = option("--set", "sets"), option("--strategies", "strategies")
    for item in sets:
        target, sep, value = item.partition("=")
        name, dot, key = target.partition(".")
        if not sep or not dot or not name or not key or any(not part for part in key.split(".")):
            problems.append(f"{flag} {item!r}: expected STRATEGY.key=value, e.g. partial.freeze_layers=2")
        elif key == "name":
            problems.append(f"{flag} {item!r}: a run's strategy name comes from {strategies}")
        elif name not in compared:
            what = "is not compared" if name in COMPARABLE else "is not a strategy"
            problems.append(f"{flag} {item!r}: {name!r} {what} ({strategies} {','.join(compared)})")
        else:
            by_strategy.setdefault(name, []).append(f"{key}={value}")
    return by_strategy, problems


def _parse_seeds(text: str | list[int] | None) -> tuple[list[int] | None, list[str]]:
    if text is None:
        return None, []
    parts = _split_list(text) if isinstance(text, str) else [str(seed) for seed in text]
    flag = option("--seeds", "seeds")
    if not all(p.lstrip("-").isdigit() for p in parts):
        return None, [f"{flag} {text!r}: expected comma-separated whole numbers, e.g. 1,2,3"]
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        return None, [f"{flag} {text!r}: a seed given more than once"]
    return seeds, []


def _folder_problem(path: Path, overwrite: bool) -> str | None:
    if path.exists() and not path.is_dir():
        return f"output_dir {path} exists and is not a folder"
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        return f"output_dir {path} exists and is not empty; use {option('--overwrite', 'overwrite=True')} to replace it"
    return None


def plan(
    config: str | Path | None,
    overrides: list[str] | None = None,
    *,
    strategies: str | list[str] = ",".join(COMPARABLE),
    sets: list[str] | None = None,
    seeds: str | list[int] | None = None,
    overwrite: bool = False,
) -> ComparePlan:
    """Check the whole request and build every run's config. Raises LmtuneError listing every
    problem at once (the config's, the flags', each strategy's); writes nothing."""
    names = _split_list(strategies) if isinstance(strategies, str) else list(strategies)
    problems = _strategy_problems(names)
    compared = [n for n in names if n in COMPARABLE]
    by_strategy, set_problems = _parse_sets(sets or [], compared)
    seed_list, seed_problems = _parse_seeds(seeds)
    problems += set_problems + seed_problems
    try:
        base = load_config(config, overrides or [])
    except LmtuneError as e:
        raise LmtuneError(*problems, *e.problems) from None
    out = Path(base.output_dir or "runs/compare")
    problem = _folder_problem(out, overwrite)
    if problem:
        problems.append(problem)

    # each strategy's settings are checked too, whatever else is wrong, so that all is said at once
    raw = yaml.safe_load(base.to_yaml())
    raw.pop("search", None)  # read by lmtune search only
    num_layers = models.describe(base.model).num_layers
    runs: list[PlannedRun] = []
    for name in dict.fromkeys(compared):
        section = dict(raw["strategy"]) if raw["strategy"]["name"] == name else {"name": name}
        for key, value in required_settings(name, num_layers).items():
            section.setdefault(key, value)
        section = apply_overrides(section, by_strategy.get(name, []))
        for seed in seed_list or [base.train.seed]:
            run_raw = copy.deepcopy(raw)
            run_raw["strategy"] = section
            run_raw["train"]["seed"] = seed
            run_raw["output_dir"] = str(out / (name if seed_list is None else f"{name}-seed{seed}"))
            try:
                runs.append(PlannedRun(name, seed, validate(run_raw)))
            except LmtuneError as e:
                problems += [f"{name}: {p}" for p in e.problems if f"{name}: {p}" not in problems]
    if problems:
        raise LmtuneError(*problems)
    metric = base.train.metric or get_task(base.task).METRICS[0]
    greater = get_task(base.task).GREATER_IS_BETTER[metric]
    return ComparePlan(out, names, seed_list, metric, greater, runs, overwrite)


# ---------------------------------------------------------------- running


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_one(cfg: RunConfig, progress: bool) -> tuple[dict[str, Any], float]:
    """One run in this process: its metrics (with "train_sample") and its wall time in seconds."""
    from ..training.loop import train

    start = time.perf_counter()
    result = train(cfg, progress=progress, train_sample_rows=TRAIN_SAMPLE_ROWS, stoppable=False)
    report_run(result.output_dir, cfg.train.report)
    return result.metrics, time.perf_counter() - start


def _child(cfg: RunConfig, progress: bool, conn: Any) -> None:
    """The body of a run's own process: sends back ("ok", (metrics, seconds)) or ("error", problems);
    anything else is a bug, whose traceback the process prints as it ends."""
    try:
        conn.send(("ok", train_one(cfg, progress)))
    except LmtuneError as e:
        conn.send(("error", e.problems))


def train_isolated(cfg: RunConfig, progress: bool) -> tuple[dict[str, Any], float]:
    """One run in a fresh process of its own (spawned, so nothing of this one is copied): its peak
    memory (on CPU, the process's resident set) is then its own, not what earlier runs left behind."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(cfg, progress, send), name=f"lmtune-compare-{Path(str(cfg.output_dir)).name}")
    proc.start()
    send.close()
    try:
        status, payload = receive.recv()
    except EOFError:
        status, payload = "died", None
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.terminate()
    if status == "error":
        raise LmtuneError(*payload)
    if status != "ok" and proc.exitcode == -signal.SIGKILL:
        raise RunKilled(KILLED)
    if status != "ok":
        raise RuntimeError(f"the run for {cfg.output_dir} stopped (exit code {proc.exitcode}); see the lines above")
    return payload


class RunKilled(Exception):
    """A run's own process was killed (SIGKILL) before it finished."""


def run_plan(p: ComparePlan, *, progress: bool = True, isolate: bool = True) -> Comparison:
    """Train every planned run, one after another, then write the table, plot and reading.
    `isolate`: each run in a process of its own (see train_isolated); False: in this one (faster to
    start; on CPU the peak memory then includes what earlier runs left)."""
    problem = _folder_problem(p.output_dir, p.overwrite)  # (again: the folder may have changed since the plan)
    if problem:
        raise LmtuneError(problem)
    if p.overwrite and p.output_dir.is_dir():
        shutil.rmtree(p.output_dir)
    p.output_dir.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    for i, planned in enumerate(p.runs, start=1):
        seed = f" seed {planned.seed}" if p.seeds is not None else ""
        _log(f"compare: run {i} of {len(p.runs)}: {planned.strategy}{seed} -> {planned.cfg.output_dir}")
        try:
            metrics, seconds = (train_isolated if isolate else train_one)(planned.cfg, progress)
        except RunKilled as e:  # the other runs go on; the table leaves this one out and says why
            _log(f"compare: run {i} ({planned.strategy}{seed}) was {e}")
            failed.append({"strategy": planned.strategy, "seed": planned.seed,
                           "output_dir": str(planned.cfg.output_dir), "reason": str(e)})
            continue
        rows.append(_row(planned, metrics, seconds, p.metric, p.greater))
    if not rows:
        raise LmtuneError(f"compare: every run was {KILLED}: try train.micro_batch_size or "
                          f"train.gradient_checkpointing (see lmtune keys)")
    summaries = summarise(rows, [name for name in p.strategies if any(r.strategy == name for r in rows)])
    text = reading([Score(s.strategy, s.validation.mean, s.validation.sd, s.seeds) for s in summaries], p.metric, p.greater)
    text += gap_note(summaries)
    for f in failed:
        text += f" Not in the table: {f['strategy']} (seed {f['seed']}) was {f['reason']}."
    comparison = Comparison(p.output_dir, p.metric, p.greater, rows, summaries, text, failed=failed)
    write_outputs(comparison, p)
    return comparison


def compare(
    config: str | Path | None,
    overrides: list[str] | None = None,
    *,
    progress: bool = True,
    isolate: bool = True,
    **options: Any,
) -> Comparison:
    """Plan (every check first), then run: `compare("cfg.yaml", strategies="full,lora", seeds="1,2,3")`.
    `options` are plan()'s: strategies, sets, seeds, overwrite."""
    return run_plan(plan(config, overrides, **options), progress=progress, isolate=isolate)


def _row(planned: PlannedRun, metrics: dict[str, Any], wall: float, metric: str, greater: bool) -> RunRow:
    t = metrics["train"]
    validation = float(metrics["validation"][metric])
    on_train = metrics.get("train_sample", {}).get(metric)
    gap = None if on_train is None else (on_train - validation if greater else validation - on_train)
    return RunRow(
        strategy=planned.strategy, seed=planned.seed, output_dir=str(planned.cfg.output_dir),
        validation=validation, train=None if on_train is None else float(on_train), gap=gap,
        trainable_parameters=t["trainable_parameters"], parameters=t["parameters"], wall_seconds=round(wall, 2),
        train_seconds=t["seconds"], samples_per_second=t["samples_per_second"], peak_memory_mb=t["peak_memory_mb"],
    )


def _spread(values: list[float | None]) -> Spread | None:
    if any(v is None for v in values):
        return None
    return Spread(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


def summarise(rows: list[RunRow], strategies: list[str]) -> list[Summary]:
    """One Summary per strategy, in the order given."""
    out = []
    for name in strategies:
        mine = [r for r in rows if r.strategy == name]
        out.append(Summary(
            strategy=name, seeds=len(mine),
            validation=_spread([r.validation for r in mine]),
            train=_spread([r.train for r in mine]), gap=_spread([r.gap for r in mine]),
            # (the same in every seed: what trains does not depend on the seed)
            trainable_parameters=mine[0].trainable_parameters, parameters=mine[0].parameters,
            wall_seconds=_spread([r.wall_seconds for r in mine]),
            samples_per_second=_spread([r.samples_per_second for r in mine]),
            peak_memory_mb=_spread([r.peak_memory_mb for r in mine]),
        ))
    return out


# ---------------------------------------------------------------- reading the result


@dataclass(frozen=True)
class Score:
    """A strategy's validation metric: mean over `seeds` runs, sd None for one run."""

    strategy: str
    mean: float
    sd: float | None = None
    seeds: int = 1


def _shown(s: Score) -> str:
    return f"{s.mean:.4f}" + (f" ± {s.sd:.4f}" if s.sd is not None else "")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def within_noise(a: Score, b: Score) -> bool:
    """Two strategies are within seed noise of each other when their mean ± sd ranges overlap:
    the difference of the means is at most their standard deviations added together."""
    return a.sd is not None and b.sd is not None and abs(a.mean - b.mean) <= a.sd + b.sd


def reading(scores: list[Score], metric: str, greater: bool) -> str:
    """A short written reading: the winner and its margin over the runner-up, or, when the best two
    are within seed noise of each other (see `within_noise`), that there is no clear winner."""
    if not scores:
        return "No runs."
    ranked = sorted(scores, key=lambda s: s.mean, reverse=greater)
    best = ranked[0]
    what = f"validation {metric} ({'higher' if greater else 'lower'} is better)"
    if len(ranked) == 1:
        return f"Only {best.strategy} was run: {what} {_shown(best)}."
    second = ranked[1]
    margin = abs(best.mean - second.mean)
    if margin == 0:
        return f"No winner on {what}: {_and([s.strategy for s in ranked if s.mean == best.mean])} tie at {best.mean:.4f}."
    if within_noise(best, second):
        tied = [f"{s.strategy} ({_shown(s)})" for s in ranked if within_noise(best, s)]
        return (f"No clear winner on {what}: {_and(tied)} are within seed noise of each other; the best two differ "
                f"by {margin:.4f}, no more than their standard deviations over the seeds added together "
                f"({best.sd + second.sd:.4f}).")
    text = (f"{best.strategy} wins on {what}: {_shown(best)} against {_shown(second)} for {second.strategy}, "
            f"the runner-up, a margin of {margin:.4f}")
    if best.sd is not None and second.sd is not None:
        return text + f", more than seed noise (their standard deviations added together: {best.sd + second.sd:.4f})."
    return text + ". One seed per strategy, so the seed noise is not measured: --seeds 1,2,3 repeats each run."


def gap_note(summaries: list[Summary]) -> str:
    """A sentence naming the strategy that overfits most (largest positive train-validation gap)."""
    gaps = [(s.gap.mean, s.strategy) for s in summaries if s.gap is not None]
    if not gaps or max(gaps)[0] <= 0:
        return ""
    gap, name = max(gaps)
    return f" The largest gap between the training sample and validation (overfitting) is {name}'s: {gap:.4f}."


# ---------------------------------------------------------------- the table, plot and files


def _cells(s: Summary, metric_digits: int = 4) -> list[str]:
    share = 100 * s.trainable_parameters / max(s.parameters, 1)
    dash = "-"
    return [
        s.strategy,
        str(s.seeds),
        s.validation.show(metric_digits),
        s.train.show(metric_digits) if s.train else dash,
        (f"{s.gap.mean:+.{metric_digits}f}" + (f" ± {s.gap.sd:.{metric_digits}f}" if s.gap.sd is not None else "")) if s.gap else dash,
        f"{s.trainable_parameters:,} ({share:.1f}%)",
        s.wall_seconds.show(1),
        s.samples_per_second.show(1),
        s.peak_memory_mb.show(0) if s.peak_memory_mb else dash,
    ]


def headers(metric: str) -> list[str]:
    return ["strategy", "seeds", f"validation {metric}", f"train {metric}", "gap", "trainable parameters",
            "wall s", "samples/s", "peak MB"]


def render_table(summaries: list[Summary], metric: str, *, markdown: bool) -> str:
    head = headers(metric)
    body = [_cells(s) for s in summaries]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(head), *map(fmt, body)])


def _csv_text(summaries: list[Summary], metric: str) -> str:
    columns = ["strategy", "seeds", f"validation_{metric}", f"validation_{metric}_sd", f"train_{metric}",
               f"train_{metric}_sd", "gap", "gap_sd", "trainable_parameters", "parameters", "wall_seconds",
               "wall_seconds_sd", "samples_per_second", "samples_per_second_sd", "peak_memory_mb", "peak_memory_mb_sd"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for s in summaries:
        row: list[Any] = [s.strategy, s.seeds]
        for spread in (s.validation, s.train, s.gap):
            row += [spread.mean, spread.sd if spread.sd is not None else ""] if spread else ["", ""]
        row += [s.trainable_parameters, s.parameters]
        for spread in (s.wall_seconds, s.samples_per_second, s.peak_memory_mb):
            row += [spread.mean, spread.sd if spread.sd is not None else ""] if spread else ["", ""]
        w.writerow(row)
    return buf.getvalue()


def _budget(p: ComparePlan) -> str:
    t = p.runs[0].cfg.train
    budget = f"train.max_steps {t.max_steps}" if t.max_steps else f"{t.epochs} epoch(s)"
    seeds = f"seeds {', '.join(map(str, p.seeds))}" if p.seeds else f"seed {t.seed}"
    return f"{p.runs[0].cfg.model}, {budget}, batch {t.batch_size}, {seeds}"


def write_plot(c: Comparison, path: Path) -> None:
    """Validation metric against trainable parameters (log scale) and against wall time, one point
    per strategy with its sd over the seeds as error bars."""
    from matplotlib.figure import Figure  # (no pyplot: no global backend state; a Figure saves through Agg)

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, xs, label, log in (
        (axes[0], [s.trainable_parameters for s in c.summaries], "trainable parameters", True),
        (axes[1], [s.wall_seconds.mean for s in c.summaries], "wall time per run (s)", False),
    ):
        for s, x in zip(c.summaries, xs):
            ax.errorbar([x], [s.validation.mean], yerr=[s.validation.sd or 0], fmt="o", capsize=4)
            ax.annotate(s.strategy, (x, s.validation.mean), textcoords="offset points", xytext=(6, 6))
        if log:
            ax.set_xscale("log")
        ax.margins(0.15)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"validation {c.metric} ({'higher' if c.greater else 'lower'} is better)")
    fig.suptitle(f"lmtune compare: {c.output_dir.name}")
    fig.savefig(path, dpi=110)


def write_outputs(c: Comparison, p: ComparePlan) -> None:
    out = p.output_dir
    c.files = {name: out / name for name in ("compare.csv", "compare.md", "compare.json", "compare.png")}
    write_text_atomic(c.files["compare.csv"], _csv_text(c.summaries, c.metric))
    md = (f"# lmtune compare: {out.name}\n\n{_budget(p)}; validation {c.metric}, "
          f"{'higher' if c.greater else 'lower'} is better; mean ± sd over the seeds. \"train\" is the same metric on "
          f"a sample of at most {TRAIN_SAMPLE_ROWS:,} training examples; gap = how much better there than on "
          f"validation.\n\n{render_table(c.summaries, c.metric, markdown=True)}\n\n{c.reading}\n")
    write_text_atomic(c.files["compare.md"], md)
    write_json_atomic(c.files["compare.json"], {
        "metric": c.metric, "greater_is_better": c.greater, "budget": _budget(p),
        "summaries": [asdict(s) for s in c.summaries], "runs": [asdict(r) for r in c.rows], "reading": c.reading,
        "failed": c.failed,
    })
    write_plot(c, c.files["compare.png"])
