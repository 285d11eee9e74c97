"""lmtune report: the HTML report of a run, or of several compared."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..report import REPORT_NAME, write_report


def register(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("report", help="an HTML report (figures embedded, PNGs beside it) of a run, or several compared")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run folders; a search or compare folder stands for its runs")
    rp.add_argument("-o", "--output", default=None,
                    help="the HTML file (default: RUN_DIR/report.html for one folder, report.html here for several); "
                    "its figures go in <name>_files/ beside it")
    rp.add_argument("--overwrite", action="store_true",
                    help="replace an existing report file (a run's own RUN_DIR/report.html is always drawn again)")
    rp.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    folders = [Path(p) for p in args.run_dirs]
    if args.output is None and len(folders) == 1:  # a run's own report is drawn from its files: drawn again
        print(write_report(folders, folders[0] / REPORT_NAME, overwrite=True))
        return 0
    print(write_report(folders, Path(args.output or REPORT_NAME), overwrite=args.overwrite))
    return 0
