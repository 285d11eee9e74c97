"""Keys belong to tasks: a key of another task is a config error (reported with every other problem),
`lmtune keys --task` lists only the task's keys, the resolved config holds only them, and
`lmtune train` takes a whole config as key=value words, without a YAML file."""

from __future__ import annotations

import json

import yaml

from lmtune.cli import main
from lmtune.tasks.run_config import key_tasks, reference, validate
from lmtune.tasks import TASKS, get_task

from .conftest import write_sentiment
from .test_bad_input import expect_error, write_config, ws  # noqa: F401 (a fixture)


def test_keys_of_another_task_are_errors_listed_with_the_rest(ws, capsys):
    cfg = write_config(ws, data_extra="  packing: true\n  mlm_probability: 0.5\n  doc_stride: 3\n",
                       extra="eval:\n  generate_rows: 4\ntrain:\n  epochs: three\n")
    problems = expect_error(capsys, ws, "train", cfg)
    assert problems == [
        "train.epochs: input should be a valid integer (got 'three')",
        "data.packing applies to task causal_lm only, not to this run's task classification",
        "data.mlm_probability applies to task masked_lm only, not to this run's task classification",
        "data.doc_stride applies to tasks token_classification and question_answering only, not to this run's task classification",
        "eval.generate_rows applies to task causal_lm only, not to this run's task classification",
    ]
    # the same keys are right for their own task (masked_lm: its own key passes, the others do not)
    cfg = write_config(ws, data_extra="  mlm_probability: 0.3\n  label_column: y\n", extra="task: masked_lm\n")
    assert expect_error(capsys, ws, "train", cfg) == [
        "data.label_column applies to task classification only, not to this run's task masked_lm"
    ]


def test_every_task_specific_key_is_refused_elsewhere_and_accepted_in_its_task(tmp_path):
    train = tmp_path / "t.csv"
    train.write_text("text,label\na,x\nb,y\n")
    checked = 0
    for section in ("data", "eval"):
        fields = {name: field for t in TASKS for name, field in
                  (get_task(t).data_section if section == "data" else get_task(t).eval_section).model_fields.items()}
        for name, field in fields.items():
            tasks = key_tasks(section, name)
            if len(tasks) == len(TASKS):  # a key of every task's runs
                continue
            value = field.get_default(call_default_factory=True)
            for task in TASKS:
                raw = {"model": "minilm-l6", "task": task, "data": {"train": str(train)}}
                raw.setdefault(section, {})[name] = value
                errors = []
                try:
                    validate(raw, check_files=False)
                except Exception as e:  # LmtuneError: the problems, one per line
                    errors = [p for p in str(e).splitlines() if p.startswith(f"{section}.{name} applies to")]
                assert bool(errors) == (task not in tasks), (section, name, task, errors)
                checked += 1
    assert checked >= 25 * len(TASKS)


def test_keys_lists_only_the_keys_of_a_task(capsys):
    assert main(["keys", "--task", "classification"]) == 0
    text = capsys.readouterr().out
    keys = {line.split()[0] for line in text.splitlines() if line and not line.startswith((" ", "strategy.name"))}
    assert {"data.label_column", "data.text_pair_column", "data.clean", "train.lr", "model"} <= keys
    assert not keys & {"data.packing", "data.mlm_probability", "data.doc_stride", "eval.generate_rows", "data.tokens_column"}
    assert main(["keys", "--task", "causal_lm"]) == 0
    keys = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line and not line.startswith(" ")}
    assert {"data.packing", "data.prompt_template", "eval.generate_rows", "eval.max_new_tokens"} <= keys
    assert "data.label_column" not in keys
    every = {row[0] for row in reference()}
    assert every == {row[0] for t in TASKS for row in reference(t)}  # each key belongs to some task


def test_the_resolved_config_holds_the_run_tasks_keys_only(tmp_path):
    train = tmp_path / "t.csv"
    train.write_text("text,label\na,x\nb,y\n")
    saved = yaml.safe_load(validate({"model": "minilm-l6", "data": {"train": str(train)}}).to_yaml())
    assert "label_column" in saved["data"] and "packing" not in saved["data"] and saved["eval"] == {"train_sample": 1000}
    # and reading it back (as `lmtune eval` does with a run's config.yaml) is valid
    assert validate(saved, check_files=False).data.label_column == "label"


def test_train_takes_a_whole_config_as_keys_on_the_command_line(tiny_bert, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_sentiment(tmp_path / "train.csv", 48, seed=1)
    code = main(["train", f"model={tiny_bert}", "task=classification", "data.train=train.csv", "train.epochs=1",
                 "train.batch_size=16", "train.precision=fp32", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "classification"  # the default folder of a run without a config file
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads((run / "metrics.json").read_text())["validation"]
    assert printed["validation"] == {k: v for k, v in written.items() if k != "per_class"}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"] == str(tiny_bert) and saved["train"]["epochs"] == 1 and (run / "metrics.json").is_file()
    # a word without '=' is still a config file, and a missing one is still a clear error
    assert main(["train", "missing.yaml"]) == 2
    assert "missing.yaml: config file not found" in capsys.readouterr().err
    # keys alone are validated like a file: every problem at once
    assert main(["train", "model=minilm-l6", "data.train=nope.csv", "data.packing=true"]) == 2
    err = capsys.readouterr().err
    assert "data.train: file not found: nope.csv" in err and "data.packing applies to task causal_lm only" in err


def test_a_run_folders_config_with_every_tasks_keys_still_reads():
    # config.yaml of a run written when the config held every task's keys: read as its task's config,
    # the other tasks' keys left out (a new config with them is an error, above)
    from lmtune.tasks.run_config import saved_config

    raw = {"model": "minilm-l6", "task": "classification", "output_dir": "runs/old",
           "data": {"train": "gone.csv", "label_column": "y", "packing": False, "mlm_probability": 0.15},
           "eval": {"train_sample": 10, "generate_rows": 16, "forgetting": False}}
    cfg = saved_config(raw)
    assert type(cfg) is get_task("classification").config
    assert cfg.data.label_column == "y" and cfg.eval.train_sample == 10
    assert not hasattr(cfg.data, "packing") and not hasattr(cfg.eval, "generate_rows")
