"""Defaults that depend on the run: data.max_length: auto (the 99th percentile of the training
inputs, capped by the model's positions and the memory rule; fixed blocks and windows) for every
task, and train.lr: null (the strategy's learning rate); both resolved before the run folder is
written, printed, recorded, and resolved again the same way on --resume."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import yaml

import lmtune
from lmtune.cli import main
from lmtune.tasks.run_config import validate
from lmtune.core.errors import LmtuneError
from lmtune.core.models import load_tokenizer
from lmtune.tasks import get_task
from lmtune.tasks.common import AUTO_BATCH_TOKENS
from lmtune.training import strategies
from lmtune.training.loop import resolve_defaults

from .conftest import WORDS, build_tiny_bert, tiny_config

VOCAB = sorted({w for ws in WORDS.values() for w in ws})


def _p99(lengths: list[int], cap: int) -> int:
    """What auto should give, computed here on its own: the percentile rounded up to a multiple of 8, capped."""
    return min(cap, 8 * math.ceil(math.ceil(np.percentile(lengths, 99)) / 8))


def _resolve(raw: dict):
    cfg = validate(raw)
    task = get_task(cfg.task)
    data = task.load_data(cfg)
    cfg, record, notes = resolve_defaults(cfg, task, data, load_tokenizer(cfg.model))
    print("\n".join(notes), file=sys.stderr)  # as the run's log would
    return cfg, record


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _texts(n: int, longest: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(VOCAB, size=int(rng.integers(1, longest + 1)))) for _ in range(n)]


@pytest.fixture(scope="module")
def long_bert(tmp_path_factory):
    """The tiny BERT with room for 1,024 positions (to see the caps other than the model's)."""
    return build_tiny_bert(tmp_path_factory.mktemp("long-bert"), max_positions=1024)


def test_classification_takes_the_99th_percentile_of_the_training_inputs(tiny_bert, toy_data, tmp_path, capfd):
    raw = {"model": str(tiny_bert), "data": {"train": str(toy_data["train"]), "validation": str(toy_data["validation"])},
           "output_dir": str(tmp_path / "r")}
    cfg, record = _resolve(raw)
    texts = [r.split(",")[0] for r in toy_data["train"].read_text().splitlines()[1:]]
    lengths = [len(ids) for ids in load_tokenizer(tiny_bert)(texts)["input_ids"]]  # with [CLS] and [SEP]
    assert cfg.data.max_length == _p99(lengths, 64) == record["max_length"]["value"]
    assert record["max_length"]["longer"] == sum(n > cfg.data.max_length for n in lengths)
    assert f"data.max_length: auto -> {cfg.data.max_length}: the 99th percentile of" in capfd.readouterr().err


def test_auto_is_capped_by_the_models_positions(tiny_bert, tmp_path, capfd):
    train = tmp_path / "t.csv"
    train.write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(_texts(50, 120))))
    cfg, record = _resolve({"model": str(tiny_bert), "data": {"train": str(train), "validation": str(train)},
                            "output_dir": str(tmp_path / "r")})
    assert cfg.data.max_length == 64  # build_tiny_bert: 64 positions
    lengths = [len(ids) for ids in load_tokenizer(tiny_bert)(_texts(50, 120))["input_ids"]]
    assert record["max_length"]["longer"] == sum(n > 64 for n in lengths) > 0
    err = capfd.readouterr().err
    assert "capped at 64 (the model's 64 positions)" in err and f"longer: {record['max_length']['longer']} of 50" in err


def test_auto_is_capped_by_the_memory_rule(tiny_llama, tmp_path, capfd):
    rows = [{"instruction": t, "output": "yes"} for t in _texts(40, 100)]
    batch = 128
    raw = {"model": str(tiny_llama), "task": "causal_lm", "data": {"train": str(_jsonl(tmp_path / "d.jsonl", rows))},
           "train": {"batch_size": batch}, "output_dir": str(tmp_path / "r")}
    cfg, _ = _resolve(raw)
    assert cfg.data.max_length == AUTO_BATCH_TOKENS // batch == 64
    assert f"capped at 64 ({AUTO_BATCH_TOKENS} tokens per batch of {batch}; a smaller train.batch_size" in capfd.readouterr().err


def test_causal_lm_instructions_measure_the_whole_rendered_example(tiny_llama, tmp_path):
    rows = [{"instruction": t, "output": "dog runs ."} for t in _texts(100, 60)]
    raw = {"model": str(tiny_llama), "task": "causal_lm", "data": {"train": str(_jsonl(tmp_path / "d.jsonl", rows))},
           "output_dir": str(tmp_path / "r")}
    cfg, record = _resolve(raw)
    tok = load_tokenizer(tiny_llama)
    # the training part only: 10% of the rows are held out for validation (seed 42)
    data = get_task("causal_lm").load_data(validate(raw))
    lengths = [len(tok.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                            {"role": "assistant", "content": r["output"]}], tokenize=True)["input_ids"])
               for r in data.train.rows]
    assert cfg.data.max_length == _p99(lengths, 256)
    assert record["max_length"]["examples"] == 90 and record["max_length"]["longer"] == sum(n > cfg.data.max_length for n in lengths)


def test_packed_instructions_get_rows_of_a_block_not_of_one_example(tiny_llama, tmp_path, capfd):
    rows = [{"instruction": t, "output": "dog runs ."} for t in _texts(100, 20)]
    raw = {"model": str(tiny_llama), "task": "causal_lm", "data": {"train": str(_jsonl(tmp_path / "d.jsonl", rows))},
           "output_dir": str(tmp_path / "r")}
    unpacked, _ = _resolve(raw)
    assert unpacked.data.max_length < 64  # one example's length: a packed row that long holds one example
    raw["data"]["packing"] = True
    cfg, record = _resolve(raw)
    assert cfg.data.max_length == 256 and record["max_length"]["longer"] == 0
    assert "packed rows of 256 tokens, several examples to a row (the 99th percentile" in capfd.readouterr().err
    raw["train"] = {"batch_size": 64}  # the memory rule still caps the row: 8192 / 64
    assert _resolve(raw)[0].data.max_length == 128


@pytest.mark.parametrize("task, expected", [("masked_lm", 64), ("causal_lm", 256)])
def test_blocks_are_256_tokens_capped(tiny_bert, tiny_llama, tmp_path, task, expected):
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(_texts(30, 40)))
    model = tiny_bert if task == "masked_lm" else tiny_llama  # 64 and 256 positions
    raw = {"model": str(model), "task": task, "data": {"train": str(text)}, "output_dir": str(tmp_path / "r")}
    cfg, record = _resolve(raw)
    assert cfg.data.max_length == expected and record["max_length"]["longer"] is None  # blocks cut nothing
    raw["train"] = {"batch_size": 64}  # the memory rule: 8192 / 64
    assert _resolve(raw)[0].data.max_length == min(expected, 128)


def test_blocks_on_a_model_with_room_are_256(long_bert, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(_texts(30, 40)))
    cfg, _ = _resolve({"model": str(long_bert), "task": "masked_lm", "data": {"train": str(text)}, "output_dir": str(tmp_path / "r")})
    assert cfg.data.max_length == 256


@pytest.mark.parametrize("longest, window", [(40, None), (600, 384)])
def test_question_answering_windows_are_the_percentile_at_most_384(long_bert, tmp_path, longest, window):
    rows = []
    for i, context in enumerate(_texts(40, longest, seed=1)):
        word = context.split()[-1]
        rows.append({"question": "good ?", "context": context,
                     "answers": {"text": [word], "answer_start": [context.rindex(word)]}})
    raw = {"model": str(long_bert), "task": "question_answering", "data": {"train": str(_jsonl(tmp_path / "q.jsonl", rows))},
           "train": {"batch_size": 16}, "output_dir": str(tmp_path / "r")}  # (the memory rule: up to 512)
    cfg, _ = _resolve(raw)
    data = get_task("question_answering").load_data(validate(raw))
    enc = load_tokenizer(long_bert)([r["question"] for r in data.train.rows], [r["context"] for r in data.train.rows])
    expected = _p99([len(ids) for ids in enc["input_ids"]], 384)
    assert cfg.data.max_length == expected == (window or expected)


def test_token_classification_takes_the_percentile_of_the_sentences(tiny_bert, tmp_path):
    rows = [{"tokens": t.split(), "tags": ["B-X"] + ["O"] * (len(t.split()) - 1)} for t in _texts(60, 30, seed=2)]
    raw = {"model": str(tiny_bert), "task": "token_classification",
           "data": {"train": str(_jsonl(tmp_path / "n.jsonl", rows)), "validation": str(tmp_path / "n.jsonl")},
           "output_dir": str(tmp_path / "r")}
    cfg, _ = _resolve(raw)
    lengths = [len(ids) for ids in load_tokenizer(tiny_bert)([r["tokens"] for r in rows], is_split_into_words=True)["input_ids"]]
    assert cfg.data.max_length == _p99(lengths, 64)


def test_an_integer_max_length_is_kept(tiny_bert, toy_data, tmp_path):
    raw = {"model": str(tiny_bert), "data": {"train": str(toy_data["train"]), "max_length": 12}, "output_dir": str(tmp_path / "r")}
    cfg, record = _resolve(raw)
    assert cfg.data.max_length == 12 and record["max_length"] == {"setting": 12, "value": 12}


@pytest.mark.parametrize("value, message", [
    ("abc", "data.max_length: expected auto or a whole number of tokens from 8 to 65536 (got 'abc')"),
    (4, "data.max_length: expected auto or a whole number of tokens from 8 to 65536 (got 4)"),
    (12.5, "data.max_length: expected auto or a whole number of tokens from 8 to 65536 (got 12.5)"),
])
def test_a_bad_max_length_is_one_line(tiny_bert, toy_data, tmp_path, capsys, value, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_bert), "output_dir": str(tmp_path / "run"),
                                   "data": {"train": str(toy_data["train"]), "max_length": value}}))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lmtune: error: {message}"]
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- in the run folder, and on --resume


class Killed(Exception):
    pass


def test_an_auto_run_records_its_numbers_and_resumes(tiny_bert, toy_data, tmp_path, capfd):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=1, eval_steps=4)
    del cfg["train"]["lr"]  # the strategy's default, and data.max_length: auto

    def kill(step, metrics):
        if step >= 8:
            raise Killed

    with pytest.raises(Killed):
        lmtune.train(cfg, progress=False, on_evaluate=kill)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert isinstance(saved["data"]["max_length"], int) and saved["data"]["max_length"] == data["resolved"]["max_length"]["value"]
    assert saved["train"]["lr"] == data["resolved"]["lr"]["value"] == strategies.DEFAULT_LR["full"] == 5e-5
    assert data["resolved"]["max_length"]["setting"] == "auto" and data["resolved"]["lr"]["setting"] is None
    assert "train.lr: 5e-05 (the default for strategy full)" in capfd.readouterr().err
    # the same config (auto, no lr) resumes: it resolves to the same numbers
    result = lmtune.train(cfg, progress=False, resume=True)
    assert result.metrics["train"]["steps"] == 12
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == saved
    # a resolved value that differs is a changed config
    (tmp_path / "run" / "metrics.json").unlink()
    cfg["data"]["max_length"] = saved["data"]["max_length"] - 8
    with pytest.raises(LmtuneError, match="data.max_length"):
        lmtune.train(cfg, progress=False, resume=True)


def test_lora_gets_its_own_learning_rate(tiny_llama, tmp_path, capfd):
    train = _jsonl(tmp_path / "d.jsonl", [{"instruction": t, "output": "dog runs ."} for t in _texts(16, 10)])
    cfg = {"model": str(tiny_llama), "task": "causal_lm", "output_dir": str(tmp_path / "run"),
           "data": {"train": str(train), "validation": str(train)}, "strategy": {"name": "lora", "r": 2},
           "train": {"epochs": 1, "batch_size": 8, "precision": "fp32"}, "eval": {"generate_rows": 0}}
    result = lmtune.train(cfg, progress=False)
    saved = yaml.safe_load((result.output_dir / "config.yaml").read_text())
    assert saved["train"]["lr"] == strategies.DEFAULT_LR["lora"] == 2e-4
    err = capfd.readouterr().err
    assert "train.lr: 0.0002 (the default for strategy lora)" in err and "trainable" in err and "lr 0.0002" in err
    # the optimizer ran at it: the scheduler's peak is the resolved value
    assert max(h["lr"] for h in result.history if "lr" in h) <= 2e-4
