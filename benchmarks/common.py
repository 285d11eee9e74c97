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
