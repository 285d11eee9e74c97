"""lmtune report: run folders written by hand (config, history, metrics with a diagnosis, validation
samples) for each task, the HTML parsed back; and each task's validation_samples on tiny outputs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from lmtune.cli import main
from lmtune.tasks import get_task
from lmtune.core.errors import LmtuneError
from lmtune.data.readers import Table
from lmtune.report import write_report, write_run_report

PNG = b"\x89PNG\r\n\x1a\n"
SCRIPT = "<script>alert('x')</script>"

TASKS: dict[str, dict[str, Any]] = {
    "classification": {
        "data": {"train": "train.csv"}, "metric": "accuracy", "labels": ["neg", "pos", "neutral"],
        "validation": {"accuracy": 0.7, "f1_macro": 0.6, "loss": 0.5, "per_class": {
            "neg": {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 10},
            "pos": {"precision": 0.6, "recall": 0.9, "f1": 0.72, "support": 8},
            "neutral": {"precision": 0.1, "recall": 0.2, "f1": 0.13, "support": 2}}},
        "samples": [{"text": f"{SCRIPT} very bad", "label": "neg", "predicted": "pos", "confidence": 0.97},
                    {"text": "fine film", "label": "pos", "predicted": "pos", "confidence": 0.8},
                    {"text": "meh & so", "label": "neutral", "predicted": "neg", "confidence": 0.55}],
        "headings": {"Confusion matrix", "Most confident errors (top 2 of 2)", "Per class: precision, recall, F1",
                     "Validation metrics", "Training sample vs validation"},
    },
    "token_classification": {
        "data": {"train": "train.conll"}, "metric": "f1", "labels": ["O", "B-PER", "I-PER", "B-LOC"],
        # per-class F1 under sklearn's name "f1-score", as runs wrote it before it became "f1"
        "validation": {"f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.9, "loss": 0.3, "per_class": {
            "LOC": {"precision": 0.4, "recall": 0.5, "f1-score": 0.44, "support": 3},
            "PER": {"precision": 0.6, "recall": 0.5, "f1-score": 0.55, "support": 4}}},
        "samples": [{"tokens": ["Ann", "lives", "in", SCRIPT], "gold": ["B-PER", "O", "O", "B-LOC"],
                     "predicted": ["B-PER", "O", "O", "O"]},
                    {"tokens": ["Bob", "Lee"], "gold": ["B-PER", "I-PER"], "predicted": ["B-PER", "I-PER"]}],
        "headings": {"Per entity type: precision, recall, F1", "Sentences: gold vs predicted entities"},
    },
    "question_answering": {
        "data": {"train": "train.json"}, "metric": "f1", "labels": [],
        "validation": {"f1": 0.6, "exact_match": 0.5, "loss": 1.2},
        "samples": [{"question": f"who {SCRIPT}?", "context": "Ann met Bob in Paris.", "answers": ["Bob"],
                     "predicted": "Paris", "f1": 0.0},
                    {"question": "where?", "context": "Ann met Bob in Paris.", "answers": ["Paris"], "predicted": "Paris", "f1": 1.0}],
        "headings": {"Answers vs gold"},
    },
    "causal_lm": {
        "data": {"train": "train.jsonl"}, "metric": "loss", "labels": [],
        "validation": {"loss": 2.0, "perplexity": 7.39, "rouge1": 0.3, "bleu": 0.1},
        "samples": [{"prompt": f"say {SCRIPT}", "reference": "hello", "generated": "hello there", "finished": True}],
        "headings": {"Perplexity", "Generations vs references", "Forgetting"},
    },
    "masked_lm": {
        "data": {"train": "train.txt"}, "metric": "loss", "labels": [],
        "validation": {"loss": 2.5, "perplexity": 12.2}, "samples": [],
        "headings": {"Perplexity", "Forgetting"},
    },
    "preference": {
        "data": {"train": "pairs.jsonl"}, "metric": "reward_accuracy", "labels": [],
        "validation": {"reward_accuracy": 0.75, "reward_margin": 0.4, "loss": 0.55, "chosen_logps": -40.0,
                       "rejected_logps": -52.0, "pairs": 4},
        "samples": [{"line": 1, "chosen_logps": -30.0, "rejected_logps": -45.0, "chosen_reward": 0.5, "rejected_reward": -0.2},
                    {"line": 2, "chosen_logps": -50.0, "rejected_logps": -41.0, "chosen_reward": -0.3, "rejected_reward": 0.1}],
        "headings": {"Validation metrics", "Chosen vs rejected", "Validation pairs: chosen vs rejected"},
    },
}


def make_run(folder: Path, task: str, *, seed: int = 0, finished: bool = True, samples: bool = True) -> Path:
    """A run folder as training writes it: config.yaml, history.jsonl (step records with lrs, evaluation
    records with train_eval and, for language models, forgetting), metrics.json with a diagnosis, and
    validation_samples.jsonl."""
    spec = TASKS[task]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    cfg = get_task(task).config.model_validate({"model": "tiny-model", "task": task, "data": spec["data"], "output_dir": str(folder),
                                    "strategy": {"name": "adaptive"}, "train": {"lr": 3e-5, "epochs": 2, "seed": seed}})
    (folder / "config.yaml").write_text(cfg.to_yaml())
    (folder / "data.json").write_text(json.dumps({"labels": spec["labels"]}))
    metric, lm = spec["metric"], task in ("causal_lm", "masked_lm")
    lines = []
    for step in range(1, 21):
        lrs = {"head": 3e-5 * (1 - step / 25), "head.no_decay": 3e-5 * (1 - step / 25)}
        for i in range(4):
            lrs[f"layer.{i}"] = lrs["head"] * 0.8 ** (3 - i)
            lrs[f"layer.{i}.no_decay"] = lrs[f"layer.{i}"] * (1.0 if i else 0.5)  # one twin differs
        lines.append({"step": step, "epoch": step / 10, "loss": float(1.5 / step + rng.random() * 0.05), "lr": lrs["head"],
                      "lrs": lrs, "samples_per_second": 100 + float(rng.random()), "tokens_per_second": 4000.0})
        if step % 5 == 0:
            val = {k: v for k, v in spec["validation"].items() if k != "per_class"}
            record: dict[str, Any] = {"step": step, "epoch": step / 10, "eval": {k: v * (1 + step / 100) for k, v in val.items()},
                                      "train_eval": {k: v * (1 + step / 50) for k, v in val.items()}}
            if lm:
                record["forgetting"] = {"perplexity": 30.0 + step, "base_perplexity": 30.0, "change": step / 30}
            lines.append(record)
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if finished:
        metrics = {"validation": spec["validation"], "train_sample": {k: v for k, v in spec["validation"].items() if k != "per_class"},
                   "train": {"steps": 20, "samples": 640, "seconds": 12.5, "samples_per_second": 51.2, "tokens_per_second": 2000.0,
                             "best_step": 15, "stopped_early": False, "trainable_parameters": 1000, "parameters": 4000,
                             "peak_memory_mb": 321.0},
                   "diagnosis": {"verdict": "overfitting", "reasons": [f"the gap grew {SCRIPT}"],
                                 "advice": ["lower train.lr", "more data"],
                                 "metric": metric, "greater_is_better": metric != "loss", "evaluations": 4,
                                 "best": {"step": 15, "epoch": 1.5, "validation": 0.7, "gap": 0.1},
                                 "last": {"step": 20, "epoch": 2.0, "validation": 0.65, "gap": 0.2},
                                 "stopped_improving_epoch": 1.5, "gap_grew": True}}
        if lm:
            metrics["forgetting"] = {"perplexity": 50.0, "base_perplexity": 30.0, "change": 0.66}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if samples and spec["samples"]:
        (folder / "validation_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in spec["samples"]))
    return folder


class Page(HTMLParser):
    """What the tests look at in a report: headings, images, the text of each table cell."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "h3", "td", "th"):
            self._in, self._buf = tag, ""
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag == "script":
            raise AssertionError("a <script> element in the report")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            (self.headings if tag in ("h2", "h3") else self.cells).append(self._buf.strip())
            self._in = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in:
            self._buf += data


def _pngs(page: Page) -> list[bytes]:
    out = []
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        out.append(base64.b64decode(src.split(",", 1)[1]))
    return out


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each task's run folder with its report written (once: drawing is the slow part)."""
    out = {}
    for task in TASKS:
        run = make_run(tmp_path_factory.mktemp(task) / "run", task)
        assert write_run_report(run) == run / "report.html"
        out[task] = run
    return out


@pytest.mark.parametrize("task", list(TASKS))
def test_run_report_has_the_task_sections(task, reports):
    run = reports[task]
    out = run / "report.html"
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    common = {"Run", "Diagnosis", "Final metrics", "Loss", "Learning rate per parameter group", "Throughput",
              "Why", "What to try", "Best vs last evaluation"}
    assert common | TASKS[task]["headings"] <= set(page.headings), set(page.headings)
    pngs = _pngs(page)
    assert pngs and all(p.startswith(PNG) for p in pngs)
    files = sorted((run / "report_files").glob("*.png"))
    assert len(files) == len(pngs) and {f.read_bytes() for f in files} == set(pngs)
    # text from the run is escaped: it shows as text, never as markup
    assert SCRIPT not in text and "&lt;script&gt;" in text
    assert any(SCRIPT in c for c in page.text)
    assert "overfitting" in page.text and "lower train.lr" in page.text
    assert "stopped improving epoch" in page.cells and "Details" in page.headings
    assert "validation" in page.cells and "train sample" in page.cells


def test_paired_metrics_get_a_figure_of_their_own_and_the_wrongly_ranked_pair_comes_first(reports):
    run = reports["preference"]
    figures = {p.name for p in (run / "report_files").glob("*.png")}
    assert {"validation_metrics.png", "paired_metrics.png"} <= figures
    from lmtune.report import plots
    from lmtune.report.read import read_run

    assert plots.metric_pairs(["reward_accuracy", "chosen_logps", "rejected_logps", "chosen_x"]) == [
        ("chosen_logps", "rejected_logps")]
    drawn = plots.validation_metrics(read_run(run)).axes[0].get_legend_handles_labels()[1]
    assert drawn == ["reward_accuracy", "reward_margin"]  # the log-probabilities are drawn beside each other instead
    page = Page((run / "report.html").read_text(encoding="utf-8"))
    table = page.cells[page.cells.index("margin") + 1:]
    assert table[:6] == ["2", "-50", "-41", "-0.3", "0.1", "-0.4"]  # rejected ahead: shown first


def test_classification_lists_labels_and_most_confident_error_first(reports):
    page = Page((reports["classification"] / "report.html").read_text())
    for label in ("neg", "pos", "neutral"):
        assert page.cells.count(label) >= 3  # confusion matrix row and column, per-class table
    errors = page.cells.index("gold") - 1  # the errors table: text, gold, predicted, confidence
    assert page.cells[errors:errors + 4] == ["text", "gold", "predicted", "confidence"]
    first = page.cells[errors + 4]
    assert first == f"{SCRIPT} very bad"  # confidence 0.97 before 0.55


@pytest.mark.parametrize(("task", "row"), [("classification", ["neg", "0.8", "0.7", "0.75", "10"]),
                                          ("token_classification", ["LOC", "0.4", "0.5", "0.44", "3"])])
def test_per_class_table_shows_f1_under_its_new_and_its_old_name(task, row, reports):
    page = Page((reports[task] / "report.html").read_text())
    header = page.cells.index("F1")
    assert page.cells[header - 3 : header + 2][1:] == ["precision", "recall", "F1", "support"]
    first = header + 2  # the first class's row, after the header's last cell
    assert page.cells[first : first + 5] == row


def test_learning_rates_leave_out_equal_no_decay_twins():
    from lmtune.report.plots import lr_groups

    steps = [{"step": s, "lrs": {"head": 0.1 * s, "head.no_decay": 0.1 * s, "layer.1": 1.0, "layer.10": 2.0,
                                 "layer.2": 3.0, "layer.2.no_decay": 9.0}} for s in (1, 2)]
    assert list(lr_groups(steps)) == ["head", "layer.1", "layer.2", "layer.2.no_decay", "layer.10"]


def test_missing_optional_files_leave_sections_out(tmp_path):
    run = make_run(tmp_path / "old", "classification", finished=False, samples=False)
    page = Page(write_report([run], tmp_path / "r.html").read_text())
    assert "Loss" in page.headings and "Run" in page.headings
    for absent in ("Diagnosis", "Final metrics", "Confusion matrix"):
        assert absent not in page.headings
    assert "unfinished (no metrics.json yet)" in page.cells
    (run / "history.jsonl").write_text('{"step": 1, "epoch": 0.1, "loss": 1.0}\n{"step": 2, "ep')  # cut short: still writing
    Page(write_report([run], tmp_path / "r.html", overwrite=True).read_text())


def test_several_runs_are_overlaid_and_tabled(tmp_path):
    a = make_run(tmp_path / "a", "classification", seed=1)
    b = make_run(tmp_path / "b", "classification", seed=2)
    out = write_report([a, b], tmp_path / "both.html")
    page = Page(out.read_text())
    assert {"Comparison", "Validation accuracy", "Validation loss", "Training loss"} <= set(page.headings)
    assert {"a", "b"} <= set(page.cells)
    assert "train.seed" in page.cells  # the setting that differs
    assert (tmp_path / "both_files" / "overlay_metric.png").read_bytes().startswith(PNG)
    assert all(p.startswith(PNG) for p in _pngs(page))


def test_search_and_compare_folders_expand_into_their_runs(tmp_path):
    search = tmp_path / "search"
    search.mkdir()
    (search / "search.yaml").write_text("model: x\n")
    for n in (0, 1):
        make_run(search / "trials" / f"{n:04d}", "classification", seed=n)
    (search / "trials.csv").write_text("trial,state,accuracy\n0,complete,0.7\n1,pruned,0.5\n")
    page = Page(write_report([search], tmp_path / "s.html").read_text())
    assert {"trial 0000", "trial 0001", "complete", "pruned"} <= set(page.cells)

    compare = tmp_path / "compare"
    for name in ("lora", "full"):
        make_run(compare / name, "classification")
    (compare / "compare.json").write_text(json.dumps({"runs": [{"output_dir": "runs/compare/lora"},
                                                               {"output_dir": "runs/compare/full"}]}))
    page = Page(write_report([compare, search], tmp_path / "c.html").read_text())
    names = [c for c in page.cells if "/" in c and c != "samples/s"]
    assert names == ["compare/lora", "compare/full", "search/trial 0000", "search/trial 0001"]


def test_not_a_run_folder_is_an_error_naming_it(tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(LmtuneError, match="nothing: not a run folder"):
        write_report([empty], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(empty) in err[0]
    bad = make_run(tmp_path / "bad", "classification")
    (bad / "history.jsonl").write_text("not json\n{}\n")
    with pytest.raises(LmtuneError, match=r"history.jsonl:1: not a JSON record"):
        write_report([bad], tmp_path / "r.html")


def test_cli_writes_prints_and_respects_overwrite(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / "run", "classification", samples=False)
    (run / "history.jsonl").unlink()  # (no curves to draw: a quick report)
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    # a run's own report (training wrote one) is drawn again from the run's files
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    other = make_run(tmp_path / "other", "classification", seed=3, samples=False)
    (other / "history.jsonl").unlink()
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(run), str(other)]) == 0
    assert capsys.readouterr().out.strip() == "report.html"
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report_files").is_dir()
    # a report file of the user's own is replaced only when asked
    assert main(["report", str(run), str(other)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["report", str(run), str(other), "--overwrite"]) == 0
    assert capsys.readouterr().out.strip() == "report.html"
    assert main(["report", str(run), "-o", str(tmp_path / "x" / "mine.html")]) == 0
    assert (tmp_path / "x" / "mine_files").is_dir()


def test_cli_exit_code_in_a_subprocess(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lmtune", "report", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "missing: no such folder" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- the tasks' validation_samples


def test_classification_validation_samples():
    from lmtune.tasks import classification

    cfg = SimpleNamespace(data=SimpleNamespace(text_column="text", text_pair_column="pair", label_column="label"))
    table = Table(Path("v.csv"), ["text", "pair", "label"],
                  [{"text": "a", "pair": "x", "label": "no"}, {"text": "b", "pair": "y", "label": "yes"}], [2, 3])
    logits = np.array([[0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    rows = classification.validation_samples({"logits": logits, "references": np.array([0, 1])}, ["no", "yes"], cfg, None, table)
    assert [r["predicted"] for r in rows] == ["yes", "no"] and [r["label"] for r in rows] == ["no", "yes"]
    assert rows[0]["confidence"] == pytest.approx(np.exp(2) / (1 + np.exp(2)), abs=1e-5)
    assert rows[1]["confidence"] == pytest.approx(0.5) and rows[0]["text_pair"] == "x"
    with pytest.raises(LmtuneError, match="2 validation rows but 1"):
        classification.validation_samples({"logits": logits[:1], "references": np.array([0])}, ["no", "yes"], cfg, None, table)


def test_token_classification_validation_samples_merge_windows():
    from lmtune.tasks import token_classification as tc

    labels = ["O", "B-PER", "I-PER"]
    table = Table(Path("v.jsonl"), ["tokens", "tags"], [{"tokens": ["Ann", "Lee", "ran"], "tags": ["B-PER", "I-PER", "O"]},
                                                       {"tokens": ["ok"], "tags": ["O"]}], [1, 2])
    # sentence 0 in two windows (words 0-1, then word 2), sentence 1 in one; positions 1.. hold the words
    features = [{"_sentence": 0, "_words": [(1, 0), (2, 1)]}, {"_sentence": 0, "_words": [(1, 2)]},
                {"_sentence": 1, "_words": [(1, 0)]}]
    ignore = tc.IGNORE
    refs = np.array([[ignore, 1, 2], [ignore, 0, ignore], [ignore, 0, ignore]])
    preds = np.array([[ignore, 1, 0], [ignore, 1, ignore], [ignore, 0, ignore]])
    rows = tc.validation_samples({"references": refs, "predictions": preds}, labels, None, features, table)
    assert rows == [{"tokens": ["Ann", "Lee", "ran"], "gold": ["B-PER", "I-PER", "O"], "predicted": ["B-PER", "O", "B-PER"]},
                    {"tokens": ["ok"], "gold": ["O"], "predicted": ["O"]}]
    # the metrics read the same tags
    y_true, y_pred = tc.sentence_tags({"references": refs, "predictions": preds}, labels, features)
    assert y_pred == [r["predicted"] for r in rows]


def test_question_answering_validation_samples():
    from lmtune.tasks import question_answering as qa

    context = "x" * 400 + " Paris is big. " + "y" * 400
    start = context.index("Paris")
    table = qa.QuestionTable(Path("v.json"), [{"id": "1", "question": "where?", "context": context,
                                               "answers": [{"text": "Paris", "start": start}], "group": "g"}], ["v.json: 1"])
    offsets = [None, (start, start + 5), (start + 6, start + 8), None]
    features = [{"_example": 0, "_offsets": offsets, "_cls": 0, "_context": context, "_answers": ["Paris"]}]
    start_logits = np.array([[0.0, 5.0, 0.0, -1e4]], dtype=np.float32)
    end_logits = np.array([[0.0, 5.0, 1.0, -1e4]], dtype=np.float32)
    cfg = SimpleNamespace(data=SimpleNamespace(max_answer_length=30))
    rows = qa.validation_samples({"start_logits": start_logits, "end_logits": end_logits}, [], cfg, features, table)
    assert len(rows) == 1 and rows[0]["predicted"] == "Paris" and rows[0]["answers"] == ["Paris"] and rows[0]["f1"] == 1.0
    assert "Paris" in rows[0]["context"] and len(rows[0]["context"]) <= qa.SAMPLE_CONTEXT_CHARS + 6
    assert rows[0]["context"].startswith("...") and rows[0]["context"].endswith("...")
    metrics = qa.compute_metrics({"start_logits": start_logits, "end_logits": end_logits}, [], cfg, features)
    assert metrics["exact_match"] == 1.0


def test_language_model_validation_samples_are_empty():
    from lmtune.tasks import causal_lm, masked_lm

    outputs = {"loss_sum": np.array([2.0]), "tokens": np.array([2])}
    assert causal_lm.validation_samples(outputs, [], None, None, None) == []
    assert masked_lm.validation_samples(outputs, [], None, None, None) == []


def test_causal_lm_extra_metrics_return_samples(monkeypatch):
    from lmtune.tasks import causal_lm

    generated = [SimpleNamespace(text="hi there", finish_reason="stop"), SimpleNamespace(text="yo", finish_reason="length")]
    monkeypatch.setattr(causal_lm, "generate", lambda model, tokenizer, prompts, settings, progress=None: generated)
    tokenizer = SimpleNamespace(chat_template=None, eos_token="</s>")
    cfg = get_task("causal_lm").config.model_validate({"model": "x", "task": "causal_lm", "data": {"train": "t.jsonl"},
                                    "eval": {"generate_rows": 2}})
    rows = [{"instruction": "say hi", "output": "hi"}, {"instruction": "say yo", "output": "yo"}]
    data = SimpleNamespace(shape="instruction", validation=Table(Path("v.jsonl"), ["instruction", "output"], rows, [1, 2]))
    model = SimpleNamespace(training=False, eval=lambda: None, train=lambda mode: None)
    out = causal_lm.extra_metrics(model, tokenizer, data, cfg)
    assert out["generated_rows"] == 2 and out["hit_token_limit"] == 0.5
    assert [(s["reference"], s["generated"], s["finished"]) for s in out["samples"]] == [("hi", "hi there", True), ("yo", "yo", False)]
    assert out["samples"][0]["prompt"].endswith("### Assistant:\n")
