"""Where one causal-LM training step's time goes, with a plain Trainer's step and with lmtune's.

SmolLM2-135M, full fine-tuning on SAMSum dialogues rendered with the chat template (as
benchmarks/causal_lm.py trains it: every token trained, batch 8, lr 5e-5), the precision rule of
train.precision: auto (bf16 where the CPU is fast in it, else fp32). Two loops over the same
dialogues in this one process, each step timed in phases (data, forward, backward, optimizer:
clipping, AdamW, schedule, zeroing):
  - a plain Trainer's defaults: random batches padded to their longest dialogue
    (DataCollatorForLanguageModeling), SDPA attention, the LM head and loss at every position,
    fused AdamW;
  - lmtune's, built by the causal_lm task as training builds it: length-grouped batches, the
    attention kernel of train.attention: auto, the LM head and loss only where a token is trained
    and in chunks, compiled blocks (train.compile: auto), fused AdamW.
Model FLOPs per step are counted by torch.utils.flop_counter on the plain model (forward and
backward on the real, unpadded tokens), and the utilisation (MFU) is those FLOP/s over a
matrix-product peak measured here, in the same precision. The first steps (lmtune's compilation
among them) are not timed.

    python benchmarks/causal_step_breakdown.py [--rows 96] [--steps 6]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from causal_lm import (COMMON, LR, SAMSUM, lmtune_config, rendered, strategy_flops_per_token,  # noqa: E402
                       trained_model, write_data)
from common import machine, timed_steps  # noqa: E402

import torch  # noqa: E402

BATCH = 8
WARMUP = 3


def trainer_side(train: str, steps: int):
    """The Trainer's model (SDPA), its fused AdamW and the batches its collator makes of random dialogues."""
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from lmtune.core.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    tok.pad_token = tok.pad_token or tok.eos_token
    encoded = [tok(t, add_special_tokens=False, truncation=True, max_length=COMMON["max_length"]) for t in rendered(train, tok)]
    order = list(range(len(encoded)))
    random.Random(COMMON["seed"]).shuffle(order)
    collate = DataCollatorForLanguageModeling(tok, mlm=False)
    batches = [collate([encoded[i] for i in order[s : s + BATCH]]) for s in range(0, BATCH * (steps + WARMUP), BATCH)]
    torch.manual_seed(COMMON["seed"])
    model = trained_model("full")
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR["full"], weight_decay=0.0, fused=True)
    return model, optimizer, batches


def lmtune_side(train: str, val: str, out: str, steps: int):
    """lmtune's model, fused AdamW and grouped batches, built by the causal_lm task and lmtune's
    training module as a run of this config builds them."""
    from lmtune.core import models
    from lmtune.core.config import validate
    from lmtune.data.batching import EpochBatchSampler
    from lmtune.tasks import get_task
    from lmtune.training import strategies
    from lmtune.training.cpu import dropout
    from lmtune.training.loop import choose_attention, compile_blocks

    cfg = validate(lmtune_config("full", train, val, out))
    task = get_task("causal_lm")
    data = task.load_data(cfg)
    path = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(path)
    features = task.prepare(data.train, tokenizer, cfg, [], data.shape)[0]
    lengths = [len(f["input_ids"]) for f in features]
    attention = choose_attention(cfg.train.attention, "cpu", lengths, task.EAGER_MAX_LENGTH)
    torch.manual_seed(COMMON["seed"])
    model = task.build_model(path, cfg, [], attn_implementation=attention)
    groups = strategies.apply(model, cfg.strategy, cfg.train.lr, cfg.train.weight_decay).groups
    dropout.use_packed(model)  # (as lmtune/training/loop.py does; SmolLM2 has no dropout layers of its own)
    optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, fused=True)
    compile_blocks(model)
    sampler = EpochBatchSampler(lengths, BATCH, seed=COMMON["seed"], group_by_length=True)
    sampler.use_epoch(0)
    collate = task.collator(tokenizer, cfg, model)
    batches = [collate([features[i] for i in idx]) for idx in list(sampler)[: steps + WARMUP]]
    return model, optimizer, batches, attention


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=96, help="SAMSum dialogues to draw the batches from")
    p.add_argument("--steps", type=int, default=6, help="timed steps per side (after 3 untimed ones)")
    args = p.parse_args()
    if not SAMSUM.is_file():
        print(f"skipped: {SAMSUM} not found (the SAMSum file lives in ../shared/data/samsum beside the repo)")
        return 0
    from transformers import get_scheduler

    from lmtune.core.runtime import bf16_available

    bf16 = bf16_available()
    peak = machine(bf16)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    clip = torch.nn.utils.clip_grad_norm_  # (lmtune's too: SmolLM2's embedding is tied to its output layer)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        train, val = write_data(tmp, args.rows, 8)
        steps = min(args.steps, args.rows // BATCH - WARMUP)
        for name in ("Trainer defaults", "lmtune"):
            if name == "lmtune":
                model, optimizer, batches, attention = lmtune_side(train, val, f"{tmp}/run", steps)
            else:
                (model, optimizer, batches), attention = trainer_side(train, steps), "sdpa"
            scheduler = get_scheduler("linear", optimizer, num_warmup_steps=WARMUP, num_training_steps=steps + WARMUP)
            r = timed_steps(name, model, optimizer, scheduler, batches, autocast, steps, clip, warmup=WARMUP)
            r["attention"] = attention
            results.append(r)
            print(f"{name}: {r['step']:.2f} s a step", flush=True)
            del model, optimizer, batches
        per_token = strategy_flops_per_token("full", train)
    print(f"\none step, mean of {steps} (batch {BATCH} dialogues of {args.rows} SAMSum ones; {per_token / 1e6:.0f} M FLOPs "
          f"per real token, forward and backward):")
    print(f"{'':28s} {'data':>8s} {'forward':>9s} {'backward':>9s} {'optimizer':>9s} {'step':>9s} {'tokens':>7s} "
          f"{'padded':>7s} {'MFU':>6s}")
    for r in results:
        ph = r["phases"]
        mfu = per_token * r["tokens_per_step"] / r["step"] / peak
        padded = 1 - r["tokens_per_step"] / r["positions_per_step"]
        print(f"{r['name'] + ' (' + r['attention'] + ')':28s} " + " ".join(f"{ph[k] * 1000:7.0f}ms" for k in ph)
              + f" {r['step'] * 1000:7.0f}ms {r['tokens_per_step']:7.0f} {padded:7.1%} {mfu:6.1%}")
    trainer, ours = results
    speed = (ours["tokens_per_step"] / ours["step"]) / (trainer["tokens_per_step"] / trainer["step"])
    print(f"real tokens per second, lmtune / Trainer defaults: {speed:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
