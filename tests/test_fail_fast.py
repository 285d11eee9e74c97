"""Wrong arguments are said at once: before torch or transformers are imported (a bad config, bad
data, a missing run folder) and before a model is loaded (lmtune predict / eval: the output file,
the input file and its columns); the message says what to do. And predict / eval read a file's own
column names for the run's (--text-column, --label-column)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmtune
from lmtune.cli import main

from .conftest import tiny_config
from .test_bad_input import GOOD_CSV, expect_error, one, write_config


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv").write_text(GOOD_CSV, encoding="utf-8")
    return tmp_path


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """An argparse error: exit status 2 and one line."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    return one([line.removeprefix("lmtune: error: ") for line in capsys.readouterr().err.splitlines()])


# ---------------------------------------------------------------- nothing heavy is imported

NO_HEAVY_IMPORTS = """
import json, sys
from lmtune.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "heavy": sorted(m for m in ("torch", "transformers", "accelerate") if m in sys.modules)}))
"""


def test_bad_configs_data_and_arguments_are_said_without_importing_torch_or_transformers(tmp_path, tiny_bert):
    (tmp_path / "train.csv").write_text(GOOD_CSV)
    (tmp_path / "bad.csv").write_text("text,label\ngood,positive\nworse,negative,extra\n")
    (tmp_path / "unknown_key.yaml").write_text("model: minilm-l6\ndata:\n  train: train.csv\nlearning_rate: 0.1\n")
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    write_config(tmp_path, model=str(tiny_bert), train="bad.csv", name="bad_data.yaml")
    (tmp_path / "no_text.csv").write_text("review\ngood movie\n")
    (tmp_path / "out.jsonl").write_text("")
    runs = [
        ["keys"], ["models"], ["train"], ["train", "missing.yaml"], ["train", "unknown_key.yaml"], ["train", "empty.yaml"],
        ["train", "model=minilm-l6", "data.train=train.csv", "lr=1e-4"], ["train", "bad_data.yaml"],
        ["predict", "runs/nope", "x.csv"], ["eval", "runs/nope", "x.csv"], ["generate", "runs/nope", "--prompt", "hi"],
        ["export", "runs/nope", "-o", "out"], ["serve", "runs/nope"],
        ["predict", str(tiny_bert), "no_text.csv"], ["predict", str(tiny_bert), "train.csv", "-o", "out.jsonl"],
        ["eval", str(tiny_bert), "train.csv"],  # labels the model does not know
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", NO_HEAVY_IMPORTS, json.dumps(runs)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["codes"] == [0, 0] + [2] * (len(runs) - 2), proc.stderr
    assert result["heavy"] == [], "imported before the error: " + ", ".join(result["heavy"])
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- lmtune train: what is required, which key


def test_train_without_arguments_says_a_config_or_overrides_is_required(ws, capsys):
    msg = one(expect_error(capsys, ws, "train"))
    assert "config file" in msg and "key=value" in msg
    assert "overrides" in msg and "following arguments are required" not in msg


def test_an_empty_config_file_is_named_as_empty(ws, capsys):
    (ws / "cfg.yaml").write_text("\n# to do\n")
    assert one(expect_error(capsys, ws, "train", "cfg.yaml")).startswith("cfg.yaml: the config file is empty")


@pytest.mark.parametrize("override, meant", [
    ("lr=1e-4", "'train.lr'"),  # top level, a key of train
    ("data.epochs=2", "'train.epochs'"),  # in another section
    ("seed=1", "'train.seed' or 'search.seed'"),  # two sections have it
    ("train.rank=4", None),  # no key of that name: the keys of the section are listed
])
def test_an_unknown_key_that_another_section_has_suggests_it(ws, capsys, override, meant):
    problems = expect_error(capsys, ws, "train", "model=minilm-l6", "data.train=train.csv", override)
    key = override.split("=")[0]
    msg = one([p for p in problems if p.startswith(f"{key}:")])
    if meant:
        assert msg == f"{key}: unknown key (did you mean {meant}?)"
    else:
        assert "valid keys here: epochs" in msg


@pytest.mark.parametrize("argv", [
    ["predict", "runs/sentimnt", "train.csv"], ["eval", "runs/sentimnt", "train.csv"],
    ["generate", "runs/sentimnt", "--prompt", "hi"], ["serve", "runs/sentimnt"], ["export", "runs/sentimnt", "-o", "x"],
], ids=lambda argv: argv[0])
def test_a_run_folder_that_does_not_exist_suggests_its_neighbours(ws, capsys, argv):
    for name in ("sentiment", "topics"):
        (ws / "runs" / name).mkdir(parents=True)
    msg = one(expect_error(capsys, ws, *argv))
    assert msg.startswith("runs/sentimnt: not a run folder") and "it does not exist" in msg
    assert msg.endswith("; did you mean runs/sentiment?")


def test_a_run_folder_given_to_train_without_resume_says_to_resume(ws, capsys):
    (ws / "runs" / "sentiment").mkdir(parents=True)
    msg = one(expect_error(capsys, ws, "train", "runs/sentiment"))
    assert msg == "runs/sentiment is a folder, not a config file; to continue the run in it: lmtune train runs/sentiment --resume"


# ---------------------------------------------------------------- predict and eval: checked before loading


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: everything asserted happens before."""
    import lmtune.infer.predictor

    def load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(lmtune.infer.predictor, "load", load)


def test_predict_and_eval_check_output_input_and_columns_before_loading_the_model(ws, capsys, tiny_bert, no_loading):
    model = str(tiny_bert)  # a bare model folder: classification, labels LABEL_0 and LABEL_1
    (ws / "out.jsonl").write_text("kept\n")
    (ws / "reviews.csv").write_text("review\ngood movie\n")
    (ws / "folder.csv").mkdir()
    assert one(expect_error(capsys, ws, "predict", model, "train.csv", "-o", "out.jsonl")) == \
        "out.jsonl exists; use --overwrite to replace it"
    assert one(expect_error(capsys, ws, "predict", model, "trian.csv")) == \
        "trian.csv: file not found; did you mean train.csv?"
    assert one(expect_error(capsys, ws, "predict", model, "folder.csv")) == "folder.csv: a folder, not a file"
    assert one(expect_error(capsys, ws, "predict", model, "reviews.csv")).startswith(
        "reviews.csv: no column 'text'; columns are: review")
    assert one(expect_error(capsys, ws, "eval", model, "train.csv")).startswith(
        "train.csv:2: label 'positive' is not one the model knows (LABEL_0, LABEL_1)")
    assert one(expect_error(capsys, ws, "eval", model, "reviews.csv", "--text-column", "review")).startswith(
        "reviews.csv: no column 'label'; columns are: review")
    assert (ws / "out.jsonl").read_text() == "kept\n"


def test_column_options_that_cannot_apply_to_predict_or_eval_are_one_line_errors(ws, capsys, tiny_bert):
    assert _usage_error(capsys, "predict", str(tiny_bert), "train.csv", "--label-column", "y").startswith(
        "--label-column: lmtune predict reads no labels")
    assert _usage_error(capsys, "eval", str(tiny_bert), "train.csv", "--format", "csv").startswith(
        "--format: lmtune eval reads a file by its extension")
    assert _usage_error(capsys, "eval", str(tiny_bert), "train.csv", "--group-column", "g").startswith(
        "--group-column: only lmtune data split uses it")


@pytest.fixture(scope="module")
def finished_run(tiny_bert, toy_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    lmtune.train(tiny_config(tiny_bert, toy_data, out, max_steps=4, epochs=1), progress=False)
    return out


def test_predict_and_eval_read_the_files_own_column_names(finished_run, toy_data, tmp_path, capsys):
    import csv

    rows = list(csv.DictReader(open(toy_data["validation"], encoding="utf-8")))
    renamed = tmp_path / "renamed.csv"
    with open(renamed, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "sentiment", "review"])
        w.writerows([i, r["label"], r["text"]] for i, r in enumerate(rows))

    def stdout(*argv: str) -> str:
        assert main(list(argv)) == 0
        return capsys.readouterr().out

    run = str(finished_run)
    expected = stdout("eval", run, str(toy_data["validation"]))
    assert stdout("eval", run, str(renamed), "--text-column", "review", "--label-column", "sentiment") == expected
    expected = stdout("predict", run, str(toy_data["validation"]))
    assert stdout("predict", run, str(renamed), "--text-column", "review") == expected
    assert len(expected.splitlines()) == len(rows)
