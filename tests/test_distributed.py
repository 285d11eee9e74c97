"""Many processes on CPU (gloo, started by torchrun): the batch sampler's split, DDP training that
matches one process with the doubled batch, and evaluation gathered from both processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import lmtune
from lmtune.data.batching import EpochBatchSampler, examples_seen

from .conftest import write_sentiment

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n, batch, replicas", [(101, 8, 2), (37, 16, 2), (3, 4, 2), (50, 5, 3)])
def test_every_example_once_per_epoch_and_the_same_number_of_steps(n, batch, replicas):
    lengths = [(i * 7) % 23 + 1 for i in range(n)]
    for epoch in range(2):
        seen, steps = [], []
        for rank in range(replicas):
            s = EpochBatchSampler(lengths, batch, seed=3, num_replicas=replicas, rank=rank, pad_empty=False)
            s.use_epoch(epoch)
            parts = list(s)
            seen += [i for p in parts for i in p]
            steps.append(len(parts))
            assert all(len(p) <= batch for p in parts)
        assert sorted(seen) == list(range(n))  # no duplicates, no drops
        padded = [len(list(EpochBatchSampler(lengths, batch, seed=3, num_replicas=replicas, rank=r))) for r in range(replicas)]
        assert len(set(padded)) == 1  # training: every process takes a step for every global batch


def test_global_batches_are_those_of_one_process_with_the_doubled_batch():
    lengths = [(i * 5) % 17 + 1 for i in range(90)]
    one = EpochBatchSampler(lengths, 16, seed=1).batches()
    two = [EpochBatchSampler(lengths, 8, seed=1, num_replicas=2, rank=r) for r in range(2)]
    assert [sorted(two[0].part(b) + two[1].part(b)) for b in one] == [sorted(b) for b in one]
    # full batches split 8 + 8; a short one as evenly as it goes, the first process taking the odd one
    assert list(two[0]) == [b[: (len(b) + 1) // 2] for b in one]
    assert list(two[1]) == [b[(len(b) + 1) // 2 :] for b in one]
    assert any(len(b) < 16 for b in one) and sum(len(b) == 16 for b in one) >= 4


@pytest.mark.parametrize("segments, now", [([(2, 3)], 1), ([(1, 5)], 3), ([(2, 2), (1, 3)], 2), ([(3, 0)], 2)])
def test_an_epoch_resumed_with_other_process_counts_sees_every_example_once(segments, now):
    lengths = [(i * 7) % 23 + 1 for i in range(83)]
    for group in (True, False):
        seen = examples_seen(lengths, 4, seed=5, group_by_length=group, epoch=1, segments=segments)
        first = EpochBatchSampler(lengths, 4, seed=5, group_by_length=group, num_replicas=segments[0][0])
        first.use_epoch(1)
        assert examples_seen(lengths, 4, seed=5, group_by_length=group, epoch=1, segments=segments[:1]) == {
            i for batch in first.batches()[: segments[0][1]] for i in batch}  # the global batches the processes took
        most = sum(done * 4 * p for p, done in segments)  # a shuffled short batch may be among them
        assert most - 4 * len(segments) < len(seen) <= most or most == 0 == len(seen)
        rest = [EpochBatchSampler(lengths, 4, seed=5, group_by_length=group, num_replicas=now, rank=r) for r in range(now)]
        for s in rest:
            s.use_epoch(1)
            s.skip(1, seen)
        parts = [i for s in rest for part in s for i in part]
        assert sorted(parts + sorted(seen)) == list(range(83))  # the rest of the epoch: every other example, once
        assert len(rest[0]) == -(-(83 - len(seen)) // (4 * now))
        rest[0].use_epoch(2)  # the next epoch is whole again
        assert sorted(i for part in rest[0].batches() for i in part) == list(range(83))


def _worker(cfg: dict, tmp_path: Path, name: str) -> tuple[dict, dict]:
    """Train `cfg` on 2 processes under torchrun; the per-process records of distributed_worker.py."""
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "distributed_worker.py"), str(tmp_path / f"{name}.yaml"), str(tmp_path / f"{name}-sums")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tuple(json.loads((tmp_path / f"{name}-sums" / f"rank{r}.json").read_text()) for r in (0, 1))


@pytest.mark.slow
@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_two_processes_train_like_one_with_the_doubled_batch(tiny_bert, tmp_path, distributed):
    # 96 = 6 full global batches of 16: with a short last batch, each process's mean loss would
    # count as much as the other's, a slightly different weighting from one process's mean
    train = write_sentiment(tmp_path / "train.csv", 96, seed=1)
    val = write_sentiment(tmp_path / "val.csv", 37, seed=2)  # evaluation is uneven: 32 + 5
    base = {
        "model": str(tiny_bert),
        "data": {"train": str(train), "validation": str(val)},
        "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "precision": "fp32", "dropout": 0.0, "log_steps": 1,
                  "eval_batch_size": 16},
    }
    two = {**base, "output_dir": str(tmp_path / "two"), "train": {**base["train"], "distributed": distributed}}
    rank0, rank1 = _worker(two, tmp_path, "two")
    assert rank0["params"] == rank1["params"] and len(rank0["params"]) > 10  # the same model on both processes
    last = tmp_path / "two" / "checkpoints" / "last"  # each process's random state, in the renamed folder
    assert (last / "random_states_0.pkl").is_file() and (last / "random_states_1.pkl").is_file()
    total = sum(p.numel() for p in lmtune.load(tmp_path / "two").model.parameters())
    if distributed == "ddp":
        assert rank0["held"] == rank1["held"] == total  # a whole copy each
    else:
        assert rank0["held"] + rank1["held"] == total and max(rank0["held"], rank1["held"]) < 0.55 * total  # halves

    one = {**base, "output_dir": str(tmp_path / "one"), "train": {**base["train"], "batch_size": 16, "eval_batch_size": 32}}
    single = lmtune.train(one, progress=False)
    history = [json.loads(line) for line in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    losses_two = [h["loss"] for h in history if "loss" in h]
    losses_one = [h["loss"] for h in single.history if "loss" in h]
    assert len(losses_two) == len(losses_one) == 12
    assert losses_two == pytest.approx(losses_one, abs=1e-5)

    from safetensors.torch import load_file

    w_two = load_file(tmp_path / "two" / "model" / "model.safetensors")
    w_one = load_file(tmp_path / "one" / "model" / "model.safetensors")
    assert w_two.keys() == w_one.keys()
    for k in w_one:
        assert torch.allclose(w_two[k], w_one[k], atol=1e-4), k

    # evaluation gathered from both processes equals a single process on the same model
    gathered = json.loads((tmp_path / "two" / "metrics.json").read_text())["validation"]
    alone = lmtune.load(tmp_path / "two").evaluate_file(val)
    assert gathered["accuracy"] == alone["accuracy"]
    assert gathered["loss"] == pytest.approx(alone["loss"], abs=1e-5)

    if distributed == "fsdp":  # the last checkpoint's shards load whole into one process without a process group
        from transformers import AutoModelForSequenceClassification

        from lmtune.training import sharding

        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "two" / "model")
        optimizer = torch.optim.AdamW(model.parameters())
        sharding.load_shards(tmp_path / "two" / "checkpoints" / "last", model, optimizer)
        sums = {n: float(p.detach().double().sum()) for n, p in model.named_parameters()}
        assert sums == pytest.approx(rank0["params"], abs=1e-6)
        assert len(optimizer.state) == len(sums)  # the optimizer's moments too


@pytest.mark.slow
def test_nproc_flag_runs_torchrun_and_refuses_a_finished_run_in_one_line(tiny_bert, tmp_path):
    train = write_sentiment(tmp_path / "train.csv", 40, seed=1)
    # 36 training rows after the seeded validation split of 4: global batches of 8, the last one of
    # 4 split 2 + 2, so the mean of the two processes' means is the mean of one process's batch
    cfg = {"model": str(tiny_bert), "output_dir": str(tmp_path / "run"), "data": {"train": str(train)},
           "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "dropout": 0.0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "lmtune", "train", str(tmp_path / "c.yaml"), "--nproc", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training on 2 x cpu" in first.stderr and first.stderr.count("run folder:") == 1
    printed = json.loads(first.stdout.strip().splitlines()[-1])["validation"]
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert printed == {k: v for k, v in written["validation"].items() if k != "per_class"}
    # one process with the doubled batch: the same validation split, steps, weights and metrics
    single = lmtune.train({**cfg, "output_dir": str(tmp_path / "one"), "train": {**cfg["train"], "batch_size": 8}},
                          progress=False)
    examples = [json.loads((tmp_path / r / "data.json").read_text())["examples"] for r in ("run", "one")]
    assert examples[0] == examples[1] == {"train": 36, "validation": 4, "test": 0}
    assert written["train"]["steps"] == single.metrics["train"]["steps"] == 10
    assert printed["accuracy"] == single.metrics["validation"]["accuracy"]
    assert printed["loss"] == pytest.approx(single.metrics["validation"]["loss"], abs=1e-5)
    from safetensors.torch import load_file

    w_two, w_one = load_file(tmp_path / "run" / "model" / "model.safetensors"), load_file(tmp_path / "one" / "model" / "model.safetensors")
    assert w_two.keys() == w_one.keys()
    for k in w_one:
        assert torch.allclose(w_two[k], w_one[k], atol=1e-5), k
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 2
    assert again.stderr.strip() == f"lmtune: error: output_dir {tmp_path / 'run'} holds a finished run; use --overwrite to replace it"
