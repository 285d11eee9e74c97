"""Does continued pretraining on unlabelled in-domain text help a classifier with few labels, and
does next-sentence prediction add to masked LM? MiniLM-L6 on AG News (../shared/data/ag_news/train.tsv,
headerless `text<TAB>label` rows), a seeded split of the file into a test set, a labelled set and
the unlabelled rest (its texts only):

- plain: a classifier fine-tuned from minilm-l6 on the labelled rows;
- mlm: masked_lm on the unlabelled texts (each row a document), then the classifier from
  <that run>/model;
- mlm+nsp: the same with data.nsp: true (sentence pairs of the rows' sentences).

Each arm runs with every seed (the seed of the pretraining run and of the fine-tune); the table shows
the test accuracy (mean and spread over the seeds) and the pretraining time. The classifier holds out
lmtune's default validation share of the labelled rows to pick its best checkpoint.

    python benchmarks/domain_adaptation.py [--labelled 400] [--test-rows 1000] [--seeds 1,2,3]
        [--pretrain-epochs 1] [--epochs 5] [--out DIR]
    python benchmarks/domain_adaptation.py --quick      # a smoke test of the chain: seconds, no numbers to read

The full run takes hours on a CPU. Runs chain by `model: <run folder>/model`.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, cpu_kind  # noqa: E402

AG_NEWS = SHARED / "ag_news" / "train.tsv"
ARMS = ("plain", "mlm", "mlm+nsp")


def split_rows(folder: Path, labelled: int, test_rows: int, unlabelled: int | None, seed: int = 0) -> dict[str, Path]:
    """Seeded, disjoint: test and labelled rows as CSV (text,label), the rest's texts as JSONL."""
    rows = []
    with open(AG_NEWS, encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) == 2 and row[0].strip():
                rows.append(row)
    if labelled + test_rows >= len(rows):
        raise SystemExit(f"--labelled + --test-rows leaves no unlabelled rows of the {len(rows)} in {AG_NEWS}")
    random.Random(seed).shuffle(rows)
    test, train, rest = rows[:test_rows], rows[test_rows : test_rows + labelled], rows[test_rows + labelled :]
    rest = rest[:unlabelled] if unlabelled is not None else rest
    paths = {"test": folder / "test.csv", "labelled": folder / "labelled.csv", "unlabelled": folder / "unlabelled.jsonl"}
    for name, part in (("test", test), ("labelled", train)):
        with open(paths[name], "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(part)
    paths["unlabelled"].write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in rest), encoding="utf-8")
    return paths


def pretrain(arm: str, seed: int, paths: dict[str, Path], out: Path, args: argparse.Namespace) -> tuple[str, float]:
    """The model folder the classifier starts from, and the pretraining's wall time (0 for plain)."""
    import lmtune

    if arm == "plain":
        return "minilm-l6", 0.0
    train = {"epochs": args.pretrain_epochs, "batch_size": 32, "lr": 1e-4, "seed": seed}
    if args.quick:
        train.update(max_steps=2, batch_size=8)
    run = out / f"{arm.replace('+', '_')}-seed{seed}"
    started = time.perf_counter()
    lmtune.train({
        "model": "minilm-l6", "task": "masked_lm", "output_dir": str(run),
        "data": {"train": str(paths["unlabelled"]), "max_length": 64 if args.quick else 128, "nsp": arm == "mlm+nsp"},
        "train": train,
    }, progress=False, overwrite=True)
    return str(run / "model"), time.perf_counter() - started


def finetune(model: str, arm: str, seed: int, paths: dict[str, Path], out: Path, args: argparse.Namespace) -> float:
    import lmtune

    train = {"epochs": args.epochs, "batch_size": 16, "lr": 5e-5, "seed": seed}
    if args.quick:
        train.update(epochs=1, batch_size=8)
    result = lmtune.train({
        "model": model, "task": "classification", "output_dir": str(out / f"cls-{arm.replace('+', '_')}-seed{seed}"),
        "data": {"train": str(paths["labelled"]), "test": str(paths["test"]), "max_length": 64 if args.quick else 128},
        "train": train,
    }, progress=False, overwrite=True)
    return float(result.metrics["test"]["accuracy"])


def table(results: dict[str, list[tuple[float, float]]]) -> str:
    def spread(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"

    lines = ["| start of the classifier | test accuracy (mean ± sd) | pretraining time (s, mean) |", "|---|---|---|"]
    for arm, rows in results.items():
        accuracy, seconds = [a for a, _ in rows], [s for _, s in rows]
        lines.append(f"| {arm} | {spread(accuracy)} | {statistics.mean(seconds):.0f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labelled", type=int, default=400)
    p.add_argument("--test-rows", type=int, default=1000)
    p.add_argument("--unlabelled", type=int, default=None, help="at most this many unlabelled rows (default: all the rest)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--pretrain-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--out", default=None, help="keep the data and run folders here (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="a smoke test: 40 labelled, 40 test, 120 unlabelled rows, one seed, 2 pretraining steps")
    args = p.parse_args()
    if not AG_NEWS.is_file():
        print(f"skipped: {AG_NEWS} not found (AG News lives in ../shared/data/ag_news beside the repo)")
        return 0
    if args.quick:
        args.labelled, args.test_rows, args.unlabelled, args.seeds = 40, 40, 120, "1"
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        paths = split_rows(out, args.labelled, args.test_rows, args.unlabelled)
        results: dict[str, list[tuple[float, float]]] = {}
        for arm in args.arms.split(","):
            for seed in seeds:
                model, seconds = pretrain(arm, seed, paths, out, args)
                accuracy = finetune(model, arm, seed, paths, out, args)
                results.setdefault(arm, []).append((accuracy, seconds))
                print(f"{arm} seed {seed}: test accuracy {accuracy:.4f}, pretraining {seconds:.0f} s", flush=True)
        print(f"\nCPU: {cpu_kind()}; {args.labelled} labelled, {args.test_rows} test rows, seeds {args.seeds}\n")
        print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
