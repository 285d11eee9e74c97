"""Seeded, stratified splitting of a labelled set into train and validation."""

from __future__ import annotations

import contextlib
import json
from array import array
from typing import Any, Sequence

import numpy as np

from ..core.errors import LmtuneError, option
from .keys import digest, normalise, votes


def random_holdout(n: int, size: float, seed: int, *, source: str, unit: str) -> tuple[list[int], list[int]]:
    """Indices (kept, held_out): a seeded random `size` of n rows held out, at least one."""
    import random

    if n < 2:
        raise LmtuneError(f"{source}: need at least 2 {unit} to hold out a validation split")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(size * n))
    return sorted(order[n_held:]), sorted(order[:n_held])


def grouped_holdout(table, column: str, size: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, held_out) of a table's rows: about `size` of them held out, whole groups of
    rows sharing a value of `column` on one side."""
    table.require_columns(column)
    groups = [json_key(r.get(column)) for r in table.rows]
    if len(set(groups)) < 2:
        raise LmtuneError(f"{table.path}: every row has the same {column!r} (data.group_column): no group left to hold out")
    kept, held = grouped_split(None, groups, (1 - size, size), seed, source=str(table.path))
    return kept, held


def json_key(value: object) -> str:
    """A hashable, exact key for a cell (numbers, strings, lists alike)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def parse_ratios(text: str) -> list[float]:
    """'0.8,0.1,0.1' -> [0.8, 0.1, 0.1]: 2 or 3 positive shares that sum to 1."""
    try:
        ratios = [float(x) for x in text.split(",")]
    except ValueError:
        raise LmtuneError(f"--ratios {text!r}: expected shares such as 0.8,0.1,0.1") from None
    if not 2 <= len(ratios) <= 3 or any(r <= 0 for r in ratios):
        raise LmtuneError(f"--ratios {text!r}: give 2 or 3 positive shares (train, validation[, test])")
    if abs(sum(ratios) - 1) > 1e-6:
        raise LmtuneError(f"--ratios {text!r}: the shares sum to {sum(ratios):g}, not 1")
    return ratios


def assign_parts(
    labels: Sequence[object] | np.ndarray | None, groups: Sequence[object] | np.ndarray, ratios: Sequence[float],
    seed: int, *, source: str = "the data", label_names: Sequence[str] | None = None,
) -> np.ndarray:
    """The part (0, 1, ...) of every row. Rows that share a group (the same normalised text, or the
    same value of a group column) always land in the same part; with labels, each label's groups
    are dealt to the parts in proportion to the ratios (a group counts under its most common
    label): each part but the largest is first dealt one of the label's smallest groups (when there
    are enough), then every group goes to the part furthest below its share. A part that
    would get no example of some label is an error. Groups and labels may be given as integer
    arrays (label_names then names the labels), which is how a large file is split in little memory."""
    group_keys = _integers(groups, lambda g: digest(str(g)))
    if labels is None:
        label_ids, names = np.zeros(len(group_keys), np.int32), ["(all)"]
    elif label_names is not None:
        label_ids, names = np.asarray(labels, np.int32), list(label_names)
    else:
        unique, inverse = np.unique(np.asarray([str(x) for x in labels]), return_inverse=True)
        names, label_ids = unique.tolist(), inverse.astype(np.int32)
    v = votes(group_keys, label_ids)
    sizes = np.bincount(v.group)
    part_of = np.zeros(len(sizes), np.int8)
    rng = np.random.default_rng(seed)
    k = len(ratios)
    # the parts other than the largest, smallest share first: each is first dealt one group of every label
    small_parts = sorted(range(k), key=lambda j: (ratios[j], -j))[: k - 1]
    for label in sorted(np.unique(v.top_label).tolist(), key=lambda i: str(names[i])):
        members = rng.permutation(np.flatnonzero(v.top_label == label))
        # smallest groups first (a stable sort keeps the random order among groups of one size): the
        # small parts' first groups are then the label's smallest, and cannot starve the largest part
        members = members[np.argsort(sizes[members], kind="stable")]
        member_sizes = sizes[members]
        total, n_groups = int(member_sizes.sum()), len(members)
        have = [0] * k
        first = k - 1 if n_groups >= k else 0
        for g, j in enumerate(small_parts[:first]):  # the largest part gets its groups by deficit below
            part_of[members[g]] = j
            have[j] += int(member_sizes[g])
        targets = [r * total for r in ratios]
        # the rest in random order again, so that no part gets only the small groups or only the big ones
        rest = rng.permutation(n_groups - first) + first
        members, member_sizes = members[rest], member_sizes[rest]
        for start in range(0, len(members), 65536):
            chunk = members[start : start + 65536].tolist()
            for g, size in zip(chunk, member_sizes[start : start + 65536].tolist()):
                # the part furthest below its share of this label takes the group
                j = max(range(k), key=lambda j: (targets[j] - have[j], -j))
                part_of[g] = j
                have[j] += size
        if labels is not None and min(have) == 0:
            empty = [j for j, h in enumerate(have) if h == 0]
            raise LmtuneError(
                f"{source}: label {names[label]!r} has {total} example(s) in {n_groups} group(s): too few to put "
                f"some in every part (part {empty[0] + 1} would have none); merge rare labels or add examples"
            )
    return part_of[v.group]


def _integers(values: Sequence[object] | np.ndarray, key: Any) -> np.ndarray:
    a = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if a.dtype.kind in "iu":
        return a
    return np.fromiter((key(x) for x in values), np.uint64, count=len(values))


def grouped_split(
    labels: Sequence[object] | None, groups: Sequence[object], ratios: Sequence[float], seed: int,
    *, source: str = "the data",
) -> list[list[int]]:
    """Indices of each part, as `assign_parts` deals them."""
    parts = assign_parts(labels, groups, ratios, seed, source=source)
    return [np.flatnonzero(parts == j).tolist() for j in range(len(ratios))]


PART_NAMES = ("train", "validation", "test")
SHOWN_LINES = 5  # a warning names this many lines at most


def lines_warning(count: int, what: str, lines: list[int]) -> str:
    """'7 empty text(s), first at lines 4, 9, 12, 20, 31': a warning about rows, naming their first lines."""
    where = f"line {lines[0]}" if len(lines) == 1 else "lines " + ", ".join(map(str, lines))
    return f"{count} {what}, first at {where}" if count > len(lines) else f"{count} {what} at {where}"


def split_warnings(report: dict) -> list[str]:
    """What to look at in the parts `split_file` wrote: their empty texts, counted, with the first lines."""
    count = sum(part.get("empty_texts", 0) for part in report.values())
    lines = sorted(line for part in report.values() for line in part.get("empty_text_lines", []))[:SHOWN_LINES]
    return [lines_warning(count, "empty text(s)", lines)] if count else []


def split_file(
    path, out_dir, ratios: Sequence[float], *, seed: int = 42, text_column: str = "text",
    label_column: str | None = None, group_column: str | None = None, overwrite: bool = False,
    fmt: str = "auto", columns: list[str] | None = None,
) -> dict:
    """Split a file into train/validation(/test) files in out_dir (same format; JSON becomes
    JSONL), grouped and stratified as `assign_parts` says. The file is read twice and never held:
    once for each row's label and group key, once to write. Returns a report per part: its file,
    rows, label counts and empty texts (with the first lines of them, which `split_warnings` turns
    into a warning). `columns`: the column names of a CSV or TSV file without a header (the parts
    get them as their header)."""
    from pathlib import Path

    from .readers import RowReader
    from .writers import RowWriter

    path, out_dir = Path(path), Path(out_dir)
    reader = RowReader(path, fmt, columns=columns)
    if reader.columns:
        reader.require_columns(text_column, label_column, group_column, keys=("text_column", "label_column", "group_column"))
    fmt = "jsonl" if reader.format == "json" else reader.format
    names = PART_NAMES[: len(ratios)]
    targets = [out_dir / f"{n}.{fmt}" for n in names]
    label_key = label_column or "label"
    label_ids: dict[str, int] = {}
    labels, groups = array("i"), array("Q")
    for _, row in reader:
        labels.append(label_ids.setdefault(str(row.get(label_key)), len(label_ids)))
        groups.append(digest(json_key(row.get(group_column)) if group_column else normalise(str(row.get(text_column) or ""))))
    if not len(labels):
        raise LmtuneError(f"{path}: no examples in the file")
    if label_column is None and label_key in reader.columns:
        label_column = label_key
    reader.require_columns(text_column, label_column, group_column, keys=("text_column", "label_column", "group_column"))
    label_array = np.frombuffer(labels, np.int32) if label_column else None
    parts = assign_parts(label_array, np.frombuffer(groups, np.uint64), ratios, seed, source=str(path),
                         label_names=list(label_ids))
    # the input's problems first, then the outputs
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise LmtuneError(f"{existing[0]} exists; use {option('--overwrite', 'overwrite=True')} to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    empty, empty_lines = [0] * len(ratios), [[] for _ in ratios]  # per part: empty texts, the first lines of them
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(RowWriter(t, reader.columns, fmt)) for t in targets]
        for (line, row), part in zip(reader, parts):
            writers[part].write(row)
            if not str(row.get(text_column) or "").strip():
                empty[part] += 1
                if len(empty_lines[part]) < SHOWN_LINES:
                    empty_lines[part].append(line)
    report = {}
    for j, (name, target) in enumerate(zip(names, targets)):
        entry: dict = {"file": str(target), "rows": int((parts == j).sum())}
        if label_array is not None:
            counts = np.bincount(label_array[parts == j], minlength=len(label_ids))
            entry["labels"] = dict(sorted((n, int(c)) for n, c in zip(label_ids, counts) if c))
        entry["empty_texts"] = empty[j]
        if empty[j]:
            entry["empty_text_lines"] = empty_lines[j]
        report[name] = entry
    return report
