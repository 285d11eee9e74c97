"""Speed, memory and quality of lmtune against a plain transformers.Trainer for causal LM
fine-tuning of the bundled SmolLM2-135M, full and LoRA, in one run.

Data: SAMSum dialogues with their summaries (../shared/data/samsum, 20 to 200 words each), rendered
with the model's chat template as "Summarize the dialogue:\\n<dialogue>" -> "<summary>". Both sides
train on every token (the Trainer with DataCollatorForLanguageModeling, lmtune with
data.train_on_prompt), the same precision rule (bf16 where the CPU is fast in it, fp32 elsewhere),
same learning rate, warmup, epochs and batch size (8 dialogues):
the Trainer's batches are random and padded to their longest dialogue; lmtune's are grouped by
length (or, with --packing, rows of 512 tokens that hold several dialogues without attention
across them, 2 rows a step). Speed is real (non-padding) tokens per second of training; quality is
the token-weighted loss on held-out dialogues, computed by one function for both sides. Model FLOPs
utilisation: forward and backward FLOPs of the real tokens trained (torch.utils.flop_counter, on the
model as each strategy trains it), per second of the training loop, over a matrix-product peak
measured here in the same precision.

    python benchmarks/causal_lm.py [--train-rows 320] [--val-rows 64] [--strategies full,lora] [--packing]
                                   [--attention auto|eager|sdpa]   (lmtune's train.attention)
                                   [--seeds 42]   (comma-separated: each side once per seed)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (SHARED, cpu_kind, fast_bf16, flops_per_token, machine, report, run_child,  # noqa: E402
                    spread, table)

SAMSUM = SHARED / "samsum" / "val.csv"
TEMPLATE = "Summarize the dialogue:\n{dialogue}"
COMMON = {"epochs": 1, "max_length": 512, "warmup_ratio": 0.05, "seed": 42}  # (seed: the default of --seeds)
LR = {"full": 5e-5, "lora": 5e-4}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}


def write_data(tmp: str, train_rows: int, val_rows: int) -> tuple[str, str]:
    with open(SAMSUM, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if 20 <= len((r["dialogue"] + " " + r["summary"]).split()) <= 200]
    rows = [{"dialogue": r["dialogue"].replace("\r\n", "\n").strip(), "summary": r["summary"].strip()} for r in rows]
    paths = []
    for name, part in (("train", rows[:train_rows]), ("val", rows[train_rows : train_rows + val_rows])):
        path = f"{tmp}/{name}.jsonl"
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def rendered(path: str, tokenizer) -> list[str]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": TEMPLATE.format(**r)}, {"role": "assistant", "content": r["summary"]}],
            tokenize=False,
        )
        for r in rows
    ]


def heldout_loss(model, tokenizer, texts: list[str]) -> float:
    """Token-weighted cross-entropy over all tokens of the held-out texts (in bf16 autocast where the
    CPU is fast in it)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bf16()):
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=COMMON["max_length"],
                            return_tensors="pt")["input_ids"]
            logits = model(input_ids=ids).logits[0, :-1].float()
            total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return total / count


def lmtune_config(strategy: str, train: str, val: str, out: str, packing: bool = False, attention: str = "auto",
                  seed: int = COMMON["seed"]) -> dict:
    """lmtune's side of the benchmark as a run config."""
    return {
        "model": "smollm2-135m",
        "task": "causal_lm",
        "output_dir": out,
        "data": {"train": train, "validation": val, "prompt_template": TEMPLATE, "response_column": "summary",
                 "train_on_prompt": True, "packing": packing, "max_length": COMMON["max_length"]},
        "strategy": {"name": "lora", **LORA} if strategy == "lora" else {"name": "full"},
        "train": {"epochs": COMMON["epochs"], "batch_size": 2 if packing else 8, "lr": LR[strategy],
                  "weight_decay": 0.0,
                  "warmup_ratio": COMMON["warmup_ratio"], "seed": seed, "precision": "auto",
                  "log_steps": 10, "attention": attention},
        "eval": {"generate_rows": 0},
    }


def run_lmtune(strategy: str, train: str, val: str, out: str, packing: bool, attention: str = "auto",
               seed: int = COMMON["seed"]) -> dict:
    import lmtune
    from lmtune.infer.generation import Generator

    result = lmtune.train(lmtune_config(strategy, train, val, out, packing, attention, seed), overwrite=True, progress=False)
    gen = Generator.load(out)
    return {"speed": result.metrics["train"]["tokens_per_second"], "train_seconds": result.metrics["train"]["seconds"],
            "quality": heldout_loss(gen.model, gen.tokenizer, rendered(val, gen.tokenizer))}


def trained_model(strategy: str, seed: int = COMMON["seed"]):
    """SmolLM2-135M as the strategy trains it (LoRA: peft adapters on every projection of the blocks)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmtune.core.models import resolve

    torch.manual_seed(seed)  # (LoRA's A matrices start random)
    model = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m"))
    if strategy == "lora":
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    return model


def run_trainer(strategy: str, train: str, val: str, out: str, packing: bool, attention: str = "auto",
                seed: int = COMMON["seed"]) -> dict:
    from datasets import Dataset
    from transformers import (AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)
    from transformers.utils import logging

    from lmtune.core.models import resolve

    logging.set_verbosity_error()
    path = resolve("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.pad_token or tok.eos_token
    ds = Dataset.from_dict({"text": rendered(train, tok)})
    ds = ds.map(lambda b: tok(b["text"], add_special_tokens=False, truncation=True, max_length=COMMON["max_length"]),
                batched=True, remove_columns=["text"])
    real_tokens = sum(len(ids) for ids in ds["input_ids"])
    model = trained_model(strategy, seed)
    steps = COMMON["epochs"] * -(-len(ds) // 8)
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=8, num_train_epochs=COMMON["epochs"], learning_rate=LR[strategy],
        weight_decay=0.0, warmup_steps=round(COMMON["warmup_ratio"] * steps), lr_scheduler_type="linear", bf16=fast_bf16(),
        use_cpu=True, seed=seed, save_strategy="no", eval_strategy="no", report_to="none",
        logging_steps=10, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"speed": COMMON["epochs"] * real_tokens / seconds, "train_seconds": seconds,
            "quality": heldout_loss(trainer.model, tok, rendered(val, tok))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-rows", type=int, default=320)
    p.add_argument("--val-rows", type=int, default=64)
    p.add_argument("--strategies", default="full,lora")
    p.add_argument("--packing", action="store_true", help="lmtune packs dialogues into 512-token rows")
    p.add_argument("--attention", default="auto", choices=["auto", "eager", "sdpa"], help="lmtune's train.attention")
    p.add_argument("--seeds", default=str(COMMON["seed"]), help="comma-separated seeds")
    p.add_argument("--child", nargs=6, metavar=("SIDE", "STRATEGY", "TRAIN", "VAL", "OUT", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        side, strategy, train, val, out, seed = args.child
        report((run_lmtune if side == "lmtune" else run_trainer)(strategy, train, val, out, args.packing, args.attention,
                                                                 int(seed)))
        return 0
    if not SAMSUM.is_file():
        print(f"skipped: {SAMSUM} not found (the SAMSum file lives in ../shared/data/samsum beside the repo)")
        return 0
    bf16 = fast_bf16()
    peak = machine(bf16)
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        train, val = write_data(tmp, args.train_rows, args.val_rows)
        for strategy in args.strategies.split(","):
            per_token = strategy_flops_per_token(strategy, train)
            results: dict[str, list[dict]] = {"trainer": [], "lmtune": []}
            for seed in seeds:
                for side in ("trainer", "lmtune"):
                    r = run_child(__file__, ["--child", side, strategy, train, val, f"{tmp}/{side}-{strategy}-{seed}",
                                             str(seed), *(["--packing"] if args.packing else []),
                                             "--attention", args.attention])
                    results[side].append(r)
                    print(f"seed {seed} {strategy:5s} {side:8s} {r['speed']:8.1f} tokens/s  {r['peak_rss_mb']:7.0f} MB peak "
                          f"RSS  held-out loss {r['quality']:.4f}  ({r['train_seconds']:.0f} s)  "
                          f"MFU {per_token * r['speed'] / peak:.1%}", flush=True)
            table(f"SmolLM2-135M {strategy} on SAMSum ({args.train_rows} dialogues, {COMMON['epochs']} epoch, "
                  f"{'bf16' if bf16 else 'fp32'}, {len(seeds)} seed(s), {cpu_kind()})", results, "tokens/s",
                  "held-out loss", "lower")
            for side in ("trainer", "lmtune"):
                print(f"{side:10s} held-out loss {spread(results[side], 'quality')}")
    return 0


def strategy_flops_per_token(strategy: str, train: str, rows: int = 4) -> float:
    """FLOPs of forward and backward per real token, on the first `rows` training dialogues."""
    from transformers import AutoTokenizer

    from lmtune.core.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    ids = [tok(t, add_special_tokens=False, truncation=True, max_length=COMMON["max_length"])["input_ids"]
           for t in rendered(train, tok)[:rows]]
    return flops_per_token(trained_model(strategy), ids)


if __name__ == "__main__":
    sys.exit(main())
