"""lmtune's plan against reality: the peak memory and wall time `lmtune plan` estimates, beside a run's.

For each configuration, the memory and time that `lmtune plan` estimates before a run, beside the peak
memory and wall time the same run takes with `lmtune train`.

Each configuration is planned and trained in child processes of their own, from the repository root:
- `lmtune plan CONFIG --json --probe 3` gives a training step's estimated peak (memory.estimated_peak_mb),
  the micro-batch and gradient checkpointing it chose, and the whole run's estimated wall time
  (time.total_s: start-up, the training steps timed on a probe of 3 of them, the evaluations, the final
  evaluation and saving);
- `lmtune train CONFIG --overwrite --no-progress` is timed from the process's start to its exit; its
  measured peak is the kernel's largest resident set of the process (a parent of its own reads it
  with getrusage), every moment of the run; the run's own figure (metrics.json train.peak_memory_mb,
  sampled every 0.2 s while it trains) is shown beside it. On a GPU, torch's max_memory_allocated
  (the run's figure) is the one to read.
The ratios are estimate over measurement: above 1 the plan overestimates. A configuration counts as
right on memory within 15% and on time within 20%.

The configurations: the bundled MiniLM-L6 on the three small example sets (classification,
token_classification, question_answering), and SmolLM2-135M on plain text (causal_lm: the first 200 KB
of tiny-shakespeare for training, the next 20 KB for validation, in blocks of data.max_length tokens),
full and LoRA, blocks of 256 and 1024 tokens, batches of 1 and 8 taken whole (train.micro_batch_size
equal to the batch), gradient checkpointing off but for the 1024-token batches of 8 and one 256-token
batch of 8. Each run is a few steps (train.max_steps) with one evaluation at its end, no report, no
tracker and no generations.

    python benchmarks/memory_plan.py [--configs NAME ...] [--keep]
    python benchmarks/memory_plan.py --quick        # one MiniLM run of 4 steps: a smoke test

Needs ../shared/data/tiny_shakespeare beside the repo for the SmolLM2 configurations; skips them with a
message when it is absent. Writes only to a temporary folder (kept with --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, cpu_kind, fast_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = SHARED / "tiny_shakespeare" / "input.txt"
TRAIN_TEXT_BYTES = 200_000  # about 50k tokens: enough blocks of 1024 for 4 steps of 8
VALIDATION_TEXT_BYTES = 20_000
MEMORY_TOLERANCE = 0.15
TIME_TOLERANCE = 0.20
PROBE_STEPS = 3
# no report.html, no tracker: neither is what the plan is about, and both add time to the run
QUIET = ["train.report=false", "train.report_to=[]"]


@dataclass(frozen=True)
class Case:
    """A configuration: overrides on a config file (or, without one, the whole config), and whether it
    trains on the text files written from tiny-shakespeare (their paths are added when they exist)."""

    config: str | None
    overrides: tuple[str, ...]
    text: bool = False


def steps(n: int) -> list[str]:
    # eval_steps equal to max_steps: the one evaluation is the one at the end
    return [f"train.max_steps={n}", f"train.eval_steps={n}"]


def minilm_classification(max_steps: int) -> Case:
    return Case(None, ("model=minilm-l6", "task=classification", "data.train=examples/data/sentiment/train.csv",
                       "data.validation=examples/data/sentiment/validation.csv", "data.text_column=text",
                       "data.label_column=label", "data.max_length=128", "train.batch_size=32", *steps(max_steps), *QUIET))


def smollm2(strategy: str, length: int, batch: int, checkpointing: bool) -> Case:
    return Case(None, ("model=smollm2-135m", "task=causal_lm", f"strategy.name={strategy}", f"data.max_length={length}",
                       f"train.batch_size={batch}", f"train.micro_batch_size={batch}",
                       f"train.gradient_checkpointing={'true' if checkpointing else 'false'}",
                       *steps(4 if (length, batch) == (1024, 8) else 6), "eval.generate_rows=0", *QUIET), text=True)


def configurations() -> dict[str, Case]:
    cases = {
        "minilm-cls": minilm_classification(8),
        "minilm-ner": Case("examples/ner.yaml", (*steps(8), *QUIET)),
        "minilm-qa": Case("examples/qa.yaml", (*steps(8), *QUIET)),
    }
    for strategy in ("full", "lora"):
        for length in (256, 1024):
            for batch in (1, 8):
                # a batch of 8 blocks of 1024 takes gradient checkpointing, as a user short of memory would
                checkpointing = (length, batch) == (1024, 8)
                name = f"smollm2-{strategy}-{length}-b{batch}" + ("-ckpt" if checkpointing else "")
                cases[name] = smollm2(strategy, length, batch, checkpointing)
    # the same batch with and without checkpointing: what checkpointing saves, planned and measured
    cases["smollm2-full-256-b8-ckpt"] = smollm2("full", 256, 8, True)
    return cases


def write_text(tmp: Path) -> list[str]:
    """Training and validation .txt files cut from tiny-shakespeare at blank lines (the examples'
    bike manual holds too few blocks of 1024 tokens for batches of 8); their data keys."""
    text = SHAKESPEARE.read_text(encoding="utf-8")
    cut = text.rfind("\n\n", 0, TRAIN_TEXT_BYTES)
    end = text.rfind("\n\n", 0, cut + VALIDATION_TEXT_BYTES)
    train, validation = tmp / "text-train.txt", tmp / "text-validation.txt"
    train.write_text(text[:cut].strip() + "\n", encoding="utf-8")
    validation.write_text(text[cut:end].strip() + "\n", encoding="utf-8")
    return [f"data.train={train}", f"data.validation={validation}"]


# a parent of its own whose only child is the command: the kernel's largest resident set of its
# children is the command's peak, every moment of it (the run's own figure samples every 0.2 s)
PEAK = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print('maxrss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def lmtune(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m lmtune ARGS` from the repository root (the example configs name their data relative
    to it), with this checkout's lmtune first on the path; the process and its wall time. Its stderr
    ends with the process's peak resident set (kernel_peak_mb reads it)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "lmtune", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    return proc, time.perf_counter() - start


def kernel_peak_mb(proc: subprocess.CompletedProcess) -> float | None:
    for line in reversed(proc.stderr.splitlines()):
        if line.startswith("maxrss_kb "):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def last_json(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def failed(what: str, proc: subprocess.CompletedProcess) -> str:
    print(f"  {what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
    return f"{what} failed (exit {proc.returncode})"


def measure(name: str, case: Case, out: Path, data_keys: list[str]) -> dict:
    """Plan, then train, one configuration; the planned and measured figures."""
    head = [case.config] if case.config else []
    overrides = [*case.overrides, *(data_keys if case.text else []), f"output_dir={out}"]
    row: dict = {"name": name}
    proc, _ = lmtune(["plan", *head, *overrides, "--json", "--probe", str(PROBE_STEPS)])
    # a plan that does not fit exits 2 and still prints itself: the run then shows what happens
    plan = last_json(proc.stdout)
    if plan is None:
        row["error"] = failed("lmtune plan", proc)
        return row
    memory, estimate = plan["memory"], plan["time"] or {}
    row.update(micro_batch=memory["micro_batch_size"], checkpointing=memory["gradient_checkpointing"],
               estimated_mb=memory["estimated_peak_mb"], eval_estimated_mb=memory["eval_peak_mb"],
               parts_mb=memory["parts_mb"], fits=memory["fits"], estimated_s=estimate.get("total_s"), time=estimate)
    proc, wall = lmtune(["train", *head, *overrides, "--overwrite", "--no-progress"])
    if proc.returncode != 0:
        row["error"] = failed("lmtune train", proc)
        return row
    train = json.loads((out / "metrics.json").read_text())["train"]
    row.update(measured_mb=kernel_peak_mb(proc) or train["peak_memory_mb"], sampled_mb=train["peak_memory_mb"],
               measured_s=wall, train=train)
    return row


def ratio(estimate: float | None, measured: float | None) -> float | None:
    return estimate / measured if estimate is not None and measured else None


def within(value: float | None, tolerance: float) -> bool:
    return value is not None and abs(value - 1) <= tolerance


def cells(row: dict) -> list[str]:
    def num(value, digits=0):
        return "-" if value is None else f"{value:.{digits}f}"

    if "micro_batch" not in row:
        return [row["name"], "-", "-", "-", "-", "-", "-", "-", "-"]
    return [row["name"], str(row["micro_batch"]), "on" if row["checkpointing"] else "off",
            num(row["estimated_mb"]), num(row.get("measured_mb")),
            num(ratio(row["estimated_mb"], row.get("measured_mb")), 2),
            num(row["estimated_s"]), num(row.get("measured_s")),
            num(ratio(row["estimated_s"], row.get("measured_s")), 2)]


HEADER = ["configuration", "micro-batch", "checkpointing", "est. peak MB", "measured peak MB", "est/measured",
          "est. time s", "measured wall s", "est/measured"]


def detail(row: dict) -> str:
    """Where the figures come from: the estimate by part, and the run's time by phase beside the plan's."""
    parts = ", ".join(f"{k} {v:.0f}" for k, v in row["parts_mb"].items())
    line = f"  plan: {parts} MB; an evaluation {row['eval_estimated_mb']:.0f} MB; fits {row['fits']}"
    if row.get("sampled_mb") is not None:
        line += f"; the run's own sampled peak {row['sampled_mb']:.0f} MB"
    t, train = row["time"], row.get("train")
    if t:
        line += (f"\n  plan time: setup {t['setup_s']} s, compile {t['compile_s']} s, {t['steps']} steps {t['train_s']} s ({t['step_s']} s each), "
                 f"{t['evaluations']} evaluation(s) {t['evaluation_s']} s, final {t['final_s']} s")
    if train:
        line += (f"\n  run time: setup {train.get('setup_seconds')} s, steps {train.get('seconds')} s, "
                 f"evaluations {train.get('eval_seconds')} s, final {train.get('final_seconds')} s")
        # the run makes its own plan: a different figure means the two chose differently
        if train.get("estimated_peak_mb") is not None and abs(train["estimated_peak_mb"] - row["estimated_mb"]) > 1:
            line += f"\n  note: the run's own estimate is {train['estimated_peak_mb']:.0f} MB, not the plan's"
    return line


def main() -> int:
    cases = configurations()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--configs", nargs="+", choices=list(cases), metavar="NAME",
                       help="run only these (default: all): " + ", ".join(cases))
    which.add_argument("--quick", action="store_true", help="a smoke run: minilm-cls for 4 steps")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (configs' runs and text files)")
    args = p.parse_args()

    if args.quick:
        cases = {"minilm-cls": minilm_classification(4)}
    elif args.configs:
        cases = {name: cases[name] for name in args.configs}
    if any(c.text for c in cases.values()) and not SHAKESPEARE.is_file():
        print(f"skipped the SmolLM2 configurations: {SHAKESPEARE} not found (tiny-shakespeare lives in "
              f"../shared/data/tiny_shakespeare beside the repo)")
        cases = {name: c for name, c in cases.items() if not c.text}
    if not cases:
        return 0

    import torch

    precision = "bf16" if fast_bf16() else "fp32"
    device = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU"
    print(f"CPU: {cpu_kind()}, {os.cpu_count()} cores; runs on {device}; precision {precision} "
          f"(train.precision: auto); plan probe {PROBE_STEPS} steps", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="memory-plan-"))
    rows = []
    try:
        data_keys = write_text(tmp) if any(c.text for c in cases.values()) else []
        for name, case in cases.items():
            print(f"\n{name}", flush=True)
            row = measure(name, case, tmp / name, data_keys)
            rows.append(row)
            c = cells(row)
            if "error" in row:
                print(f"  {row['error']}", flush=True)
            if "micro_batch" in row:
                print(f"  micro-batch {c[1]}, checkpointing {c[2]}; peak MB estimated {c[3]}, measured {c[4]} "
                      f"(ratio {c[5]}); time s estimated {c[6]}, measured {c[7]} (ratio {c[8]})", flush=True)
                print(detail(row), flush=True)
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    widths = [max(len(h), *(len(cells(r)[i]) for r in rows)) for i, h in enumerate(HEADER)]
    print()
    for line in (HEADER, *(cells(r) for r in rows)):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
    memory_ok = sum(within(ratio(r.get("estimated_mb"), r.get("measured_mb")), MEMORY_TOLERANCE) for r in rows)
    time_ok = sum(within(ratio(r.get("estimated_s"), r.get("measured_s")), TIME_TOLERANCE) for r in rows)
    print(f"\nwithin ±{MEMORY_TOLERANCE:.0%} on memory: {memory_ok} of {len(rows)}; within ±{TIME_TOLERANCE:.0%} "
          f"on time: {time_ok} of {len(rows)}; {cpu_kind()}, {device}, {precision}")

    print("\n| " + " | ".join(HEADER) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|")
    for r in rows:
        print("| " + " | ".join(cells(r)) + " |")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
