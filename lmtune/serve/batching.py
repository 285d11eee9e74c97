"""Micro-batching: requests from many clients become few model calls, made by one worker thread.

The model is not thread-safe, so one thread makes every call, one at a time. A request is a `Job`:
some items (inputs, prompts) and the `work` that turns a list of items into one result per item.
Jobs with the same `key` may share one call: the worker takes the oldest job, then waits up to
`max_wait_s` for more jobs of its key until the batch holds `max_batch` items. A job whose key is
None (a stream, a seeded sample) always runs alone. If a shared call fails, each of its jobs runs
again alone, so that one request's bad input fails that request only.

The queue is bounded: `submit` raises `QueueFull` when `max_queue` jobs are waiting, so that an
overloaded server answers "try later" at once instead of growing without end.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

Work = Callable[[list[Any]], list[Any]]


class QueueFull(Exception):
    """The queue holds `max_queue` waiting jobs already."""


class Closed(Exception):
    """The batcher was closed before the job ran."""


@dataclass(eq=False)
class Job:
    work: Work
    items: list[Any]
    key: Hashable | None
    future: Future = field(default_factory=Future)  # the job's results, one per item


class MicroBatcher:
    def __init__(self, *, max_batch: int, max_wait_s: float, max_queue: int, name: str = "lmtune-model") -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._running = 0
        self.calls = 0  # model calls made (a batch that fell back to one call per job counts each)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the clients' side

    def submit(self, work: Work, items: list[Any], key: Hashable | None = None) -> Job:
        """Queue a job; jobs with equal keys must have interchangeable `work`."""
        job = Job(work, list(items), key)
        with self._cond:
            if self._closed:
                raise Closed("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting already")
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """Drop a job that is still waiting (its slot is free again); a running job finishes."""
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                job.future.cancel()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._pending)

    @property
    def running(self) -> int:
        """Jobs in the model call now (0 when the worker is idle)."""
        with self._cond:
            return self._running

    def close(self) -> None:
        """Stop the worker after the call in progress; waiting jobs fail with `Closed`."""
        with self._cond:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in dropped:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(Closed("the server is shutting down"))
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # ------------------------------------------------------------ the worker's side

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._running = 0

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._pending.popleft()
            batch, size = [first], len(first.items)
            if first.key is not None:
                deadline = time.monotonic() + self.max_wait_s
                while size < self.max_batch:
                    for job in list(self._pending):
                        if job.key == first.key and size + len(job.items) <= self.max_batch:
                            self._pending.remove(job)
                            batch.append(job)
                            size += len(job.items)
                    left = deadline - time.monotonic()
                    if size >= self.max_batch or left <= 0 or self._closed:
                        break
                    self._cond.wait(left)
            # a job whose client went away while it waited is not run
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            self._running = len(batch)
            return batch

    def _run(self, batch: list[Job]) -> None:
        if not batch:
            return
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        items = [item for job in batch for item in job.items]
        self.calls += 1
        try:
            results = batch[0].work(items)
            if len(results) != len(items):
                raise RuntimeError(f"the model call gave {len(results)} results for {len(items)} inputs")
        except Exception:
            for job in batch:  # whose input was it? each job again on its own
                self._run_alone(job)
            return
        start = 0
        for job in batch:
            job.future.set_result(results[start : start + len(job.items)])
            start += len(job.items)

    def _run_alone(self, job: Job) -> None:
        self.calls += 1
        try:
            results = job.work(job.items)
            if len(results) != len(job.items):
                raise RuntimeError(f"the model call gave {len(results)} results for {len(job.items)} inputs")
        except Exception as e:
            job.future.set_exception(e)
        else:
            job.future.set_result(results)
