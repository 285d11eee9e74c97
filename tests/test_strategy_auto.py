"""`strategy.name: auto`: the rule at each of its boundaries, and a run that records its choice
(config.yaml holds the chosen strategy, data.json the rule, the log says it) with the learning-rate
default of the chosen strategy."""

from __future__ import annotations

import json

import pytest
import yaml

import lmtune
from lmtune.core.config import AutoStrategy
from lmtune.tasks.run_config import validate
from lmtune.core.errors import LmtuneError
from lmtune.training import strategies, strategy_choice
from lmtune.training.strategy_choice import choose_strategy, required_settings

from .conftest import tiny_config

M = 1_000_000


@pytest.mark.parametrize(
    "task, parameters, examples, expected",
    [
        # a large model: lora whatever the data
        ("classification", 1000 * M, 1_000_000, "lora"),
        ("classification", 1000 * M - 1, 1_000_000, "full"),
        # few examples (fewer than 1,000): lora from 100M parameters, full below
        ("classification", 100 * M, 999, "lora"),
        ("classification", 100 * M - 1, 999, "full"),
        ("classification", 100 * M, 1_000, "full"),
        ("token_classification", 1, 999, "full"),
        ("token_classification", 1, 1_000, "full"),
        # causal_lm: few below 10,000
        ("causal_lm", 100 * M, 9_999, "lora"),
        ("causal_lm", 100 * M - 1, 9_999, "full"),
        ("causal_lm", 100 * M, 10_000, "full"),
        ("causal_lm", 1000 * M, 10_000_000, "lora"),
    ],
)
def test_rule_at_its_boundaries(task, parameters, examples, expected):
    choice = choose_strategy(task, parameters, examples)
    assert choice.name == expected
    assert f"): {expected}" in choice.rule  # "... (why): name"
    assert f"{parameters:,} parameters" in choice.rule
    if parameters < 1000 * M:  # the size alone does not decide: the rule names the examples too
        assert f"{examples:,} training examples" in choice.rule


def test_partial_freezes_the_bottom_half_by_default():
    assert [required_settings("partial", n)["freeze_layers"] for n in (1, 2, 6, 7, 30)] == [0, 1, 3, 3, 15]
    assert all(required_settings(name, 6) == {} for name in ("full", "adaptive", "lora", "gradual"))


def test_auto_is_a_strategy_of_the_schema_without_keys(tiny_bert, toy_data, tmp_path):
    raw = tiny_config(tiny_bert, toy_data, tmp_path / "run")
    assert isinstance(validate({**raw, "strategy": {"name": "auto"}}).strategy, AutoStrategy)
    with pytest.raises(LmtuneError) as e:
        validate({**raw, "strategy": {"name": "auto", "r": 8}})
    assert e.value.problems == ["strategy.r: unknown key (valid keys here: name)"]


def _run(tiny_bert, toy_data, tmp_path, capsys, **train):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=2, **train)
    cfg["strategy"] = {"name": "auto"}
    lmtune.train(cfg, progress=False)
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    resolved = json.loads((run / "data.json").read_text())["resolved"]
    return saved, resolved, capsys.readouterr().err


def test_auto_run_records_full_for_few_examples_on_a_small_model(tiny_bert, toy_data, tmp_path, capsys):
    # 96 training examples, a body of 21,568 parameters: rule 3
    saved, resolved, err = _run(tiny_bert, toy_data, tmp_path, capsys, lr=None)
    assert saved["strategy"] == {"name": "full"}
    assert resolved["strategy"]["setting"] == "auto" and resolved["strategy"]["value"] == "full"
    assert resolved["strategy"]["rule"] == choose_strategy("classification", 21_568, 96).rule
    assert "96 training examples" in resolved["strategy"]["rule"]
    assert saved["train"]["lr"] == strategies.DEFAULT_LR["full"]
    assert f"strategy.name: auto -> full: {resolved['strategy']['rule']}" in err
    # and the run trained every parameter
    assert "strategy full: 21,634 of 21,634 parameters trainable" in err


def test_auto_run_takes_the_lr_of_the_chosen_strategy(tiny_bert, toy_data, tmp_path, capsys, monkeypatch):
    # the tiny model counted as "medium" makes rule 2 (lora) apply to it; the lr default follows
    monkeypatch.setattr(strategy_choice, "MEDIUM_MODEL", 1_000)
    saved, resolved, err = _run(tiny_bert, toy_data, tmp_path, capsys, lr=None)
    assert saved["strategy"]["name"] == "lora" and resolved["strategy"]["value"] == "lora"
    assert saved["train"]["lr"] == resolved["lr"]["value"] == strategies.DEFAULT_LR["lora"] != strategies.DEFAULT_LR["full"]
    assert (tmp_path / "run" / "model" / "adapter_config.json").is_file()


def test_a_named_strategy_is_recorded_as_given(tiny_bert, toy_data, tmp_path):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=1)
    lmtune.train(cfg, progress=False)
    resolved = json.loads((tmp_path / "run" / "data.json").read_text())["resolved"]
    assert resolved["strategy"] == {"setting": "full", "value": "full"}


def test_auto_choosing_lora_under_fsdp_is_refused(tiny_bert, toy_data, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lmtune.tasks import get_task
    from lmtune.training.loop import resolve_defaults

    monkeypatch.setattr(strategy_choice, "MEDIUM_MODEL", 1_000)
    raw = tiny_config(tiny_bert, toy_data, tmp_path / "run", distributed="fsdp")
    cfg = validate({**raw, "strategy": {"name": "auto"}, "data": {**raw["data"], "max_length": 32}})
    with pytest.raises(LmtuneError) as e:
        resolve_defaults(cfg, get_task("classification"), SimpleNamespace(train=[{}] * 96), tokenizer=None)
    assert len(e.value.problems) == 1 and "auto chose lora" in e.value.problems[0] and "fsdp" in e.value.problems[0]
