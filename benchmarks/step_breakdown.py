"""Where one training step's time goes, and how close it runs to the machine's limit.

MiniLM-L6 on SST-2 rows, batch 32, the precision rule of train.precision: auto (bf16 where the CPU
is fast in it, else fp32). Two loops over the same rows, each step timed in phases (data, forward,
backward, optimizer: clipping, AdamW, schedule, zeroing), in this one process:
  - lmtune's: length-grouped batches, the attention kernel of train.attention: auto, fused AdamW,
    the embedding gradient cleared (and clipped) row by row, the last layer computed for the first
    token only (what the classifier reads); and the same with the whole last layer, to show what
    that saves;
  - a plain Trainer's defaults: random batches padded to their longest row, SDPA, fused AdamW
    (transformers' default with torch 2.8 and later).
Model FLOPs of each step are counted by torch.utils.flop_counter (the matrix products of forward
and backward on the real, unpadded rows: the useful work of the plain model, its whole last layer
included), and the utilisation (MFU) is those FLOP/s over a matrix-product peak measured here, in
the same precision.

    python benchmarks/step_breakdown.py [--rows 2048] [--steps 40]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, flops_per_token, machine, minilm_classifier_step, sst2_rows, timed_steps  # noqa: E402

import torch  # noqa: E402

SST2 = SHARED / "sst2"
BATCH = 32


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    if not (SST2 / "train.tsv").is_file():
        print(f"skipped: {SST2} not found (the SST-2 files live in ../shared/data/sst2 beside the repo)")
        return 0
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

    from lmtune.core.models import source_of
    from lmtune.core.runtime import bf16_available
    from lmtune.data.batching import EpochBatchSampler
    from lmtune.training.loop import choose_attention

    bf16 = bf16_available()
    peak = machine(bf16)
    path = source_of("minilm-l6")
    tok = AutoTokenizer.from_pretrained(path)
    encoded = [dict(tok(text, truncation=True, max_length=128), labels=label) for text, label in sst2_rows(args.rows)]
    collate = DataCollatorWithPadding(tok)
    lengths = [len(e["input_ids"]) for e in encoded]
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    sampler = EpochBatchSampler(lengths, BATCH, seed=42, group_by_length=True)
    sampler.use_epoch(0)
    grouped = [collate([encoded[i] for i in idx]) for idx in sampler]
    order = list(range(len(encoded)))
    random.Random(42).shuffle(order)
    plain = [collate([encoded[i] for i in order[s : s + BATCH]]) for s in range(0, len(order), BATCH)]
    steps = min(args.steps, len(grouped) - 3, len(plain) - 3)

    results = []
    from lmtune.tasks import classification

    eager_max = classification.EAGER_MAX_LENGTH
    lmtune_attention = choose_attention("auto", "cpu", lengths, eager_max)
    for name, batches, attention, lmtune, first_token in (("Trainer defaults", plain, "sdpa", False, False),
                                                          ("lmtune, whole last layer", grouped, lmtune_attention, True, False),
                                                          ("lmtune", grouped, lmtune_attention, True, True)):
        model, optimizer, clip = minilm_classifier_step(attention, lmtune=lmtune, first_token=first_token)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=3, num_training_steps=steps + 3)
        r = timed_steps(name, model, optimizer, scheduler, batches, autocast, steps, clip)
        r["attention"] = attention
        results.append(r)

    # the model's FLOPs (the whole last layer): lmtune's step does less arithmetic for the same result
    plain_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    per_token = flops_per_token(plain_model, [e["input_ids"] for e in encoded[:64]])
    for r in results:
        r["flops_per_step"] = per_token * r["tokens_per_step"]
    print(f"\none step, mean of {steps} (batch {BATCH}, {args.rows} SST-2 rows):")
    print(f"{'':54s} {'data':>8s} {'forward':>8s} {'backward':>8s} {'optimizer':>9s} {'step':>8s} {'GFLOP':>7s} {'MFU':>6s}")
    for r in results:
        ph = r["phases"]
        mfu = r["flops_per_step"] / r["step"] / peak
        print(f"{r['name'] + ' (' + r['attention'] + ')':54s} " + " ".join(f"{ph[k] * 1000:7.1f}ms" for k in ph)
              + f" {r['step'] * 1000:7.1f}ms {r['flops_per_step'] / 1e9:7.2f} {mfu:6.1%}")
    print(f"ratio of step times: Trainer defaults / lmtune {results[0]['step'] / results[2]['step']:.2f}x; "
          f"whole last layer / first token's {results[1]['step'] / results[2]['step']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
