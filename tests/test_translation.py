"""Translation pairs for causal_lm: two line-aligned files (train.en, train.de) or two columns of a
TSV/CSV file; the languages' names in the prompt; empty lines dropped and named; files of different
lengths refused; sacreBLEU's signatures beside BLEU and chrF; bad input through the CLI."""

from __future__ import annotations

import json

import pytest
import yaml

import lmtune
from lmtune.cli import main
from lmtune.core.errors import LmtuneError
from lmtune.data.parallel import language_code, language_name, read_columns, read_parallel
from lmtune.tasks import causal_lm
from lmtune.tasks.run_config import validate

PAIRS = [("the cat sits", "das cat sits"), ("the dog runs", "das dog runs"), ("a red house", "ein red house"),
         ("the bike is blue", "das fahrrad ist blue"), ("hello", "hi"), ("the shop opens at nine", "das shop opens at nine")]


def _files(folder, pairs, stem="train", src="en", tgt="de"):
    source, target = folder / f"{stem}.{src}", folder / f"{stem}.{tgt}"
    source.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    target.write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return source, target


def _cfg(model, tmp_path, train, **data):
    return {
        "model": str(model), "task": "causal_lm", "output_dir": str(tmp_path / "run"),
        "data": {"train": train, "max_length": 32, **data},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "log_steps": 1},
        "eval": {"generate_rows": 2, "max_new_tokens": 4},
    }


def test_two_line_aligned_files_become_pairs_and_empty_lines_are_dropped_and_named(tmp_path):
    source, target = _files(tmp_path, [*PAIRS[:2], ("", "ein red house"), ("the bike", ""), PAIRS[4]])
    table, dropped = read_parallel(source, target, "train")
    assert table.rows == [{"source": s, "target": t} for s, t in (*PAIRS[:2], PAIRS[4])]
    assert table.lines == [1, 2, 5] and table.where(2) == f"{source}:5"
    assert [(d["file"], d["line"]) for d in dropped] == [(str(source), 3), (str(target), 4)]


def test_files_of_different_lengths_name_both_files_both_counts_and_the_first_gap(tmp_path):
    source, _ = _files(tmp_path, PAIRS[:4])
    target = tmp_path / "train.de"
    target.write_text("das cat sits\n\nein red house\n", encoding="utf-8")
    with pytest.raises(LmtuneError) as e:
        read_parallel(source, target, "train")
    (line,) = e.value.problems
    assert f"{source} has 4 lines and {target} has 3" in line
    assert "first line where one side is empty or missing: 2, empty in the target file" in line


def test_tsv_columns_become_pairs(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("id\ten\tde\n1\tthe cat sits\tdas cat sits\n2\thello\t\n3\thello\thi\n", encoding="utf-8")
    table, dropped = read_columns(tsv, "auto", "en", "de", "train")
    assert table.rows == [{"source": "the cat sits", "target": "das cat sits"}, {"source": "hello", "target": "hi"}]
    assert table.lines == [2, 4] and [(d["line"], d["reason"]) for d in dropped] == [(3, "empty de")]


def test_language_names_come_from_codes_and_unknown_codes_stay():
    assert [language_name(c) for c in ("en", "DE", "fr", "xx")] == ["English", "German", "French", "xx"]
    assert [language_code(n) for n in ("data/train.en", "val.de", "de", "train.txt", "source")] == ["en", "de", "de", None, None]


def test_the_prompt_names_the_languages_of_the_files_or_of_the_config(tiny_llama, tmp_path):
    source, target = _files(tmp_path, PAIRS, src="fr", tgt="xx")
    pair = {"source": str(source), "target": str(target)}
    cfg = validate(_cfg(tiny_llama, tmp_path, pair))
    data = causal_lm.load_data(cfg)
    assert cfg.data.prompt_template == "Translate French to xx:\n{source}" and cfg.data.response_column == "target"
    messages = causal_lm.conversation(data.train.rows[0], "here", "instruction", cfg)
    assert messages[0]["content"].startswith("Translate French to xx:\n") and messages[1]["content"] in dict(PAIRS).values()
    cfg = validate(_cfg(tiny_llama, tmp_path, pair, target_lang="Klingon",
                        prompt_template="{source_lang} => {target_lang}: {source}"))
    causal_lm.load_data(cfg)
    assert cfg.data.prompt_template == "French => Klingon: {source}"
    # columns named by a language code name the languages too
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("en\tde\n" + "".join(f"{s}\t{t}\n" for s, t in PAIRS), encoding="utf-8")
    cfg = validate(_cfg(tiny_llama, tmp_path, str(tsv), source_column="en", target_column="de"))
    assert len(causal_lm.load_data(cfg).train) + 1 == len(PAIRS)  # one held out for validation
    assert cfg.data.prompt_template == "Translate English to German:\n{source}"


def test_a_tiny_translation_run_writes_signatures_and_the_dropped_lines(tiny_llama, tmp_path, capsys):
    source, target = _files(tmp_path, PAIRS * 3 + [("the cat", "")])
    val_source, val_target = _files(tmp_path, PAIRS[:3], stem="val")
    raw = _cfg(tiny_llama, tmp_path, {"source": str(source), "target": str(target)},
               validation={"source": str(val_source), "target": str(val_target)})
    result = lmtune.train(raw, progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["validation"]
    assert 0 <= metrics["bleu"] <= 1 and 0 <= metrics["chrf"] <= 1 and metrics == result.metrics["validation"]
    assert metrics["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert metrics["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    err = capsys.readouterr().err
    assert f"dropped 1 pair with an empty side ({target}:19; each in dropped.jsonl)" in err
    dropped = [json.loads(line) for line in (tmp_path / "run" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["file"], d["line"]) for d in dropped] == [(str(target), 19)]
    record = json.loads((tmp_path / "run" / "data.json").read_text())
    assert set(record["files"]) == {"train.source", "train.target", "validation.source", "validation.target"}
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["train"] == {"source": str(source), "target": str(target)}
    assert saved["data"]["prompt_template"] == "Translate English to German:\n{source}"


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _files(tmp_path, PAIRS)
    return tmp_path


def _error(capsys, ws, *overrides):
    before = sorted(p.name for p in ws.iterdir())
    code = main(["train", "task=causal_lm", "output_dir=out", *overrides])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert sorted(p.name for p in ws.iterdir()) == before  # nothing written
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmtune: error: "), err
    return lines[0].removeprefix("lmtune: error: ")


def test_bad_translation_input_is_one_line_each(ws, tiny_llama, capsys):
    model = f"model={tiny_llama}"
    (ws / "short.de").write_text("das cat sits\n", encoding="utf-8")
    line = _error(capsys, ws, model, "data.train={source: train.en, target: short.de}")
    assert "train.en has 6 lines and short.de has 1" in line and "2, missing from the target file" in line
    line = _error(capsys, ws, model, "data.train={source: train.en, targt: train.de}")
    assert line == "data.train.targt: unknown key (did you mean 'data.train.target'?)"
    line = _error(capsys, ws, model, "data.train={source: train.en, target: missing.de}")
    assert line == "data.train.target: file not found: missing.de"
    line = _error(capsys, ws, model, "data.train=train.en", "data.validation={source: train.en, target: train.de}")
    assert line.startswith("data.validation: {source, target} files need translation pairs in data.train too")
    line = _error(capsys, ws, model, "data.train={source: train.en, target: train.de}", "data.validation=train.en")
    assert line.startswith("data.validation: train.en is one file, and data.train is {source, target} files")
