"""lmtune train: a run from a config, on one process or (--nproc) several."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..tasks.run_config import load_config
from ..core.errors import LmtuneError, RunStopped
from ..core.rundir import RESUMABLE, RunDir
from ..report import report_run
from ..tasks import get_task
from ..training.resume import resume_config
from .common import print_json


STOPPED = 3  # the exit status of a run stopped when asked (its checkpoint written: --resume goes on)


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="fine-tune as a YAML config says")
    t.add_argument("config", nargs="?", default=None,
                   help="YAML run config (or, without one, every key as key=value; with --resume, also a run folder)")
    t.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.lr=3e-5")
    t.add_argument("--resume", action="store_true",
                   help="continue an unfinished run from its last checkpoint, with the config it started with "
                   f"(overrides need not be given again; only {', '.join(RESUMABLE)} may change)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train on N local processes (torchrun; train.batch_size is per process)")
    t.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    # Everything that can be wrong in the config, the run folder or the data is said before torch is
    # imported (seconds): config, then folder, then data.
    if args.config is None and not args.overrides:
        raise LmtuneError("lmtune train needs a config file (lmtune train config.yaml) or the config as key=value "
                          "overrides (lmtune train model=minilm-l6 data.train=train.csv); to continue a run: "
                          "lmtune train RUN_FOLDER --resume")
    if args.config is not None and Path(args.config).is_dir() and not args.resume:
        raise LmtuneError(f"{args.config} is a folder, not a config file; to continue the run in it: "
                          f"lmtune train {args.config} --resume")
    first = int(os.environ.get("RANK", "0")) == 0
    notes: list[str] = []
    if args.resume:  # the run goes on with the config it started with
        cfg, notes = resume_config(args.config, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    if cfg.search is not None:
        notes.append("note: the search section is read by lmtune search; lmtune train runs the config as it is")
    run = RunDir(cfg.output_dir or "runs/run")
    if "LOCAL_RANK" not in os.environ:  # (a process of a launched run: its first process decides)
        run.check(resume=args.resume, overwrite=args.overwrite)
        if args.resume and run.last_checkpoint() is None:
            notes.append(f"note: {run.path} has no checkpoint to resume from; the run starts from the beginning")
    for note in notes if first else []:
        print(note, file=sys.stderr)
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch(args)
    data = get_task(cfg.task).load_data(cfg)
    from ..training.loop import brief, train

    try:
        result = train(cfg, data=data, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except RunStopped:  # asked to stop (stop.request, SIGTERM): the loop has said where and how to go on
        return STOPPED
    report_run(result.output_dir, cfg.train.report)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {result.output_dir}", file=sys.stderr)
        shown = {k: brief(d) for k, d in result.metrics.items() if k != "diagnosis"}
        if "diagnosis" in result.metrics:  # (its lines went to stderr above; metrics.json holds all of it)
            shown["diagnosis"] = {"verdict": result.metrics["diagnosis"].get("verdict")}
        print_json(shown)
    return 0


def _launch(args: argparse.Namespace) -> int:
    """`lmtune train --nproc N`: the same command on N local processes, started by torchrun
    (torch.distributed's elastic launcher; gloo on CPU, NCCL on GPUs)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    argv = ["-m", "lmtune", "train", *([args.config] if args.config else []), *args.overrides]
    argv += [flag for flag, on in (("--resume", args.resume), ("--overwrite", args.overwrite),
                                   ("--no-progress", args.no_progress)) if on]
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=args.nproc, run_id=f"lmtune-{os.getpid()}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5,
    )
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    import logging

    # the launcher's own log lines (a worker's exit, the others being stopped) would repeat, as a
    # wall of text, what the one line below says
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)(*argv)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        if code == STOPPED:  # every process stopped at the same step; the first has said so
            return STOPPED
        if code != 2:  # exit 2: the process has said what was wrong in one line already
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            print(f"lmtune: error: process {rank} of {args.nproc} stopped ({how}); the others were stopped; "
                  f"resume with lmtune train {' '.join([*([args.config] if args.config else []), *args.overrides])} --resume",
                  file=sys.stderr)
        return 2 if code == 2 else 1
    return 0
