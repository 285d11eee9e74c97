"""A first run with the defaults: LoRA SFT of the bundled SmolLM2-135M on SAMSum dialogues with a
prompt template and nothing else set, scored on held-out dialogues against the base model.

Training data: the first --train-rows rows of ../shared/data/samsum/val.csv (lmtune holds out 10%
for its own validation). Held-out data: rows --heldout (default 600-629), never trained on. Each
held-out dialogue gets a greedy summary of at most --max-new-tokens tokens; the script reports
ROUGE-L (a share, 0-1), how many generations ran to the token limit without ending, and how many
repeat a sentence. Every run writes one JSON line to --results.

    python benchmarks/first_run.py base                          # the base model, untrained
    python benchmarks/first_run.py train [KEY=VALUE ...]         # a default LoRA run, plus overrides
    python benchmarks/first_run.py train train.lr=5e-4 --name lora-5e-4
    python benchmarks/first_run.py score --run RUN_DIR             # a run trained elsewhere (another version)

The config of a run is only what a new user writes (model, task, data, prompt template, response
column, `strategy: {name: lora}`); KEY=VALUE overrides add to it, and eval.generate_rows=0 (the run's
own generations on its validation rows come after training and change nothing in it; the held-out
rows are scored here instead). `--low-memory` turns on
train.gradient_checkpointing (the same weights, less memory, about 30% more time); without it the
run's micro-batches (train.micro_batch_size: auto) keep it within 10 GiB. The data is read from
../shared/data and written only to a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402

SAMSUM = SHARED / "samsum" / "val.csv"
TEMPLATE = "Summarize the dialogue:\n{dialogue}"


def read_rows() -> list[dict[str, str]]:
    with open(SAMSUM, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def repeats_a_sentence(text: str) -> bool:
    sentences = [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 3]
    return len(sentences) != len(set(sentences))


def score(model_or_run: str, rows: list[dict[str, str]], max_new_tokens: int) -> dict:
    """Greedy summaries of the held-out rows: ROUGE-L, limit hits, repeated sentences."""
    from lmtune.infer.generation import Generator
    from lmtune.tasks import causal_lm

    from lmtune.tasks.decoding import GenerationSettings

    gen = Generator.load(model_or_run)
    prompts = [gen.row_prompt(row, f"row {i}", TEMPLATE)[0] for i, row in enumerate(rows)]
    start = time.perf_counter()
    generations = gen.generate_batch(prompts, GenerationSettings(max_new_tokens=max_new_tokens), raw=True)
    predictions = [g.text for g in generations]
    hits = sum(g.finish_reason == "length" for g in generations)
    lengths = [g.completion_tokens for g in generations]
    scores = causal_lm.text_scores(predictions, [r["summary"] for r in rows])
    return {
        "rougeL": round(scores["rougeL"], 4),
        "rouge1": round(scores["rouge1"], 4),
        "hit_token_limit": hits,
        "repeat_a_sentence": sum(repeats_a_sentence(p) for p in predictions),
        "mean_new_tokens": round(sum(lengths) / len(lengths), 1),
        "rows": len(rows),
        "generate_seconds": round(time.perf_counter() - start, 1),
        "examples": predictions[:3],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["base", "train", "score"])
    p.add_argument("--run", help="score: the run folder to score")
    p.add_argument("overrides", nargs="*", help="dotted.key=value added to the default config")
    p.add_argument("--name", default=None, help="label of the run in the results")
    p.add_argument("--train-rows", type=int, default=200)
    p.add_argument("--heldout", default="600-629", help="held-out rows of val.csv, first-last (0-based)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--low-memory", action="store_true", help="train.gradient_checkpointing (same weights)")
    p.add_argument("--results", default="/tmp/lmtune-first-run.jsonl")
    args = p.parse_args()
    if not SAMSUM.is_file():
        print(f"skipped: {SAMSUM} not found (the SAMSum file lives in ../shared/data/samsum beside the repo)")
        return 0
    rows = read_rows()
    first, last = (int(x) for x in args.heldout.split("-"))
    heldout = rows[first : last + 1]
    if first < args.train_rows:
        raise SystemExit(f"--heldout {args.heldout} overlaps the {args.train_rows} training rows")
    result: dict = {"name": args.name or args.mode, "overrides": args.overrides}
    with tempfile.TemporaryDirectory() as tmp:
        if args.mode == "base":
            result.update(score("smollm2-135m", heldout, args.max_new_tokens))
        elif args.mode == "score":
            result.update(score(args.run, heldout, args.max_new_tokens))
        else:
            import lmtune
            from lmtune.core.config import apply_overrides

            raw = {
                "model": "smollm2-135m",
                "task": "causal_lm",
                "output_dir": f"{tmp}/run",
                "data": {"train": str(write_csv(Path(tmp) / "train.csv", rows[: args.train_rows])),
                         "prompt_template": TEMPLATE, "response_column": "summary"},
                "strategy": {"name": "lora"},
            }
            overrides = ["eval.generate_rows=0", *args.overrides,
                         *(["train.gradient_checkpointing=true"] if args.low_memory else [])]
            raw = apply_overrides(raw, overrides)
            start = time.perf_counter()
            run = lmtune.train(raw, progress=False)
            data = json.loads((run.output_dir / "data.json").read_text())
            config = (run.output_dir / "config.yaml").read_text()
            result.update({
                "train_seconds": round(time.perf_counter() - start, 1),
                "validation": {k: v for k, v in run.metrics["validation"].items() if isinstance(v, (int, float))},
                "truncated": data["truncated_to_max_length"],
                "truncation": data.get("truncation"),
                "resolved": data.get("resolved"),
                "max_length": re.search(r"max_length: (\S+)", config).group(1),
                "lr": re.search(r"\blr: (\S+)", config).group(1),
            })
            result.update(score(str(run.output_dir), heldout, args.max_new_tokens))
    print(json.dumps(result), flush=True)
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
