"""Eager against SDPA attention for an encoder's training step, by input length, on this machine.

MiniLM-L6 classifier trained as lmtune trains it (length-grouped SST-2 batches; fixed-length
batches cut from the same text for longer inputs), batch 32, the precision rule of
train.precision: auto. The two models step alternately on the same batches in this one process,
and the median of the per-batch time ratios is printed: `train.attention: auto` picks eager on
CPU while 90% of the training inputs are at most the task's EAGER_MAX_LENGTH tokens (160 for
classification), SDPA otherwise.

    python benchmarks/attention_kernel.py [--lengths 64,128,192,256] [--steps 8]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, cpu_kind, minilm_classifier_step, sst2_rows  # noqa: E402

import torch  # noqa: E402

SST2 = SHARED / "sst2"
BATCH = 32
KERNELS = ("eager", "sdpa")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="64,128,192,256", help="comma-separated lengths of the fixed-length batches")
    p.add_argument("--steps", type=int, default=8, help="timed steps per length and kernel (after 2 warm-up steps)")
    args = p.parse_args()
    if not (SST2 / "train.tsv").is_file():
        print(f"skipped: {SST2} not found (the SST-2 files live in ../shared/data/sst2 beside the repo)")
        return 0
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from lmtune.core.models import source_of
    from lmtune.core.runtime import bf16_available
    from lmtune.data.batching import EpochBatchSampler

    bf16 = bf16_available()
    print(f"CPU: {cpu_kind()}; {torch.get_num_threads()} threads; precision {'bf16' if bf16 else 'fp32'} "
          f"(train.precision: auto)")
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    path = source_of("minilm-l6")
    tok = AutoTokenizer.from_pretrained(path)
    encoded = [dict(tok(text, truncation=True, max_length=128), labels=label) for text, label in sst2_rows(2048)]
    lengths = [len(e["input_ids"]) for e in encoded]
    sampler = EpochBatchSampler(lengths, BATCH, seed=42)
    sampler.use_epoch(0)
    collate = DataCollatorWithPadding(tok)
    plans = [(f"SST-2, grouped (mean {sum(lengths) / len(lengths):.0f} tokens)",
              [collate([encoded[i] for i in idx]) for idx in list(sampler)[: args.steps * 3 + 2]])]
    words = [i for e in encoded for i in e["input_ids"][1:-1]]
    g = torch.Generator().manual_seed(0)
    for length in (int(x) for x in args.lengths.split(",")):
        batches = []
        for _ in range(args.steps + 2):
            starts = torch.randint(0, len(words) - length, (BATCH,), generator=g).tolist()
            ids = torch.tensor([[tok.cls_token_id, *words[s : s + length - 2], tok.sep_token_id] for s in starts])
            batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                            "labels": torch.randint(0, 2, (BATCH,), generator=g)})
        plans.append((f"{length} tokens", batches))

    models = {k: minilm_classifier_step(k) for k in KERNELS}

    def step(kernel: str, batch: dict) -> float:
        model, optimizer, clip = models[kernel]
        model.train()
        start = time.perf_counter()
        with autocast():
            loss = model(**batch).loss
        loss.backward()
        clip(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    print(f"\n{'batch of 32':36s} {'eager':>9s} {'SDPA':>9s} {'SDPA / eager':>13s}")
    for name, batches in plans:
        times: dict[str, list[float]] = {k: [] for k in KERNELS}
        for i, batch in enumerate(batches):
            for kernel in KERNELS if i % 2 else KERNELS[::-1]:
                seconds = step(kernel, batch)
                if i >= 2:
                    times[kernel].append(seconds)
        ratio = statistics.median(s / e for s, e in zip(times["sdpa"], times["eager"]))
        print(f"{name:36s} {statistics.median(times['eager']) * 1000:7.0f}ms {statistics.median(times['sdpa']) * 1000:7.0f}ms "
              f"{ratio:13.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
