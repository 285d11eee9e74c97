"""Peak memory of a run: the most GPU memory torch allocated, or on CPU the largest resident set of
the process while the run trained (sampled, so that runs in one process each get their own peak)."""

from __future__ import annotations

import os
import threading
from typing import Any

import torch


def _rss_bytes() -> int | None:
    """The process's resident set now (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.megabytes` (None where it is not known)."""

    def __init__(self, device: Any, interval: float = 0.2) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.device = device
        self.interval = interval
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while True:
            rss = _rss_bytes()
            if rss is not None:
                self.peak = max(self.peak or 0, rss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _rss_bytes() is not None:
            self._thread = threading.Thread(target=self._sample, name="lmtune-peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()

    @property
    def megabytes(self) -> float | None:
        return None if self.peak is None else round(self.peak / 2**20, 1)
