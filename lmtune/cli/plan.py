"""lmtune plan: what a run will need (memory by part, a verdict, what would fit; time from a short probe),
before it runs."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import LmtuneError
from ..tasks import get_task
from ..tasks.run_config import load_config
from .common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="a run's memory and time before it runs: estimate by part, verdict, what would fit")
    p.add_argument("config", nargs="?", default=None, help="YAML run config (or every key as key=value)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.batch_size=8")
    p.add_argument("--probe", type=int, default=3, metavar="N",
                   help="time N real training steps (after one that warms up) for the time estimate; 0: memory only")
    p.add_argument("--json", action="store_true", help="the plan as JSON on stdout")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    if args.config is None and not args.overrides:
        raise LmtuneError("lmtune plan needs a config file (lmtune plan config.yaml) or the config as key=value overrides")
    if args.probe < 0:
        raise LmtuneError(f"--probe: {args.probe} is negative; expected a number of steps, 0 for none")
    import time

    from ..training.plan import process_seconds

    # the run's command starts as this one did: its start-up (Python, imports) is part of its time
    started = time.perf_counter() - (process_seconds() or 0.0)
    cfg = load_config(args.config, args.overrides)
    data = get_task(cfg.task).load_data(cfg)
    from ..training.memory_plan import memory_problem
    from ..training.plan import plan

    result = plan(cfg, probe_steps=args.probe, data=data, started=started)
    if args.json:
        print_json(result.record())
    else:
        for line in result.lines():
            print(line)
    problem = memory_problem(result.memory, result.cfg.train)
    if problem is not None:
        print(f"lmtune: error: {problem}", file=sys.stderr)
        return 2
    return 0
