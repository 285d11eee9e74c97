"""The search space of `lmtune search`: checking it against the run config, and drawing one trial's
values from it with Optuna.

A key of a strategy (`strategy.r`, `strategy.freeze_layers`) is conditional: it is drawn only in a
trial whose strategy has that key, so a LoRA rank is never sampled for a full fine-tune.
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Any

from ..core.config import STRATEGY_CLASSES, Distribution, RunConfig, SearchConfig, set_key
from ..core.errors import LmtuneError
from ..tasks.run_config import reference, validate

KINDS = ("loguniform", "uniform", "int", "choice")


def searchable_keys(task: str) -> list[str]:
    """Every config key a search may vary for this task (the search section itself excluded)."""
    keys = [row[0] for row in reference(task) if not row[0].startswith(("search", "strategy.name:"))]
    return sorted({*keys, "strategy.name"} - {"output_dir"})


def drawn_strategies(space: dict[str, Distribution], base: RunConfig) -> list[str]:
    """The strategies trials can have: those of a strategy.name choice, or the config's own."""
    dist = space.get("strategy.name")
    if dist is not None and dist.choice:
        return [str(c) for c in dist.choice]
    return [base.strategy.name]


def strategy_keys(name: str) -> set[str]:
    return {f"strategy.{k}" for k in STRATEGY_CLASSES[name].model_fields if k != "name"}


def space_problems(search: SearchConfig, base: RunConfig) -> list[str]:
    """Every problem of the space at once: unknown keys (with the closest valid one), empty or
    reversed ranges, empty choices, strategies that do not exist, keys of a strategy never drawn."""
    problems: list[str] = []
    valid = searchable_keys(base.task)
    if not search.space:
        problems.append("search.space: empty; give at least one key, e.g. train.lr: {loguniform: [1e-5, 1e-3]}")
    for key, dist in search.space.items():
        where = f"search.space.{key}"
        kind = dist.kind()
        if kind is None:
            given = [k for k in KINDS if getattr(dist, k) is not None]
            problems.append(f"{where}: give exactly one of {', '.join(KINDS)}"
                            + (f" (got {', '.join(given)})" if given else ""))
            continue
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else " (lmtune keys lists them)"
            problems.append(f"{where}: not a config key of task {base.task}{hint}")
            continue
        values = getattr(dist, kind)
        if kind == "choice":
            if not values:
                problems.append(f"{where}.choice: empty; give the values to choose from")
        elif len(values) != 2:
            problems.append(f"{where}.{kind}: expected [low, high], got {values}")
        elif not values[0] < values[1]:
            problems.append(f"{where}.{kind}: the range [{values[0]}, {values[1]}] is empty or reversed")
        elif kind == "loguniform" and values[0] <= 0:
            problems.append(f"{where}.loguniform: the low end must be above 0 for a log scale (got {values[0]})")
        if key == "strategy.name" and kind != "choice":
            problems.append(f"{where}: strategies are drawn with choice: [full, partial, adaptive, lora, gradual]")
        elif key == "strategy.name":
            unknown = [str(v) for v in values if v not in STRATEGY_CLASSES]
            if unknown:
                problems.append(f"{where}.choice: unknown strateg{'y' if len(unknown) == 1 else 'ies'} "
                                f"{', '.join(unknown)}; expected some of {', '.join(STRATEGY_CLASSES)}")
    if any(p.startswith("search.space.strategy.name") for p in problems):
        return problems  # (which strategies are drawn is not known)
    strategies = drawn_strategies(search.space, base)
    for key in search.space:
        if key.startswith("strategy.") and key != "strategy.name" and any(key in strategy_keys(s) for s in STRATEGY_CLASSES):
            if not any(key in strategy_keys(s) for s in strategies):
                owners = [s for s in STRATEGY_CLASSES if key in strategy_keys(s)]
                problems.append(f"search.space.{key}: a key of strategy {' and '.join(owners)}, which this search "
                                f"never draws (it draws {', '.join(strategies)})")
    return problems


def _corner(dist: Distribution, high: bool) -> Any:
    """The lowest or highest value a distribution can give (the first or last choice)."""
    kind = dist.kind()
    values = getattr(dist, kind)
    return values[-1] if high else values[0]


def trial_config(base_raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The run config of one trial: the base config (without its search section) with the drawn
    values set. A drawn strategy other than the config's keeps only the config's keys it has."""
    raw = copy.deepcopy(base_raw)
    raw.pop("search", None)
    name = values.get("strategy.name")
    if name is not None:
        given = raw.get("strategy") if isinstance(raw.get("strategy"), dict) else {}
        fields = STRATEGY_CLASSES[name].model_fields
        raw["strategy"] = {k: v for k, v in given.items() if k in fields} | {"name": name}
    for key, value in values.items():
        set_key(raw, key, value)
    return raw


def corner_problems(search: SearchConfig, base: RunConfig, base_raw: dict[str, Any]) -> list[str]:
    """Problems a trial would meet at the corners of the space (every low end, every high end) for
    each strategy drawn: a float where an integer belongs, a required strategy key missing."""
    problems: list[str] = []
    for strategy in drawn_strategies(search.space, base):
        for high in (False, True):
            values = {"strategy.name": strategy} if "strategy.name" in search.space else {}
            for key, dist in search.space.items():
                if key == "strategy.name" or (key.startswith("strategy.") and key not in strategy_keys(strategy)):
                    continue
                values[key] = _corner(dist, high)
            try:
                validate(trial_config(base_raw, values), check_files=False)
            except LmtuneError as e:
                shown = ", ".join(f"{k}={v}" for k, v in values.items())
                problems.extend(f"search.space: a trial with {shown} would fail: {p}" for p in e.problems)
    return list(dict.fromkeys(problems))


def draw(trial: Any, space: dict[str, Distribution], base: RunConfig) -> dict[str, Any]:
    """One trial's values, through Optuna's `suggest_*` (so the sampler learns from them). Keys of
    a strategy are drawn only when the trial's strategy has them."""
    values: dict[str, Any] = {}
    strategy = base.strategy.name
    if "strategy.name" in space:
        strategy = values["strategy.name"] = trial.suggest_categorical("strategy.name", space["strategy.name"].choice)
    for key, dist in space.items():
        if key == "strategy.name" or (key.startswith("strategy.") and key not in strategy_keys(strategy)):
            continue
        kind = dist.kind()
        if kind == "loguniform":
            values[key] = trial.suggest_float(key, *dist.loguniform, log=True)
        elif kind == "uniform":
            values[key] = trial.suggest_float(key, *dist.uniform)
        elif kind == "int":
            values[key] = trial.suggest_int(key, *dist.int)
        else:
            values[key] = trial.suggest_categorical(key, dist.choice)
    return values


def describe(values: dict[str, Any]) -> str:
    """`train.lr=3.2e-04 strategy.name=lora`: a trial's values, briefly."""
    def short(v: Any) -> str:
        if isinstance(v, float) and v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) and math.isfinite(v):
            return f"{v:.2e}"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={short(v)}" for k, v in values.items())
