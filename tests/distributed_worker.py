"""Run by tests under torchrun: trains from a YAML config and writes, per process, a checksum of
every parameter of the trained model (rank<N>.json beside the run folder)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lmtune.training as training

config, out = sys.argv[1], Path(sys.argv[2])
finish = training.finish


def record(cfg, task, data, run, accelerator, model, *rest):
    params = {n: float(p.detach().double().sum()) for n, p in accelerator.unwrap_model(model).named_parameters()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(params))
    return finish(cfg, task, data, run, accelerator, model, *rest)


training.finish = record
training.train(config, progress=False)
