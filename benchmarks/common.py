"""What the benchmarks share: each side runs in a child process of its own (so that its peak
memory is its own), prints one RESULT line, and the parent prints a side-by-side table."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_kind() -> str:
    """The CPU's model name and whether it is fast in bf16 (AMX or AVX512-BF16), as torch sees it."""
    import platform

    import torch

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = getattr(torch, "cpu", None)
    fast = "AMX" if cpu and cpu._is_amx_tile_supported() else "AVX512-BF16" if cpu and cpu._is_avx512_bf16_supported() else "no fast bf16"
    return f"{name} ({fast})"


def fast_bf16() -> bool:
    """The precision rule of train.precision: auto, for both sides of a benchmark: bf16 where the
    hardware is fast in it, fp32 elsewhere."""
    from lmtune.core.runtime import bf16_available

    return bf16_available()


def matmul_peak(bf16: bool, sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 10) -> float:
    """FLOP/s of the fastest square matrix product in the run's precision, on this machine now, over
    a few sizes and `repeats` tries each (one size and few tries read up to a quarter low when
    another process wakes): the roof that a training step's matrix products can reach."""
    import time

    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            peak = max(peak, 2 * n**3 / (time.perf_counter() - start))
    return peak


def machine(bf16: bool) -> float:
    """Print what the benchmark runs on (the CPU, cores and torch threads, the precision of both sides,
    the matrix-product peak measured now in that precision) and return the peak in FLOP/s."""
    import torch

    peak = matmul_peak(bf16)
    print(f"CPU: {cpu_kind()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; precision "
          f"{'bf16' if bf16 else 'fp32'} on both sides (train.precision: auto: bf16 only where the CPU is fast in it); "
          f"matrix-product peak {peak / 1e9:.1f} GFLOP/s", flush=True)
    return peak


def flops_per_token(model, rows: list[list[int]], extra: dict | None = None) -> float:
    """Model FLOPs (matrix products of forward and backward, as torch.utils.flop_counter counts
    them) per real token, over `rows` of token ids run one at a time without padding: the useful
    work of a training step, the same for both sides whatever their batching."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    total = tokens = 0
    for ids in rows:
        x = torch.tensor([ids])
        with FlopCounterMode(display=False) as counter:
            out = model(input_ids=x, attention_mask=torch.ones_like(x), **(extra or {}))
            (out.loss if out.loss is not None else out.logits.float().sum()).backward()
        total += counter.get_total_flops()
        tokens += len(ids)
    model.zero_grad(set_to_none=True)
    return total / tokens


def spread(rows: list[dict], key: str) -> str:
    """Mean and, over several seeds, the spread (min-max) of a result."""
    values = [r[key] for r in rows]
    m = sum(values) / len(values)
    return f"{m:.4f}" + (f" ({min(values):.4f}-{max(values):.4f})" if len(values) > 1 else "")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(result: dict) -> None:
    """Called in the child: print the result with the child's peak memory."""
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def run_child(script: str, args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"benchmark child {args} failed (exit {proc.returncode})")
    return json.loads(line[len("RESULT "):])


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def table(title: str, results: dict[str, list[dict]], speed: str, quality: str, better: str) -> None:
    """Means per side and the lmtune/Trainer ratios. `better` is 'higher' or 'lower' (quality)."""
    print(f"\n{title}")
    print(f"{'':10s} {speed:>14s} {'peak RSS MB':>12s} {quality:>14s}")
    for side in ("trainer", "lmtune"):
        rows = results[side]
        print(f"{side:10s} {mean(rows, 'speed'):14.1f} {mean(rows, 'peak_rss_mb'):12.0f} {mean(rows, 'quality'):14.4f}")
    ratio = mean(results["lmtune"], "speed") / mean(results["trainer"], "speed")
    mem = mean(results["lmtune"], "peak_rss_mb") / mean(results["trainer"], "peak_rss_mb")
    diff = mean(results["lmtune"], "quality") - mean(results["trainer"], "quality")
    print(f"{'ratio':10s} {ratio:13.2f}x {mem:11.2f}x {diff:+14.4f} ({better} is better)")


def sst2_rows(rows: int) -> list[tuple[str, int]]:
    """The first `rows` (sentence, label) pairs of SST-2's training file."""
    lines = (SHARED / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1 : rows + 1]
    return [(text, int(label)) for text, label in (line.split("\t") for line in lines)]


def minilm_classifier_step(attention: str, *, lmtune: bool = True, first_token: bool = True, seed: int = 42):
    """MiniLM-L6 with a 2-label head (seeded), its fused AdamW (lr 5e-5, weight decay 0.01) and its
    gradient clipping: as lmtune/training/loop.py sets up a classifier's training step on a CPU in one
    process (the last layer for the first token only, unless `first_token` is False; the strategy's
    parameter groups; dropout masks from packed random words; the embedding gradient cleared by rows), or, with `lmtune` False, as a plain
    Trainer does. Returns (model, optimizer, clip)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lmtune.core.config import FullStrategy
    from lmtune.core.models import source_of
    from lmtune.training import strategies
    from lmtune.training.cpu import dropout, row_gradients, first_token as first_token_layer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(source_of("minilm-l6"), num_labels=2,
                                                               attn_implementation=attention)
    if lmtune and first_token:
        first_token_layer.use(model)
    # (the Trainer's groups too: weight decay for all but biases and norms)
    optimizer = torch.optim.AdamW(strategies.apply(model, FullStrategy(), 5e-5, 0.01).groups, lr=5e-5, fused=True)
    if lmtune:
        dropout.use_packed(model)
    rows = row_gradients.use(model, optimizer) if lmtune else None
    return model, optimizer, rows.clip if rows is not None else torch.nn.utils.clip_grad_norm_


def timed_steps(name: str, model, optimizer, scheduler, batches: list[dict], autocast, steps: int, clip,
                warmup: int = 3) -> dict:
    """Train on `batches` (collated, each used once), timing every step in phases: data (the batch
    handed over as a loader would), forward, backward, optimizer (clipping to norm 1, the update,
    the schedule, zeroing). The first `warmup` steps are not timed. Returns the mean phase and step
    times (seconds), and the mean real (unpadded) tokens and positions (padding included) of a timed
    step."""
    import time

    import torch

    phases = dict.fromkeys(("data", "forward", "backward", "optimizer"), 0.0)
    model.train()
    wall = 0.0
    for step, batch in enumerate(batches[: steps + warmup]):
        t0 = time.perf_counter()
        batch = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "num_tokens"}
        t1 = time.perf_counter()
        with autocast():
            loss = model(**batch).loss
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        clip(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if step >= warmup:
            for key, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[key] += seconds
            wall += t4 - t0
    timed = batches[warmup : warmup + steps]
    tokens = sum(int(b["num_tokens"]) if "num_tokens" in b else int(b["attention_mask"].sum()) for b in timed)
    return {"name": name, "phases": {k: v / steps for k, v in phases.items()}, "step": wall / steps,
            "tokens_per_step": tokens / steps, "positions_per_step": sum(b["input_ids"].numel() for b in timed) / steps}
