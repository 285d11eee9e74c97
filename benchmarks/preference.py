"""Speed, memory and quality of lmtune's task: preference (DPO) against TRL's DPOTrainer, side by side.

Both tune the bundled SmolLM2-135M-Instruct with LoRA on pairs of Orca DPO answers
(../shared/data/orca_dpo_pairs/pairs.jsonl, OpenAI's DPO format, 284 pairs), split with each seed
into 240 training and 44 held-out pairs; the same two files feed both sides (TRL reads them as
conversational prompt/chosen/rejected rows). The seed is also each side's training seed.

The settings are lmtune's own defaults for a preference run with strategy lora, read from lmtune
(a config resolved as `lmtune train` resolves it: data.max_length: auto and train.lr: null made
numbers) unless an option names them, and given to both sides: the LoRA rank, alpha, dropout and
target modules (lmtune's default: every linear layer of the blocks; TRL gets the same peft
LoraConfig), DPO's sigmoid loss and beta, learning rate, weight decay, warmup, schedule, gradient
clipping, batch size, epochs, max_length, and the precision rule (bf16 autocast where the CPU is
fast in it, fp32 elsewhere). The reference is the base model on both sides: TRL (on its defaults)
runs the model with its adapters disabled at every step; lmtune scores each pair with it once,
before training (its whole-process time includes that, its loop speed does not).
Both evaluate the held-out pairs after each epoch and end with the best evaluation's model (by
reward accuracy: lmtune's train.metric; TRL with load_best_model_at_end), so the final figures are
of the same choice. TRL's dropout is left on (disable_dropout=False: lmtune keeps the LoRA dropout)
and its gradient checkpointing off (TRL's default is on; lmtune's off).

What still differs:
- Truncation. lmtune cuts a pair too long for max_length by the same number of prompt tokens from
  the left of both sequences, then the end of an answer that alone does not fit. TRL keeps either
  the start of each sequence (keep_start: the answers' ends go, and a pair whose prompt fills
  max_length is dropped) or its end (keep_end, deprecated in TRL 1.x but still honoured: each
  sequence loses its own excess from the left, prompt first, then the answer's start). keep_end is
  the closer: it is used here, and the run prints for how many training sequences it keeps exactly
  lmtune's tokens (at lmtune's default max_length for batch 32, 256 tokens, Orca's long answers
  make that a minority: then both train on truncated answers, differently).
- Batches: lmtune groups pairs of similar length (train.group_by_length) and may split a batch
  into micro-batches to stay within its memory budget (same gradient); TRL's batches are random.
- Ties of the best evaluation: lmtune takes the lower validation loss, TRL the earlier epoch.
- lmtune drops pairs whose answers are empty or identical (none in the Orca file).
Quality: held-out reward accuracy (share of held-out pairs whose chosen answer gets the higher
implicit reward, beta times the log-ratio to the reference) and reward margin, from lmtune's
metrics.json ("validation") and from TRL's trainer.evaluate() (eval_rewards/accuracies,
eval_rewards/margins; the evaluation batch divides the held-out pairs, so TRL's mean of batch means
is the mean over pairs). Speed: pairs per second of the training loop (evaluations left out), and
the wall time of each side's whole process (start-up, data, training, evaluations, saving).

    python benchmarks/preference.py [--seeds 1 2 3] [--pairs-train 240] [--pairs-held 44]
                                    [--epochs N] [--max-length N] [--batch-size N] [--lr X]
                                    [--sides trl lmtune]

Needs ../shared/data/orca_dpo_pairs beside the repo; skips with a message when it is absent.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, cpu_kind, fast_bf16, mean, report, run_child, spread  # noqa: E402

PAIRS = SHARED / "orca_dpo_pairs" / "pairs.jsonl"
MODEL = "smollm2-135m"


def write_split(tmp: str, seed: int, n_train: int, n_held: int) -> tuple[str, str]:
    """The pairs shuffled with `seed`: the first n_train for training, the next n_held held out."""
    lines = [l for l in PAIRS.read_text(encoding="utf-8").splitlines() if l.strip()]
    if n_train + n_held > len(lines):
        raise SystemExit(f"--pairs-train {n_train} + --pairs-held {n_held}: the file has {len(lines)} pairs")
    random.Random(seed).shuffle(lines)
    paths = []
    for name, part in (("train", lines[:n_train]), ("held", lines[n_train : n_train + n_held])):
        path = f"{tmp}/{name}-{seed}.jsonl"
        Path(path).write_text("".join(l + "\n" for l in part), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def lmtune_config(train: str, held: str, out: str, seed: int, args: argparse.Namespace) -> dict:
    """lmtune's side as a run config: lmtune's defaults but for what an option sets. The evaluation
    batch divides the held-out pairs (set later, once the batch size is known); no report, tracker
    or training-sample scoring (TRL's side does none of them)."""
    train_section = {"seed": seed, "precision": "auto", "report": False, "report_to": []}
    for key in ("epochs", "batch_size", "lr"):
        if getattr(args, key) is not None:
            train_section[key] = getattr(args, key)
    data = {"train": train, "validation": held}
    if args.max_length is not None:
        data["max_length"] = args.max_length
    return {"model": MODEL, "task": "preference", "output_dir": out, "data": data,
            "strategy": {"name": "lora"}, "train": train_section, "eval": {"train_sample": 0}}


def settle(config: dict, n_held: int) -> tuple[dict, dict]:
    """The config with lmtune's automatic choices made numbers (as `lmtune train` makes them), and
    the settings both sides train with, read from it."""
    from lmtune.core.models import load_tokenizer, resolve
    from lmtune.tasks import get_task
    from lmtune.tasks.run_config import as_config
    from lmtune.training.loop import resolve_defaults

    cfg = as_config(config)
    task = get_task(cfg.task)
    data = task.load_data(cfg)
    tokenizer = load_tokenizer(resolve(cfg.model))
    cfg, _, _ = resolve_defaults(cfg, task, data, tokenizer)
    t, s, p = cfg.train, cfg.strategy, cfg.preference
    eval_batch = max(d for d in range(1, n_held + 1) if n_held % d == 0 and d <= 2 * t.batch_size)
    settings = {
        "epochs": t.epochs, "batch_size": t.batch_size, "eval_batch_size": eval_batch, "lr": t.lr,
        "weight_decay": t.weight_decay, "warmup_ratio": t.warmup_ratio, "scheduler": t.scheduler,
        "max_grad_norm": t.max_grad_norm, "max_length": cfg.data.max_length, "seed": t.seed,
        "beta": p.beta, "label_smoothing": p.label_smoothing, "objective": p.objective,
        "lora": {"r": s.r, "alpha": s.alpha, "dropout": s.dropout, "target_modules": s.target_modules},
        "train_pairs": len(data.train), "held_pairs": len(data.validation),
        "keep_end_same": keep_end_same(data.train, tokenizer, cfg.data.max_length),
    }
    assert settings["objective"] == "dpo", "the benchmark compares DPO's sigmoid loss"
    config = json.loads(json.dumps(config))
    config["data"]["max_length"] = settings["max_length"]
    config["train"].update({k: settings[k] for k in ("epochs", "batch_size", "eval_batch_size", "lr")})
    return config, settings


def keep_end_same(table, tokenizer, limit: int) -> float:
    """The share of training sequences (chosen and rejected) of which TRL's keep_end keeps exactly
    the tokens that lmtune's truncation keeps."""
    from lmtune.tasks import preference

    same = total = 0
    for chosen, rejected in preference.encode_pairs(table, tokenizer):
        kept, _ = preference.fit_pair(chosen, rejected, limit)
        for (ids, _), (full, _, _) in zip(kept, (chosen, rejected)):
            same += ids == full[-limit:]
            total += 1
    return same / total


def run_lmtune(config_path: str, settings: dict) -> dict:
    import lmtune

    start = time.perf_counter()
    result = lmtune.train(config_path, overwrite=True, progress=False)
    metrics = json.loads((Path(result.output_dir) / "metrics.json").read_text())
    m, v = metrics["train"], metrics["validation"]
    return {"speed": settings["epochs"] * settings["train_pairs"] / m["seconds"], "train_seconds": m["seconds"],
            "eval_seconds": m["eval_seconds"] + m["final_seconds"], "call_seconds": time.perf_counter() - start,
            "quality": v["reward_accuracy"], "margin": v["reward_margin"], "best_step": m["best_step"]}


def trl_rows(path: str) -> list[dict]:
    """A pair file in OpenAI's DPO format as TRL's conversational rows."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        rows.append({"prompt": r["input"]["messages"], "chosen": r["preferred_output"],
                     "rejected": r["non_preferred_output"]})
    return rows


def lora_targets(model, targets: list[str] | None) -> list[str]:
    """lmtune's LoRA targets: the named ones, or (its default) every linear layer in the blocks."""
    import torch.nn as nn

    from lmtune.training.strategies import find_blocks

    if targets:
        return list(targets)
    prefix, _ = find_blocks(model)
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and n.startswith(prefix + ".")})


def run_trl(train: str, held: str, out: str, settings: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging
    from trl import DPOConfig, DPOTrainer

    from lmtune.core.models import resolve

    logging.set_verbosity_error()
    begin = time.perf_counter()
    s = settings
    path = resolve(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(s["seed"])
    model = AutoModelForCausalLM.from_pretrained(path)
    lora = s["lora"]
    peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=lora_targets(model, lora["target_modules"]), task_type="CAUSAL_LM")
    steps = s["epochs"] * -(-s["train_pairs"] // s["batch_size"])
    assert s["batch_size"] % s["trl_micro"] == 0, "--trl-micro must divide the batch size"
    args = DPOConfig(
        # TRL's batch in micro-batches of --trl-micro pairs with gradient accumulation, as a TRL user fits
        # memory (a whole batch of 32 pairs of 256 tokens in one forward was killed for memory at 23 GiB)
        output_dir=out, per_device_train_batch_size=s["trl_micro"],
        gradient_accumulation_steps=s["batch_size"] // s["trl_micro"], per_device_eval_batch_size=s["trl_eval_batch"],
        num_train_epochs=s["epochs"], learning_rate=s["lr"], weight_decay=s["weight_decay"],
        warmup_steps=round(s["warmup_ratio"] * steps),
        lr_scheduler_type="constant_with_warmup" if s["scheduler"] == "constant" else s["scheduler"],
        max_grad_norm=s["max_grad_norm"] or 0.0, bf16=fast_bf16(), use_cpu=True, seed=s["seed"],
        beta=s["beta"], loss_type=["sigmoid"], label_smoothing=s["label_smoothing"],
        max_length=s["max_length"], truncation_mode="keep_end", precompute_ref_log_probs=False,
        disable_dropout=False, gradient_checkpointing=False,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=1, load_best_model_at_end=True,
        metric_for_best_model="rewards/accuracies", greater_is_better=True,
        report_to="none", logging_steps=10, disable_tqdm=True,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(trl_rows(train)),
                         eval_dataset=Dataset.from_list(trl_rows(held)), processing_class=tok,
                         peft_config=peft_config)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    # the training loop without the evaluations of each epoch (lmtune's train.seconds leaves them out too)
    evals = sum(e.get("eval_runtime", 0.0) for e in trainer.state.log_history)
    final = time.perf_counter()
    metrics = trainer.evaluate()
    best = trainer.state.best_model_checkpoint
    return {"speed": s["epochs"] * len(trainer.train_dataset) / (seconds - evals), "train_seconds": seconds - evals,
            "eval_seconds": evals + time.perf_counter() - final, "call_seconds": time.perf_counter() - begin,
            "quality": metrics["eval_rewards/accuracies"], "margin": metrics["eval_rewards/margins"],
            "best_step": int(best.rsplit("-", 1)[1]) if best else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                   help="each seed: the split and both sides' training seed")
    p.add_argument("--pairs-train", type=int, default=240)
    p.add_argument("--pairs-held", type=int, default=44)
    p.add_argument("--epochs", type=int, default=None, help="default: lmtune's train.epochs")
    p.add_argument("--max-length", type=int, default=None, help="default: lmtune's data.max_length: auto, resolved")
    p.add_argument("--batch-size", type=int, default=None, help="default: lmtune's train.batch_size")
    p.add_argument("--lr", type=float, default=None, help="default: lmtune's train.lr for strategy lora")
    p.add_argument("--trl-micro", type=int, default=4,
                   help="TRL's pairs per forward (per_device_train_batch_size; the batch by gradient accumulation)")
    p.add_argument("--sides", nargs="+", choices=["trl", "lmtune"], default=["trl", "lmtune"],
                   help="run only these (the table then shows what ran)")
    p.add_argument("--child", nargs=5, metavar=("SIDE", "TRAIN", "HELD", "OUT", "SETTINGS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        side, train, held, out, settings_path = args.child
        settings = json.loads(Path(settings_path).read_text())
        report(run_lmtune(settings["config"], settings) if side == "lmtune" else run_trl(train, held, out, settings))
        return 0
    if not PAIRS.is_file():
        print(f"skipped: {PAIRS} not found (the Orca DPO pairs live in ../shared/data/orca_dpo_pairs beside the repo)")
        return 0
    import torch
    import yaml

    bf16 = fast_bf16()
    print(f"CPU: {cpu_kind()}, {torch.get_num_threads()} torch threads; precision {'bf16' if bf16 else 'fp32'} on "
          f"both sides (bf16 autocast only where the CPU is fast in it)", flush=True)
    results: dict[str, list[dict]] = {"trl": [], "lmtune": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            train, held = write_split(tmp, seed, args.pairs_train, args.pairs_held)
            config, settings = settle(lmtune_config(train, held, f"{tmp}/lmtune-{seed}", seed, args), args.pairs_held)
            config_path = f"{tmp}/lmtune-{seed}.yaml"
            Path(config_path).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            settings["config"] = config_path
            settings["trl_micro"] = args.trl_micro
            settings["trl_eval_batch"] = max(d for d in range(1, args.trl_micro + 1) if args.pairs_held % d == 0)
            settings_path = f"{tmp}/settings-{seed}.json"
            Path(settings_path).write_text(json.dumps(settings), encoding="utf-8")
            print(f"seed {seed}: {settings['train_pairs']} training pairs, {settings['held_pairs']} held out; epochs "
                  f"{settings['epochs']}, batch {settings['batch_size']} (eval {settings['eval_batch_size']}), lr "
                  f"{settings['lr']:g}, warmup {settings['warmup_ratio']}, {settings['scheduler']}, max_length "
                  f"{settings['max_length']}, beta {settings['beta']}, LoRA r {settings['lora']['r']} alpha "
                  f"{settings['lora']['alpha']:g} dropout {settings['lora']['dropout']}; TRL keep_end keeps lmtune's "
                  f"tokens for {settings['keep_end_same']:.0%} of the training sequences", flush=True)
            for side in args.sides:
                began = time.perf_counter()
                r = run_child(__file__, ["--child", side, train, held, f"{tmp}/{side}-{seed}", settings_path])
                r["process_seconds"] = time.perf_counter() - began
                results[side].append(r)
                print(f"seed {seed} {side:7s} {r['speed']:6.2f} pairs/s  {r['peak_rss_mb']:6.0f} MB peak RSS  "
                      f"reward accuracy {r['quality']:.4f}  margin {r['margin']:+.4f}  (best step {r['best_step']})  "
                      f"process {r['process_seconds']:.0f} s (loop {r['train_seconds']:.0f} s, "
                      f"evaluations {r['eval_seconds']:.0f} s)", flush=True)
    print(f"\nSmolLM2-135M LoRA DPO on Orca pairs ({args.pairs_train} train, {args.pairs_held} held out, "
          f"{'bf16' if bf16 else 'fp32'}, {len(args.seeds)} seed(s), {cpu_kind()})")
    print(f"{'':8s} {'pairs/s':>8s} {'process s':>10s} {'loop s':>8s} {'peak RSS MB':>12s}  "
          f"{'held-out reward accuracy (spread)':34s} reward margin (spread)")
    for side in args.sides:
        rows = results[side]
        print(f"{side:8s} {mean(rows, 'speed'):8.2f} {mean(rows, 'process_seconds'):10.1f} "
              f"{mean(rows, 'train_seconds'):8.1f} {mean(rows, 'peak_rss_mb'):12.0f}  "
              f"{spread(rows, 'quality'):34s} {spread(rows, 'margin')}")
    if len(args.sides) < 2:
        return 0
    speed = mean(results["lmtune"], "speed") / mean(results["trl"], "speed")
    wall = mean(results["trl"], "process_seconds") / mean(results["lmtune"], "process_seconds")
    mem = mean(results["lmtune"], "peak_rss_mb") / mean(results["trl"], "peak_rss_mb")
    diff = mean(results["lmtune"], "quality") - mean(results["trl"], "quality")
    print(f"lmtune / TRL: loop speed {speed:.2f}x, whole process {wall:.2f}x as fast (TRL's wall time over "
          f"lmtune's), peak RSS {mem:.2f}x, reward accuracy {diff:+.4f} (higher is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
