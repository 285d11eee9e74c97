"""The studio's queue of runs: each job a child process (`python -m lmtune train CONFIG` or
`python -m lmtune train RUN --resume`), at most `parallel` at a time, the others queued.

The state lives in files, so a studio restarted goes on where the last one was: RUNS/.studio/jobs.json
(the queue, written atomically), configs/NAME.yaml (a launched run's config) and logs/NAME.log (each
child's stdout and stderr). A job recorded as running whose process is gone has ended; the queued
ones start. A background thread starts the next job when a running one ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ..core.rundir import write_json_atomic, write_text_atomic
from .runs import STUDIO, live_process, log_path, pid_alive

POLL_SECONDS = 0.5


@dataclass
class Job:
    name: str
    action: Literal["train", "resume"]
    state: Literal["queued", "running"] = "queued"
    pid: int | None = None

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "action": self.action, "state": self.state}


class Jobs:
    """The queue of one runs folder. `changes` counts every change of the queue (for /api/events)."""

    def __init__(self, runs_dir: Path, parallel: int = 1) -> None:
        self.runs_dir = runs_dir
        self.parallel = parallel
        self.folder = runs_dir / STUDIO
        self.file = self.folder / "jobs.json"
        self.changes = 0
        self._lock = threading.RLock()
        self._children: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.jobs: list[Job] = self._read()

    # ------------------------------------------------------------ the file

    def _read(self) -> list[Job]:
        if not self.file.is_file():
            return []
        try:
            raw = json.loads(self.file.read_text(encoding="utf-8")).get("jobs", [])
            jobs = [Job(**{k: j[k] for k in ("name", "action", "state", "pid") if k in j}) for j in raw]
        except (ValueError, TypeError, AttributeError, KeyError):
            return []  # (a queue that cannot be read is an empty one; the run folders stay as they are)
        # a job recorded as running whose process is gone has ended (the studio stopped meanwhile)
        return [j for j in jobs if j.state == "queued" or pid_alive(j.pid)]

    def _write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.file, {"jobs": [asdict(j) for j in self.jobs]})
        self.changes += 1

    # ------------------------------------------------------------ what the routes ask

    def queue(self) -> list[dict[str, Any]]:
        with self._lock:
            return [j.public() for j in self.jobs]

    def find(self, name: str) -> Job | None:
        with self._lock:
            return next((j for j in self.jobs if j.name == name), None)

    def config_file(self, name: str) -> Path:
        return self.folder / "configs" / f"{name}.yaml"

    def submit(self, name: str, action: Literal["train", "resume"], config_yaml: str | None = None) -> str:
        """Queue a job (and start it when there is room): its state, queued or running."""
        with self._lock:
            if config_yaml is not None:
                self.config_file(name).parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.config_file(name), config_yaml)
            job = Job(name, action)
            self.jobs.append(job)
            self._start_ready()
            self._write()
            return job.state

    def stop(self, name: str) -> bool:
        """A queued job is removed; a running one is asked to stop (RUN/stop.request: the run writes its
        checkpoint and exits), also one started outside the studio. False when nothing runs."""
        with self._lock:
            job = self.find(name)
            if job is not None and job.state == "queued":
                self.jobs.remove(job)
                self._write()
                return True
            folder = self.runs_dir / name
            if live_process(folder) is not None:
                (folder / "stop.request").write_text("stop\n", encoding="utf-8")
                return True
            if job is not None and not self._ended(job):
                # not training yet (loading, checking): nothing to save, and a stop.request written now
                # would be taken as a stale one when the run starts; SIGTERM, which the run also reads as a stop
                if job.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(job.pid, signal.SIGTERM)
                return True
            return False

    # ------------------------------------------------------------ children

    def _command(self, job: Job) -> list[str]:
        if job.action == "resume":
            return [sys.executable, "-m", "lmtune", "train", str(self.runs_dir / job.name), "--resume"]
        return [sys.executable, "-m", "lmtune", "train", str(self.config_file(job.name))]

    def _start_ready(self) -> None:
        running = sum(j.state == "running" for j in self.jobs)
        for job in self.jobs:
            if running >= self.parallel:
                break
            if job.state != "queued":
                continue
            log = log_path(self.runs_dir, job.name)
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:
                child = subprocess.Popen(self._command(job), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            self._children[job.name] = child
            job.state, job.pid = "running", child.pid
            running += 1

    def _ended(self, job: Job) -> bool:
        child = self._children.get(job.name)
        if child is not None:
            return child.poll() is not None  # (reaps it: an ended child is no zombie that looks alive)
        return not pid_alive(job.pid)

    def tick(self) -> None:
        """Drop the jobs whose process has ended and start the next ones."""
        with self._lock:
            ended = [j for j in self.jobs if j.state == "running" and self._ended(j)]
            for job in ended:
                self.jobs.remove(job)
                self._children.pop(job.name, None)
            before = [j.state for j in self.jobs]
            self._start_ready()
            if ended or before != [j.state for j in self.jobs]:
                self._write()

    def start(self) -> None:
        """The background thread that keeps the queue moving (and starts what a restart found queued)."""
        self.tick()
        self._thread = threading.Thread(target=self._loop, name="lmtune-studio-jobs", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            self.tick()

    def close(self) -> None:
        """Stop watching (the children go on: they are runs of their own, in their own sessions)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
