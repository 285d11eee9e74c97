"""lmtune data: preview, inspect, clean, augment and split data files as lmtune reads them.

Each command imports its own module (numpy, ftfy, the sentiment lexicon) when it runs, so that
`lmtune --help` and the other commands start fast."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import models
from ..core.errors import LmtuneError
from ..core.rundir import check_output
from ..data.readers import RowReader, Table
from ..data.writers import RowWriter, write_rows
from ..tasks import TASKS, get_task
from ..tasks.run_config import key_tasks, load_config
from .common import Parser, column_flags, print_json

if TYPE_CHECKING:
    from ..data.augment import AugmentOptions, Skipped

CLEAN_DEFAULTS = (
    "By default: Unicode NFKC, whitespace collapsed, empty texts dropped, repeated texts dropped after the first "
    "(--dedupe exact), and every copy of a text that carries different labels dropped (--conflicts drop). Mojibake "
    "repair, HTML stripping, lower-casing and length limits only when asked. Each dropped row goes to OUT's .dropped.jsonl "
    "with its line and reason; the input file is never changed."
)


AUGMENT_LABELS = (
    "Copies keep their row's label. Embedding-neighbour synonyms keep the word's sentiment polarity (VADER lexicon, "
    "English) and negations are never replaced, deleted or moved, but a deletion or a swap can still change what a "
    "copy says: protect the words the labels hang on (--protect) and look at a sample of the copies."
)


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="look at data as lmtune will train on it")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    dp = dsub.add_parser("preview", help="the first examples of a causal_lm config with the trained tokens marked")
    dp.add_argument("config")
    dp.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    dp.add_argument("-n", type=int, default=3, help="how many examples")
    dp.set_defaults(func=cmd_data_preview)
    di = dsub.add_parser("inspect", help="rows, duplicates, conflicting labels, label balance, lengths, encoding problems")
    di.add_argument("file")
    column_flags(di)
    di.add_argument("--model", default=None, help="count lengths in this model's tokens (a bundled name or a folder)")
    di.add_argument("--max-length", type=int, default=None, help="with --model: count texts longer than this")
    di.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    di.set_defaults(func=cmd_data_inspect)
    _add_clean(dsub)
    _add_augment(dsub)
    ds = dsub.add_parser("split", help="seeded, stratified split into train/validation(/test) files; duplicates stay together")
    ds.add_argument("file")
    ds.add_argument("--ratios", default="0.8,0.1,0.1", help="shares of train, validation[, test]; they sum to 1")
    ds.add_argument("-o", "--output", required=True, help="folder for train/validation/test files")
    column_flags(ds, group="rows sharing a value stay in one part (default: rows with the same normalised text)")
    ds.add_argument("--seed", type=int, default=42)
    ds.add_argument("--overwrite", action="store_true")
    ds.set_defaults(func=cmd_data_split)


def _add_clean(dsub: argparse._SubParsersAction) -> None:
    dc = dsub.add_parser("clean", help="normalise texts; drop empty, out-of-range, conflicting and duplicate rows, each with its reason",
                         description=CLEAN_DEFAULTS)
    dc.add_argument("file")
    dc.add_argument("-o", "--output", required=True, help="the cleaned file; its dropped rows go beside it, to <name>.dropped.jsonl (-o c2.csv: c2.dropped.jsonl)")
    column_flags(dc)
    dc.add_argument("--fix-mojibake", action="store_true",
                    help="repair mojibake with ftfy (UTF-8 read as Latin-1/CP-1252: 'cafÃ©' becomes 'café'); default: off")
    dc.add_argument("--strip-html", action="store_true", help="remove HTML tags and unescape entities; default: off")
    dc.add_argument("--lowercase", action="store_true", help="lower-case the text; default: off")
    dc.add_argument("--min-chars", type=int, default=None, help="drop texts shorter than this; default: no limit")
    dc.add_argument("--max-chars", type=int, default=None, help="drop texts longer than this; default: no limit")
    dc.add_argument("--dedupe", default="exact", choices=["none", "exact", "normalised"],
                    help="drop repeated texts after the first: none, exact (the default) or normalised (NFKC, "
                    "case-folded, single spaces)")
    dc.add_argument("--conflicts", default="drop", choices=["keep", "drop", "majority"],
                    help="texts whose copies carry different labels: keep them, drop every copy (the default), or "
                    "keep the copies with the majority label")
    dc.add_argument("--overwrite", action="store_true")
    dc.set_defaults(func=cmd_data_clean)


def _add_augment(dsub: argparse._SubParsersAction) -> None:
    da = dsub.add_parser("augment", help="EDA augmentation: random deletion, swap, insertion and synonym replacement",
                         description=AUGMENT_LABELS)
    da.add_argument("file")
    da.add_argument("-o", "--output", required=True, help="the rows and their augmented copies")
    column_flags(da)
    da.add_argument("--task", choices=TASKS, default=None,
                    help="token_classification: tagged sentences (CoNLL, or JSON lines of tokens and tags), tags kept "
                    "aligned; default: token_classification for .conll, .iob and .bio files")
    da.add_argument("--tag-scheme", choices=["IOB1", "IOB2", "BIOES"], default="IOB2")
    da.add_argument("--n-per-example", type=int, default=1,
                    help="augmented copies of each row; a copy that comes out the same as its row or an earlier copy "
                    "is skipped, and the summary counts why")
    for op in ("delete", "swap", "insert", "synonym"):
        da.add_argument(f"--p-{op}", type=float, default=0.1, help=f"per-word probability of {op}")
    da.add_argument("--p-entity", type=float, default=0.1,
                    help="tagged sentences: per-entity probability of replacement by another mention of its type")
    da.add_argument("--synonyms", default=None, help="synonym file: JSON {word: [synonyms]} or 'word<TAB>syn,syn' lines")
    da.add_argument("--model", default=None, help="also take synonyms from this model's input-embedding neighbours "
                    "(only those that keep the word's sentiment polarity: neighbours include antonyms)")
    da.add_argument("--protect", default=None, help="comma-separated words never changed (label-bearing words)")
    da.add_argument("--seed", type=int, default=42)
    da.add_argument("--overwrite", action="store_true")
    da.set_defaults(func=cmd_data_augment)


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import inspect_file, render

    tokenizer = None
    if args.model:
        tokenizer = models.load_tokenizer(models.resolve(args.model))
    report = inspect_file(args.file, text_column=args.text_column or "text", label_column=args.label_column,
                          tokenizer=tokenizer, max_length=args.max_length, fmt=args.format, columns=args.columns)
    print(json.dumps(report) if args.json else render(report))
    return 0


def cmd_data_clean(args: argparse.Namespace) -> int:
    from ..data.clean import CleanOptions, clean_file, dropped_path

    src, out = Path(args.file), Path(args.output)
    dropped_file = dropped_path(out)
    for target in (out, dropped_file):
        if src.resolve() == target.resolve():
            raise LmtuneError(f"{target}: the output must be another file (the input is never changed)")
    options = CleanOptions(fix_mojibake=args.fix_mojibake, strip_html=args.strip_html, lowercase=args.lowercase,
                           min_chars=args.min_chars, max_chars=args.max_chars, dedupe=args.dedupe, conflicts=args.conflicts)
    summary, rows = clean_file(src, out, dropped_file, args.text_column or "text", args.label_column, options,
                               fmt=args.format, columns=args.columns, overwrite=args.overwrite)
    reasons = ", ".join(f"{k} {v}" for k, v in summary["dropped_by_reason"].items()) or "none"
    print(f"kept {summary['kept']} of {rows} rows -> {out}; dropped: {reasons} (each with its line in "
          f"{dropped_file}); {summary['texts_changed']} texts changed"
          + (f" ({summary['mojibake_repaired']} with mojibake repaired)" if args.fix_mojibake else ""), file=sys.stderr)
    print_json(summary)
    return 0


def cmd_data_augment(args: argparse.Namespace) -> int:
    from ..data.augment import AugmentOptions, Skipped

    src, out = Path(args.file), Path(args.output)
    check_output(out, args.overwrite)
    task = get_task(args.task) if args.task is not None else None
    if task is not None and not task.reads("data", "augment"):
        raise LmtuneError(f"--task: {task.name} runs have no data.augment; data augment takes "
                          f"{' or '.join(key_tasks('data', 'augment'))} data")
    # tagged sentences: a task that reads tags (token_classification), or a CoNLL-like file
    tagged = task.reads("data", "tags_column") if task is not None else src.suffix.lower() in (".conll", ".iob", ".bio")
    if tagged and out.suffix.lower() != ".jsonl":
        raise LmtuneError(f"{out}: tagged sentences are written as JSON lines (tokens, tags, augmented_from): name it .jsonl")
    options = AugmentOptions(p_delete=args.p_delete, p_swap=args.p_swap, p_insert=args.p_insert,
                             p_synonym=args.p_synonym, p_entity=args.p_entity, n_per_example=args.n_per_example,
                             protect=frozenset(w.lower() for w in (args.protect or "").split(",") if w))
    model = models.resolve(args.model) if args.model else None
    skipped = Skipped()
    augment = _augment_sentences if tagged else _augment_rows
    rows, copies, synonyms = augment(args, src, out, options, model, skipped)
    what = "sentences" if tagged else "rows"
    print(f"wrote {rows} {what} and {copies} augmented copies (marked by augmented_from) to {out}", file=sys.stderr)
    if skipped.total:
        print(skipped.describe(rows * options.n_per_example), file=sys.stderr)
    print_json({what: rows, "augmented": copies, "skipped": skipped.total, "skipped_by_reason": skipped.by_reason(),
                "synonym_words": len(synonyms)})
    return 0


def _augment_sentences(args: argparse.Namespace, src: Path, out: Path, options: AugmentOptions, model: str | None,
                       skipped: Skipped) -> tuple[int, int, dict[str, list[str]]]:
    """Tagged sentences, all held (entity mentions are swapped between them), then their copies:
    (sentences, copies, synonyms)."""
    from ..data.augment import augment_sentences, gather_synonyms
    from ..tasks import token_classification as ner

    for flag, value in (("--text-column", args.text_column), ("--label-column", args.label_column),
                        ("--columns", args.columns)):
        if value is not None:
            raise LmtuneError(f"{flag}: tagged sentences are read as tokens and tags (CoNLL columns, or "
                              f"JSON lines with 'tokens' and 'tags'), not from named columns")
    # read as a run reads its training file, with the default columns (CoNLL: the tag in the last one)
    table = ner.read_sentences(src, ner.TokenClassificationData(train=str(src), format=args.format))
    ner.check_tags(table, args.tag_scheme)
    words = {t.lower() for r in table.rows for t, tag in zip(r["tokens"], r["tags"]) if tag == "O"}
    synonyms = gather_synonyms(args.synonyms, model, words)
    new = augment_sentences(table.rows, table.lines, ner.spans, options, synonyms, args.seed, args.tag_scheme, skipped)
    write_rows(out, [], ([*({**r, "augmented_from": None} for r in table.rows), *new]), "jsonl")
    return len(table), len(new), synonyms


def _augment_rows(args: argparse.Namespace, src: Path, out: Path, options: AugmentOptions, model: str | None,
                  skipped: Skipped) -> tuple[int, int, dict[str, list[str]]]:
    """Text rows, streamed: the rows as they are, then (a second reading) their copies:
    (rows, copies, synonyms)."""
    from ..data.augment import augment_stream, gather_synonyms

    text_column = args.text_column or "text"
    reader = RowReader(src, args.format, columns=args.columns)
    if reader.columns:  # (the label column is not used, only checked: the copies keep it)
        reader.require_columns(text_column, args.label_column, keys=("text_column", "label_column"))
    words: set[str] = set()
    with RowWriter(out, [*reader.columns, "augmented_from"], "jsonl" if reader.format == "json" else reader.format) as w:
        for _, row in reader:
            w.write(row)
            if model is not None:
                words.update(x.lower() for x in str(row.get(text_column) or "").split())
        if not w.rows:
            raise LmtuneError(f"{src}: no examples in the file")
        reader.require_columns(text_column, args.label_column, keys=("text_column", "label_column"))
        rows = w.rows
        synonyms = gather_synonyms(args.synonyms, model, words)
        for row in augment_stream(reader, text_column, options, synonyms, args.seed, skipped):
            w.write(row)
        copies = w.rows - rows
    return rows, copies, synonyms


def cmd_data_split(args: argparse.Namespace) -> int:
    from ..data.split import parse_ratios, split_file, split_warnings

    report = split_file(args.file, args.output, parse_ratios(args.ratios), seed=args.seed,
                        text_column=args.text_column or "text", label_column=args.label_column,
                        group_column=args.group_column, overwrite=args.overwrite, fmt=args.format,
                        columns=args.columns)
    for name, part in report.items():
        labels = ", ".join(f"{k} {v}" for k, v in part.get("labels", {}).items())
        print(f"{name}: {part['rows']} rows -> {part['file']}" + (f" ({labels})" if labels else ""), file=sys.stderr)
    for warning in split_warnings(report):
        print(f"warning: {warning}", file=sys.stderr)
    print_json(report)
    return 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    from ..tasks.causal_lm import show_mask
    from ..training.loop import resolve_defaults

    cfg = load_config(args.config, args.overrides)
    task = get_task(cfg.task)
    if not task.GENERATIVE:
        raise LmtuneError(f"data preview shows the loss mask of causal_lm data; {args.config} has task {cfg.task}")
    data = task.load_data(cfg)
    tokenizer = models.load_tokenizer(models.resolve(cfg.model))
    cfg, _, notes = resolve_defaults(cfg, task, data, tokenizer)  # data.max_length: auto, from all training rows
    for note in notes:
        print(note, file=sys.stderr)
    t = data.train
    first = Table(t.path, t.columns, t.rows[: args.n], t.lines[: args.n])
    unpacked = cfg.model_copy(update={"data": cfg.data.model_copy(update={"packing": False})})
    features, truncated = task.prepare(first, tokenizer, unpacked, [], data.shape)
    color = sys.stdout.isatty()
    legend = "trained tokens in green" if color else "trained tokens in [[double brackets]]"
    print(f"{t.path}: data shape {data.shape}; {legend}\n")
    for i, f in enumerate(features):
        trained = sum(x != -100 for x in f["labels"])
        where = f"line {first.lines[i]}" if data.shape != "text" and i < len(first.lines) else f"block {i + 1}"
        print(f"--- example {i + 1} ({where}): {len(f['input_ids'])} tokens, {trained} trained")
        print(show_mask(f, tokenizer, color=color))
        print()
    if truncated:
        how = f": {truncated.describe()}" if hasattr(truncated, "describe") else ""
        print(f"{truncated} of these examples were truncated to data.max_length={cfg.data.max_length}{how}")
    return 0
