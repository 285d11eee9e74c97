"""What the command groups share: the parser class, JSON output, the column flags of every data command."""

from __future__ import annotations

import argparse
import json


class Parser(argparse.ArgumentParser):
    """Usage errors in the same one-line form as every other error (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"lmtune: error: {message} (see {self.prog} --help)\n")


def print_json(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def _column_list(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names such as text,label, got {text!r}")
    return names


COLUMNS_HELP = "column names of a CSV/TSV file without a header (its first line is then data), e.g. text,label"


class _Unused(argparse.Action):
    """A common data-command flag that this command has no use for: a one-line error, not an
    'unrecognized argument' (nor silently ignored)."""

    def __init__(self, option_strings: list[str], dest: str, reason: str = "", **kwargs: object) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.reason = reason

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string}: {self.reason}")


def column_flags(p: argparse.ArgumentParser, *, group: str | None = None, run: bool = False, labels: bool = True) -> None:
    """The column options that every data command takes, added here so that the commands cannot
    drift apart. `group`: what --group-column does for this command (None: it is an error here).
    `run`: lmtune predict and eval, which read a file with a run's settings: the names given are the
    file's own for the run's columns (data.text_column, data.label_column), and the format goes by
    the file's extension. `labels`: whether the command reads labels (--label-column)."""
    def default(key: str, plain: str) -> str:
        return f" (default: the run's data.{key})" if run else plain

    p.add_argument("--text-column", default=None, help="column with the text" + default("text_column", " (default: text)"))
    if labels:
        p.add_argument("--label-column", default=None, help="column with the label" + default(
            "label_column", " (default: 'label' when the file has it)"))
    else:
        p.add_argument("--label-column", action=_Unused, default=None, help=argparse.SUPPRESS,
                       reason=f"{p.prog} reads no labels (lmtune eval does)")
    if group:
        p.add_argument("--group-column", default=None, help=group)
    else:
        p.add_argument("--group-column", action=_Unused, default=None, help=argparse.SUPPRESS,
                       reason=f"only lmtune data split uses it (rows sharing a value stay in one part); "
                              f"{p.prog} does not")
    p.add_argument("--columns", type=_column_list, default=None, metavar="NAME,NAME",
                   help=COLUMNS_HELP + default("columns", ""))
    if run:
        p.add_argument("--format", action=_Unused, default=None, help=argparse.SUPPRESS,
                       reason=f"{p.prog} reads a file by its extension (.txt, .csv, .tsv, .jsonl, .json; "
                              f".conll for tagged sentences)")
    else:
        p.add_argument("--format", default="auto", choices=["auto", "csv", "tsv", "jsonl", "json"],
                       help="file format (auto: by the extension)")
