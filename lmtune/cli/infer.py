"""The commands that use a trained run or a model: eval, predict, generate, serve, explain, export.

(serve is here, with the others that load a model, so that `lmtune --help` lists the commands in
their usual order.) The model itself (torch) is imported only after the run, the files and the
flags have been checked; the modules of explain alone, when it runs (`lmtune --help` starts faster)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from ..core.errors import LmtuneError
from ..core.rundir import check_output, write_text_atomic
from ..infer.preflight import check_run_and_file
from ..export.run import check_onnx_backend, export
from ..infer.saved_run import SavedRun, read_for_inference, read_run
from ..serve.options import ServeOptions
from ..serve.server import serve
from ..tasks import get_task
from ..tasks.decoding import GenerationSettings
from .common import column_flags, print_json


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="metrics of a run's model on a labelled file (JSON on the last line)")
    e.add_argument("run_dir")
    e.add_argument("data_file")
    column_flags(e, run=True)
    e.set_defaults(func=cmd_eval)
    _add_predict(sub)
    g = sub.add_parser("generate", help="generate from one prompt, streamed to the terminal")
    g.add_argument("target", help="a run folder, a model name (lmtune models) or a model folder")
    g.add_argument("--prompt", required=True)
    g.add_argument("--raw", action="store_true", help="use the prompt as is, without the chat template")
    _generation_flags(g)
    g.set_defaults(func=cmd_generate)
    _add_serve(sub)
    _add_explain(sub)
    x = sub.add_parser("export", help="write a run's model for where it will run: a transformers folder, GGUF "
                       "(llama.cpp, Ollama) or ONNX (ONNX Runtime)")
    x.add_argument("run_dir")
    x.add_argument("-o", "--output", help="folder to write (default: RUN_DIR/export/FORMAT)")
    x.add_argument("--format", default="hf", choices=["hf", "gguf", "onnx"],
                   help="hf: a transformers folder; gguf: a causal LM for llama.cpp and Ollama, with a Modelfile; "
                   "onnx: a classification, token classification or QA model with its tokenizer (default: hf)")
    x.add_argument("--type", choices=["f32", "f16", "q8_0"], help="GGUF: the weights' type (default: f16)")
    x.add_argument("--merge", action="store_true", help="hf: merge LoRA adapters into the base weights "
                   "(GGUF and ONNX always merge)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    x.set_defaults(func=cmd_export)


def _add_predict(sub: argparse._SubParsersAction) -> None:
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
    column_flags(pr, run=True, labels=False)
    _generation_flags(pr)
    pr.add_argument("--batch-size", type=int, default=None,
                    help="inputs per batch (default: the run's evaluation batch, 64 for a model folder; generation 16)")
    _backend_flag(pr)
    pr.set_defaults(func=cmd_predict)


def _add_serve(sub: argparse._SubParsersAction) -> None:
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
    _backend_flag(sv)
    sv.set_defaults(func=cmd_serve)


def _add_explain(sub: argparse._SubParsersAction) -> None:
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
    column_flags(ex, run=True, labels=False)
    ex.set_defaults(func=cmd_explain)


def _backend_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                   help="torch (default), or onnx: ONNX Runtime on the CPU in fp32, for a classification, token "
                   "classification or QA run (uses RUN_DIR/export/onnx, exported there first if missing)")


def _check_backend(backend: str, saved: SavedRun) -> None:
    if backend == "onnx":
        check_onnx_backend(saved)


def _load(saved: SavedRun, backend: str) -> Any:
    """The Predictor (or Generator) of a checked run, on the backend asked for."""
    if backend == "onnx":
        from ..export.onnx_backend import onnx_predictor

        return onnx_predictor(saved, log=lambda line: print(line, file=sys.stderr))
    from ..infer.predictor import load

    return load(saved)


def _generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens (0: all)")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the text before this string (repeatable; \\n for a new line)")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")


def _generation_settings(args: argparse.Namespace) -> GenerationSettings:
    stops = tuple(s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                  top_k=args.top_k, repetition_penalty=args.repetition_penalty, stop=stops, seed=args.seed)
    problems = settings.problems()
    if problems:
        flags = ["--" + key.replace("_", "-") + ":" + rest for key, rest in (p.split(":", 1) for p in problems)]
        raise LmtuneError("\n".join(flags))
    return settings


def _renamed_columns(args: argparse.Namespace) -> dict[str, tuple[str, str | None]]:
    """The run's column keys that --text-column / --label-column give the input file's names for."""
    return {"text_column": ("--text-column", args.text_column),
            "label_column": ("--label-column", getattr(args, "label_column", None))}


def cmd_eval(args: argparse.Namespace) -> int:
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
    print_json(metrics)
    return 0


def _write_lines(lines: Iterator[str], args: argparse.Namespace) -> None:
    """Each line to stdout as it comes, or to -o FILE: written to a temporary file beside it as they
    come and renamed into place at the end (an interrupted run leaves no half file)."""
    if not args.output:
        for line in lines:
            print(line, flush=True)
        return
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
    read_run(args.target)  # a wrong target is said before torch is imported
    from ..infer.generation import Generator

    settings = _generation_settings(args)
    gen = Generator.load(args.target)
    gen.generate(args.prompt, raw=args.raw, settings=settings, stream=True)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    check_output(args.output, args.overwrite)
    settings = _generation_settings(args)
    template = args.prompt_template.replace("\\n", "\n").replace("\\t", "\t") if args.prompt_template else None
    # the run, the file's first rows and their columns: checked before the model is loaded
    checked = check_run_and_file(args.run_dir, args.input_file, columns=args.columns, renamed=_renamed_columns(args),
                                 template=template)
    if args.raw and not get_task(checked.saved.task).GENERATIVE:
        raise LmtuneError(f"--raw: only for a generative run; {args.run_dir} is a {checked.saved.task} one")
    _check_backend(args.backend, checked.saved)
    model = _load(checked.saved, args.backend)
    model.data, model.settings, model.progress = checked.data, settings, True
    if args.batch_size is not None:
        model.batch_size = args.batch_size
    rows = model.predict_file(args.input_file, columns=args.columns, template=template,
                              **({"raw": True} if args.raw else {}))
    _write_lines((json.dumps(row, ensure_ascii=False) for row in rows), args)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    options = ServeOptions(
        host=args.host, port=args.port, api_key=args.api_key or os.environ.get("LMTUNE_API_KEY") or None,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_inputs=args.max_inputs,
        max_body_bytes=args.max_body_bytes, max_tokens_limit=args.max_tokens_limit,
    ).check()
    saved = read_for_inference(args.target)  # a wrong target is said before the server's imports
    _check_backend(args.backend, saved)
    from ..serve.app import create_app

    app = create_app(args.target if args.backend == "torch" else _load(saved, args.backend), options)
    serve(app, options, announce=f"{args.target} ")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ..infer.explain import check_explainable

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
    read_run(args.run_dir)  # a wrong folder is said before torch is imported
    out = export(args.run_dir, args.output, format=args.format, type=args.type, merge=args.merge,
                 overwrite=args.overwrite, log=lambda line: print(line, file=sys.stderr))
    what = {"hf": "a plain transformers model", "gguf": "a GGUF model and its Ollama Modelfile",
            "onnx": "an ONNX model and its tokenizer"}[args.format]
    print(f"wrote {what} to {out}", file=sys.stderr)
    return 0
