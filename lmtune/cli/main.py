"""The `lmtune` command: train | plan | search | compare | eval | predict | generate | serve | explain | export | report | studio | data | models | keys.

Each command group is a module of its own that registers its commands (register(sub)) and holds
them; this one builds the parser from the groups and runs a command, turning its errors into one
line each."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core import __version__
from ..core.errors import LmtuneError, command_line
from . import data, infer, plan, reference, report, studio, train, tune
from .common import Parser

# in the order `lmtune --help` lists their commands
GROUPS = (train, plan, tune, infer, report, studio, data, reference)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="lmtune", description="Fine-tune pretrained language models for your task.")
    p.add_argument("--version", action="version", version=f"lmtune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    # Overrides may come before or after flags (`train c.yaml --overwrite a.b=1`), which plain
    # argparse cannot take for a positional list: collect the leftover key=value words here.
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        args.overrides += [x for x in extra if not x.startswith("-")]
        extra = [x for x in extra if x.startswith("-")]
        # no YAML, only keys: `lmtune train model=minilm-l6 data.train=reviews.csv`
        if args.config is not None and "=" in args.config and not Path(args.config).is_file():
            args.overrides.insert(0, args.config)
            args.config = None
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with command_line():  # error messages name flags (--overwrite), not keyword arguments
            return args.func(args)
    except LmtuneError as e:
        for problem in e.problems:
            print(f"lmtune: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmtune: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of the output went away (`lmtune keys | head`): stop without a traceback; stdout
        # goes to /dev/null so that Python's flush at exit does not hit the closed pipe again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # (128 + SIGPIPE, as a shell reports a command that a closed pipe stopped)
    except RuntimeError as e:
        # a process of a distributed run whose peer has gone: the launcher reports the cause
        lost = any(word in str(e).lower() for word in ("by peer", "remote worker", "connection closed"))
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and lost:
            print(f"lmtune: process {os.environ.get('RANK')}: another process of the run stopped", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
