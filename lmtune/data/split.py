"""Seeded, stratified splitting of a labelled set into train and validation."""

from __future__ import annotations

import contextlib
import json
from array import array
from typing import Any, Sequence

import numpy as np

from ..core.errors import LmtuneError, option
from .keys import digest, normalise, votes
from .readers import RowReader
from .writers import RowWriter


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
    label), as `deal` and `improve` say: each part's rows close to its share, of the label and in all,
    and a group at least in every part when the label has enough. A part that would get no example of
    some label is an error. Groups and labels may be given as integer arrays (label_names then names
    the labels), which is how a large file is split in little memory."""
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
    before = [0] * k  # rows of the labels dealt so far, per part
    dealt = []
    for label in sorted(np.unique(v.top_label).tolist(), key=lambda i: str(names[i])):
        # shuffled with the seed, then largest first (a stable sort keeps the random order among groups of one size)
        members = rng.permutation(np.flatnonzero(v.top_label == label))
        members = members[np.argsort(-sizes[members], kind="stable")]
        parts = deal(sizes[members], ratios, before)
        have = _rows_per_part(sizes[members], parts, k)
        before = [b + h for b, h in zip(before, have)]
        if labels is not None and min(have) == 0:
            empty = [j for j, h in enumerate(have) if h == 0]
            raise LmtuneError(
                f"{source}: label {names[label]!r} has {sum(have)} example(s) in {len(members)} group(s): too few to "
                f"put some in every part (part {empty[0] + 1} would have none); merge rare labels or add examples"
            )
        dealt.append((members, parts))
    # a label dealt early could not know how the later ones would fall: each label again, its own shares
    # kept, now closer to the totals' shares where it can be (a few rounds: each only ever lowers the cost)
    for _ in range(3 if len(dealt) > 1 else 0):
        moved = False
        for members, parts in dealt:
            others = [b - h for b, h in zip(before, _rows_per_part(sizes[members], parts, k))]
            moved |= improve(sizes[members], parts, ratios, others)
            before = [o + h for o, h in zip(others, _rows_per_part(sizes[members], parts, k))]
        if not moved:
            break
    for members, parts in dealt:
        part_of[members] = parts
    return part_of[v.group]


IMPROVE_SIZES = 100  # distinct group sizes in a label up to which `improve` looks for better moves and swaps


def _rows_per_part(sizes: np.ndarray, parts: np.ndarray, k: int) -> list[int]:
    return np.bincount(parts, weights=sizes, minlength=k).astype(np.int64).tolist()


def _shares(sizes: np.ndarray, ratios: Sequence[float], before: Sequence[int]) -> tuple[list[float], list[float]]:
    """The parts' shares of these rows, and what they should add to `before` (the rows of the other
    labels in each part) for the totals to be in proportion."""
    total = int(sizes.sum())
    return [r * total for r in ratios], [r * (total + sum(before)) - b for r, b in zip(ratios, before)]


def deal(sizes: np.ndarray, ratios: Sequence[float], before: Sequence[int] = ()) -> np.ndarray:
    """The part of each group, whose row counts `sizes` come largest first: each group goes to the part
    furthest below its share of these rows, and the last ones to the parts still without any group
    (when there are enough groups for every part); then `improve`. Ties go to the part furthest below
    its share of all rows (`before`: the rows of the other labels already in each part), so that the
    parts' totals come close to their shares too."""
    k, n = len(ratios), len(sizes)
    before = list(before) or [0] * k
    targets, overall = _shares(sizes, ratios, before)
    have, count, empty = [0] * k, [0] * k, k
    parts = np.zeros(n, np.int8)
    every = range(k)
    for start in range(0, n, 65536):
        for i, size in enumerate(sizes[start : start + 65536].tolist(), start):
            choices = [j for j in every if not count[j]] if n - i <= empty else every
            j = max(choices, key=lambda j: (targets[j] - have[j], overall[j] - have[j], -j))
            parts[i] = j
            have[j] += size
            empty -= not count[j]
            count[j] += 1
    improve(sizes, parts, ratios, before)
    return parts


def improve(sizes: np.ndarray, parts: np.ndarray, ratios: Sequence[float], before: Sequence[int]) -> bool:
    """Move one group, or swap two, between parts while that brings the parts' rows closer to their
    shares (then the totals with `before` closer to theirs), the best step first; True when a group
    moved. A largest-first deal can miss: 3 3 2 2 2 halved gives 7 and 5, a swap 6 and 6. A part that
    had a group keeps one. Only for labels of at most IMPROVE_SIZES distinct group sizes (with more,
    the deal's last groups are small and leave little to gain)."""
    k = len(ratios)
    if len(sizes) < 2 or len(np.unique(sizes)) > IMPROVE_SIZES:
        return False
    targets, overall = _shares(sizes, ratios, before)
    have = _rows_per_part(sizes, parts, k)
    count = np.bincount(parts, minlength=k).tolist()

    def cost(h: list[int]) -> tuple[float, float]:
        return (round(sum(abs(x - t) for x, t in zip(h, targets)), 9),
                round(sum(abs(x - t) for x, t in zip(h, overall)), 9))

    held: dict[tuple[int, int], int] = {}  # (part, size) -> groups
    for j, size in zip(parts.tolist(), sizes.tolist()):
        held[j, size] = held.get((j, size), 0) + 1
    moved = False
    for _ in range(10 * k * len(held)):  # each step lowers the cost: a bound never reached
        best = (cost(have), None)
        for a, s in held:
            steps = [(a, s, b, 0) for b in range(k) if b != a and count[a] > 1]  # a group of size s from a to b
            steps += [(a, s, b, s2) for b, s2 in held if b != a and s2 != s]  # swapped for one of size s2 in b
            for step in steps:
                _, _, b, s2 = step
                c = cost([x - s + s2 if j == a else x + s - s2 if j == b else x for j, x in enumerate(have)])
                if c < best[0]:
                    best = (c, step)
        if best[1] is None:
            return moved
        a, s, b, s2 = best[1]
        for src, dst, size in ((a, b, s), (b, a, s2)) if s2 else ((a, b, s),):
            i = int(np.flatnonzero((parts == src) & (sizes == size))[-1])
            parts[i] = dst
            have[src], have[dst], count[src], count[dst] = have[src] - size, have[dst] + size, count[src] - 1, count[dst] + 1
            held[src, size] -= 1
            if not held[src, size]:
                del held[src, size]
            held[dst, size] = held.get((dst, size), 0) + 1
        moved = True
    return moved


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
