"""lmtune search and lmtune compare: many runs of one config, searched or set side by side."""

from __future__ import annotations

import argparse
import sys

from .common import print_json

# (lmtune.tune's modules, which start processes and hold the search's and the comparison's whole
# logic, are imported when their command runs: `lmtune --help` and the other commands start faster)


def register(sub: argparse._SubParsersAction) -> None:
    se = sub.add_parser("search", help="hyperparameter search (Optuna) over the config's search.space")
    se.add_argument("config", help="YAML run config with a search section")
    se.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. search.trials=10")
    se.add_argument("--resume", action="store_true", help="continue a stopped search (finished trials are kept)")
    se.add_argument("--overwrite", action="store_true", help="replace an existing search folder")
    se.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of search.parallel processes
    se.set_defaults(func=cmd_search)

    c = sub.add_parser("compare", help="train several strategies on the same data, seed and budget; table, plot, reading")
    c.add_argument("config", help="YAML run config (each strategy's run goes in a folder under its output_dir)")
    c.add_argument("overrides", nargs="*", help="dotted.key=value overrides for every run, e.g. train.epochs=1")
    c.add_argument("--strategies", default="full,partial,adaptive,lora,gradual", metavar="NAME,NAME",
                   help="strategies to compare (default: all five)")
    c.add_argument("--set", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                   help="a setting of one strategy, e.g. partial.freeze_layers=2 (repeatable)")
    c.add_argument("--seeds", default=None, metavar="N,N",
                   help="run each strategy with each of these train.seed values; the table shows mean ± sd")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_compare)


def cmd_search(args: argparse.Namespace) -> int:
    from ..tune.search import load_raw, run

    result = run(load_raw(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite,
                 worker=args.worker)
    if not args.worker:
        print(f"search folder: {result.folder}", file=sys.stderr)
        print_json({"best_trial": result.best_trial, "best_value": result.best_value, "trials": result.trials,
                    "target_reached": result.target_reached})
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..tune.compare import compare

    result = compare(args.config, args.overrides, strategies=args.strategies, sets=args.set, seeds=args.seeds,
                     overwrite=args.overwrite, progress=not args.no_progress)
    print(f"compare folder: {result.output_dir} (compare.csv, compare.md, compare.json, compare.png)", file=sys.stderr)
    print(result.table())
    print()
    print(result.reading)
    return 0
