"""The run folder and how it is written: atomically, never over a finished run unless asked.

    config.yaml      the resolved config
    run.json         versions, model source and hashes of the data files (to reproduce the run)
    data.json        what was done to the data (splits, label counts, truncations)
    history.jsonl    one line per logged step and per evaluation
    checkpoints/last full training state for --resume (model, optimizer, scheduler, RNG, position;
                     of a LoRA model only what trains: the frozen base is the config's model)
    checkpoints/best the best model so far (by train.metric)
                     (once the run has finished, only the one that train.keep_checkpoints names is kept)
    model/           the final model: plain transformers format, with tokenizer and labels
    metrics.json     final validation/test metrics; its presence marks the run finished

While it runs, and after it ends unfinished:
    process.json     {pid, host, started, argv} of the training process, while it runs (a kill -9 leaves it)
    stop.request     written by anyone (any content): the run stops cleanly after its next step
    stopped.json     {step, total_steps, epoch, at}: the run stopped when asked; --resume goes on
    failed.json      {error, at}: the run ended with this error (one line)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import LmtuneError, option


def check_output(path: str | Path | None, overwrite: bool) -> None:
    """An output file that exists is replaced only with `overwrite`."""
    if path and Path(path).exists() and not overwrite:
        raise LmtuneError(f"{path} exists; use {option('--overwrite', 'overwrite=True')} to replace it")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def as_new_files(folder: Path) -> None:
    """Give every file under `folder` the mode of a newly created file (0666 less the umask: 0644
    under umask 022). safetensors writes its files 0600, which would hide a run's weights from
    the other users who can read the rest of the run folder."""
    umask = os.umask(0o022)  # (reading the umask means setting it; it is put back at once)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o666 & ~umask)


def replace_dir_atomic(tmp: Path, target: Path) -> None:
    """Move a fully written folder `tmp` into place as `target`, its files with the modes of new
    files (see as_new_files). A kill at any moment leaves either the old or the new folder in
    place (the old one as `<target>.old` for a moment)."""
    as_new_files(tmp)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def existing_dir(target: Path) -> Path | None:
    """`target`, or its `.old` twin if a kill came between the two renames of replace_dir_atomic."""
    if target.is_dir():
        return target
    old = target.with_name(target.name + ".old")
    return old if old.is_dir() else None


def now_iso() -> str:
    """The time now, ISO 8601 with the UTC offset, to the second."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# Keys a resumed run may change: how it logs, how many threads it takes, how patient its early
# stopping is, which checkpoints it keeps at the end, whether it writes report.html and which
# trackers it reports to (none of them changes what is computed); the rest of its config stays as
# it started.
RESUMABLE = ("train.log_steps", "train.threads", "train.early_stopping_patience", "train.keep_checkpoints",
             "train.report", "train.report_to")


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.history = self.path / "history.jsonl"
        self.metrics = self.path / "metrics.json"
        self.model = self.path / "model"
        self.last = self.path / "checkpoints" / "last"
        self.best = self.path / "checkpoints" / "best"
        # the run's state while it runs and after it ends unfinished (docs/run-folder.md)
        self.process = self.path / "process.json"
        self.stop_request = self.path / "stop.request"
        self.stopped = self.path / "stopped.json"
        self.failed = self.path / "failed.json"

    @property
    def finished(self) -> bool:
        return self.metrics.is_file()

    def last_checkpoint(self) -> Path | None:
        return existing_dir(self.last)

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Raise if start() would refuse the folder (without changing anything)."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise LmtuneError(f"output_dir {p} exists and is not a folder")
        busy = p.is_dir() and any(p.iterdir()) and not overwrite
        overwrite_option = option("--overwrite", "overwrite=True")
        if busy and self.finished:
            nothing = "nothing to resume; " if resume else ""
            raise LmtuneError(f"output_dir {p} holds a finished run; {nothing}use {overwrite_option} to replace it")
        if busy and not resume:
            raise LmtuneError(f"output_dir {p} holds an unfinished run; use {option('--resume', 'resume=True')} "
                              f"to continue it or {overwrite_option} to replace it")

    def start(self, config_yaml: str, *, resume: bool, overwrite: bool) -> bool:
        """Prepare the folder; return True when an earlier checkpoint should be resumed."""
        p = self.path
        self.check(resume=resume, overwrite=overwrite)  # past this, a busy folder is being resumed
        busy = p.is_dir() and any(p.iterdir())
        if busy and overwrite:
            shutil.rmtree(p)
            busy = False
        if busy and self.config.is_file():
            saved = flatten(yaml.safe_load(self.config.read_text()))
            now = flatten(yaml.safe_load(config_yaml))
            # (output_dir names this folder however it was reached; a few keys may change on resume)
            changed = sorted(k for k in saved.keys() | now.keys()
                             if saved.get(k) != now.get(k) and k != "output_dir" and k not in RESUMABLE)
            if changed:
                raise LmtuneError(
                    f"cannot resume {p}: the config differs from the saved one in "
                    + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed)
                )
        p.mkdir(parents=True, exist_ok=True)
        for done in (self.stopped, self.failed, self.stop_request):  # (how the last attempt ended; a stale request)
            done.unlink(missing_ok=True)
        write_text_atomic(self.config, config_yaml)
        return busy and self.last_checkpoint() is not None

    def write_process(self) -> None:
        """process.json: which process trains the run, on which host, since when."""
        write_json_atomic(self.process, {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(),
                                         "argv": list(sys.argv)})

    def write_stopped(self, step: int, total_steps: int, epoch: float) -> None:
        """stopped.json (the run stopped cleanly at `step`); the request it answered is removed."""
        write_json_atomic(self.stopped, {"step": step, "total_steps": total_steps, "epoch": epoch, "at": now_iso()})
        self.stop_request.unlink(missing_ok=True)

    def write_failed(self, error: str) -> None:
        """failed.json: the error (one line) that ended the run; nothing where the folder is gone
        (a run refused for memory removes the folder it made)."""
        if self.path.is_dir():
            write_json_atomic(self.failed, {"error": error, "at": now_iso()})

    def prune_checkpoints(self, keep: Literal["last", "best", "none"]) -> None:
        """At the end of a finished run: remove the checkpoints other than `keep` (last, best or none),
        with any half-written or half-replaced copy (`.tmp`, `.old`) of either."""
        for name in ("last", "best"):
            if name == keep:
                continue
            for suffix in ("", ".tmp", ".old"):
                shutil.rmtree(self.path / "checkpoints" / f"{name}{suffix}", ignore_errors=True)
        folder = self.path / "checkpoints"
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    def append_history(self, record: dict[str, Any]) -> None:
        with open(self.history, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def history_lines(self) -> int:
        if not self.history.is_file():
            return 0
        with open(self.history, encoding="utf-8") as f:
            return sum(1 for _ in f)

    def truncate_history(self, lines: int) -> None:
        """On resume, drop what was logged after the checkpoint (it will be logged again)."""
        if not self.history.is_file():
            return
        with open(self.history, encoding="utf-8") as f:
            kept = f.readlines()[:lines]
        write_text_atomic(self.history, "".join(kept))
