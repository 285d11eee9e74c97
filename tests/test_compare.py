"""`lmtune compare` on the tiny BERT: one row per strategy whose trainable parameters are what that
strategy trains (counted by hand from the model's dimensions), table files that parse, seeds as
mean ± sd, a reading that names a winner or says the margin is within seed noise, and bad input
refused all at once with nothing written."""

from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path

import pytest
import yaml

from lmtune.cli import main
from lmtune.tune.compare import Score, compare, reading, within_noise

from .test_bad_input import PREFIX, expect_error
from .test_strategies import _hand_count

ALL = "full,partial,adaptive,lora,gradual"


def write_compare_config(root: Path, tiny_bert: Path, toy_data: dict[str, Path], *, max_steps: int = 2) -> str:
    (root / "cmp.yaml").write_text(
        f"model: {tiny_bert}\noutput_dir: {root / 'cmp'}\n"
        f"data:\n  train: {toy_data['train']}\n  validation: {toy_data['validation']}\n"
        f"train:\n  max_steps: {max_steps}\n  batch_size: 8\n  lr: 3.0e-3\n  precision: fp32\n  log_steps: 1\n",
        encoding="utf-8",
    )
    return str(root / "cmp.yaml")


def _markdown_rows(text: str) -> list[dict[str, str]]:
    """The rows of the one pipe table in a Markdown text, by header."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").replace("-", "").replace(":", "")) == set()  # the separator line
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


@pytest.fixture(scope="module")
def five(tiny_bert, toy_data, tmp_path_factory):
    """All five strategies, one seed, 2 steps each; gradual unfreezes one stage a step (--set)."""
    root = tmp_path_factory.mktemp("compare")
    cfg = write_compare_config(root, tiny_bert, toy_data)
    # in this process, to be quick (the CLI test below runs each in its own process, the default)
    compare(cfg, strategies=ALL, sets=["gradual.unit=step"], isolate=False, progress=False)
    return root / "cmp"


def test_one_row_per_strategy_with_what_each_trains(five):
    rows = list(csv.DictReader(open(five / "compare.csv", encoding="utf-8")))
    assert [r["strategy"] for r in rows] == ALL.split(",")
    c = _hand_count()  # the tiny BERT classifier: 2 layers, width 32, intermediate 64
    h, i, r = 32, 64, 8  # LoRA rank 8 (its default)
    head = c["pooler"] + c["classifier"]
    # LoRA: A (r x in) and B (out x r) on the 6 linear layers of each block (query, key, value and
    # the attention output h->h, intermediate h->i, output i->h), plus a trained copy of the head
    lora = 2 * (4 * r * (h + h) + r * (h + i) + r * (i + h)) + head
    expected = {
        "full": c["total"],
        "partial": c["layer"] + head,  # freeze_layers defaults to half of 2; the embeddings frozen
        "adaptive": c["total"],
        "lora": lora,
        "gradual": c["total"] - c["embeddings"],  # after 2 steps (unit step): head, then layer 1, then layer 0
    }
    assert {row["strategy"]: int(row["trainable_parameters"]) for row in rows} == expected
    assert all(int(row["seeds"]) == 1 and row["validation_accuracy_sd"] == "" for row in rows)
    for row in rows:
        metrics = json.loads((five / row["strategy"] / "metrics.json").read_text())
        assert float(row["validation_accuracy"]) == pytest.approx(metrics["validation"]["accuracy"])
        assert float(row["train_accuracy"]) == pytest.approx(metrics["train_sample"]["accuracy"])
        assert float(row["gap"]) == pytest.approx(float(row["train_accuracy"]) - float(row["validation_accuracy"]))
        assert sum(c["support"] for c in metrics["train_sample"]["per_class"].values()) == 96  # all 96 (< 1,000)
        assert float(row["wall_seconds"]) >= metrics["train"]["seconds"] > 0
        assert float(row["samples_per_second"]) == metrics["train"]["samples_per_second"]
        assert metrics["train"]["steps"] == 2  # the same budget for every strategy
    # every run has the same config but for its strategy
    configs = {s: yaml.safe_load((five / s / "config.yaml").read_text()) for s in ALL.split(",")}
    assert configs["partial"]["strategy"] == {"name": "partial", "freeze_layers": 1, "freeze_embeddings": True}
    assert configs["gradual"]["strategy"]["unit"] == "step"
    for s, saved in configs.items():
        assert {k: v for k, v in saved.items() if k not in ("strategy", "output_dir")} == \
            {k: v for k, v in configs["full"].items() if k not in ("strategy", "output_dir")}


def test_train_metric_is_what_lmtune_eval_gives_on_the_training_file(five, toy_data):
    """The "train" column comes from training's own evaluation; `lmtune eval` (predict.py) on the
    same 96 training rows is another path to the same numbers, for a full model and an adapter."""
    from lmtune.infer.predict import Predictor

    for strategy in ("full", "lora"):
        metrics = json.loads((five / strategy / "metrics.json").read_text())["train_sample"]
        again = Predictor.from_run(five / strategy).evaluate_file(toy_data["train"])
        assert again["accuracy"] == metrics["accuracy"]
        assert again["loss"] == pytest.approx(metrics["loss"], rel=1e-4)


def test_table_files_parse_and_agree(five, capsys):
    csv_rows = list(csv.DictReader(open(five / "compare.csv", encoding="utf-8")))
    md = (five / "compare.md").read_text()
    md_rows = _markdown_rows(md)
    assert [r["strategy"] for r in md_rows] == [r["strategy"] for r in csv_rows]
    for m, c in zip(md_rows, csv_rows):
        assert float(m["validation accuracy"]) == pytest.approx(float(c["validation_accuracy"]), abs=5e-5)
        assert m["trainable parameters"].split(" ")[0] == f"{int(c['trainable_parameters']):,}"
    summary = json.loads((five / "compare.json").read_text())
    assert len(summary["runs"]) == 5 and summary["metric"] == "accuracy" and summary["reading"] in md
    png = (five / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_seeds_give_mean_and_sd_and_their_own_folders(tiny_bert, toy_data, tmp_path):
    cfg = write_compare_config(tmp_path, tiny_bert, toy_data, max_steps=1)
    result = compare(cfg, strategies="full,lora", seeds="1,2", isolate=False, progress=False)
    folder = tmp_path / "cmp"
    assert {p.name for p in folder.iterdir() if p.is_dir()} == {"full-seed1", "full-seed2", "lora-seed1", "lora-seed2"}
    runs = {p.name: json.loads((p / "metrics.json").read_text())["validation"]["accuracy"] for p in folder.iterdir() if p.is_dir()}
    rows = {r["strategy"]: r for r in csv.DictReader(open(folder / "compare.csv", encoding="utf-8"))}
    for s in ("full", "lora"):
        values = [runs[f"{s}-seed1"], runs[f"{s}-seed2"]]
        assert int(rows[s]["seeds"]) == 2
        assert float(rows[s]["validation_accuracy"]) == pytest.approx(statistics.fmean(values))
        assert float(rows[s]["validation_accuracy_sd"]) == pytest.approx(statistics.stdev(values))
    assert [yaml_seed(folder / name) for name in ("full-seed1", "full-seed2")] == [1, 2]
    assert "±" in result.table()


def test_cli_runs_each_strategy_in_its_own_process_and_overwrites(tiny_bert, toy_data, tmp_path, capsys):
    cfg = write_compare_config(tmp_path, tiny_bert, toy_data, max_steps=1)
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "stale.txt").write_text("from an earlier comparison")
    assert main(["compare", cfg, "--strategies", "partial", "--overwrite", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    folder = tmp_path / "cmp"
    assert sorted(p.name for p in folder.iterdir()) == [
        "compare.csv", "compare.json", "compare.md", "compare.png", "partial"]
    reading_line = json.loads((folder / "compare.json").read_text())["reading"]
    assert out.splitlines()[0].split()[:3] == ["strategy", "seeds", "validation"]
    assert out.strip().splitlines()[-1] == reading_line and reading_line.startswith("Only partial was run")
    assert "compare: run 1 of 1: partial" in err
    assert (folder / "partial" / "metrics.json").is_file()


def yaml_seed(run: Path) -> int:
    return yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"]


# ---------------------------------------------------------------- the reading


def test_reading_names_the_winner_and_margin_when_seeds_do_not_overlap():
    text = reading([Score("full", 0.90, 0.01, 3), Score("lora", 0.85, 0.01, 3), Score("partial", 0.80, 0.02, 3)],
                   "accuracy", greater=True)
    assert text.startswith("full wins on validation accuracy")
    assert "0.0500" in text and "runner-up" in text and "lora" in text
    assert "within seed noise" not in text


def test_reading_says_within_seed_noise_when_seeds_overlap():
    scores = [Score("full", 0.90, 0.03, 3), Score("lora", 0.88, 0.02, 3), Score("partial", 0.70, 0.01, 3)]
    text = reading(scores, "accuracy", greater=True)
    assert "within seed noise" in text and "wins" not in text
    assert "full" in text and "lora" in text and "partial" not in text  # partial is clearly behind
    # the boundary: ranges that just touch overlap, a hair further apart they do not
    # (binary fractions, so that "just touch" is exact)
    assert within_noise(Score("a", 0.75, 0.125), Score("b", 0.5, 0.125))
    assert not within_noise(Score("a", 0.75, 0.125), Score("b", 0.49, 0.125))


def test_reading_for_a_lower_is_better_metric_and_for_one_seed():
    text = reading([Score("full", 0.40), Score("lora", 0.35)], "loss", greater=False)
    assert text.startswith("lora wins on validation loss (lower is better)") and "0.0500" in text
    assert "seed noise is not measured" in text  # one seed: no claim about noise either way
    assert "within seed noise" not in reading([Score("full", 0.4), Score("lora", 0.4)], "loss", greater=False)


# ---------------------------------------------------------------- bad input


@pytest.fixture
def cmp_ws(tmp_path, monkeypatch, tiny_bert, toy_data):
    monkeypatch.chdir(tmp_path)
    return tmp_path, write_compare_config(tmp_path, tiny_bert, toy_data)


def test_every_bad_flag_at_once(cmp_ws, capsys):
    root, cfg = cmp_ws
    problems = expect_error(
        capsys, root, "compare", cfg, "--strategies", "full,bitfit,lorra",
        "--set", "partial.freeze_layers=1", "--set", "lora.r", "--set", "r=4", "--seeds", "1,x",
    )
    assert len(problems) == 6, problems
    assert any("'bitfit'" in p and p.startswith("--strategies") for p in problems)
    assert any("'lorra'" in p and "did you mean 'lora'" in p for p in problems)
    assert any("partial.freeze_layers=1" in p and "not compared" in p for p in problems)
    assert any("'lora.r'" in p and "STRATEGY.key=value" in p for p in problems)
    assert any("'r=4'" in p and "STRATEGY.key=value" in p for p in problems)
    assert any(p.startswith("--seeds") for p in problems)
    assert not (root / "cmp").exists()


def test_bad_setting_of_a_compared_strategy_names_it(cmp_ws, capsys):
    root, cfg = cmp_ws
    problems = expect_error(capsys, root, "compare", cfg, "--strategies", "partial,lora",
                            "--set", "partial.freeze_layers=9", "--set", "lora.rank=4")
    assert len(problems) == 2, problems
    assert problems[0].startswith("partial: strategy.freeze_layers:") and "9" in problems[0] and "2 layers" in problems[0]
    assert problems[1].startswith("lora: strategy.rank: unknown key")


def test_existing_output_folder_needs_overwrite(cmp_ws, capsys):
    root, cfg = cmp_ws
    (root / "cmp").mkdir()
    (root / "cmp" / "notes.txt").write_text("an earlier comparison")
    problems = expect_error(capsys, root, "compare", cfg, "--strategies", "full")
    assert len(problems) == 1 and "--overwrite" in problems[0] and "cmp" in problems[0]


def test_a_config_problem_comes_with_the_flag_problems(cmp_ws, capsys):
    root, cfg = cmp_ws
    problems = expect_error(capsys, root, "compare", cfg, "train.epocs=2", "--strategies", "full,auto")
    assert len(problems) == 2, problems
    assert problems[0].startswith("--strategies: auto")
    assert "did you mean 'train.epochs'" in problems[1]
    assert all(not p.startswith(PREFIX) for p in problems)


def test_plan_settings_come_from_the_config_then_defaults_then_set(tiny_bert, toy_data, tmp_path):
    from lmtune.tune.compare import plan

    cfg = write_compare_config(tmp_path, tiny_bert, toy_data)
    with open(cfg, "a", encoding="utf-8") as f:
        f.write("strategy:\n  name: lora\n  r: 4\n")
    p = plan(cfg, strategies="lora,partial,full", sets=["lora.alpha=8"], seeds="3,4")
    by = {(r.strategy, r.seed): r.cfg for r in p.runs}
    assert list(by) == [("lora", 3), ("lora", 4), ("partial", 3), ("partial", 4), ("full", 3), ("full", 4)]
    assert by["lora", 3].strategy.r == 4 and by["lora", 3].strategy.alpha == 8  # the config's, then --set
    assert by["partial", 4].strategy.freeze_layers == 1  # half of the tiny model's 2 layers
    assert by["full", 4].train.seed == 4 and by["full", 4].output_dir == str(tmp_path / "cmp" / "full-seed4")
    p = plan(cfg, strategies="partial", sets=["partial.freeze_layers=0", "partial.freeze_embeddings=false"])
    assert p.runs[0].cfg.strategy.freeze_layers == 0 and not p.runs[0].cfg.strategy.freeze_embeddings
    assert p.runs[0].cfg.train.seed == 42 and p.runs[0].cfg.output_dir == str(tmp_path / "cmp" / "partial")
    assert not (tmp_path / "cmp").exists()  # planning writes nothing


KILLER = '''
import os, signal
import lmtune.training.loop as training
_train = training.train
def train(cfg, *args, **kwargs):
    if cfg.strategy.name == os.environ["LMTUNE_TEST_KILL"]:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer does
    return _train(cfg, *args, **kwargs)
training.train = train
'''


def test_a_run_killed_by_sigkill_is_named_and_the_others_go_on(tiny_bert, toy_data, tmp_path, monkeypatch, capsys):
    """Each run has a process of its own: the one killed (as by the out-of-memory killer) is named as
    such in the log, compare.md and compare.json, and the comparison goes on without it."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILLER)  # (started with every process of the runs)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("LMTUNE_TEST_KILL", "full")
    cfg = write_compare_config(tmp_path, tiny_bert, toy_data, max_steps=1)
    assert main(["compare", cfg, "--strategies", "full,lora", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "compare: run 1 (full) was killed (out of memory?)" in err
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [s["strategy"] for s in result["summaries"]] == ["lora"]
    assert result["failed"] == [{"strategy": "full", "seed": 42, "output_dir": str(tmp_path / "cmp" / "full"),
                                 "reason": "killed (out of memory?)"}]
    assert "Not in the table: full (seed 42) was killed (out of memory?)." in (tmp_path / "cmp" / "compare.md").read_text()
