"""How long does "train, evaluate, adjust, repeat until good enough" take? `lmtune search` on a
seeded 4,000-row sample of ../shared/data/sst2/train.tsv with the bundled MiniLM-L6, 1 epoch a
trial, scored on a seeded sample of the dev rows, until a trial reaches the target accuracy.

    python benchmarks/search_sst2.py [--rows 4000] [--val-rows 1000] [--target 0.85] [--trials 12]
        [--timeout 1800] [--out DIR]

The space: learning rate, batch size, weight decay, and the strategy (full or LoRA, with LoRA's rank
drawn only for LoRA trials). Prints the CPU kind and precision, the minutes and trials it took to
reach the target, and the leaderboard (trials.csv). Without --out the search folder is temporary.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402
from common import cpu_kind  # noqa: E402

SST2 = SHARED / "sst2"


def sample(src: Path, dst: Path, rows: int, seed: int) -> Path:
    """A seeded sample of a TSV file's rows, under its header, written as they are."""
    header, *lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    random.Random(seed).shuffle(lines)
    dst.write_text(header + "".join(lines[:rows]), encoding="utf-8")
    return dst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--val-rows", type=int, default=1000)
    p.add_argument("--target", type=float, default=0.85)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not (SST2 / "train.tsv").is_file():
        print(f"skipped: {SST2} not found (SST-2 lives in ../shared/data/sst2 beside the repo)")
        return 0
    import torch

    from lmtune.core.runtime import bf16_available
    from lmtune.tune import search

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "search"
        data = Path(tmp)
        raw = {
            "model": "minilm-l6",
            "task": "classification",
            "output_dir": str(out),
            "data": {"train": str(sample(SST2 / "train.tsv", data / "train.tsv", args.rows, seed=0)),
                     "validation": str(sample(SST2 / "dev.tsv", data / "dev.tsv", args.val_rows, seed=1)),
                     "text_column": "sentence"},
            "train": {"epochs": 1, "eval_steps": 40},
            "search": {
                "space": {
                    "train.lr": {"loguniform": [1e-5, 5e-4]},
                    "train.batch_size": {"choice": [16, 32]},
                    "train.weight_decay": {"uniform": [0.0, 0.1]},
                    "strategy.name": {"choice": ["full", "lora"]},
                    "strategy.r": {"choice": [4, 8, 16]},
                },
                "metric": "accuracy",
                "trials": args.trials,
                "timeout": args.timeout,
                "stop_when": {"metric": "accuracy", "at_least": args.target},
            },
        }
        print(f"CPU: {cpu_kind()}, {torch.get_num_threads()} threads; precision: "
              f"{'bf16' if bf16_available() else 'fp32'} (train.precision auto)", flush=True)
        start = time.perf_counter()
        result = search.run(raw, overwrite=True)
        minutes = (time.perf_counter() - start) / 60
        print(f"\n{result.trials} trials in {minutes:.1f} min; best trial {result.best_trial}: validation accuracy "
              f"{result.best_value:.4f}; target {args.target} {'reached' if result.target_reached else 'not reached'}")
        print((out / "trials.csv").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
