"""Which strategy for AG News? `lmtune compare` of full, partial, adaptive, lora and gradual on the
bundled MiniLM-L6, each with seeds 1, 2, 3, on a seeded sample of ../shared/data/ag_news/train.tsv
(headerless `text<TAB>label` rows: the config gives `data.columns: [text, label]`), scored on other
rows of the same file held out as validation.

    python benchmarks/compare_ag_news.py [--rows 2000] [--val-rows 1000] [--epochs 1]
        [--strategies full,partial,adaptive,lora,gradual] [--seeds 1,2,3] [--out DIR]

Without --out the runs go to a temporary folder and only compare.md is printed; with it, the run
folders, compare.csv/.md/.json and compare.png stay there.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, cpu_kind  # noqa: E402

AG_NEWS = SHARED / "ag_news" / "train.tsv"


def write_samples(folder: Path, rows: int, val_rows: int, seed: int = 0) -> tuple[Path, Path]:
    """Two disjoint seeded samples of the file's lines, written as they are (headerless TSV)."""
    lines = [line for line in AG_NEWS.read_text(encoding="utf-8").splitlines() if line.strip()]
    if rows + val_rows > len(lines):
        raise SystemExit(f"--rows + --val-rows is more than the {len(lines)} rows of {AG_NEWS}")
    random.Random(seed).shuffle(lines)
    train, validation = folder / "train.tsv", folder / "validation.tsv"
    train.write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
    validation.write_text("\n".join(lines[rows : rows + val_rows]) + "\n", encoding="utf-8")
    return train, validation


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2000, help="training rows")
    p.add_argument("--val-rows", type=int, default=1000, help="validation rows (other rows of the file)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--strategies", default="full,partial,adaptive,lora,gradual")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--out", default=None, help="keep the comparison here, replaced if it exists (default: a temporary folder)")
    args = p.parse_args()
    if not AG_NEWS.is_file():
        print(f"skipped: {AG_NEWS} not found (AG News lives in ../shared/data/ag_news beside the repo)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lmtune.core.runtime import bf16_available
    from lmtune.tune.compare import compare

    precision = "bf16" if bf16_available() else "fp32"
    print(f"MiniLM-L6 on AG News: {args.rows} training rows, {args.val_rows} validation rows, {args.epochs} epoch(s), "
          f"batch 32, {precision}, seeds {args.seeds}; {cpu_kind()}, {os.cpu_count()} CPU cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        train, validation = write_samples(Path(tmp), args.rows, args.val_rows)
        out = Path(args.out) if args.out else Path(tmp) / "compare"
        config = Path(tmp) / "ag_news.yaml"
        config.write_text(
            f"model: minilm-l6\noutput_dir: {out}\n"
            f"data:\n  train: {train}\n  validation: {validation}\n  columns: [text, label]\n"
            f"train:\n  epochs: {args.epochs}\n  batch_size: 32\n  precision: {precision}\n  log_steps: 50\n",
            encoding="utf-8",
        )
        result = compare(config, strategies=args.strategies, seeds=args.seeds, overwrite=True, progress=False)
        print()
        print(result.files["compare.md"].read_text(encoding="utf-8"))
        if args.out:
            print(f"kept: {out} (compare.csv, compare.md, compare.json, compare.png and one run folder per run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
