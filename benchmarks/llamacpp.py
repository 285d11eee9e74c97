"""llama.cpp, the runtime people take a chat model to, against lmtune on the same CPU: a tuned
SmolLM2-135M run is exported to GGUF (f32, f16, q8_0) and run by llama.cpp itself through
llama-cpp-python, beside lmtune's own Generator and `lmtune serve`.

It checks, then times:
- the same tokens for each chat prompt, and greedy generation of up to 48 tokens equal to lmtune's
  (f32 and f16: every token; q8_0: the share of tokens that match), stopping where lmtune stops;
- llama.cpp's own chat completion (the GGUF's template, no flags) giving lmtune's answer;
- time to first token and new tokens per second: lmtune's Generator at batch 1, llama.cpp f32 and
  q8_0 at batch 1, and `lmtune serve` with 1, 4 and 16 concurrent clients (streamed chat completions).

    pip install llama-cpp-python   # compiles llama.cpp (about 25 minutes on 2 cores)
    python benchmarks/llamacpp.py [--run RUN] [--steps 8] [--new-tokens 48] [--seconds 20]

Without --run, a LoRA run of examples/chat_sft.yaml is trained for --steps steps in fp32 first (fp32
so that lmtune's greedy tokens are comparable with the f32 GGUF's).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_kind  # noqa: E402  (it sets HF_HUB_OFFLINE and TOKENIZERS_PARALLELISM too)
from serve_load import start_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["When are you open on Saturday?", "How much does it cost to fix a flat tire?", "Do you rent bikes?",
           "Can you tell me about your shop?", "Hello!"]


def tuned_run(args: argparse.Namespace, tmp: Path) -> Path:
    if args.run:
        return Path(args.run)
    run = tmp / "tuned"
    subprocess.run([sys.executable, "-m", "lmtune", "train", str(ROOT / "examples/chat_sft.yaml"), f"output_dir={run}",
                    f"train.max_steps={args.steps}", "train.precision=fp32", "eval.generate_rows=0", "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    return run


def lmtune_side(run: Path, new_tokens: int) -> tuple[list[dict], dict]:
    from lmtune.infer.generation import Generator
    from lmtune.tasks.decoding import GenerationSettings

    gen = Generator.load(str(run))
    prompts = [gen.prompt(p) for p in PROMPTS]
    gen.generate_batch(prompts[:1], GenerationSettings(max_new_tokens=4), raw=True)  # warm-up
    rows, first, answers, tokens = [], [], [], 0
    for p in prompts:
        start = time.perf_counter()
        gen.generate_batch([p], GenerationSettings(max_new_tokens=1), raw=True, batch_size=1)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        g = gen.generate_batch([p], GenerationSettings(max_new_tokens=new_tokens), raw=True, batch_size=1)[0]
        answers.append(time.perf_counter() - start)
        tokens += g.completion_tokens
        rows.append({"prompt": p, "prompt_ids": gen.tokenizer(p, add_special_tokens=False)["input_ids"],
                     "ids": g.token_ids, "text": g.text, "finish": g.finish_reason})
    dtype = str(next(gen.model.parameters()).dtype).replace("torch.", "")
    return rows, {"name": f"lmtune Generator, batch 1 ({dtype})", "ttft": statistics.median(first),
                  "answer": statistics.median(answers), "tokens_per_s": tokens / sum(answers)}


def llamacpp_side(path: Path, rows: list[dict], new_tokens: int) -> tuple[dict, dict]:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=1024, n_threads=os.cpu_count(), verbose=False, logits_all=True)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    same_prompt, same_tokens, all_tokens, same_stop, same_chat, ended, forced = 0, 0, 0, 0, 0, 0, 0
    first, answers, tokens = [], [], 0
    for row in rows:
        ids = llm.tokenize(row["prompt"].encode(), add_bos=False, special=True)
        same_prompt += ids == row["prompt_ids"]
        out, start, stopped = [], time.perf_counter(), False
        for i, token in enumerate(llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)):
            if i == 0:
                first.append(time.perf_counter() - start)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                out.append(token)
                stopped = True
                break
            out.append(token)
            if len(out) == new_tokens:
                break
        answers.append(time.perf_counter() - start)
        tokens += len(out)
        ours = row["ids"]
        width = max(len(ours), len(out))
        same_tokens += sum(a == b for a, b in zip(ours, out))
        all_tokens += width
        same_stop += stopped == (row["finish"] == "stop") and (not stopped or len(out) == len(ours))
        ended += stopped
        forced += teacher_forced(llm, ids, ours)
        messages = [{"role": "user", "content": PROMPTS[rows.index(row)]}]
        chat = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=new_tokens)
        same_chat += chat["choices"][0]["message"]["content"].strip() == row["text"].strip()
    checks = {"same prompt tokens": f"{same_prompt}/{len(rows)}", "same generated tokens": f"{same_tokens / all_tokens:.1%}",
              "next token = lmtune's, given lmtune's tokens so far": f"{forced / sum(len(r['ids']) for r in rows):.1%}",
              "stops where lmtune stops": f"{same_stop}/{len(rows)} ({ended} at an end-of-turn)", "chat completion = lmtune's answer": f"{same_chat}/{len(rows)}"}
    return checks, {"ttft": statistics.median(first), "answer": statistics.median(answers),
                    "tokens_per_s": tokens / sum(answers)}


def teacher_forced(llm, prompt: list[int], ours: list[int]) -> int:
    """How many of lmtune's generated tokens llama.cpp also ranks first when it reads lmtune's tokens
    before each (free-running generation parts for good at the first different token; this counts
    each position on its own)."""
    import numpy as np

    llm.reset()
    llm.eval(prompt + ours)
    logits = np.asarray(llm.scores[len(prompt) - 1 : len(prompt) - 1 + len(ours)])
    return int((logits.argmax(-1) == np.asarray(ours)).sum())


def request_once(port: int, model: str, prompt: str, new_tokens: int, stream: bool) -> tuple[float, int, float]:
    """(time to the first content chunk, or to the answer when not streamed; completion tokens; total
    seconds) of one chat completion."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": new_tokens,
                       "temperature": 0, "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})})
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    if not stream:
        used = json.loads(response.read())["usage"]["completion_tokens"]
        conn.close()
        total = time.perf_counter() - start
        return total, used, total
    first, used = None, 0
    for line in response:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if first is None and chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
            first = time.perf_counter() - start
        if chunk.get("usage"):
            used = chunk["usage"]["completion_tokens"]
    conn.close()
    return first or float("nan"), used, time.perf_counter() - start


def load(port: int, model: str, clients: int, seconds: float, new_tokens: int, stream: bool) -> dict:
    """`clients` threads sending one chat completion after another for `seconds`."""
    firsts, totals, tokens, lock = [], [], [0], threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        while time.monotonic() < deadline:
            first, used, total = request_once(port, model, PROMPTS[i % len(PROMPTS)], new_tokens, stream)
            i += 1
            with lock:
                firsts.append(first)
                totals.append(total)
                tokens[0] += used

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    how = "streamed" if stream else "whole answers"
    return {"name": f"lmtune serve, {clients} client{'s' if clients > 1 else ''}, {how}",
            "ttft": statistics.median(firsts) if stream else float("nan"), "answer": statistics.median(totals),
            "tokens_per_s": tokens[0] / (time.monotonic() - start)}


def serve_side(run: Path, clients_list: list[int], seconds: float, new_tokens: int, tmp: Path) -> list[dict]:
    """lmtune serve (micro-batches of up to 16): streamed requests (time to first token) and whole
    answers (which the server batches), at each number of concurrent clients."""
    proc, port = start_server(str(run), 16, tmp / "serve.log")
    out = []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/v1/models")
        model = json.loads(conn.getresponse().read())["data"][0]["id"]
        conn.close()
        request_once(port, model, PROMPTS[0], 4, True)  # warm-up
        for stream in (True, False):
            out += [load(port, model, clients, seconds, new_tokens, stream) for clients in clients_list]
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a tuned causal LM run (default: train one from examples/chat_sft.yaml)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = p.parse_args()
    import llama_cpp
    import torch

    from lmtune.export.run import export

    print(f"CPU: {cpu_kind()}; {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"llama-cpp-python {llama_cpp.__version__}")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        run = tuned_run(args, tmp)
        rows, ours = lmtune_side(run, args.new_tokens)
        print(f"\n{len(PROMPTS)} chat prompts, greedy, up to {args.new_tokens} new tokens; run {run.name}")
        table = [ours]
        for type in ("f32", "f16", "q8_0"):
            folder = export(run, tmp / type, format="gguf", type=type, log=lambda line: None)
            checks, speed = llamacpp_side(next(folder.glob("*.gguf")), rows, args.new_tokens)
            print(f"llama.cpp {type:5s} " + "; ".join(f"{k}: {v}" for k, v in checks.items()))
            if type != "f16":
                table.append({"name": f"llama.cpp {type}, batch 1", **speed})
        table += serve_side(run, args.clients, args.seconds, args.new_tokens, tmp)
    print(f"\n{'':44s} {'first token (ms)':>17s} {'answer (ms)':>12s} {'new tokens/s':>13s}")
    for r in table:
        first = f"{r['ttft'] * 1000:17.0f}" if r["ttft"] == r["ttft"] else f"{'-':>17s}"
        print(f"{r['name']:44s} {first} {r.get('answer', float('nan')) * 1000:12.0f} {r['tokens_per_s']:13.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
