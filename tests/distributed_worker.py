"""Run by tests under torchrun: trains from a YAML config and writes, per process, a checksum of
every parameter of the trained model (gathered whole where FSDP shards it) and how many parameter
values the process itself holds (rank<N>.json beside the run folder)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lmtune.training.loop as training

config, out = sys.argv[1], Path(sys.argv[2])
finish = training.finish


def record(cfg, task, data, run, accelerator, model, *rest, **kw):
    params, held = {}, 0
    for name, p in accelerator.unwrap_model(model).named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        held += local.numel()
        whole = p.full_tensor() if hasattr(p, "full_tensor") else p
        params[name] = float(whole.detach().double().sum())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps({"params": params, "held": held}))
    return finish(cfg, task, data, run, accelerator, model, *rest, **kw)


training.finish = record
training.train(config, progress=False)
