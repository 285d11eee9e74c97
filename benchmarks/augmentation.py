"""Does EDA augmentation help? MiniLM-L6 fine-tuned on a small sample of SST-2 (read from
../shared/data/sst2) with and without `data.augment`, same seeds, scored on SST-2 dev rows.

    python benchmarks/augmentation.py [--train-rows 500] [--dev-rows 1000] [--seeds 1,2]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402

SST2 = SHARED / "sst2"


def sample(src: Path, dst: Path, rows: int, seed: int) -> Path:
    import random

    with open(src, encoding="utf-8", newline="") as f:
        data = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    random.Random(seed).shuffle(data)
    with open(dst, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([r["sentence"], r["label"]] for r in data[:rows])
    return dst


def run(train: Path, dev: Path, out: str, seed: int, augment: bool) -> dict:
    import lmtune

    data = {"train": str(train), "validation": str(dev), "max_length": 64}
    if augment:
        data["augment"] = {"n_per_example": 2}
    result = lmtune.train({
        "model": "minilm-l6", "output_dir": out, "data": data,
        "train": {"epochs": 3, "batch_size": 16, "lr": 1e-4, "seed": seed, "warmup_ratio": 0.1},
    }, overwrite=True, progress=False)
    return {"accuracy": result.metrics["validation"]["accuracy"], "seconds": result.metrics["train"]["seconds"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-rows", type=int, default=500)
    p.add_argument("--dev-rows", type=int, default=1000)
    p.add_argument("--seeds", default="1,2")
    args = p.parse_args()
    if not (SST2 / "train.tsv").is_file():
        print(f"skipped: {SST2} not found (SST-2 lives in ../shared/data/sst2 beside the repo)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        dev = sample(SST2 / "dev.tsv", Path(tmp) / "dev.csv", args.dev_rows, 0)
        for seed in (int(s) for s in args.seeds.split(",")):
            train = sample(SST2 / "train.tsv", Path(tmp) / f"train{seed}.csv", args.train_rows, seed)
            for augment in (False, True):
                r = run(train, dev, f"{tmp}/run-{seed}-{augment}", seed, augment)
                results[augment].append(r)
                print(f"seed {seed} {'with' if augment else 'without'} augmentation: accuracy {r['accuracy']:.4f} "
                      f"({r['seconds']:.0f} s)", flush=True)
    for augment in (False, True):
        accs = [r["accuracy"] for r in results[augment]]
        print(f"{'with' if augment else 'without':7s} augmentation: mean accuracy {sum(accs) / len(accs):.4f} over {len(accs)} seed(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
