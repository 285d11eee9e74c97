"""Inference throughput: lmtune against `transformers.pipeline` on the same model, inputs and machine,
in one run.

- classification: MiniLM-L6 with a seeded two-label head (saved as a model folder), the first N
  sentences of ../shared/data/sst2/train.tsv; `lmtune.load(folder).predict(texts)` against
  `pipeline("text-classification")` at its default batch size (1) and at batch 64.
- ONNX Runtime: the same classifier, `lmtune predict`'s path on torch (fp32, and the default
  precision where that is bf16) against `--backend onnx` (ONNX Runtime, fp32) at batch 1 and at the
  default batch (64 for a model folder), on the first M sentences; probabilities compared.
- generation: SmolLM2-135M-Instruct, the first N SAMSum dialogues as "Summarize this dialogue" chat
  prompts, greedy, a fixed number of new tokens; `Generator.generate_batch` against
  `pipeline("text-generation")` one prompt at a time (its default).

Predictions are compared: labels (and the largest probability difference) for classification, the
generated texts for generation.

    python benchmarks/inference.py [--sentences 5000] [--onnx-sentences 1000] [--prompts 64] [--new-tokens 64]
                                   [--skip-classification] [--skip-onnx] [--skip-generation] [--threads N]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, cpu_kind  # noqa: E402

SST2 = SHARED / "sst2" / "train.tsv"
SAMSUM = SHARED / "samsum" / "val.csv"
ROUNDS = 3  # the ONNX Runtime rows: the fastest of this many timings


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def sentences(n: int) -> list[str]:
    with SST2.open(encoding="utf-8") as f:
        return [row["sentence"].strip() for row in csv.DictReader(f, delimiter="\t")][:n]


def save_classifier(folder: Path) -> None:
    """MiniLM-L6 with a seeded two-label head, saved as a model folder (once)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lmtune.core import models

    if (folder / "config.json").is_file():
        return
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        models.resolve("minilm-l6"), num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1})
    model.save_pretrained(folder)
    models.load_tokenizer(models.resolve("minilm-l6")).save_pretrained(folder)


def classification(n: int, folder: Path) -> None:
    from transformers import pipeline

    import lmtune

    texts = sentences(n)
    save_classifier(folder)
    predictor = lmtune.load(str(folder))
    precision = "bf16" if predictor.accelerator.mixed_precision == "bf16" else "fp32"
    predictor.predict(texts[:64])  # warm-up
    ours, t_ours = timed(lambda: predictor.predict(texts))
    pipe = pipeline("text-classification", model=str(folder), tokenizer=str(folder), device="cpu", top_k=None)
    pipe(texts[:64])
    theirs1, t1 = timed(lambda: pipe(texts))
    theirs64, t64 = timed(lambda: pipe(texts, batch_size=64))

    def probs(rows):
        return [{d["label"]: d["score"] for d in row} for row in rows]

    p1 = probs(theirs1)
    same = sum(o["label"] == max(p, key=p.get) for o, p in zip(ours, p1))
    diff = max(abs(o["probabilities"][k] - p[k]) for o, p in zip(ours, p1) for k in p)
    same64 = sum(max(a, key=a.get) == max(b, key=b.get) for a, b in zip(p1, probs(theirs64)))
    print(f"\nclassification: MiniLM-L6, {len(texts)} SST-2 sentences, lmtune {precision}, pipeline fp32")
    print(f"{'':28s} {'seconds':>8s} {'sentences/s':>12s} {'vs pipeline':>12s}")
    for name, t in (("pipeline (batch 1, default)", t1), ("pipeline (batch 64)", t64), ("lmtune", t_ours)):
        print(f"{name:28s} {t:8.1f} {len(texts) / t:12.1f} {t1 / t:11.2f}x")
    print(f"same label as the pipeline: {same} of {len(texts)} (largest probability difference {diff:.1e}); "
          f"pipeline batch 64 vs batch 1: {same64} of {len(texts)}")


def torch_fp32(folder: Path):
    """lmtune's Predictor of the folder in fp32 (a model folder has no run config to say so: its
    precision is auto, bf16 on a CPU fast in it)."""
    from unittest import mock

    from lmtune.core.runtime import make_accelerator
    from lmtune.infer import predictor

    with mock.patch.object(predictor, "make_accelerator", lambda precision: make_accelerator("fp32")):
        return predictor.load(str(folder))


def onnx_runtime(n: int, folder: Path, threads: int | None = None) -> None:
    import onnxruntime

    import lmtune
    from lmtune.core.runtime import mixed_precision
    from lmtune.export.onnx_backend import onnx_predictor
    from lmtune.infer.saved_run import read_run

    texts = sentences(n)
    save_classifier(folder)
    # on a shared machine, another process's burst can slow one timing many-fold (torch's threads
    # wait on each other when a core is taken): the fp32 backends take turns, ROUNDS times, and the
    # fastest time of each counts. The bf16 predictor comes last (accelerate's settings are
    # process-wide: a later Accelerator would reset its precision).
    backends = {"torch fp32": torch_fp32(folder), "ONNX Runtime fp32": onnx_predictor(read_run(folder), threads=threads)}
    batch = backends["torch fp32"].batch_size
    results: dict = {}

    def run(name, p):
        for size in (1, batch):
            p.batch_size = size
            rows, t = timed(lambda: p.predict(texts))
            results[name, size] = (rows, min(t, results.get((name, size), (None, t))[1]))

    for p in backends.values():
        p.predict(texts[:64])  # warm-up
    for _ in range(ROUNDS):
        for name, p in backends.items():
            run(name, p)
    if mixed_precision("auto") == "bf16":
        backends.clear()
        default = lmtune.load(str(folder))
        default.predict(texts[:64])
        for _ in range(ROUNDS):
            run("torch bf16 (auto)", default)

    def largest_difference(a, b):
        return max(abs(x["probabilities"][k] - y["probabilities"][k]) for x, y in zip(a, b) for k in x["probabilities"])

    reference = results["torch fp32", batch][0]
    print(f"\nONNX Runtime: MiniLM-L6 classifier, {len(texts)} SST-2 sentences, lmtune predict's path; "
          f"onnxruntime {onnxruntime.__version__} (CPU, fp32), threads: {threads or 'default'}; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"fastest of {ROUNDS} rounds each, the fp32 backends taking turns")
    print(f"{'':30s} {'batch':>6s} {'seconds':>8s} {'sentences/s':>12s} {'vs torch fp32':>14s} {'max prob diff':>14s}")
    for (name, size), (rows, t) in results.items():
        base = results["torch fp32", size][1]
        print(f"{name:30s} {size:6d} {t:8.2f} {len(texts) / t:12.1f} {base / t:13.2f}x "
              f"{largest_difference(rows, reference):14.1e}")


def generation(n: int, new_tokens: int) -> None:
    import torch
    from transformers import pipeline

    from lmtune.infer.generation import Generator
    from lmtune.tasks.decoding import GenerationSettings

    with SAMSUM.open(encoding="utf-8") as f:
        dialogues = [row["dialogue"] for row in csv.DictReader(f)][:n]
    gen = Generator.load("smollm2-135m")
    prompts = [gen.chat_prompt([{"role": "user", "content": f"Summarize this dialogue:\n{d}"}]) for d in dialogues]
    settings = GenerationSettings(max_new_tokens=new_tokens)
    dtype = str(next(gen.model.parameters()).dtype).replace("torch.", "")
    gen.generate_batch(prompts[:2], GenerationSettings(max_new_tokens=4), raw=True)  # warm-up
    ours, t_ours = timed(lambda: gen.generate_batch(prompts, settings, raw=True))

    pipe = pipeline("text-generation", model=gen.model, tokenizer=gen.tokenizer, device="cpu")
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                  return_full_text=False, eos_token_id=gen.model.generation_config.eos_token_id,
                  pad_token_id=gen.tokenizer.pad_token_id)
    pipe(prompts[:1], max_new_tokens=4, do_sample=False)
    with torch.inference_mode():
        theirs, t_theirs = timed(lambda: [pipe(p, **kwargs)[0]["generated_text"] for p in prompts])
    tokens = sum(g.completion_tokens for g in ours)
    same = sum(g.text == t.strip() for g, t in zip(ours, theirs))
    print(f"\ngeneration: SmolLM2-135M-Instruct, {len(prompts)} SAMSum prompts, up to {new_tokens} new tokens, "
          f"greedy, {dtype}; lmtune batches of 16 (left-padded), the pipeline one prompt at a time")
    print(f"{'':28s} {'seconds':>8s} {'new tokens/s':>13s} {'vs pipeline':>12s}")
    for name, t in (("pipeline (one at a time)", t_theirs), ("lmtune", t_ours)):
        print(f"{name:28s} {t:8.1f} {tokens / t:13.1f} {t_theirs / t:11.2f}x")
    print(f"same text as the pipeline: {same} of {len(prompts)}")
    for g, t in zip(ours, theirs):
        if g.text != t.strip():
            print(f"  first difference: lmtune {g.text[:120]!r}\n                    pipeline {t.strip()[:120]!r}")
            break


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=5000)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--skip-generation", action="store_true")
    p.add_argument("--skip-classification", action="store_true")
    p.add_argument("--onnx-sentences", type=int, default=1000)
    p.add_argument("--skip-onnx", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch's and ONNX Runtime's threads (default: theirs)")
    args = p.parse_args()
    if not SST2.is_file() or not SAMSUM.is_file():
        print(f"skipped: {SST2} or {SAMSUM} not found (the data sets live in ../shared/data beside the repo)")
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_kind()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_classification:
            classification(args.sentences, Path(tmp))
        if not args.skip_onnx:
            onnx_runtime(args.onnx_sentences, Path(tmp), args.threads)
    if not args.skip_generation:
        generation(args.prompts, args.new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
