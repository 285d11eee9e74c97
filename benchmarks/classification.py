"""Speed and quality of lmtune against a plain transformers.Trainer, side by side, in one run.

Both fine-tune the bundled MiniLM-L6 on the first 8,000 training rows of SST-2 with the same batch
size, epochs, learning rate, schedule, warmup, weight decay and seed, and the same precision rule
(bf16 where the CPU is fast in it, fp32 elsewhere: lmtune's train.precision: auto), and are scored
on the SST-2 dev rows. Each side runs in its own process so that peak memory (RSS) is its own, and
the whole process is timed too: start-up (imports, model, tokenizing), the training loop, the
evaluations. Model FLOPs utilisation: the FLOPs of the matrix products of forward and backward on
the real tokens trained (counted by torch.utils.flop_counter), per second of the training loop,
over a matrix-product peak measured here in the same precision.

    python benchmarks/classification.py [--rows 8000] [--dev-rows N] [--epochs 1] [--seeds 42]

Needs ../shared/data/sst2 beside the repo; skips with a message when it is absent.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (SHARED, cpu_kind, fast_bf16, flops_per_token, machine, report, run_child,  # noqa: E402
                    spread, table)

SST2 = SHARED / "sst2"
COMMON = {"batch_size": 32, "lr": 5e-5, "weight_decay": 0.01, "warmup_ratio": 0.06, "max_length": 128}


def write_subset(src: Path, dst: Path, rows: int | None) -> None:
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8", newline="") as out:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        writer = csv.writer(out)
        writer.writerow(next(reader))
        for i, row in enumerate(reader):
            if rows is not None and i >= rows:
                break
            writer.writerow(row)


def run_lmtune(train_csv: str, dev_csv: str, epochs: int, seed: int, out: str) -> dict:
    import lmtune

    start = time.perf_counter()
    result = lmtune.train(
        {
            "model": "minilm-l6",
            "output_dir": out,
            "data": {"train": train_csv, "validation": dev_csv, "text_column": "sentence",
                     "max_length": COMMON["max_length"]},
            "train": {"epochs": epochs, "batch_size": COMMON["batch_size"], "lr": COMMON["lr"],
                      "weight_decay": COMMON["weight_decay"], "warmup_ratio": COMMON["warmup_ratio"],
                      "seed": seed, "precision": "auto", "log_steps": 50},
        },
        overwrite=True,
        progress=False,
    )
    m = result.metrics["train"]
    return {"speed": m["samples_per_second"], "train_seconds": m["seconds"], "tokens": m["tokens"],
            "setup_seconds": m["setup_seconds"], "eval_seconds": m["eval_seconds"] + m["final_seconds"],
            "call_seconds": time.perf_counter() - start, "quality": result.metrics["validation"]["accuracy"]}


def run_trainer(train_csv: str, dev_csv: str, epochs: int, seed: int, out: str) -> dict:
    import numpy as np
    from datasets import load_dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)
    from transformers.utils import logging

    from lmtune.core.models import source_of

    logging.set_verbosity_error()
    begin = time.perf_counter()
    path = source_of("minilm-l6")
    tok = AutoTokenizer.from_pretrained(path)
    ds = load_dataset("csv", data_files={"train": train_csv, "validation": dev_csv})
    ds = ds.map(lambda b: tok(b["sentence"], truncation=True, max_length=COMMON["max_length"]), batched=True)
    ds = ds.rename_column("label", "labels").remove_columns(["sentence"])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    steps = epochs * -(-len(ds["train"]) // COMMON["batch_size"])
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=COMMON["batch_size"], per_device_eval_batch_size=64,
        num_train_epochs=epochs, learning_rate=COMMON["lr"], weight_decay=COMMON["weight_decay"],
        warmup_steps=round(COMMON["warmup_ratio"] * steps), lr_scheduler_type="linear", bf16=fast_bf16(),
        use_cpu=True, seed=seed, save_strategy="no", eval_strategy="no", report_to="none",
        logging_steps=50, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds["train"],
                      data_collator=DataCollatorWithPadding(tok))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    pred = trainer.predict(ds["validation"])
    accuracy = float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())
    return {"speed": epochs * len(ds["train"]) / seconds, "train_seconds": seconds, "setup_seconds": start - begin,
            "eval_seconds": time.perf_counter() - start - seconds, "call_seconds": time.perf_counter() - begin,
            "quality": accuracy}


def child(args: argparse.Namespace) -> None:
    fn = run_lmtune if args.child == "lmtune" else run_trainer
    report(fn(args.train_csv, args.dev_csv, args.epochs, args.seed, args.out))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--dev-rows", type=int, default=None, help="default: all dev rows")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seeds", default="42", help="comma-separated seeds")
    p.add_argument("--child", choices=["lmtune", "trainer"], help=argparse.SUPPRESS)
    p.add_argument("--train-csv", "--dev-csv", "--out", "--seed", help=argparse.SUPPRESS)
    args, _ = p.parse_known_args()
    if args.child:
        q = argparse.ArgumentParser()
        for a in ("--child", "--train-csv", "--dev-csv", "--out"):
            q.add_argument(a)
        q.add_argument("--epochs", type=int)
        q.add_argument("--seed", type=int)
        child(q.parse_args())
        return 0
    if not (SST2 / "train.tsv").is_file():
        print(f"skipped: {SST2} not found (the SST-2 files live in ../shared/data/sst2 beside the repo)")
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    bf16 = fast_bf16()
    peak = machine(bf16)
    results: dict[str, list[dict]] = {"lmtune": [], "trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        train_csv, dev_csv = f"{tmp}/train.csv", f"{tmp}/dev.csv"
        write_subset(SST2 / "train.tsv", Path(train_csv), args.rows)
        write_subset(SST2 / "dev.tsv", Path(dev_csv), args.dev_rows)
        per_token = model_flops_per_token(train_csv)
        for seed in seeds:
            for side in ("trainer", "lmtune"):
                began = time.perf_counter()
                r = run_child(__file__, ["--child", side, "--train-csv", train_csv, "--dev-csv", dev_csv,
                                         "--out", f"{tmp}/{side}-{seed}", "--epochs", str(args.epochs),
                                         "--seed", str(seed)])
                r["process_seconds"] = time.perf_counter() - began
                results[side].append(r)
                print(f"seed {seed} {side:8s} {r['speed']:8.1f} samples/s  "
                      f"{r['peak_rss_mb']:7.0f} MB peak RSS  accuracy {r['quality']:.4f}  "
                      f"process {r['process_seconds']:.0f} s (loop {r['train_seconds']:.0f} s)", flush=True)
    tokens = results["lmtune"][0]["tokens"]  # real tokens trained: the same rows for both sides
    for rows in results.values():
        for r in rows:
            r["mfu"] = per_token * tokens / r["train_seconds"] / peak
            r["outside"] = r["process_seconds"] - r["train_seconds"] - r["eval_seconds"]
    title = (f"MiniLM-L6 on SST-2 ({args.rows} train rows, {args.epochs} epoch(s), batch {COMMON['batch_size']}, "
             f"{'bf16' if bf16 else 'fp32'}, {len(seeds)} seed(s), {cpu_kind()})")
    table(title, results, "samples/s", "val accuracy", "higher")
    print(f"\n{'':10s} {'MFU':>6s} {'process s':>10s} {'start-up s':>11s} {'loop s':>8s} {'eval s':>8s}  val accuracy (spread)")
    for side in ("trainer", "lmtune"):
        rows = results[side]
        avg = {k: sum(r[k] for r in rows) / len(rows) for k in ("mfu", "process_seconds", "outside", "train_seconds", "eval_seconds")}
        print(f"{side:10s} {avg['mfu']:6.1%} {avg['process_seconds']:10.1f} {avg['outside']:11.1f} "
              f"{avg['train_seconds']:8.1f} {avg['eval_seconds']:8.1f}  {spread(rows, 'quality')}")
    whole = sum(r["process_seconds"] for r in results["trainer"]) / sum(r["process_seconds"] for r in results["lmtune"])
    print(f"whole process, Trainer / lmtune: {whole:.2f}x; FLOPs per real token {per_token / 1e6:.1f} M "
          f"(forward and backward), {tokens:,} tokens trained")
    return 0


def model_flops_per_token(train_csv: str, rows: int = 64) -> float:
    """FLOPs of forward and backward per real token of MiniLM-L6 with a 2-label head, over the
    first `rows` training texts."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmtune.core.models import source_of

    path = source_of("minilm-l6")
    tok = AutoTokenizer.from_pretrained(path)
    with open(train_csv, encoding="utf-8") as f:
        texts = [row[0] for row in list(csv.reader(f))[1 : rows + 1]]
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    ids = [tok(t, truncation=True, max_length=COMMON["max_length"])["input_ids"] for t in texts]
    return flops_per_token(model, ids)


if __name__ == "__main__":
    sys.exit(main())
