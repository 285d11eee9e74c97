"""The training run on a tiny model: run folder contents, history, splits, labels, pairs, early stopping."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

import lmtune
from lmtune.infer.predict import Predictor

from .conftest import WORDS, tiny_config


def test_run_folder_holds_everything(tiny_bert, toy_data, tmp_path):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=6, lr=3e-3, dropout=0.0)
    cfg["data"]["test"] = str(toy_data["test"])
    lmtune.train(cfg, progress=False)
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["lr"] == 3e-3 and saved["strategy"] == {"name": "full"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"validation", "test", "train", "train_sample", "diagnosis"}
    assert metrics["validation"]["accuracy"] >= 0.9  # the toy set is separable
    assert metrics["test"]["accuracy"] >= 0.9
    # validation accuracy at its ceiling: a loss that still falls is no underfitting
    assert metrics["diagnosis"]["verdict"] == "healthy", metrics["diagnosis"]["reasons"]
    data = json.loads((run / "data.json").read_text())
    assert data["labels"] == ["negative", "positive"] and len(data["files"]["train"]["sha256"]) == 64
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    logs = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval" in h]
    assert [e["epoch"] for e in evals] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert all({"step", "epoch", "loss", "lr", "samples_per_second"} <= set(h) for h in logs)
    assert logs[-1]["loss"] < logs[0]["loss"]
    # the schedule by hand: 6 epochs x 12 batches = 72 steps, warmup round(0.06 x 72) = 4 steps up
    # to 3e-3, then linear down to 0 at step 72; logged every 2 steps
    assert [h["step"] for h in logs] == list(range(2, 73, 2))
    expected = [3e-3 * (s / 4 if s < 4 else (72 - s) / 68) for s in range(2, 73, 2)]
    assert [h["lr"] for h in logs] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # the saved model is plain transformers with the user's label names
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    preds = lmtune.load(run).predict(["good great superb", "awful terrible bad"])
    assert [p["label"] for p in preds] == ["positive", "negative"]
    assert abs(sum(preds[0]["probabilities"].values()) - 1) < 1e-4


def test_best_checkpoint_is_the_final_model(tiny_bert, toy_data, tmp_path):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=3, eval_steps=3, metric="loss")
    result = lmtune.train(cfg, progress=False)
    evals = [h for h in result.history if "eval" in h]
    best = min(evals, key=lambda e: e["eval"]["loss"])
    assert result.best_step == best["step"]
    assert result.metrics["validation"]["loss"] == pytest.approx(best["eval"]["loss"], abs=1e-5)


def test_early_stopping(tiny_bert, toy_data, tmp_path):
    # The config wants a learning rate above 0. At 1e-12 an AdamW step moves a weight by a few
    # 1e-12 at most (zero biases do move, so the weights are not bit-equal): far less than any logit
    # margin, so the predictions and the accuracy stay as they are, and only a strictly higher
    # accuracy counts as better.
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=10, lr=1e-12, eval_steps=2,
                      metric="accuracy", early_stopping_patience=2, warmup_ratio=0.0)
    result = lmtune.train(cfg, progress=False)
    evals = [h for h in result.history if "eval" in h]
    # evaluations at steps 2 (the best), 4 and 6 (no better twice): stopped there, not at 10 x 12 steps
    assert [e["step"] for e in evals] == [2, 4, 6]
    assert len({e["eval"]["accuracy"] for e in evals}) == 1
    assert result.stopped_early and result.best_step == 2 and result.metrics["train"]["steps"] == 6
    assert result.metrics["train"]["stopped_early"] is True
    from safetensors.torch import load_file

    best = load_file(str(result.output_dir / "model" / "model.safetensors"))  # the best model (checkpoints/best is pruned)
    last = load_file(str(result.output_dir / "checkpoints" / "last" / "model.safetensors"))
    assert best.keys() == last.keys()
    for name in best:  # 4 more steps at 1e-12 between the two
        assert (best[name] - last[name]).abs().max() <= 1e-10, name


@pytest.mark.parametrize("keep, kept", [(None, {"last"}), ("best", {"best"}), ("none", set())])
def test_keep_checkpoints_prunes_a_finished_run_and_keeps_the_model(tiny_bert, toy_data, tmp_path, keep, kept):
    extra = {"keep_checkpoints": keep} if keep else {}  # None: the default
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=4, eval_steps=2, **extra)
    folder = tmp_path / "run" / "checkpoints"
    during = []  # at the second evaluation, before its checkpoint: both are there
    lmtune.train(cfg, progress=False, on_evaluate=lambda step, m: during.append({p.name for p in folder.iterdir()}))
    assert during[-1] == {"best", "last"}
    assert ({p.name for p in folder.iterdir()} if folder.exists() else set()) == kept
    preds = lmtune.load(tmp_path / "run").predict(["good great superb"])
    assert preds[0]["label"] in ("positive", "negative")


def test_keep_checkpoints_may_change_on_resume_and_may_be_missing_from_an_older_run(tiny_bert, toy_data, tmp_path):
    from .test_resume import Killed, _kill_at

    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=8, eval_steps=4)
    with pytest.raises(Killed):  # after the checkpoint of step 4
        lmtune.train(cfg, progress=False, on_evaluate=_kill_at(8))
    saved = tmp_path / "run" / "config.yaml"
    raw = yaml.safe_load(saved.read_text())
    del raw["train"]["keep_checkpoints"]  # as a run folder written before the key existed
    saved.write_text(yaml.safe_dump(raw))
    cfg["train"]["keep_checkpoints"] = "none"
    assert lmtune.train(cfg, progress=False, resume=True).metrics["train"]["steps"] == 8
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_stratified_split_without_validation(tiny_bert, toy_data, tmp_path):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=2, epochs=1)
    cfg["data"]["validation"] = None
    cfg["data"]["validation_size"] = 0.25
    lmtune.train(cfg, progress=False)
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["examples"] == {"train": 72, "validation": 24, "test": 0}
    assert any("stratified" in n for n in data["notes"])


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t" if str(path).endswith(".tsv") else ",")
        w.writerow(header)
        w.writerows(rows)
    return path


def test_integer_labels_and_text_pairs_from_tsv(tiny_bert, tmp_path):
    # label 1 when the hypothesis repeats the premise's (positive) word, 0 when it is a negative
    # word; every premise appears with both labels, so only the pair (the second text) tells them apart
    rows = []
    for i in range(40):
        same = i % 2
        a = WORDS["positive"][(i // 2) % 10]
        b = a if same else WORDS["negative"][i % 10]
        rows.append((f"the {a}", f"a {b}", same))
    train = _write(tmp_path / "train.tsv", ["premise", "hypothesis", "label"], rows[:32])
    val = _write(tmp_path / "val.tsv", ["premise", "hypothesis", "label"], rows[32:])
    cfg = {
        "model": str(tiny_bert),
        "output_dir": str(tmp_path / "run"),
        "data": {"train": str(train), "validation": str(val), "text_column": "premise",
                 "text_pair_column": "hypothesis"},
        "train": {"epochs": 8, "batch_size": 8, "lr": 5e-3, "precision": "fp32", "dropout": 0.0, "seed": 1,
                  "eval_steps": 32},  # 8 x 4 steps, one evaluation (and checkpoint) at the end
    }
    result = lmtune.train(cfg, progress=False)
    p = Predictor.from_run(tmp_path / "run")
    assert p.labels == ["0", "1"] and p.data.text_pair_column == "hypothesis"
    val_rows = rows[32:]
    out = p.predict([r[0] for r in val_rows], [r[1] for r in val_rows])
    assert [o["label"] for o in out] == [str(r[2]) for r in val_rows]  # the integer labels, as strings
    assert result.metrics["validation"]["accuracy"] == 1.0
    # the same premise with each kind of hypothesis, written afresh
    out = p.predict(["the superb", "the superb", "the lovely"], ["a superb", "a dull", "a worst"])
    assert [o["label"] for o in out] == ["1", "0", "0"]


def test_group_by_length_sees_every_example_each_epoch(tiny_bert, toy_data, tmp_path):
    result = lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=2), progress=False)
    assert result.metrics["train"]["samples"] == 2 * 96


def test_runs_with_different_precisions_in_one_process(tiny_bert, toy_data, tmp_path):
    from lmtune.core.runtime import bf16_available

    first = "bf16" if bf16_available() else "fp32"
    a = lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "a", max_steps=2, precision=first), progress=False)
    b = lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "b", max_steps=2, precision="fp32"), progress=False)
    assert json.loads((a.output_dir / "run.json").read_text())["mixed_precision"] == ("bf16" if first == "bf16" else "no")
    assert json.loads((b.output_dir / "run.json").read_text())["mixed_precision"] == "no"


def test_gradient_accumulation_matches_the_bigger_batch(tiny_bert, toy_data, tmp_path):
    """2 micro-batches of 8 accumulated = 1 batch of 16: same examples per step (no length
    grouping), same mean loss, so the same weights."""
    from safetensors.torch import load_file

    common = dict(epochs=1, dropout=0.0, group_by_length=False, max_steps=4, warmup_ratio=0.0)
    big = lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "big", batch_size=16, **common), progress=False)
    acc = lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "acc", batch_size=8,
                                   gradient_accumulation_steps=2, **common), progress=False)
    assert big.metrics["train"]["steps"] == acc.metrics["train"]["steps"] == 4
    a = load_file(str(big.output_dir / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(acc.output_dir / "checkpoints" / "last" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradient_checkpointing_trains_to_the_same_weights(tiny_bert, toy_data, tmp_path, dropout):
    """Recomputing activations in the backward pass changes memory and time, not the result: with
    dropout too, the recomputation draws the same (packed) masks as the forward pass."""
    from safetensors.torch import load_file

    common = dict(epochs=1, dropout=dropout, max_steps=3, warmup_ratio=0.0)
    plain = lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "plain", **common), progress=False)
    ckpt = lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "ckpt", gradient_checkpointing=True, **common),
                        progress=False)
    a = load_file(str(plain.output_dir / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(ckpt.output_dir / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    start = load_file(str(next(tiny_bert.glob("*.safetensors"))))  # a bare BertModel: no "bert." prefix
    assert any(not torch.equal(a[f"bert.{k}"], start[k]) for k in start if f"bert.{k}" in a)  # it trained
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-6, rtol=1e-4, msg=name)


def test_a_tie_of_the_metric_goes_to_the_lower_validation_loss():
    from lmtune.training.evaluation import is_better

    assert is_better(0.9, 0.5, None, None, greater=True)  # the first evaluation
    assert is_better(1.0, 0.7, 0.9, 0.1, greater=True) and not is_better(0.8, 0.01, 0.9, 0.5, greater=True)
    assert is_better(1.0, 0.3, 1.0, 0.7, greater=True)  # f1 1.0 again, at a lower loss
    assert not is_better(1.0, 0.7, 1.0, 0.7, greater=True) and not is_better(1.0, 0.8, 1.0, 0.7, greater=True)
    assert is_better(2.0, 0.3, 2.0, 0.4, greater=False) and not is_better(2.1, 0.1, 2.0, 0.4, greater=False)
    assert not is_better(0.4, 0.4, 0.4, 0.4, greater=False)  # the metric is the loss: a tie is a tie


def test_best_step_and_early_stopping_follow_the_loss_while_the_metric_saturates(tiny_bert, toy_data, tmp_path, monkeypatch):
    from lmtune.training import loop as training

    losses = iter([0.7, 0.3, 0.3, 0.5])  # at steps 1..4; accuracy 1.0 at each
    real = training.Evaluation.scores

    def saturated(self: object, name: str, *args: object, **kwargs: object) -> dict:
        metrics = real(self, name, *args, **kwargs)
        loss = next(losses, None) if name == "validation" else None
        return metrics if loss is None else {**metrics, "accuracy": 1.0, "loss": loss}

    monkeypatch.setattr(training.Evaluation, "scores", saturated)
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=8, eval_steps=1, metric="accuracy",
                      early_stopping_patience=2)
    result = lmtune.train(cfg, progress=False)
    # step 2 ties step 1 at a lower loss: the best; steps 3 (same loss) and 4 (higher) are not: stopped
    assert [h["step"] for h in result.history if "eval" in h] == [1, 2, 3, 4]
    assert result.best_step == 2 and result.stopped_early
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]["best_step"] == 2


def test_a_lora_run_names_its_base_as_given_and_writes_readable_files(tiny_bert, toy_data, tmp_path, monkeypatch):
    import os
    import shutil
    import stat

    from lmtune.core import models
    from lmtune.export.run import export

    # "tiny-base" stands for a bundled name whose folder is machine-specific (a GGUF file's cache)
    real = models.source_of
    monkeypatch.setattr(models, "source_of", lambda name: tiny_bert if name == "tiny-base" else real(name))
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=2)
    cfg["model"], cfg["strategy"] = "tiny-base", {"name": "lora", "r": 4}
    umask = os.umask(0o022)
    try:
        lmtune.train(cfg, progress=False)
        exported = export(tmp_path / "run", tmp_path / "exported", merge=True)
    finally:
        os.umask(umask)
    adapter = tmp_path / "run" / "model" / "adapter_config.json"
    assert json.loads(adapter.read_text())["base_model_name_or_path"] == "tiny-base"
    for folder in (tmp_path / "run" / "model", exported):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}
        assert any(name.endswith(".safetensors") for name in modes) and set(modes.values()) == {0o644}, modes
    expected = lmtune.load(tmp_path / "run").predict(["good great superb"])
    # moved to another place, it loads by the name; so does a run folder of an earlier version that
    # names its base by a folder, whether that folder is still there or not (then: config.yaml's model)
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(tmp_path / "run", moved)
    assert lmtune.load(moved).predict(["good great superb"]) == expected
    moved_adapter = moved / "model" / "adapter_config.json"
    for base in (str(tiny_bert), str(tmp_path / "gone")):
        moved_adapter.write_text(json.dumps({**json.loads(adapter.read_text()), "base_model_name_or_path": base}))
        assert lmtune.load(moved).predict(["good great superb"]) == expected
    with pytest.raises(lmtune.LmtuneError, match=r"adapter_config.json: the base model '.*gone' is not here"):
        lmtune.load(moved / "model")  # the adapter folder alone: no config to fall back on
    assert lmtune.load(exported).predict(["good great superb"])[0]["label"] == expected[0]["label"]


def test_the_final_evaluation_reuses_the_latest_one_when_that_model_is_the_best(tiny_bert, toy_data, tmp_path, monkeypatch):
    import lmtune.training.evaluation as evaluation
    import lmtune.training.loop as training

    calls = []
    plain = evaluation.evaluate

    def counted(task, model, loader, accelerator, cfg):
        calls.append(len(loader.dataset))
        return plain(task, model, loader, accelerator, cfg)

    # every evaluation's (lmtune.training.evaluation) and the final one's (the loop's name for it)
    monkeypatch.setattr(evaluation, "evaluate", counted)
    monkeypatch.setattr(training, "evaluate", counted)
    run = tmp_path / "run"
    result = lmtune.train(tiny_config(tiny_bert, toy_data, run, epochs=2, dropout=0.0, report=False, report_to=[]),
                          progress=False)
    evals = [h for h in result.history if "eval" in h]
    assert result.best_step == evals[-1]["step"]  # the toy set: accuracy 1.0 early, the loss still falling
    # two evaluations of validation (32 rows) and the training sample (32 rows), none more at the end
    assert calls == [32, 32, 32, 32]
    assert {k: v for k, v in result.metrics["validation"].items() if k != "per_class"} == evals[-1]["eval"]
    # the numbers are the saved model's own
    again = lmtune.load(run).evaluate_file(toy_data["validation"])
    assert again["accuracy"] == result.metrics["validation"]["accuracy"]
    assert again["loss"] == pytest.approx(result.metrics["validation"]["loss"], rel=1e-5)


def test_the_logged_rate_leaves_out_evaluation_time(monkeypatch):
    """samples_per_second in the history counts a logging window's training time only: an evaluation
    inside the window neither counts as training time nor drops the samples trained before it."""
    from types import SimpleNamespace

    from lmtune.training import loop

    clock = [0.0]
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    state = SimpleNamespace(step=0, train_samples=0, train_tokens=0, train_seconds=0.0, eval_seconds=0.0, history_lines=0)
    scheduler = SimpleNamespace(get_last_lr=lambda: [1e-3])
    s = SimpleNamespace(accelerator=SimpleNamespace(is_main_process=False, num_processes=1), loop=state, total_steps=4,
                        steps_per_epoch=2, lengths={}, scheduler=scheduler, optimizer=SimpleNamespace(param_groups=[{}]),
                        cfg=SimpleNamespace(train=SimpleNamespace(eval_steps=None)))
    meter = loop.StepMeter(s, progress=True)
    records = []
    meter.record = records.append
    for pause in (0.0, 100.0):  # a step of 10 s and 32 samples, then an evaluation of `pause` s
        state.step += 1
        meter.add(0.5, 32, 1000)
        clock[0] += 10.0
        meter.stepped()
        clock[0] += pause
        if pause:
            meter.paused()
    state.step += 1
    meter.add(0.5, 32, 1000)
    clock[0] += 10.0
    meter.stepped()
    meter.log_step(1.5)
    assert records[-1]["samples_per_second"] == pytest.approx(96 / 30)
    assert state.eval_seconds == pytest.approx(100.0)
