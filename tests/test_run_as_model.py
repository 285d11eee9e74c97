"""An earlier run's folder as the model of a later run: its weights and tokenizer (a LoRA run's
adapter merged into its base), the chain of runs in config.yaml, and an unfinished run refused."""

from __future__ import annotations

import random

import pytest
import torch
import yaml

import lmtune
from lmtune.cli import main
from lmtune.core import models

from .conftest import LM_WORDS, WORDS, write_sentiment


def _mlm_run(tiny_bert, tmp_path):
    rng = random.Random(0)
    vocab = [w for ws in WORDS.values() for w in ws]
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(" ".join(rng.choice(vocab) for _ in range(20)) for _ in range(30)) + "\n")
    return lmtune.train({
        "model": str(tiny_bert), "task": "masked_lm", "output_dir": str(tmp_path / "mlm"),
        "data": {"train": str(text), "max_length": 32},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "log_steps": 1},
    }, progress=False)


def _cls_cfg(model, tmp_path, name):
    return {
        "model": str(model), "task": "classification", "output_dir": str(tmp_path / name),
        "data": {"train": str(write_sentiment(tmp_path / "s.csv", 40)),
                 "validation": str(write_sentiment(tmp_path / "v.csv", 16, seed=5)), "max_length": 32},
        "strategy": {"name": "partial", "freeze_layers": 1},  # layer 0 keeps the weights it started with
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2, "precision": "fp32", "log_steps": 1},
    }


def _weights(folder):
    """The saved tensors by name without the task model's prefix (bert.layer... -> layer...)."""
    from safetensors.torch import load_file

    return {k.removeprefix("bert.").removeprefix("model."): v for k, v in load_file(str(folder / "model.safetensors")).items()}


def test_a_run_folder_is_a_model_with_its_weights_and_the_chain(tiny_bert, tmp_path, capsys):
    _mlm_run(tiny_bert, tmp_path)
    mlm = tmp_path / "mlm"
    lmtune.train(_cls_cfg(mlm, tmp_path, "cls"), progress=False)
    key = "encoder.layer.0.attention.self.query.weight"
    start, base = _weights(mlm / "model")[key], _weights(tiny_bert)[key]
    assert not torch.equal(start, base)  # the masked-LM run moved it
    assert torch.equal(_weights(tmp_path / "cls" / "model")[key], start)  # frozen: what it started from
    config = yaml.safe_load((tmp_path / "cls" / "config.yaml").read_text())
    assert config["model"] == str(mlm) and config["model_chain"] == [str(mlm), str(tiny_bert)]
    assert "the model of an earlier run" in capsys.readouterr().err
    # a third run names the whole chain; the run's config.yaml reads back
    lmtune.train(_cls_cfg(tmp_path / "cls", tmp_path, "cls2"), progress=False)
    config = yaml.safe_load((tmp_path / "cls2" / "config.yaml").read_text())
    assert config["model_chain"] == [str(tmp_path / "cls"), str(mlm), str(tiny_bert)]
    assert lmtune.load(tmp_path / "cls2").predict(["good movie"])[0]["label"] in ("positive", "negative")
    # a run without an earlier run as its model writes no chain
    assert "model_chain" not in yaml.safe_load((mlm / "config.yaml").read_text())


def test_a_lora_run_folder_means_its_adapter_merged_into_its_base(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "cache"))
    rng = random.Random(1)
    text = tmp_path / "lm.txt"
    text.write_text("\n\n".join(" ".join(rng.choice(LM_WORDS) for _ in range(24)) for _ in range(24)) + "\n")
    run = {"task": "causal_lm", "data": {"train": str(text), "max_length": 32},
           "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "log_steps": 1}}
    lmtune.train({**run, "model": str(tiny_llama), "output_dir": str(tmp_path / "lora"),
                  "strategy": {"name": "lora", "r": 4}}, progress=False)
    merged = models.resolve(str(tmp_path / "lora"))
    assert merged.parent == tmp_path / "cache" / "merged" and (merged / "tokenizer.json").is_file()
    key = "layers.0.self_attn.q_proj.weight"
    assert not torch.equal(_weights(merged)[key], _weights(tiny_llama)[key])  # the adapter's change is in
    assert models.resolve(str(tmp_path / "lora")) == merged  # merged once
    lmtune.train({**run, "model": str(tmp_path / "lora"), "output_dir": str(tmp_path / "next"),
                  "strategy": {"name": "partial", "freeze_layers": 1}}, progress=False)
    assert torch.equal(_weights(tmp_path / "next" / "model")[key], _weights(merged)[key])
    assert f"its LoRA adapter merged into its base model {tiny_llama} ({merged}): this run starts from the merged " \
           "weights" in capsys.readouterr().err
    config = yaml.safe_load((tmp_path / "next" / "config.yaml").read_text())
    assert config["model_chain"] == [str(tmp_path / "lora"), str(tiny_llama)]


def test_an_unfinished_run_as_model_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "half").mkdir(parents=True)
    (tmp_path / "runs" / "half" / "config.yaml").write_text("model: minilm-l6\n")
    (tmp_path / "train.csv").write_text("text,label\ngood,positive\nbad,negative\n")
    code = main(["train", "model=runs/half", "data.train=train.csv", "output_dir=out"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "runs/half" in err[0] and "no model/ yet" in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_lora_classifier_run_merges_with_its_trained_head(tiny_bert, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "cache"))
    cfg = _cls_cfg(tiny_bert, tmp_path, "lora_cls")
    lmtune.train({**cfg, "strategy": {"name": "lora", "r": 4}}, progress=False)
    adapter = load_file(str(tmp_path / "lora_cls" / "model" / "adapter_model.safetensors"))
    head = next(v for k, v in adapter.items() if "classifier" in k and k.endswith("weight"))
    merged = models.resolve(str(tmp_path / "lora_cls"))
    assert torch.equal(load_file(str(merged / "model.safetensors"))["classifier.weight"], head)
    assert models.describe(str(tmp_path / "lora_cls")).num_layers == models.describe(str(tiny_bert)).num_layers
