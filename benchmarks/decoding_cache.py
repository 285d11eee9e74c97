"""Does a static KV cache, or a compiled decoding step, pay for greedy generation on this machine?

SmolLM2-135M-Instruct, the first N SAMSum dialogues as "Summarize this dialogue" chat prompts,
greedy, a fixed number of new tokens, batches of 16 sorted by length and left-padded (what
`lmtune generate`/`predict` do). Three ways of running `model.generate` on the same batches:

- dynamic: the default cache that grows by one position a step (lmtune's choice);
- static: `cache_implementation="static"`, a cache allocated once at its full length;
- static + compile: the same with the decoding step compiled by `torch.compile`
  (`CompileConfig`, which transformers applies on its own only on GPUs).

Prints the wall time of each (the compiled one also without its first batch, which pays the
compilation) and whether every generated text equals the dynamic cache's.

    python benchmarks/decoding_cache.py [--prompts 32] [--new-tokens 64] [--skip-compile]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, cpu_kind  # noqa: E402

SAMSUM = SHARED / "samsum" / "val.csv"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--skip-compile", action="store_true")
    args = p.parse_args()
    if not SAMSUM.is_file():
        print(f"skipped: {SAMSUM} not found (the data sets live in ../shared/data beside the repo)")
        return 0
    import torch
    from transformers import CompileConfig

    from lmtune.infer.generation import Generator
    from lmtune.tasks.decoding import GenerationSettings, _generate_kwargs

    with SAMSUM.open(encoding="utf-8") as f:
        dialogues = [row["dialogue"] for row in csv.DictReader(f)][: args.prompts]
    gen = Generator.load("smollm2-135m")
    model, tok = gen.model, gen.tokenizer
    prompts = [gen.chat_prompt([{"role": "user", "content": f"Summarize this dialogue:\n{d}"}]) for d in dialogues]
    encoded = sorted((tok(p, add_special_tokens=False)["input_ids"] for p in prompts), key=len, reverse=True)
    tok.padding_side = "left"
    batches = [tok.pad({"input_ids": encoded[i : i + 16]}, return_tensors="pt") for i in range(0, len(encoded), 16)]
    kwargs = _generate_kwargs(model, tok, GenerationSettings(max_new_tokens=args.new_tokens))
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    print(f"{cpu_kind()}, torch threads {torch.get_num_threads()}, {dtype}; {len(prompts)} prompts in "
          f"{len(batches)} batches of up to 16, {args.new_tokens} new tokens, greedy", flush=True)

    modes = {"dynamic": {}, "static": {"cache_implementation": "static"}}
    if not args.skip_compile:
        compile_config = CompileConfig(mode="default")
        compile_config._compile_all_devices = True  # transformers compiles on its own on GPUs only
        modes["static + compile"] = {"cache_implementation": "static", "compile_config": compile_config}
    texts: dict[str, list[str]] = {}
    n_tokens = 0  # the new tokens of the dynamic cache's texts (every mode's when they are the same)
    print(f"{'':18s} {'seconds':>8s} {'after batch 1':>14s} {'new tokens/s':>13s} {'same texts':>11s}")
    for name, extra in modes.items():
        times, out = [], []
        for batch in batches:
            start = time.perf_counter()
            with torch.inference_mode():
                result = model.generate(**batch, **kwargs, **extra)
            times.append(time.perf_counter() - start)
            new = result[:, batch["input_ids"].shape[1]:]
            out += tok.batch_decode(new, skip_special_tokens=True)
            if name == "dynamic":
                n_tokens += sum(int((row != tok.pad_token_id).sum()) for row in new)
        texts[name] = out
        total, rest = sum(times), sum(times[1:])
        same = sum(a == b for a, b in zip(out, texts["dynamic"]))
        print(f"{name:18s} {total:8.1f} {rest:14.1f} {n_tokens / total:13.1f} {same:6d} of {len(out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
