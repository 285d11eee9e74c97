"""The config that `lmtune train --resume` continues a run with: the one the run started with.

A run folder keeps its config (config.yaml, with what `auto` and `null` resolved to), so nothing typed
at the start has to be typed again:

- `lmtune train RUN_DIR --resume`: the run folder's config.
- `lmtune train CONFIG [KEY=VALUE ...] --resume`: the config file and overrides find the run folder
  (output_dir); the run goes on with its own config. A key of the file whose value differs from the
  run's keeps the run's value, and a line says so (an override typed at the start and not again, or
  a file edited since).
- An override given again must have the run's value, except for the keys a resumed run may change
  (RESUMABLE), which apply from there on. A key set to auto or null that the run resolved when it
  started (data.max_length, train.lr, strategy.name) stands for the value it resolved to.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from ..core.config import RunConfig, apply_overrides, read_yaml, set_key
from ..core.errors import LmtuneError
from ..core.rundir import RESUMABLE, RunDir, flatten
from ..tasks.run_config import load_config, output_dir_of, validate

# keys that a run resolves when it starts, from these settings (lmtune.training.loop.resolve_defaults)
RESOLVED = {"data.max_length": ("auto",), "train.lr": (None,), "strategy.name": ("auto",)}


def run_folder(config: str | None, overrides: list[str]) -> tuple[RunDir, dict[str, Any]]:
    """The run folder that `lmtune train CONFIG OVERRIDES --resume` means (or CONFIG itself, a run
    folder), and the keys of the config file (none for a run folder)."""
    if config is not None and Path(config).is_dir():
        run = RunDir(config)
        if not run.config.is_file():
            raise LmtuneError(f"{config}: a folder without config.yaml, so not a run folder (a config is a YAML file)")
        return run, {}
    raw = read_yaml(config) if config is not None else {}
    return RunDir(str(output_dir_of(config, apply_overrides(copy.deepcopy(raw), overrides)))), raw


def _settings_at_start(run: RunDir) -> dict[str, Any]:
    """The keys that the run resolved when it started, as they were set (data.json records both)."""
    record_file = run.path / "data.json"
    record = json.loads(record_file.read_text()).get("resolved", {}) if record_file.is_file() else {}
    given = {"data.max_length": record.get("max_length", {}), "train.lr": record.get("lr", {}),
             "strategy.name": record.get("strategy", {})}
    return {key: r["setting"] for key, r in given.items() if "setting" in r and r["setting"] in RESOLVED[key]}


def resume_config(config: str | None, overrides: list[str]) -> tuple[RunConfig, list[str]]:
    """The config to resume with and the lines that say what was decided; a plain load of the
    config where the run folder holds no config yet (nothing to resume: the run starts)."""
    run, file_raw = run_folder(config, overrides)
    if not run.config.is_file():

        return load_config(config, overrides), []
    saved_raw = yaml.safe_load(run.config.read_text())
    saved = flatten(saved_raw)
    given = flatten(apply_overrides({}, overrides))

    def agrees(key: str, value: Any) -> bool:
        return key == "output_dir" or saved.get(key) == value or value in RESOLVED.get(key, ())

    # (a key the run's config does not have is applied, and the config's validation says what is wrong with it)
    refused = [k for k, v in given.items() if not agrees(k, v) and k in saved and k not in RESUMABLE]
    if refused:
        raise LmtuneError(*(f"{k}={given[k]!r}: the run in {run.path} started with {k}={saved.get(k)!r}; a resumed run "
                            f"keeps its config (only {', '.join(RESUMABLE)} may change), or start again with --overwrite"
                            for k in refused))
    changed = {k: v for k, v in given.items() if not agrees(k, v)}
    kept = {k: v for k, v in flatten(file_raw).items() if k not in given and not agrees(k, v)}
    merged = copy.deepcopy(saved_raw)
    for key, value in {**_settings_at_start(run), **changed}.items():
        if key == "strategy.name":  # strategy: auto chose a strategy and its settings; it chooses again
            merged["strategy"] = {"name": value}
        else:
            set_key(merged, key, value)
    if Path(str(saved_raw.get("output_dir"))).resolve() != run.path.resolve():  # (the folder was moved)
        merged["output_dir"] = str(run.path)
    notes = [f"resuming {run.path} with the config it started with (its config.yaml)"]
    if kept:
        notes.append("these keep the run's values, not the config file's: "
                     + ", ".join(f"{k} {saved.get(k)!r} (file: {v!r})" for k, v in kept.items()))
    notes += [f"{k}: {saved.get(k)!r} -> {v!r} from here on" for k, v in changed.items()]
    return validate(merged), notes
