"""English -> German translation quality of SmolLM2-135M on Multi30k, untuned against tuned by
lmtune (full and LoRA), with the time each took.

Data: ../shared/data/multi30k_en_de (train.en/train.de, val.en/val.de: line-aligned Moses files,
read as they are: data.train: {source, target}). A seeded sample of --train-rows training pairs
trains; the first --val-rows validation pairs are translated greedily (--max-new-tokens) by the
untuned model and by each tuned one, and scored with sacreBLEU's corpus BLEU and chrF (as shares,
0-1, like lmtune's metrics.json; the signatures are printed once). The prompt is lmtune's default
for translation pairs ("Translate English to German:\\n<sentence>", in the model's chat template).

Both runs use lmtune's defaults (epochs, batch, learning rate, LoRA settings) unless an option
replaces them.

    python benchmarks/translation.py [--train-rows 2000] [--val-rows 200] [--strategies full,lora]
                                     [--epochs N] [--batch-size N] [--lr X] [--max-steps N] [--seed 42]
    python benchmarks/translation.py --train-rows 32 --val-rows 8 --max-steps 2   (a smoke run)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, cpu_kind  # noqa: E402

MULTI30K = SHARED / "multi30k_en_de"
TEMPLATE = "Translate English to German:\n{source}"


def write_sample(tmp: Path, train_rows: int, val_rows: int, seed: int) -> tuple[dict, dict]:
    """A seeded sample of the training pairs and the first validation pairs, as {source, target}
    files in `tmp` (the data stays outside the repository)."""
    from lmtune.data.parallel import read_parallel

    train, _ = read_parallel(MULTI30K / "train.en", MULTI30K / "train.de", "train")
    val, _ = read_parallel(MULTI30K / "val.en", MULTI30K / "val.de", "validation")
    picked = sorted(random.Random(seed).sample(range(len(train)), min(train_rows, len(train))))
    files = {}
    for name, rows in (("train", [train.rows[i] for i in picked]), ("val", val.rows[:val_rows])):
        for side, lang in (("source", "en"), ("target", "de")):
            (tmp / f"{name}.{lang}").write_text("".join(r[side] + "\n" for r in rows), encoding="utf-8")
        files[name] = {"source": str(tmp / f"{name}.en"), "target": str(tmp / f"{name}.de")}
    return files["train"], files["val"]


def untuned(val: dict, max_new_tokens: int) -> dict:
    """The base model's translations of the validation sources, scored against the references."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmtune.core.models import load_tokenizer, resolve
    from lmtune.tasks.causal_lm import text_scores
    from lmtune.tasks.chat import prompt_text
    from lmtune.tasks.decoding import GenerationSettings, generate

    start = time.perf_counter()
    path = resolve("smollm2-135m")
    tokenizer, model = load_tokenizer(path), AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    sources = Path(val["source"]).read_text(encoding="utf-8").splitlines()
    references = Path(val["target"]).read_text(encoding="utf-8").splitlines()
    prompts = [prompt_text([{"role": "user", "content": TEMPLATE.format(source=s)}], tokenizer) for s in sources]
    with torch.no_grad():
        generations = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=max_new_tokens))
    scores = text_scores([g.text for g in generations], references)
    return {**scores, "train_seconds": 0.0, "seconds": time.perf_counter() - start}


def tuned(strategy: str, train: dict, val: dict, out: str, args: argparse.Namespace) -> dict:
    """An lmtune run on the sampled pairs; its final BLEU and chrF on the validation pairs."""
    import lmtune

    start = time.perf_counter()
    # lmtune's defaults (epochs, batch, learning rate, LoRA rank) unless an option replaces them
    given = {"epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size, "lr": args.lr}
    result = lmtune.train({
        "model": "smollm2-135m", "task": "causal_lm", "output_dir": out,
        "data": {"train": train, "validation": val},
        "strategy": {"name": strategy},
        "train": {**{k: v for k, v in given.items() if v is not None}, "seed": args.seed, "log_steps": 10,
                  "keep_checkpoints": "none"},
        "eval": {"generate_rows": args.val_rows, "max_new_tokens": args.max_new_tokens},
    }, overwrite=True, progress=False)
    metrics = result.metrics["validation"]
    return {**metrics, "train_seconds": result.metrics["train"]["seconds"], "seconds": time.perf_counter() - start}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-rows", type=int, default=2000, help="training pairs, a seeded sample of train.en/train.de")
    p.add_argument("--val-rows", type=int, default=200, help="validation pairs translated and scored (the first ones)")
    p.add_argument("--strategies", default="full,lora")
    p.add_argument("--epochs", type=int, default=None, help="default: lmtune's (train.epochs)")
    p.add_argument("--batch-size", type=int, default=None, help="default: lmtune's (train.batch_size)")
    p.add_argument("--lr", type=float, default=None, help="default: lmtune's for the strategy (train.lr)")
    p.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=42, help="the sample's and the runs' seed")
    args = p.parse_args()
    if not (MULTI30K / "train.en").is_file():
        print(f"skipped: {MULTI30K} not found (Multi30k lives in ../shared/data/multi30k_en_de beside the repo)")
        return 0
    print(f"CPU: {cpu_kind()}; SmolLM2-135M, Multi30k en->de: {args.train_rows} training pairs (seed {args.seed}), "
          f"{args.val_rows} validation pairs, greedy, at most {args.max_new_tokens} new tokens", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        train, val = write_sample(Path(tmp), args.train_rows, args.val_rows, args.seed)
        results = {"untuned": untuned(val, args.max_new_tokens)}
        for strategy in args.strategies.split(","):
            results[strategy] = tuned(strategy, train, val, f"{tmp}/{strategy}", args)
    print(f"\n{'':10s} {'BLEU':>8s} {'chrF':>8s} {'train s':>9s} {'total s':>9s}")
    for name, r in results.items():
        print(f"{name:10s} {r['bleu']:8.4f} {r['chrf']:8.4f} {r['train_seconds']:9.1f} {r['seconds']:9.1f}")
    print(f"\nBLEU: {results['untuned']['bleu_signature']}\nchrF: {results['untuned']['chrf_signature']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
