"""Bad user input: `lmtune` prints one `lmtune: error: ...` line per problem to stderr, exits with 2,
shows no traceback and writes nothing (no run folder for a config or data error).

The CLI runs in-process through `lmtune.cli.main` (fast); one test runs `python -m lmtune` as a
subprocess to check the real exit status. No test trains: every error comes before training, and
config validation reads only the config of the bundled `minilm-l6` model.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import subprocess
import sys
from pathlib import Path

import pytest

from lmtune.cli import main

PREFIX = "lmtune: error: "

GOOD_CSV = "text,label\ngood movie,positive\nbad movie,negative\nnice film,positive\nawful plot,negative\n"


# ---------------------------------------------------------------- helpers


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory (the cwd) with a good training file `train.csv`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv").write_text(GOOD_CSV, encoding="utf-8")
    return tmp_path


def write_config(
    root: Path,
    *,
    train: str = "train.csv",
    model: str = "minilm-l6",
    output_dir: str | None = "out",
    data_extra: str = "",
    extra: str = "",
    name: str = "cfg.yaml",
) -> str:
    """Write a YAML config with relative paths; return its (relative) file name."""
    text = f"model: {model}\n"
    if output_dir is not None:
        text += f"output_dir: {output_dir}\n"
    text += f"data:\n  train: {train}\n{data_extra}{extra}"
    (root / name).write_text(text, encoding="utf-8")
    return name


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with the bytes of each file (None for folders)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def expect_error(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> list[str]:
    """Run `lmtune argv`; assert the bad-input contract; return the problems (prefix removed)."""
    before = snapshot(root)
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, f"exit code {code}; stderr:\n{err}"
    assert "Traceback" not in err
    assert out == ""
    lines = err.splitlines()
    assert lines, "no error message"
    assert all(line.startswith(PREFIX) for line in lines), err
    assert snapshot(root) == before, "bad input must not write anything"
    return [line[len(PREFIX):] for line in lines]


def one(problems: list[str]) -> str:
    assert len(problems) == 1, problems
    return problems[0]


# ---------------------------------------------------------------- data files


def test_missing_data_file_names_the_key(ws, capsys):
    # No output_dir: the default run folder (runs/cfg) must not be created either.
    cfg = write_config(ws, train="missing.csv", output_dir=None)
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert msg.startswith("data.train:")
    assert "missing.csv" in msg and "not found" in msg
    assert not (ws / "runs").exists()


def test_row_with_wrong_number_of_fields_names_file_and_line(ws, capsys):
    (ws / "bad.csv").write_text("text,label\ngood,positive\nbad,negative\nworse,negative,extra\nok,positive\n")
    cfg = write_config(ws, train="bad.csv")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert "bad.csv:4:" in msg
    assert "expected 2 fields" in msg and "found 3" in msg
    assert not (ws / "out").exists()


def test_line_numbers_count_physical_lines_after_a_multiline_field(ws, capsys):
    (ws / "bad.csv").write_text('text,label\n"two\nlines",positive\nok,negative\nworse,negative,extra\n')
    cfg = write_config(ws, train="bad.csv")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert "bad.csv:5:" in msg


def test_non_utf8_file_names_file_and_line(ws, capsys):
    (ws / "latin.csv").write_bytes(b"text,label\ngood,positive\n\xff\xfe bad,negative\n")
    cfg = write_config(ws, train="latin.csv")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert "latin.csv:3:" in msg
    assert "UTF-8" in msg
    assert not (ws / "out").exists()


@pytest.mark.parametrize(
    "header, missing",
    [("sentence,label", "text"), ("text,sentiment", "label")],
    ids=["no-text-column", "no-label-column"],
)
def test_missing_column_lists_the_columns_that_exist(ws, capsys, header, missing):
    (ws / "cols.csv").write_text(f"{header}\ngood,positive\nbad,negative\n")
    cfg = write_config(ws, train="cols.csv")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert "cols.csv" in msg
    assert f"no column {missing!r}" in msg
    for column in header.split(","):
        assert column in msg.split("columns are:")[1]
    assert not (ws / "out").exists()


@pytest.mark.parametrize(
    "content, expected",
    [("text,label\n", "no examples"), ("", "empty")],
    ids=["header-only", "zero-bytes"],
)
def test_empty_data_set(ws, capsys, content, expected):
    (ws / "empty.csv").write_text(content)
    cfg = write_config(ws, train="empty.csv")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert "empty.csv" in msg and expected in msg
    assert not (ws / "out").exists()


def test_validation_label_unseen_in_training(ws, capsys):
    (ws / "val.csv").write_text("text,label\nfine film,positive\nmeh,neutral\n")
    cfg = write_config(ws, data_extra="  validation: val.csv\n")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert "val.csv:3:" in msg
    assert "'neutral'" in msg
    assert "negative" in msg and "positive" in msg  # the known labels
    assert not (ws / "out").exists()


# ---------------------------------------------------------------- the config


@pytest.mark.parametrize(
    "config_text, typo, suggestion",
    [
        ("model: minilm-l6\noutput_dir: out\ndata:\n  train: train.csv\ntrain:\n  lrr: 0.001\n", "train.lrr", "train.lr"),
        ("modle: minilm-l6\noutput_dir: out\ndata:\n  train: train.csv\n", "modle", "model"),
    ],
    ids=["nested", "top-level"],
)
def test_typo_in_key_suggests_the_right_one(ws, capsys, config_text, typo, suggestion):
    (ws / "cfg.yaml").write_text(config_text)
    problems = expect_error(capsys, ws, "train", "cfg.yaml")
    hits = [p for p in problems if p.startswith(f"{typo}:")]
    assert len(hits) == 1, problems
    assert f"did you mean '{suggestion}'" in hits[0]
    assert not (ws / "out").exists()


def test_negative_learning_rate(ws, capsys):
    cfg = write_config(ws, extra="train:\n  lr: -1\n")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert msg.startswith("train.lr:")
    assert "-1" in msg
    assert not (ws / "out").exists()


def test_several_problems_are_reported_in_one_run(ws, capsys):
    cfg = write_config(ws, extra='train:\n  lrr: 0.1\n  lr: -1\n  epochs: "three"\n')
    problems = expect_error(capsys, ws, "train", cfg)
    assert len(problems) >= 3, problems
    assert any(p.startswith("train.lrr:") and "train.lr'" in p for p in problems)
    assert any(p.startswith("train.lr:") for p in problems)
    assert any(p.startswith("train.epochs:") and "three" in p for p in problems)
    assert not (ws / "out").exists()


def test_unknown_model_lists_the_known_names(ws, capsys):
    cfg = write_config(ws, model="bert-huge")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert msg.startswith("model:")
    assert "bert-huge" in msg
    assert "minilm-l6" in msg and "smollm2-135m" in msg
    assert not (ws / "out").exists()


def test_freeze_more_layers_than_the_model_has(ws, capsys):
    cfg = write_config(ws, extra="strategy:\n  name: partial\n  freeze_layers: 99\n")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert msg.startswith("strategy.freeze_layers:")
    assert "99" in msg and "6 layers" in msg
    assert not (ws / "out").exists()


def test_unknown_strategy_name(ws, capsys):
    cfg = write_config(ws, extra="strategy:\n  name: bitfit\n")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert msg.startswith("strategy.name:")
    assert "'bitfit'" in msg
    assert all(name in msg for name in ("full", "partial", "adaptive", "lora", "gradual"))
    assert not (ws / "out").exists()


def test_override_without_equals_sign(ws, capsys):
    cfg = write_config(ws)
    msg = one(expect_error(capsys, ws, "train", cfg, "train.lr"))
    assert "train.lr" in msg and "key=value" in msg
    assert not (ws / "out").exists()


def test_invalid_yaml_names_the_line(ws, capsys):
    (ws / "cfg.yaml").write_text("model: minilm-l6\noutput_dir: out\ndata:\n  train: [train.csv\n  x: : y\n")
    msg = one(expect_error(capsys, ws, "train", "cfg.yaml"))
    assert "cfg.yaml" in msg and "invalid YAML" in msg
    assert "line 5" in msg
    assert not (ws / "out").exists()


# ---------------------------------------------------------------- run folders


@pytest.mark.parametrize(
    "existing, mentions",
    [("metrics.json", ["finished", "--overwrite"]), ("config.yaml", ["unfinished", "--resume", "--overwrite"])],
    ids=["finished-run", "unfinished-run"],
)
def test_existing_run_folder_needs_resume_or_overwrite(ws, capsys, existing, mentions):
    out = ws / "out"
    out.mkdir()
    (out / existing).write_text('{"validation": {"accuracy": 0.5}}\n')
    cfg = write_config(ws)
    msg = one(expect_error(capsys, ws, "train", cfg))  # also checks the folder is unchanged
    assert "out" in msg
    for word in mentions:
        assert word in msg
    assert (out / existing).read_text() == '{"validation": {"accuracy": 0.5}}\n'


def test_the_python_api_names_keyword_arguments_where_the_command_line_names_flags(ws, capsys):
    import lmtune
    from lmtune.core.errors import LmtuneError, command_line, option
    from lmtune.export.run import export

    out = ws / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}\n")
    cfg = write_config(ws)
    with pytest.raises(LmtuneError) as e:
        lmtune.train(cfg, progress=False)
    assert str(e.value) == "output_dir out holds a finished run; use overwrite=True to replace it"
    (out / "metrics.json").unlink()
    (out / "config.yaml").write_text("model: minilm-l6\n")
    with pytest.raises(LmtuneError) as e:
        lmtune.train(cfg, progress=False)
    assert str(e.value) == "output_dir out holds an unfinished run; use resume=True to continue it or overwrite=True to replace it"
    with pytest.raises(LmtuneError, match=r"^out exists; use overwrite=True to replace it$"):
        export("anything", "out", merge=True)
    assert one(expect_error(capsys, ws, "train", cfg)) == \
        "output_dir out holds an unfinished run; use --resume to continue it or --overwrite to replace it"
    with command_line():
        assert option("--resume", "resume=True") == "--resume"
    assert option("--resume", "resume=True") == "resume=True"


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("kind", ["empty-folder", "missing-folder", "unfinished-run"])
def test_eval_and_predict_need_a_run_folder(ws, capsys, command, kind):
    run_dir = ws / "notarun"
    if kind != "missing-folder":
        run_dir.mkdir()
    if kind == "unfinished-run":
        (run_dir / "config.yaml").write_text("model: minilm-l6\n")
    msg = one(expect_error(capsys, ws, command, "notarun", "train.csv"))
    assert "notarun" in msg
    if kind == "unfinished-run":
        assert "--resume" in msg
    else:
        assert "not a run folder" in msg


# ---------------------------------------------------------------- the real process


def test_subprocess_exit_status_and_no_traceback(tmp_path):
    (tmp_path / "bad.csv").write_text("text,label\ngood,positive\nbad,negative\nworse,negative,extra\n")
    cfg = write_config(tmp_path, train="bad.csv")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lmtune", "train", cfg],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(PREFIX) and "bad.csv:4:" in proc.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- encoder tasks: NER and QA


def test_conll_line_with_too_few_columns(ws, capsys):
    (ws / "t.conll").write_text("Paris B-LOC\nis O\nnice\n", encoding="utf-8")
    cfg = write_config(ws, train="t.conll", extra="task: token_classification\n")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert msg.startswith("t.conll:3:")


def test_conll_validation_tag_outside_the_training_tags(ws, capsys):
    (ws / "t.conll").write_text("Paris B-LOC\nis O\n\nBerlin B-LOC\n", encoding="utf-8")
    (ws / "v.conll").write_text("Acme B-ORG\n", encoding="utf-8")
    cfg = write_config(ws, train="t.conll", data_extra="  validation: v.conll\n", extra="task: token_classification\n")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert msg.startswith("v.conll:1:") and "'B-ORG'" in msg and "B-LOC" in msg


QA_ROW = '{{"question": "Where?", "context": {context}, "answers": {{"text": ["Paris"], "answer_start": [{start}]}}}}\n'


def test_question_with_an_empty_context(ws, capsys):
    (ws / "qa.jsonl").write_text(QA_ROW.format(context='"Born in Paris."', start=8) + QA_ROW.format(context='"  "', start=0))
    cfg = write_config(ws, train="qa.jsonl", extra="task: question_answering\n")
    assert one(expect_error(capsys, ws, "train", cfg)) == "qa.jsonl:2: empty or missing context"


def test_too_many_answers_that_miss_their_answer_start(ws, capsys):
    rows = [QA_ROW.format(context='"Born in Paris."', start=8 if i % 2 else 0) for i in range(10)]
    (ws / "qa.jsonl").write_text("".join(rows))
    cfg = write_config(ws, train="qa.jsonl", extra="task: question_answering\n")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert "5 of 10 answers do not match the context at their answer_start (first at qa.jsonl:1)" in msg
    assert "data.max_broken_answers=0.05" in msg


# ---------------------------------------------------------------- data commands (streamed files)

JSONL = '{"text": "good movie", "label": "pos"}\n{"text": "bad movie", "label": "neg"}\n{"txt": "x", "label": "pos"}\n'


@pytest.mark.parametrize("argv, expected", [
    (["data", "split", "train.csv", "-o", "parts", "--ratios", "0.8,0.1"], "--ratios '0.8,0.1': the shares sum to 0.9, not 1"),
    (["data", "split", "train.csv", "-o", "parts", "--ratios", "0.5,0.25,0.25"],
     "train.csv: label 'negative' has 2 example(s) in 2 group(s): too few to put some in every part"),
    (["data", "split", "train.csv", "-o", "parts", "--text-column", "review"], "train.csv: no column 'review'; columns are: text, label"),
    (["data", "clean", "t.jsonl", "-o", "clean.jsonl", "--text-column", "review"],
     "t.jsonl: no column 'review'; columns are: text, label, txt"),
    (["data", "augment", "t.jsonl", "-o", "aug.jsonl", "--text-column", "review"],
     "t.jsonl: no column 'review'; columns are: text, label, txt"),
    (["data", "augment", "bad.csv", "-o", "aug.csv"], "bad.csv:3: expected 2 fields (text, label), found 3"),
    (["data", "inspect", "bad.jsonl"], "bad.jsonl:2: invalid JSON"),
])
def test_data_commands_reject_bad_input_in_one_line_and_write_nothing(ws, capsys, argv, expected):
    (ws / "t.jsonl").write_text(JSONL)
    (ws / "bad.csv").write_text("text,label\ngood,pos\nworse,neg,extra\n")
    (ws / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    assert one(expect_error(capsys, ws, *argv)).startswith(expected)


# ---------------------------------------------------------------- files without a header

HEADERLESS = "Stocks fell on Monday\tBusiness\nThe team won again\tSports\nA new chip is out\tSci/Tech\nTalks in Geneva\tWorld\n"


def test_a_headerless_tsv_without_data_columns_says_its_first_line_was_read_as_a_header(ws, capsys):
    (ws / "ag.tsv").write_text(HEADERLESS)
    cfg = write_config(ws, train="ag.tsv")
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert msg.startswith("ag.tsv: no column 'text', 'label'; columns are: Stocks fell on Monday, Business")
    assert 'the first line was read as a header: "Stocks fell on Monday\\tBusiness"' in msg
    assert "data.columns" in msg and "--columns" in msg
    assert not (ws / "out").exists()


def test_a_headerless_tsv_with_data_columns_names_file_and_line_of_a_bad_row(ws, capsys):
    (ws / "ag.tsv").write_text(HEADERLESS.replace("again\tSports", "again\tSports\textra"))
    cfg = write_config(ws, train="ag.tsv", data_extra="  columns: [text, label]\n")
    assert one(expect_error(capsys, ws, "train", cfg)) == "ag.tsv:2: expected 2 fields (text, label), found 3"
    (ws / "ag.tsv").write_text("text\tlabel\n" + HEADERLESS)
    msg = one(expect_error(capsys, ws, "train", cfg))
    assert msg.startswith("ag.tsv:1: the first line is a header (text, label), but data.columns")


@pytest.mark.parametrize("argv, expected", [
    (["data", "inspect", "ag.tsv", "--group-column", "user"], "--group-column: only lmtune data split uses it"),
    (["data", "clean", "ag.tsv", "-o", "c.tsv", "--group-column", "user"], "--group-column: only lmtune data split"),
    (["data", "augment", "ag.tsv", "-o", "a.tsv", "--columns", "text,label", "--label-column", "topic"],
     "ag.tsv: no column 'topic'; columns are: text, label"),
    (["data", "split", "ag.tsv", "-o", "p", "--columns", "text,,label"], "argument --columns: expected comma-separated"),
    (["data", "inspect", "t.jsonl", "--columns", "text,label"], "t.jsonl: data.columns (--columns) names the columns of a CSV"),
    (["data", "augment", "t.conll", "-o", "a.jsonl", "--text-column", "word"], "--text-column: tagged sentences are read"),
])
def test_data_command_column_options_that_cannot_apply_are_one_line_errors(ws, capsys, monkeypatch, argv, expected):
    (ws / "ag.tsv").write_text(HEADERLESS)
    (ws / "t.jsonl").write_text(JSONL)
    (ws / "t.conll").write_text("Paris B-LOC\nis O\n")

    real = main

    def main_returning_usage_errors(argv: list[str]) -> int:  # argparse's errors exit from inside main
        try:
            return real(argv)
        except SystemExit as e:
            return int(e.code)

    monkeypatch.setitem(globals(), "main", main_returning_usage_errors)
    assert one(expect_error(capsys, ws, *argv)).startswith(expected)


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_columns_for_a_file_that_is_not_read_by_columns(ws, capsys, tmp_path_factory, command):
    from tests.conftest import build_tiny_bert

    model = build_tiny_bert(tmp_path_factory.mktemp("bare"))  # a bare model folder: classification
    capsys.readouterr()
    (ws / "texts.txt").write_text("good movie\n")
    msg = one(expect_error(capsys, ws, command, str(model), "texts.txt", "--columns", "text,label"))
    assert msg.startswith("--columns: texts.txt is read by a classification model as it is (.txt)")


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_predict_on_a_file_with_a_header_names_its_columns_and_the_option(ws, capsys, tmp_path_factory, command):
    from tests.conftest import build_tiny_bert

    model = build_tiny_bert(tmp_path_factory.mktemp("bare"))  # a bare model folder: classification
    capsys.readouterr()
    (ws / "reviews.csv").write_text("review,label\ngood movie,pos\n")
    msg = one(expect_error(capsys, ws, command, str(model), "reviews.csv"))
    assert msg.startswith("reviews.csv: no column 'text'"), msg
    assert "columns are: review, label" in msg and "--text-column" in msg
    assert "data.columns" not in msg and "--columns" not in msg
