"""Files without a header (AG News as distributed: text<TAB>label): column names from data.columns
or --columns, in the in-memory and the streaming reader, through a run config and through every
data command; and the column options that every data command shares."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from lmtune.cli import build_parser, main
from lmtune.core.errors import LmtuneError
from lmtune.data.readers import RowReader, read_table

from .conftest import WORDS

TOPICS = ["World", "Sports", "Business", "Sci/Tech"]
TOPIC_WORDS = {"World": WORDS["negative"][:5], "Sports": WORDS["positive"][:5],
               "Business": WORDS["negative"][5:], "Sci/Tech": WORDS["positive"][5:]}


def write_ag_news(path: Path, n: int, seed: int = 0) -> Path:
    """A file shaped like AG News' train.tsv: no header, `text<TAB>label`, the texts with bare
    quotes, backslashes and HTML entities as the corpus has them ("#39;", "\\$") and the labels as words."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            topic = TOPICS[i % 4]
            words = rng.sample(WORDS["neutral"], 4) + rng.sample(TOPIC_WORDS[topic], 2)
            rng.shuffle(words)
            f.write(f'{" ".join(words)} "quoted" it #39;s \\$5 {i}\t{topic}\n')
    return path


# ---------------------------------------------------------------- the readers


def test_both_readers_take_column_names_and_count_lines_from_the_first(tmp_path):
    src = write_ag_news(tmp_path / "ag.tsv", 6)
    lines = src.read_text(encoding="utf-8").splitlines()
    table = read_table(src, columns=["text", "label"])
    assert table.columns == ["text", "label"] and len(table) == 6
    assert table.lines == [1, 2, 3, 4, 5, 6]  # no header: row 1 is line 1
    assert [f"{r['text']}\t{r['label']}" for r in table.rows] == lines
    assert table.rows[0]["text"].endswith('"quoted" it #39;s \\$5 0')  # quotes and backslashes as they are
    streamed = list(RowReader(src, columns=["text", "label"]))
    assert streamed == list(zip(table.lines, table.rows))
    assert RowReader(src, columns=["text", "label"]).columns == ["text", "label"]  # known before a pass

    # a wrong number of fields is still one error naming file and line
    src.write_text(src.read_text() + "two\tlabels\ttoo many\n", encoding="utf-8")
    for read in (lambda: read_table(src, columns=["text", "label"]), lambda: list(RowReader(src, columns=["text", "label"]))):
        with pytest.raises(LmtuneError, match=rf"^{src}:7: expected 2 fields \(text, label\), found 3$"):
            read()


def test_without_column_names_the_first_line_is_the_header_and_the_error_says_so(tmp_path):
    src = write_ag_news(tmp_path / "ag.tsv", 5)
    first = src.read_text(encoding="utf-8").splitlines()[0]
    table = read_table(src)
    assert len(table) == 4 and table.lines == [2, 3, 4, 5]
    with pytest.raises(LmtuneError) as e:
        table.require_columns("text", "label")
    message = str(e.value)
    assert message.startswith(f"{src}: no column 'text', 'label'; columns are: ")
    text, label = first.split("\t")
    quoted = f'the first line was read as a header: "{text[:27]}...\\t{label}"'  # each field shortened
    assert quoted in message, message
    assert "data.columns" in message and "--columns" in message and "\n" not in message
    with pytest.raises(LmtuneError, match="the first line was read as a header"):
        RowReader(src).require_columns("text")
    # a file whose first line reads as a header gets the names it has and the key that chooses the column
    csv_file = tmp_path / "h.csv"
    csv_file.write_text("sentence,label\nok,pos\n")
    with pytest.raises(LmtuneError) as e:
        read_table(csv_file).require_columns("text")
    assert str(e.value) == (f"{csv_file}: no column 'text'; columns are: sentence, label; "
                            f"choose the column with data.text_column (--text-column)")
    with pytest.raises(LmtuneError) as e:
        read_table(csv_file).require_columns("review", "lab", keys=("text_column", "label_column"))
    assert str(e.value).endswith("choose the columns with data.text_column (--text-column), data.label_column (--label-column)")
    with pytest.raises(LmtuneError) as e:
        read_table(csv_file).require_columns("question")
    assert str(e.value).endswith("choose the column with data.question_column") and "data.columns" not in str(e.value)


@pytest.mark.parametrize("first, headerless", [
    ("text,label", False), ("sentence,sentiment", False), ("review_body,stars", False),
    ("This film was a delight,pos", True), ("great movie,5", True), ("x,1.5", True),
])
def test_only_a_first_line_that_looks_like_data_gets_the_headerless_hint(tmp_path, first, headerless):
    f = tmp_path / "f.csv"
    f.write_text(f"{first}\nsome text,pos\n")
    with pytest.raises(LmtuneError) as e:
        read_table(f).require_columns("missing_text", keys=("text_column",))
    message = str(e.value)
    assert ("data.columns" in message) == headerless, message
    assert ("data.text_column (--text-column)" in message) != headerless, message


def test_data_inspect_of_a_file_with_a_header_names_its_columns_and_text_column(tmp_path, capsys):
    f = tmp_path / "reviews.csv"
    f.write_text("review,label\ngood film,pos\nbad film,neg\n")
    assert main(["data", "inspect", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"lmtune: error: {f}: no column 'text'; columns are: review, label; "
                   f"choose the column with data.text_column (--text-column)")
    assert main(["data", "inspect", str(f), "--text-column", "review"]) == 0


def test_column_names_that_do_not_fit_the_file_are_clear_errors(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "x", "label": "y"}\n')
    with pytest.raises(LmtuneError, match=r"a.jsonl: data.columns \(--columns\) names the columns of a CSV or TSV file"):
        read_table(jsonl, columns=["text", "label"])
    header = tmp_path / "h.tsv"
    header.write_text("text\tlabel\ngood\tpos\n")
    with pytest.raises(LmtuneError, match=r"h.tsv:1: the first line is a header \(text, label\), but data.columns"):
        read_table(header, columns=["text", "label"])
    with pytest.raises(LmtuneError, match="names 'text' twice"):
        read_table(header, columns=["text", "text"])


# ---------------------------------------------------------------- a run config


def test_a_headerless_tsv_trains_through_the_config(tmp_path, tiny_bert, capsys):
    import lmtune

    train = write_ag_news(tmp_path / "train.tsv", 48, seed=1)
    val = write_ag_news(tmp_path / "val.tsv", 16, seed=2)
    cfg = {"model": str(tiny_bert), "output_dir": str(tmp_path / "run"),
           "data": {"train": str(train), "validation": str(val), "columns": ["text", "label"]},
           "train": {"epochs": 1, "batch_size": 8, "precision": "fp32"}}
    result = lmtune.train(cfg, progress=False)
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["examples"] == {"train": 48, "validation": 16, "test": 0}
    assert sorted(data["labels"]) == sorted(TOPICS)
    # eval and predict read the run's headerless files the same way (data.columns by default)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), str(val)]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again.pop("examples") == 16 and again == result.metrics["validation"]
    assert main(["predict", str(tmp_path / "run"), str(val), "--columns", "text,label", "-o", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and rows[0]["text"] == read_table(val, columns=["text", "label"]).rows[0]["text"]

    # without data.columns: the first line was read as a header
    cfg["data"] = {"train": str(train), "validation": str(val)}
    cfg["output_dir"] = str(tmp_path / "run2")
    with pytest.raises(LmtuneError, match=r"train.tsv: no column 'text'.*first line was read as a header"):
        lmtune.train(cfg, progress=False)
    assert not (tmp_path / "run2").exists()


# ---------------------------------------------------------------- the data commands

COMMON = ["--text-column", "text", "--label-column", "label", "--columns", "text,label", "--format", "tsv"]


def _command(name: str, src: Path, out: Path) -> list[str]:
    return {
        "inspect": ["data", "inspect", str(src), "--json"],
        "clean": ["data", "clean", str(src), "-o", str(out / "clean.tsv")],
        "split": ["data", "split", str(src), "-o", str(out / "parts"), "--ratios", "0.5,0.5"],
        "augment": ["data", "augment", str(src), "-o", str(out / "aug.tsv"), "--p-swap", "0.5"],
    }[name]


@pytest.mark.parametrize("name", ["inspect", "clean", "split", "augment"])
def test_every_data_command_takes_the_common_column_options_on_a_headerless_file(tmp_path, capsys, name):
    src = write_ag_news(tmp_path / "ag.txt", 40)  # .txt: --format says what it is
    assert main([*_command(name, src, tmp_path), *COMMON]) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = read_table(src, "tsv", columns=["text", "label"])
    if name == "inspect":
        assert result["rows"] == 40 and result["labels"] == {t: 10 for t in TOPICS}
    elif name == "clean":
        assert result["kept"] == 40 and result["dropped"] == 0
        with open(tmp_path / "clean.tsv", newline="") as f:  # the output names its columns in a header
            cleaned = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        assert [r["label"] for r in cleaned] == [r["label"] for r in expected.rows]
    elif name == "split":
        assert sum(p["rows"] for p in result.values()) == 40
        assert all(p["labels"] == {t: 5 for t in TOPICS} for p in result.values())
        parts = [read_table(tmp_path / "parts" / f"{k}.tsv") for k in ("train", "validation")]
        assert sorted(r["text"] for p in parts for r in p.rows) == sorted(r["text"] for r in expected.rows)
    else:
        aug = read_table(tmp_path / "aug.tsv")
        assert aug.columns == ["text", "label", "augmented_from"] and result["rows"] == 40
        copies = [r for r in aug.rows if r["augmented_from"]]
        assert copies and all(r["label"] == expected.rows[int(r["augmented_from"]) - 1]["label"] for r in copies)


def test_the_data_commands_share_one_set_of_column_options():
    parser = build_parser()
    data = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["data"]
    commands = next(a for a in data._subparsers._group_actions if a.dest == "data_command").choices
    common = {"--text-column", "--label-column", "--group-column", "--columns", "--format"}
    for name in ("inspect", "clean", "split", "augment"):
        assert common <= set(commands[name]._option_string_actions), name


def test_the_group_column_of_split_works_on_a_headerless_file(tmp_path, capsys):
    src = tmp_path / "g.tsv"
    src.write_text("".join(f"text {i}\t{TOPICS[i % 2]}\tu{i % 6}\n" for i in range(36)))
    argv = ["data", "split", str(src), "-o", str(tmp_path / "p"), "--ratios", "0.5,0.5",
            "--columns", "text,label,user", "--group-column", "user"]
    assert main(argv) == 0
    users = [{r["user"] for r in read_table(tmp_path / "p" / f"{k}.tsv").rows} for k in ("train", "validation")]
    assert users[0] and users[1] and not users[0] & users[1]
