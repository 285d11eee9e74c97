"""The typed config: defaults, overrides, YAML number forms, and errors that list every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.core.config import apply_overrides, yaml_load
from lmtune.tasks.run_config import load_config, validate
from lmtune.core.errors import LmtuneError


def _raw(tmp_path, **data):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,x\nb,y\n")
    return {"model": "minilm-l6", "output_dir": str(tmp_path / "run"), "data": {"train": str(train), **data}}


def test_defaults_and_strategy_union(tmp_path):
    cfg = validate(_raw(tmp_path))
    assert cfg.strategy.name == "full"
    assert cfg.train.lr is None and cfg.train.batch_size == 32 and cfg.data.validation is None  # lr: the strategy's
    assert cfg.data.max_length == "auto"
    raw = _raw(tmp_path)
    raw["strategy"] = {"name": "adaptive", "decay": 0.5}
    assert validate(raw).strategy.decay == 0.5


def test_learning_rates_in_exponent_form_are_numbers():
    assert yaml_load("lr: 1e-4")["lr"] == pytest.approx(1e-4)
    assert yaml_load("lr: 3E-5")["lr"] == pytest.approx(3e-5)
    assert yaml_load("name: e5")["name"] == "e5"


def test_overrides_set_nested_keys_with_types():
    raw = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=2e-5", "train.epochs=4", "data.test=null", "strategy.name=full"])
    assert raw == {"train": {"lr": 2e-5, "epochs": 4}, "data": {"test": None}, "strategy": {"name": "full"}}
    with pytest.raises(LmtuneError, match="dotted.key=value"):
        apply_overrides({}, ["train.lr"])


def test_every_problem_is_reported_at_once(tmp_path):
    raw = _raw(tmp_path)
    raw["train"] = {"lrr": 1e-4, "epochs": "three", "batch_size": 0}
    raw["strategy"] = {"name": "partial", "freeze_layer": 2}
    with pytest.raises(LmtuneError) as e:
        validate(raw)
    problems = "\n".join(e.value.problems)
    assert "train.lrr: unknown key (did you mean 'train.lr'?)" in problems
    assert "train.epochs" in problems and "train.batch_size" in problems
    assert "strategy.freeze_layer: unknown key (did you mean 'strategy.freeze_layers'?)" in problems
    # the missing freeze_layers is the typo above, so it is not reported twice
    assert "strategy.freeze_layers: required key is missing" not in problems
    assert len(e.value.problems) == 4


def test_semantic_checks(tmp_path):
    raw = _raw(tmp_path, validation=str(tmp_path / "missing.csv"))
    raw["train"] = {"metric": "bleu"}
    raw["strategy"] = {"name": "partial", "freeze_layers": 7}
    with pytest.raises(LmtuneError) as e:
        validate(raw)
    problems = "\n".join(e.value.problems)
    assert "data.validation: file not found" in problems
    assert "train.metric: 'bleu' is not reported" in problems
    assert "strategy.freeze_layers: 7 is more than the 6 layers of minilm-l6" in problems
    raw = _raw(tmp_path)
    raw["train"] = {"distributed": "fsdp"}
    raw["strategy"] = {"name": "lora"}
    with pytest.raises(LmtuneError, match="train.distributed: fsdp is not offered with strategy lora"):
        validate(raw)
    raw["train"] = {"distributed": "zero3"}
    with pytest.raises(LmtuneError, match="train.distributed"):
        validate(raw)


def test_keep_checkpoints_is_last_best_or_none(tmp_path):
    assert validate(_raw(tmp_path)).train.keep_checkpoints == "last"
    raw = _raw(tmp_path)
    raw["train"] = {"keep_checkpoints": "all"}
    with pytest.raises(LmtuneError) as e:
        validate(raw)
    assert e.value.problems == ["train.keep_checkpoints: input should be 'last', 'best' or 'none' (got 'all')"]


def test_load_config_defaults_output_dir_to_config_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    (tmp_path / "my-run.yaml").write_text("model: minilm-l6\ndata:\n  train: train.csv\n")
    cfg = load_config(tmp_path / "my-run.yaml", ["train.seed=7"])
    assert cfg.output_dir == "runs/my-run" and cfg.train.seed == 7


def test_numbers_that_yaml_1_1_reads_as_text_are_numbers(tmp_path):
    import yaml

    raw = _raw(tmp_path)
    raw["train"] = yaml.safe_load("lr: 1e-4\nweight_decay: 1E-2\nmax_grad_norm: 5e-1\nepochs: '2'")
    assert raw["train"]["lr"] == "1e-4"  # PyYAML follows YAML 1.1: no dot, no float
    raw["strategy"] = {"name": "lora", "alpha": "3e1", "dropout": "5e-2"}
    raw["search"] = {"space": {"train.lr": {"loguniform": ["1e-5", "1e-3"]}, "train.batch_size": {"int": ["4", "16"]},
                               "train.scheduler": {"choice": ["linear", "cosine"]}}}
    cfg = validate(raw)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.max_grad_norm) == (1e-4, 1e-2, 0.5)
    assert cfg.train.epochs == 2 and type(cfg.train.epochs) is int
    assert (cfg.strategy.alpha, cfg.strategy.dropout) == (30.0, 0.05)
    space = cfg.search.space
    assert space["train.lr"].loguniform == [1e-5, 1e-3] and space["train.batch_size"].int == [4, 16]
    assert space["train.scheduler"].choice == ["linear", "cosine"]
    # an example config read with plain PyYAML, as lmtune.train(yaml.safe_load(...)) gets it
    example = Path(__file__).parents[1] / "examples" / "sentiment.yaml"
    assert validate(yaml.safe_load(example.read_text()), check_files=False).train.lr == 1e-4


def test_text_that_is_not_a_number_is_still_refused(tmp_path):
    raw = _raw(tmp_path)
    raw["train"] = {"lr": "fast", "epochs": "2.5", "warmup_ratio": "1e-2x"}
    with pytest.raises(LmtuneError) as e:
        validate(raw)
    assert e.value.problems == ["train.epochs: input should be a valid integer (got '2.5')",
                                "train.lr: input should be a valid number (got 'fast')",
                                "train.warmup_ratio: input should be a valid number (got '1e-2x')"]


@pytest.mark.parametrize("alias, task", [
    ("ner", "token_classification"), ("NER", "token_classification"), ("qa", "question_answering"),
    ("sentiment", "classification"), ("sft", "causal_lm"), ("chat", "causal_lm"), ("instruct", "causal_lm"),
    ("generation", "causal_lm"), ("mlm", "masked_lm"),
])
def test_task_aliases_are_read_as_the_task(tmp_path, alias, task):
    from lmtune.tasks.registry import TASK_ALIASES
    from lmtune.tasks.run_config import output_dir_of

    raw = _raw(tmp_path)
    raw["task"] = alias
    cfg = validate(raw, check_files=False)
    assert cfg.task == task
    assert f"task: {task}" in cfg.to_yaml()  # the run's config.yaml holds the real name
    assert alias.lower() in TASK_ALIASES
    assert output_dir_of(None, {"task": alias}) == str(Path("runs") / task)


def test_task_alias_in_a_config_file_and_options_of_its_task(tmp_path):
    conll = Path("examples/data/ner/train.conll").resolve()
    path = tmp_path / "ner.yaml"
    path.write_text(f"model: minilm-l6\ntask: ner\ndata:\n  train: {conll}\n  tag_column_index: -1\n")
    cfg = load_config(path)
    assert cfg.task == "token_classification" and cfg.data.tag_column_index == -1


def test_unknown_task_still_lists_the_tasks(tmp_path):
    raw = _raw(tmp_path)
    raw["task"] = "translation_of_things"
    with pytest.raises(LmtuneError) as e:
        validate(raw, check_files=False)
    assert len(e.value.problems) == 1 and "token_classification" in e.value.problems[0]


def test_keys_mention_the_aliases(capsys):
    from lmtune.cli import main

    assert main(["keys", "--task", "ner"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "task ner is read as token_classification"
    assert "data.tag_column_index" in out and "data.label_column" not in out
    assert main(["keys"]) == 0
    assert "ner = token_classification" in capsys.readouterr().out
