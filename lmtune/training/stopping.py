"""A run's state in its folder while it runs, and its clean stop when asked.

While a run trains, its first process keeps `process.json` in the run folder (removed however the
process ends, short of a kill -9); a run that ends with an error leaves `failed.json`. A run is asked
to stop by a `stop.request` file in its folder or by SIGTERM to its first process: after the step it
is taking, it writes its checkpoint and `stopped.json` and raises RunStopped (`lmtune train` exits
with status 3), and `--resume` goes on from that step. With several processes, the first decides
for all (as early stopping does), every train.log_steps steps, so that the steps between cost no
exchange; with one, the loop looks after every step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

from ..core import collectives
from ..core.errors import RunStopped, one_line
from ..core.rundir import RunDir


class StopWatch:
    """Whether the run has been asked to stop: its folder's stop.request or SIGTERM (`signalled`)."""

    def __init__(self, run: RunDir, accelerator: Any, log_steps: int, enabled: bool) -> None:
        self.run, self.accelerator, self.enabled = run, accelerator, enabled
        self.every = log_steps if accelerator.num_processes > 1 else 1
        self.signalled = False

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True  # (only a flag: the loop stops at the end of the step it is taking)

    def requested(self, step: int) -> bool:
        """After optimizer step `step`: whether the run stops here (the same answer in every process)."""
        if not self.enabled or step % self.every:
            return False
        asked = self.accelerator.is_main_process and (self.signalled or self.run.stop_request.exists())
        return collectives.main_decides(self.accelerator, asked)


@contextlib.contextmanager
def running(run: RunDir, accelerator: Any, log_steps: int, stoppable: bool) -> Iterator[StopWatch]:
    """The run's time in its folder: process.json from here to the end, SIGTERM asking for a stop
    (`stoppable`; the first process, in the main thread, the handler before put back at the end),
    failed.json with the error that ends the run. A stop.request left at the end is removed."""
    watch = StopWatch(run, accelerator, log_steps, stoppable)
    main = accelerator.is_main_process
    handler = main and stoppable and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, watch.on_signal) if handler else None
    if main:
        run.write_process()
    try:
        yield watch
    except RunStopped:
        raise
    except Exception as e:
        if main:
            run.write_failed(one_line(e))
        raise
    finally:
        if handler:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if main:
            run.process.unlink(missing_ok=True)
            run.stop_request.unlink(missing_ok=True)
