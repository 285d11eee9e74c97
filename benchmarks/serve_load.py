"""Load on `lmtune serve` over loopback: concurrent clients plus a stream of junk requests, once with
`--max-batch 1` (every request its own model call) and once with micro-batching (`--max-batch 16`),
and the ratio of the two.

Each side starts `lmtune serve TARGET --port 0` as a child process (so that the clients do not
share the server's interpreter), waits for its address, runs `--clients` threads that each send one
request after another over a kept-alive connection for `--seconds`, plus one thread that sends junk
(malformed JSON, wrong types, empty inputs, an unknown model, an oversized body, ...) every
`--junk-interval` seconds, and reports requests/s, p50/p99 latency, tokens/s for a generative target,
and the answers by status. A classification run is sent one text per request (/v1/predict); a
generative run or model one prompt per request (/v1/completions, greedy, --max-tokens new tokens).

    python benchmarks/serve_load.py --run RUN_DIR [--seconds 30] [--clients 16] [--max-tokens 16]
    python benchmarks/serve_load.py --target smollm2-135m --seconds 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_kind  # noqa: E402  (it sets HF_HUB_OFFLINE and TOKENIZERS_PARALLELISM too)

TEXTS = [
    "a lovely film with a superb cast", "the plot was dull and the acting poor", "really quite good",
    "boring, ugly and far too long", "the best story I have seen this year", "it was fine, nothing more",
    "a wonderful, happy surprise", "terrible dialogue but nice music",
]
PROMPTS = ["The bike shop opens at", "Once upon a time", "The capital of France is", "Hello, my name is"]
MAX_SECONDS = 300
MAX_CLIENTS = 64


@dataclass
class Tally:
    """What the clients saw; each thread appends under the lock."""

    latencies_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    statuses: Counter = field(default_factory=Counter)  # of the load requests
    junk: Counter = field(default_factory=Counter)  # status of each junk request
    lock: threading.Lock = field(default_factory=threading.Lock)


def start_server(target: str, max_batch: int, log: Path) -> tuple[subprocess.Popen, int]:
    """`lmtune serve` on a free loopback port; its stderr (one line per request) goes to `log`."""
    err = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "serve", target, "--port", "0", "--max-batch", str(max_batch),
                             "--max-queue", "256"], stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lmtune serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        for line in log.read_text().splitlines():
            if "on http://" in line:
                return proc, int(line.split("on http://", 1)[1].split()[0].rsplit(":", 1)[1])
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("lmtune serve did not start within 300 s")


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    return response.status, response.read()


def client(port: int, path: str, make_body, deadline: float, tally: Tally, seed: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    i = seed
    while time.monotonic() < deadline:
        body = make_body(i)
        i += 1
        start = time.perf_counter()
        try:
            status, data = request(conn, "POST", path, body)
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with tally.lock:
                tally.statuses["connection error"] += 1
            continue
        ms = (time.perf_counter() - start) * 1000
        tokens = json.loads(data).get("usage", {}).get("completion_tokens", 0) if status == 200 else 0
        with tally.lock:
            tally.statuses[status] += 1
            if status == 200:
                tally.latencies_ms.append(ms)
                tally.tokens += tokens
    conn.close()


def junk_requests(model: str) -> list[tuple[str, bytes, dict[str, str]]]:
    return [
        ("/v1/predict", b'{"inputs": [', {}),
        ("/v1/predict", b"[1, 2, 3]", {}),
        ("/v1/predict", b'{"inputs": []}', {}),
        ("/v1/predict", b'{"inputs": [1, null]}', {}),
        ("/v1/predict", json.dumps({"inputs": ["x"], "model": "no-such-model"}).encode(), {}),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": -5}', {}),
        ("/v1/chat/completions", b'{"messages": "not a list"}', {}),
        ("/v1/predict", b'{"inputs": ["' + b"x" * 1_100_000 + b'"]}', {}),
        ("/v1/predict", b"\xff\xfe\x00", {}),
        ("/v1/nothing-here", b"{}", {}),
    ]


def junk(port: int, model: str, deadline: float, interval: float, tally: Tally) -> None:
    items = junk_requests(model)
    i = 0
    while time.monotonic() < deadline:
        path, body, headers = items[i % len(items)]
        i += 1
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            status, _ = request(conn, "POST", path, body, headers)
        except (OSError, http.client.HTTPException):
            status = "connection error"  # the server may hang up on an oversized body
        finally:
            conn.close()
        with tally.lock:
            tally.junk[status] += 1
        time.sleep(interval)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_side(target: str, max_batch: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(target, max_batch, Path(tmp) / "server.log")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/v1/models")
            card = json.loads(conn.getresponse().read())["data"][0]
            conn.close()
            generative = card["task"] == "causal_lm"
            if generative:
                path = "/v1/completions"

                def make_body(i: int) -> bytes:
                    return json.dumps({"model": card["id"], "prompt": PROMPTS[i % len(PROMPTS)],
                                       "max_tokens": args.max_tokens, "temperature": 0}).encode()
            else:
                path = "/v1/predict"

                def make_body(i: int) -> bytes:
                    return json.dumps({"inputs": [TEXTS[i % len(TEXTS)]]}).encode()

            # one request first: the model's first call is slower (allocations, kernels)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            request(conn, "POST", path, make_body(0))
            conn.close()
            tally = Tally()
            start = time.monotonic()
            deadline = start + args.seconds
            threads = [threading.Thread(target=client, args=(port, path, make_body, deadline, tally, i))
                       for i in range(args.clients)]
            threads.append(threading.Thread(target=junk, args=(port, card["id"], deadline, args.junk_interval, tally)))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - start
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    ok = len(tally.latencies_ms)
    return {
        "max_batch": max_batch, "task": card["task"], "requests_per_s": ok / elapsed,
        "p50_ms": percentile(tally.latencies_ms, 0.50), "p99_ms": percentile(tally.latencies_ms, 0.99),
        "tokens_per_s": tally.tokens / elapsed if generative else None,
        "statuses": dict(tally.statuses), "junk": dict(tally.junk),
    }


def show(r: dict) -> None:
    tokens = f"{r['tokens_per_s']:9.1f}" if r["tokens_per_s"] is not None else f"{'-':>9s}"
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items(), key=str))
    junk = ", ".join(f"{k}: {v}" for k, v in sorted(r["junk"].items(), key=str))
    print(f"--max-batch {r['max_batch']:<3d} {r['requests_per_s']:9.1f} {r['p50_ms']:9.1f} {r['p99_ms']:9.1f} {tokens}"
          f"   load [{statuses}]   junk [{junk}]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a finished classification run folder")
    which.add_argument("--target", help="any run folder, bundled model name or model folder")
    p.add_argument("--seconds", type=float, default=30.0, help=f"per side (at most {MAX_SECONDS})")
    p.add_argument("--clients", type=int, default=16, help=f"concurrent clients (at most {MAX_CLIENTS})")
    p.add_argument("--max-tokens", type=int, default=16, help="new tokens per generation request")
    p.add_argument("--junk-interval", type=float, default=0.1, help="seconds between junk requests")
    args = p.parse_args()
    if not 0 < args.seconds <= MAX_SECONDS or not 0 < args.clients <= MAX_CLIENTS:
        p.error(f"--seconds must be in (0, {MAX_SECONDS}] and --clients in [1, {MAX_CLIENTS}]")
    target = args.run or args.target
    import torch

    print(f"CPU: {cpu_kind()} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}); "
          f"target {target}; {args.clients} clients for {args.seconds:g} s per side, junk every {args.junk_interval:g} s")
    sides = [run_side(target, 1, args), run_side(target, 16, args)]
    print(f"\n{'':15s} {'req/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s} {'tokens/s':>9s}")
    for r in sides:
        show(r)
    print(f"micro-batching (16) / one call per request (1): {sides[1]['requests_per_s'] / max(sides[0]['requests_per_s'], 1e-9):.2f}x "
          "requests/s")


if __name__ == "__main__":
    main()
