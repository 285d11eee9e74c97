"""Seeded, stratified splitting of a labelled set into train and validation."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from ..errors import LmtuneError


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
    import json

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


def grouped_split(
    labels: Sequence[object] | None, groups: Sequence[object], ratios: Sequence[float], seed: int,
    *, source: str = "the data",
) -> list[list[int]]:
    """Indices of each part. Rows that share a group (the same normalised text, or the same value
    of a group column) always land in the same part; with labels, each label's groups are dealt to
    the parts in proportion to the ratios (a group counts under its most common label). A part
    that would get no example of some label is an error."""
    import random

    by_group: dict[object, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    by_label: dict[object, list[list[int]]] = {}
    for members in by_group.values():
        key = Counter(labels[i] for i in members).most_common(1)[0][0] if labels is not None else None
        by_label.setdefault(key, []).append(members)
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in ratios]
    for key in sorted(by_label, key=str):
        members = by_label[key]
        rng.shuffle(members)
        total = sum(len(m) for m in members)
        have = [0] * len(ratios)
        first = members[: len(ratios)] if len(members) >= len(ratios) else []
        for k, group in enumerate(first):  # every part first gets one group of the label, when there are enough
            parts[k] += group
            have[k] += len(group)
        for group in members[len(first):]:
            # the part furthest below its share of this label takes the group
            k = max(range(len(ratios)), key=lambda j: (ratios[j] * total - have[j], -j))
            parts[k] += group
            have[k] += len(group)
        if labels is not None and min(have) == 0:
            empty = [j for j, h in enumerate(have) if h == 0]
            raise LmtuneError(
                f"{source}: label {key!r} has {total} example(s) in {len(members)} group(s): too few to put "
                f"some in every part (part {empty[0] + 1} would have none); merge rare labels or add examples"
            )
    return [sorted(p) for p in parts]


PART_NAMES = ("train", "validation", "test")


def _write_rows(path, columns: list[str], rows: list[dict], fmt: str) -> None:
    import csv
    import io
    import json

    from ..rundir import write_text_atomic

    if fmt in ("csv", "tsv"):
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="," if fmt == "csv" else "\t", lineterminator="\n",
                       quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE, escapechar=None if fmt == "csv" else "\\")
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "") for c in columns])
        write_text_atomic(path, buf.getvalue())
    else:
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def split_file(
    path, out_dir, ratios: Sequence[float], *, seed: int = 42, text_column: str = "text",
    label_column: str | None = None, group_column: str | None = None, overwrite: bool = False,
) -> dict:
    """Split a file into train/validation(/test) files in out_dir (same format; JSON becomes
    JSONL), grouped and stratified as `grouped_split` says. Returns a report per part."""
    from pathlib import Path

    from .inspect import normalise
    from .readers import detect_format, read_table

    path, out_dir = Path(path), Path(out_dir)
    table = read_table(path)
    if label_column is None and "label" in table.columns:
        label_column = "label"
    table.require_columns(text_column, label_column, group_column)
    fmt = detect_format(path)
    fmt = "jsonl" if fmt == "json" else fmt
    names = PART_NAMES[: len(ratios)]
    targets = [out_dir / f"{n}.{fmt}" for n in names]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise LmtuneError(f"{existing[0]} exists; use --overwrite to replace it")
    labels = [str(r[label_column]) for r in table.rows] if label_column else None
    groups = [str(r[group_column]) if group_column else normalise(str(r[text_column])) for r in table.rows]
    parts = grouped_split(labels, groups, ratios, seed, source=str(path))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {}
    for name, target, idx in zip(names, targets, parts):
        _write_rows(target, table.columns, [table.rows[i] for i in idx], fmt)
        entry: dict = {"file": str(target), "rows": len(idx)}
        if labels is not None:
            entry["labels"] = dict(sorted(Counter(labels[i] for i in idx).items()))
        report[name] = entry
    return report
