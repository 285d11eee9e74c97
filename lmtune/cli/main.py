"""The `lmtune` command: train | search | compare | eval | predict | generate | serve | explain | export | report | data | models | keys."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..core.errors import LmtuneError, command_line
from ..tasks import TASKS

if TYPE_CHECKING:
    from ..tasks.decoding import GenerationSettings


def _print_json(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    # Everything that can be wrong in the config, the run folder or the data is said before torch is
    # imported (seconds): config, then folder, then data.
    from ..tasks.run_config import load_config
    from ..core.rundir import RunDir
    from ..tasks import get_task

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
        from ..training.resume import resume_config

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
    from ..report import report_run
    from ..training.loop import brief, train

    result = train(cfg, data=data, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    report_run(result.output_dir, cfg.train.report)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {result.output_dir}", file=sys.stderr)
        shown = {k: brief(d) for k, d in result.metrics.items() if k != "diagnosis"}
        if "diagnosis" in result.metrics:  # (its lines went to stderr above; metrics.json holds all of it)
            shown["diagnosis"] = {"verdict": result.metrics["diagnosis"].get("verdict")}
        _print_json(shown)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..tune.search import load_raw, run

    result = run(load_raw(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite,
                 worker=args.worker)
    if not args.worker:
        print(f"search folder: {result.folder}", file=sys.stderr)
        _print_json({"best_trial": result.best_trial, "best_value": result.best_value, "trials": result.trials,
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
        if code != 2:  # exit 2: the process has said what was wrong in one line already
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            print(f"lmtune: error: process {rank} of {args.nproc} stopped ({how}); the others were stopped; "
                  f"resume with lmtune train {' '.join([*([args.config] if args.config else []), *args.overrides])} --resume",
                  file=sys.stderr)
        return 2 if code == 2 else 1
    return 0


def _renamed_columns(args: argparse.Namespace) -> dict[str, tuple[str, str | None]]:
    """The run's column keys that --text-column / --label-column give the input file's names for."""
    return {"text_column": ("--text-column", args.text_column),
            "label_column": ("--label-column", getattr(args, "label_column", None))}


def cmd_eval(args: argparse.Namespace) -> int:
    from ..infer.preflight import check_run_and_file

    # the run, the file, its columns and labels: all read and checked before the model is loaded
    checked = check_run_and_file(args.run_dir, args.data_file, columns=args.columns, renamed=_renamed_columns(args),
                                 labelled=True)
    from ..infer.predictor import load

    model = load(checked.saved)
    model.data, model.progress = checked.data, True
    metrics = model.evaluate_labelled(checked.labelled)
    per_class = metrics.pop("per_class", None)
    if per_class:
        width = max(len(k) for k in ["label", *per_class])
        print(f"{'label':<{width}}  precision  recall  f1      support", file=sys.stderr)
        for label, row in per_class.items():
            print(
                f"{label:<{width}}  {row['precision']:<9.4f}  {row['recall']:<6.4f}  {row['f1']:<6.4f}  {row['support']}",
                file=sys.stderr,
            )
        metrics["per_class"] = per_class
    _print_json(metrics)
    return 0


def _write_lines(lines: Iterator[str], args: argparse.Namespace) -> None:
    """Each line to stdout as it comes, or to -o FILE: written to a temporary file beside it as they
    come and renamed into place at the end (an interrupted run leaves no half file)."""
    if not args.output:
        for line in lines:
            print(line, flush=True)
        return
    from ..core.rundir import check_output

    out = Path(args.output)
    check_output(out, args.overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {count} predictions to {out}", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    from ..infer.saved_run import read_run

    read_run(args.target)  # a wrong target is said before torch is imported
    from ..infer.generation import Generator

    settings = _generation_settings(args)
    gen = Generator.load(args.target)
    gen.generate(args.prompt, raw=args.raw, settings=settings, stream=True)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..core.rundir import check_output
    from ..infer.preflight import check_run_and_file

    check_output(args.output, args.overwrite)
    settings = _generation_settings(args)
    template = args.prompt_template.replace("\\n", "\n").replace("\\t", "\t") if args.prompt_template else None
    # the run, the file's first rows and their columns: checked before the model is loaded
    checked = check_run_and_file(args.run_dir, args.input_file, columns=args.columns, renamed=_renamed_columns(args),
                                 template=template)
    from ..tasks import get_task

    if args.raw and not get_task(checked.saved.task).GENERATIVE:
        raise LmtuneError(f"--raw: only for a generative run; {args.run_dir} is a {checked.saved.task} one")
    from ..infer.predictor import load

    model = load(checked.saved)
    model.data, model.settings, model.progress = checked.data, settings, True
    if args.batch_size is not None:
        model.batch_size = args.batch_size
    rows = model.predict_file(args.input_file, columns=args.columns, template=template,
                              **({"raw": True} if args.raw else {}))
    _write_lines((json.dumps(row, ensure_ascii=False) for row in rows), args)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..infer.saved_run import read_for_inference
    from ..serve.options import ServeOptions

    options = ServeOptions(
        host=args.host, port=args.port, api_key=args.api_key or os.environ.get("LMTUNE_API_KEY") or None,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_inputs=args.max_inputs,
        max_body_bytes=args.max_body_bytes, max_tokens_limit=args.max_tokens_limit,
    ).check()
    read_for_inference(args.target)  # a wrong target is said before the server's imports
    from ..serve.app import create_app
    from ..serve.server import serve

    app = create_app(args.target, options)
    serve(app, options, announce=f"{args.target} ")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ..core.rundir import check_output
    from ..infer.explain import check_explainable
    from ..infer.preflight import check_run_and_file
    from ..infer.saved_run import read_for_inference

    # the outputs, the run, its task and the input file: all checked before the model is loaded
    for flag, path, suffixes in (("-o", args.output, (".html", ".htm")), ("--attention", args.attention, (".png",))):
        if path and Path(path).suffix.lower() not in suffixes:
            raise LmtuneError(f"{flag} {path}: name the file {suffixes[0]} (it is written as {suffixes[0][1:].upper()})")
        check_output(path, args.overwrite)
    if args.steps < 1:
        raise LmtuneError(f"--steps {args.steps}: integration needs at least 1 step")
    layer = int(args.attention_layer) if args.attention_layer.lstrip("-").isdigit() else args.attention_layer
    saved = read_for_inference(args.run_dir)
    check_explainable(saved.task, saved.folder, args.word)
    checked = None
    if args.input is not None:
        checked = check_run_and_file(args.run_dir, args.input, columns=args.columns, renamed=_renamed_columns(args))
    elif args.columns is not None or args.text_column is not None:
        raise LmtuneError(f"{'--columns' if args.columns is not None else '--text-column'}: only with --input FILE")
    from ..core.rundir import write_text_atomic
    from ..infer.explain import attention_map
    from ..infer.explain_render import color_enabled, render_html, render_text, summary
    from ..infer.predictor import load

    model = load(checked.saved if checked else saved)
    inputs: list = [args.text]
    pairs = None
    if checked is not None:
        model.data = checked.data
        _, inputs, pairs = model.read_inputs(args.input, columns=args.columns)
    explanations = model.explain(inputs, pairs, steps=args.steps, word=args.word)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, render_html(explanations, title=f"lmtune explain: {model.name}"))
        s = summary(explanations)
        print(f"wrote {s['predictions']} explained predictions of {s['inputs']} inputs to {out} (largest delta: "
              f"{s['largest_relative_delta']:.2%} of the explained difference)", file=sys.stderr)
    else:
        print(render_text(explanations, color=color_enabled(sys.stdout)))
    if args.attention:
        attention_map(model, inputs[0], args.attention, pair=pairs[0] if pairs else None, layer=layer)
        print(f"wrote the attention map of input 1 to {args.attention}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..infer.saved_run import read_run

    read_run(args.run_dir)  # a wrong folder is said before torch is imported
    from ..infer.predict import export

    out = export(args.run_dir, args.output, merge=args.merge, overwrite=args.overwrite)
    print(f"wrote a plain transformers model to {out}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import REPORT_NAME, write_report

    folders = [Path(p) for p in args.run_dirs]
    if args.output is None and len(folders) == 1:  # a run's own report is drawn from its files: drawn again
        print(write_report(folders, folders[0] / REPORT_NAME, overwrite=True))
        return 0
    print(write_report(folders, Path(args.output or REPORT_NAME), overwrite=args.overwrite))
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import inspect_file, render

    tokenizer = None
    if args.model:
        from ..core import models

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
    _print_json(summary)
    return 0


def cmd_data_augment(args: argparse.Namespace) -> int:
    from ..core.rundir import check_output
    from ..data.augment import AugmentOptions, Skipped, augment_sentences, augment_stream, gather_synonyms
    from ..data.readers import RowReader
    from ..data.writers import RowWriter, write_rows
    from ..tasks import token_classification as ner

    src, out = Path(args.file), Path(args.output)
    check_output(out, args.overwrite)
    tagged = args.task == "token_classification" or (args.task is None and src.suffix.lower() in (".conll", ".iob", ".bio"))
    if tagged and out.suffix.lower() != ".jsonl":
        raise LmtuneError(f"{out}: tagged sentences are written as JSON lines (tokens, tags, augmented_from): name it .jsonl")
    options = AugmentOptions(p_delete=args.p_delete, p_swap=args.p_swap, p_insert=args.p_insert,
                             p_synonym=args.p_synonym, p_entity=args.p_entity, n_per_example=args.n_per_example,
                             protect=frozenset(w.lower() for w in (args.protect or "").split(",") if w))
    model = None
    if args.model:
        from ..core import models

        model = models.resolve(args.model)
    skipped = Skipped()
    if tagged:  # sentences are held: entity mentions are swapped between them
        for flag, value in (("--text-column", args.text_column), ("--label-column", args.label_column),
                            ("--columns", args.columns)):
            if value is not None:
                raise LmtuneError(f"{flag}: tagged sentences are read as tokens and tags (CoNLL columns, or "
                                  f"JSON lines with 'tokens' and 'tags'), not from named columns")
        d = argparse.Namespace(format=args.format, tag_column_index=-1, tokens_column="tokens", tags_column="tags")
        table = ner.read_sentences(src, d)
        ner.check_tags(table, args.tag_scheme)
        words = {t.lower() for r in table.rows for t, tag in zip(r["tokens"], r["tags"]) if tag == "O"}
        synonyms = gather_synonyms(args.synonyms, model, words)
        new = augment_sentences(table.rows, table.lines, ner.spans, options, synonyms, args.seed, args.tag_scheme,
                                skipped)
        write_rows(out, [], ([*({**r, "augmented_from": None} for r in table.rows), *new]), "jsonl")
        rows, copies = len(table), len(new)
    else:  # streamed: the rows as they are, then (a second reading) their copies
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
    what = "sentences" if tagged else "rows"
    print(f"wrote {rows} {what} and {copies} augmented copies (marked by augmented_from) to {out}", file=sys.stderr)
    if skipped.total:
        print(skipped.describe(rows * options.n_per_example), file=sys.stderr)
    _print_json({what: rows, "augmented": copies, "skipped": skipped.total, "skipped_by_reason": skipped.by_reason(),
                 "synonym_words": len(synonyms)})
    return 0


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
    _print_json(report)
    return 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    from ..core import models
    from ..tasks.run_config import load_config
    from ..data.readers import Table
    from ..tasks import get_task
    from ..tasks.causal_lm import show_mask
    from ..training.loop import resolve_defaults

    cfg = load_config(args.config, args.overrides)
    if cfg.task != "causal_lm":
        raise LmtuneError(f"data preview shows the loss mask of causal_lm data; {args.config} has task {cfg.task}")
    task = get_task(cfg.task)
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


def cmd_models(args: argparse.Namespace) -> int:
    from ..core.models import listing

    rows = listing()
    if args.json:
        _print_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['description']}\n{'':<{width}}  {r['source']}")
        if r["note"]:
            print(f"{'':<{width}}  {r['note']}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from ..tasks.registry import TASK_ALIASES
    from ..tasks.run_config import reference

    task = TASK_ALIASES.get(args.task, args.task) if args.task is not None else None
    if task != args.task:
        print(f"task {args.task} is read as {task}")
    for key, kind, default, description in reference(task):
        if not kind:
            print(f"\n{key}\n    {description}")
            continue
        print(f"{key:<34} {default:<12} {description}  [{kind}]")
    return 0


def _generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens (0: all)")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the text before this string (repeatable; \\n for a new line)")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")


def _generation_settings(args: argparse.Namespace) -> "GenerationSettings":
    from ..tasks.decoding import GenerationSettings

    stops = tuple(s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                  top_k=args.top_k, repetition_penalty=args.repetition_penalty, stop=stops, seed=args.seed)
    problems = settings.problems()
    if problems:
        flags = ["--" + key.replace("_", "-") + ":" + rest for key, rest in (p.split(":", 1) for p in problems)]
        raise LmtuneError("\n".join(flags))
    return settings


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


def _column_flags(p: argparse.ArgumentParser, *, group: str | None = None, run: bool = False, labels: bool = True) -> None:
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


class Parser(argparse.ArgumentParser):
    """Usage errors in the same one-line form as every other error (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"lmtune: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from ..core.rundir import RESUMABLE

    from ..core import __version__
    from ..tasks.registry import TASK_ALIASES, task_aliases_text

    p = Parser(prog="lmtune", description="Fine-tune pretrained language models for your task.")
    p.add_argument("--version", action="version", version=f"lmtune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

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

    e = sub.add_parser("eval", help="metrics of a run's model on a labelled file (JSON on the last line)")
    e.add_argument("run_dir")
    e.add_argument("data_file")
    _column_flags(e, run=True)
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="predict (or generate) for each input row, one JSON line each")
    pr.add_argument("run_dir", help="a run folder, or for generation also a model name or folder")
    pr.add_argument(
        "input_file", help=".txt (one text per line; for generation one prompt per paragraph, paragraphs separated by "
        "blank lines, or one per line when no blank line separates them), .csv, .tsv, .jsonl or .json; "
        "token_classification also .conll or tokens rows"
    )
    pr.add_argument("-o", "--output", help="write JSON lines here instead of stdout")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    pr.add_argument("--prompt-template", help="generation: prompt from columns, e.g. 'Summarize:\\n{dialogue}'")
    pr.add_argument("--raw", action="store_true", help="generation: continue each prompt or text as is, not as a user "
                    "message in the chat template (rows with messages, instructions or a template keep their format)")
    _column_flags(pr, run=True, labels=False)
    _generation_flags(pr)
    pr.add_argument("--batch-size", type=int, default=None,
                    help="inputs per batch (default: the run's evaluation batch, 64 for a model folder; generation 16)")
    pr.set_defaults(func=cmd_predict)

    g = sub.add_parser("generate", help="generate from one prompt, streamed to the terminal")
    g.add_argument("target", help="a run folder, a model name (lmtune models) or a model folder")
    g.add_argument("--prompt", required=True)
    g.add_argument("--raw", action="store_true", help="use the prompt as is, without the chat template")
    _generation_flags(g)
    g.set_defaults(func=cmd_generate)

    sv = sub.add_parser("serve", help="HTTP server for a run or model: /v1/predict, OpenAI-style chat and completions")
    sv.add_argument("target", help="a finished run folder, a model name (lmtune models) or a model folder")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="0: any free port (printed at start)")
    sv.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY on /v1/* (or set LMTUNE_API_KEY)")
    sv.add_argument("--max-batch", type=int, default=16, help="inputs gathered into one model call")
    sv.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests")
    sv.add_argument("--max-queue", type=int, default=64, help="waiting requests; more are answered 503 with Retry-After")
    sv.add_argument("--max-inputs", type=int, default=256, help="inputs (or prompts x n) per request; more: 413")
    sv.add_argument("--max-body-bytes", type=int, default=1_000_000, help="longest request body; longer: 413")
    sv.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask (422 above)")
    sv.set_defaults(func=cmd_serve)

    ex = sub.add_parser("explain", help="which words a prediction rests on: integrated gradients, coloured text or HTML",
                        description="Token attributions by integrated gradients on the input word embeddings "
                        "(classification: the predicted label's logit; token classification: each word tagged other "
                        "than O, its tag's logit at its first sub-token), from a baseline of pad tokens. Green: "
                        "towards the prediction, red: against it. delta = sum of attributions - (logit - baseline "
                        "logit): the integral's error; more --steps make it smaller.")
    ex.add_argument("run_dir", help="a classification or token_classification run folder (or model folder)")
    source = ex.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one text to explain")
    source.add_argument("--input", help="a file of inputs, read as lmtune predict reads it")
    ex.add_argument("-o", "--output", help="write an HTML page here instead of coloured text to stdout")
    ex.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ex.add_argument("--steps", type=int, default=50, help="integration steps (default 50; more: smaller delta, slower)")
    ex.add_argument("--word", type=int, default=None, metavar="N",
                    help="token classification: explain word N's tag (0 is the first word), O included")
    ex.add_argument("--attention", default=None, metavar="MAP.png",
                    help="also write the attention map (mean over heads) of the first input as a PNG")
    ex.add_argument("--attention-layer", default="last", metavar="LAYER",
                    help="the map's layer: last (default: the one the head reads), mean (over layers) or a number from 0")
    _column_flags(ex, run=True, labels=False)
    ex.set_defaults(func=cmd_explain)

    x = sub.add_parser("export", help="write a run's model as a plain transformers folder")
    x.add_argument("run_dir")
    x.add_argument("-o", "--output", required=True, help="folder to write")
    x.add_argument("--merge", action="store_true", help="merge LoRA adapters into the base weights")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    x.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="an HTML report (figures embedded, PNGs beside it) of a run, or several compared")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run folders; a search or compare folder stands for its runs")
    rp.add_argument("-o", "--output", default=None,
                    help="the HTML file (default: RUN_DIR/report.html for one folder, report.html here for several); "
                    "its figures go in <name>_files/ beside it")
    rp.add_argument("--overwrite", action="store_true",
                    help="replace an existing report file (a run's own RUN_DIR/report.html is always drawn again)")
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("data", help="look at data as lmtune will train on it")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    dp = dsub.add_parser("preview", help="the first examples of a causal_lm config with the trained tokens marked")
    dp.add_argument("config")
    dp.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    dp.add_argument("-n", type=int, default=3, help="how many examples")
    dp.set_defaults(func=cmd_data_preview)
    di = dsub.add_parser("inspect", help="rows, duplicates, conflicting labels, label balance, lengths, encoding problems")
    di.add_argument("file")
    _column_flags(di)
    di.add_argument("--model", default=None, help="count lengths in this model's tokens (a bundled name or a folder)")
    di.add_argument("--max-length", type=int, default=None, help="with --model: count texts longer than this")
    di.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    di.set_defaults(func=cmd_data_inspect)
    dc = dsub.add_parser("clean", help="normalise texts; drop empty, out-of-range, conflicting and duplicate rows, each with its reason",
                         description=CLEAN_DEFAULTS)
    dc.add_argument("file")
    dc.add_argument("-o", "--output", required=True, help="the cleaned file; its dropped rows go beside it, to <name>.dropped.jsonl (-o c2.csv: c2.dropped.jsonl)")
    _column_flags(dc)
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
    da = dsub.add_parser("augment", help="EDA augmentation: random deletion, swap, insertion and synonym replacement",
                         description=AUGMENT_LABELS)
    da.add_argument("file")
    da.add_argument("-o", "--output", required=True, help="the rows and their augmented copies")
    _column_flags(da)
    da.add_argument("--task", choices=["classification", "token_classification"], default=None,
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
    ds = dsub.add_parser("split", help="seeded, stratified split into train/validation(/test) files; duplicates stay together")
    ds.add_argument("file")
    ds.add_argument("--ratios", default="0.8,0.1,0.1", help="shares of train, validation[, test]; they sum to 1")
    ds.add_argument("-o", "--output", required=True, help="folder for train/validation/test files")
    _column_flags(ds, group="rows sharing a value stay in one part (default: rows with the same normalised text)")
    ds.add_argument("--seed", type=int, default=42)
    ds.add_argument("--overwrite", action="store_true")
    ds.set_defaults(func=cmd_data_split)

    m = sub.add_parser("models", help="list the bundled models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)
    k = sub.add_parser("keys", help="every config key with its default and meaning")
    k.add_argument("--task", choices=[*TASKS, *TASK_ALIASES], default=None, metavar="TASK",
                   help=f"only the keys that apply to this task: {', '.join(TASKS)} (also read: {task_aliases_text()})")
    k.set_defaults(func=cmd_keys)
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
    except RuntimeError as e:
        # a process of a distributed run whose peer has gone: the launcher reports the cause
        lost = any(word in str(e).lower() for word in ("by peer", "remote worker", "connection closed"))
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and lost:
            print(f"lmtune: process {os.environ.get('RANK')}: another process of the run stopped", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
