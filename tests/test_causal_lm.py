"""Causal LM on a tiny random Llama: loss masks, packing, data shapes, LoRA, generation, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lmtune
from lmtune.cli import main
from lmtune.config import validate
from lmtune.data.readers import Table
from lmtune.errors import LmtuneError
from lmtune.models import load_tokenizer
from lmtune.tasks import causal_lm

CHATS = [
    {"messages": [{"role": "user", "content": "what does a flat fix cost ?"},
                  {"role": "assistant", "content": "twelve euro please ."}]},
    {"messages": [{"role": "system", "content": "hi"}, {"role": "user", "content": "when do you open ?"},
                  {"role": "assistant", "content": "at nine on tuesday ."}, {"role": "user", "content": "sunday ?"},
                  {"role": "assistant", "content": "no , closed ."}]},
    {"conversations": [{"from": "human", "value": "do you rent bikes ?"}, {"from": "gpt", "value": "yes , twelve euro ."}]},
]
INSTRUCTIONS = [
    {"instruction": "translate", "input": "the cat sits", "output": "ein cat sits"},
    {"instruction": "summarize", "input": "the dog runs the cat sits", "output": "dog runs"},
    {"instruction": "what price ?", "input": "", "output": "twelve euro"},
]


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _cfg(model, tmp_path, train, **data):
    return {
        "model": str(model), "task": "causal_lm", "output_dir": str(tmp_path / "run"),
        "data": {"train": str(train), "validation": str(train), "max_length": 64, **data},
        "train": {"epochs": 2, "batch_size": 2, "lr": 1e-2, "precision": "fp32", "log_steps": 1},
        "eval": {"generate_rows": 2, "max_new_tokens": 6},
    }


def _features(tiny_llama, tmp_path, rows, **data):
    cfg = validate(_cfg(tiny_llama, tmp_path, _jsonl(tmp_path / "d.jsonl", rows), **data))
    table = Table(tmp_path / "d.jsonl", list(rows[0]), rows, list(range(1, len(rows) + 1)))
    return causal_lm.prepare(table, load_tokenizer(tiny_llama), cfg, [])[0], load_tokenizer(tiny_llama)


def test_trained_positions_are_exactly_the_assistant_tokens(tiny_llama, tmp_path):
    features, tok = _features(tiny_llama, tmp_path, CHATS)
    for feature, row in zip(features, CHATS):
        trained = [i for i, lab in zip(feature["input_ids"], feature["labels"]) if lab != -100]
        turns = [m.get("content", m.get("value")) for m in row.get("messages", row.get("conversations"))
                 if m.get("role", m.get("from")) in ("assistant", "gpt")]
        expected = []
        for turn in turns:
            expected += tok(turn, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
        assert trained == expected
        # the labels are the input ids where trained
        assert all(lab in (-100, i) for i, lab in zip(feature["input_ids"], feature["labels"]))


def test_train_on_prompt_trains_everything(tiny_llama, tmp_path):
    features, _ = _features(tiny_llama, tmp_path, CHATS, train_on_prompt=True)
    assert all(f["labels"] == f["input_ids"] for f in features)


def test_instruction_rows_become_a_user_and_an_assistant_turn(tiny_llama, tmp_path):
    features, tok = _features(tiny_llama, tmp_path, INSTRUCTIONS)
    text = tok.decode(features[0]["input_ids"])
    assert "translate" in text and "the cat sits" in text
    assert tok.decode([i for i, lab in zip(features[0]["input_ids"], features[0]["labels"]) if lab != -100]) == "ein cat sits <|im_end|>"


def test_prompt_template_over_columns(tiny_llama, tmp_path):
    rows = [{"dialogue": "the dog runs", "summary": "dog runs"}] * 3
    features, tok = _features(tiny_llama, tmp_path, rows, prompt_template="summarize : {dialogue}", response_column="summary")
    assert "summarize : the dog runs" in tok.decode(features[0]["input_ids"])


def _loss(model, batch):
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_loss_equals_unpacked_loss(tiny_llama, tmp_path, attention):
    from transformers import AutoModelForCausalLM

    plain, tok = _features(tiny_llama, tmp_path, CHATS)
    packed, _ = _features(tiny_llama, tmp_path, CHATS, packing=True, max_length=256)
    assert len(packed) == 1 and "position_ids" in packed[0]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation=attention).eval()
    model.config.use_cache = False
    collate = causal_lm.Collator(tok.pad_token_id)
    unpacked_batch = collate(plain)
    packed_batch = collate(packed)
    unpacked_batch.pop("num_tokens"), packed_batch.pop("num_tokens")
    assert "attention_mask" not in packed_batch
    # the model's loss is the mean over trained tokens in both layouts
    assert _loss(model, packed_batch) == pytest.approx(_loss(model, unpacked_batch), abs=1e-5)
    # and per token: the packed logits of each example equal its logits alone (no cross-attention)
    starts = [i for i, p in enumerate(packed[0]["position_ids"]) if p == 0] + [len(packed[0]["input_ids"])]
    assert len(starts) - 1 == len(CHATS)
    with torch.no_grad():
        packed_logits = model(**{k: v for k, v in packed_batch.items() if k != "labels"}).logits[0]
        for a, b in zip(starts, starts[1:]):
            alone = model(input_ids=torch.tensor([packed[0]["input_ids"][a:b]])).logits[0]
            torch.testing.assert_close(packed_logits[a:b], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("packing", [False, True])
def test_trained_logits_only_gives_the_same_loss(tiny_llama, tmp_path, packing):
    """The LM head runs only where a trained token is predicted; loss and eval sums are unchanged."""
    from transformers import AutoModelForCausalLM

    features, tok = _features(tiny_llama, tmp_path, CHATS * 2, packing=packing, max_length=128)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    model.config.use_cache = False
    full = causal_lm.Collator(tok.pad_token_id)(features)
    sliced = causal_lm.collator(tok, None, model)(features)
    assert "logits_to_keep" in sliced and "logits_to_keep" not in full
    full.pop("num_tokens"), sliced.pop("num_tokens")
    assert _loss(model, sliced) == pytest.approx(_loss(model, full), abs=1e-5)
    with torch.no_grad():
        a, b = causal_lm.eval_step(model, full), causal_lm.eval_step(model, sliced)
    torch.testing.assert_close(a["loss_sum"], b["loss_sum"], atol=1e-4, rtol=1e-5)
    assert torch.equal(a["tokens"], b["tokens"])
    with torch.no_grad():  # fewer logits were computed
        assert model(**{k: v for k, v in sliced.items() if k != "labels"}).logits.shape[0] == int(sliced["logits_to_keep"].sum())


def test_chat_training_lowers_the_loss_and_generates(tiny_llama, tmp_path, capsys):
    train = _jsonl(tmp_path / "chat.jsonl", CHATS * 8)
    result = lmtune.train(_cfg(tiny_llama, tmp_path, train, packing=True), progress=False)
    evals = [h["eval"]["loss"] for h in result.history if "eval" in h]
    assert evals[-1] < evals[0]
    metrics = result.metrics["validation"]
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["loss"]), rel=1e-6)
    assert {"rouge1", "rouge2", "rougeL", "bleu", "chrf"} <= set(metrics) and metrics["generated_rows"] == 2
    assert result.metrics["train"]["tokens_per_second"] > 0
    assert main(["generate", str(tmp_path / "run"), "--prompt", "what does a flat fix cost ?", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()
    # eval on a file gives the same loss as the run's own validation
    assert main(["eval", str(tmp_path / "run"), str(train)]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["loss"] == pytest.approx(metrics["loss"], rel=1e-4)
    assert evaluated["examples"] == len(CHATS) * 8
    # predict generates for each row, with the reference beside it
    out = tmp_path / "gen.jsonl"
    assert main(["predict", str(tmp_path / "run"), str(train), "-o", str(out), "--max-new-tokens", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(CHATS) * 8 and all("generation" in r and "reference" in r for r in rows)
    assert isinstance(lmtune.load(str(tmp_path / "run")).generate("hi", max_new_tokens=2), str)


def test_plain_text_is_cut_into_blocks(tiny_llama, tmp_path):
    text = tmp_path / "manual.txt"
    text.write_text(("the bike chain is red . " * 30 + "\n\n") * 4)
    cfg = _cfg(tiny_llama, tmp_path, text, max_length=32)
    cfg["data"]["validation"] = None
    result = lmtune.train(cfg, progress=False)
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert "data shape: text" in data["notes"]
    assert result.metrics["validation"]["tokens"] > 0 and "rouge1" not in result.metrics["validation"]


def test_lora_changes_only_adapters_and_merges_to_the_same_logits(tiny_llama, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lmtune.generation import Generator
    from lmtune.predict import export

    train = _jsonl(tmp_path / "chat.jsonl", CHATS * 4)
    cfg = _cfg(tiny_llama, tmp_path, train)
    cfg["strategy"] = {"name": "lora", "r": 4, "alpha": 8}
    result = lmtune.train(cfg, progress=False)
    adapter = load_file(str(result.output_dir / "model" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(float(v.abs().sum()) > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero
    gen = Generator.load(str(result.output_dir))
    trained_base = {k: v for k, v in gen.model.get_base_model().state_dict().items() if "lora_" not in k}
    original = load_file(str(tiny_llama / "model.safetensors"))
    for name, weight in original.items():  # the base weights did not move
        key = name.replace(".weight", ".base_layer.weight") if name.replace(".weight", ".base_layer.weight") in trained_base else name
        assert torch.equal(trained_base[key], weight), name
    merged_dir = export(result.output_dir, tmp_path / "merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(gen.model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(base(input_ids=ids).logits, merged(input_ids=ids).logits)


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yes"}]}], r"d\.jsonl:1: message 2 has unknown role 'bot'"),
        ([CHATS[0], {"messages": [{"role": "user", "content": "hi"}]}], r"d\.jsonl:2: the chat has no assistant turn"),
        ([INSTRUCTIONS[0], {"instruction": "hi", "input": ""}], r"d\.jsonl:2: no response in column 'output'"),
    ],
)
def test_bad_rows_name_the_line(tiny_llama, tmp_path, rows, match):
    from lmtune.tasks.causal_lm import load_data

    cfg = validate(_cfg(tiny_llama, tmp_path, _jsonl(tmp_path / "d.jsonl", rows)))
    with pytest.raises(LmtuneError, match=match):
        load_data(cfg)


def test_template_naming_a_missing_column_is_an_error(tiny_llama, tmp_path, capsys):
    train = _jsonl(tmp_path / "d.jsonl", [{"dialogue": "a", "summary": "b"}] * 2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(_cfg(tiny_llama, tmp_path, train, prompt_template="Sum: {dialog}", response_column="summary")))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "'dialog'" in err and "columns are: dialogue, summary" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_truncation_is_counted(tiny_llama, tmp_path):
    long = {"messages": [{"role": "user", "content": "the " * 20}, {"role": "assistant", "content": "bike " * 30}]}
    features, _ = _features(tiny_llama, tmp_path, [long, CHATS[0]], max_length=32)
    cfg = validate(_cfg(tiny_llama, tmp_path, _jsonl(tmp_path / "d.jsonl", [long, CHATS[0]]), max_length=32))
    table = Table(tmp_path / "d.jsonl", ["messages"], [long, CHATS[0]], [1, 2])
    _, truncated = causal_lm.prepare(table, load_tokenizer(tiny_llama), cfg, [])
    assert truncated == 1 and max(len(f["input_ids"]) for f in features) == 32


def test_data_preview_marks_trained_tokens(tiny_llama, tmp_path, capsys):
    train = _jsonl(tmp_path / "chat.jsonl", CHATS * 2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(_cfg(tiny_llama, tmp_path, train)))
    assert main(["data", "preview", str(cfg), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "[[twelve euro please . <|im_end|>]]" in out and "1 trained" not in out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [{"name": "full"}, {"name": "lora", "r": 4, "dropout": 0.2}])
def test_compiled_blocks_train_like_plain_ones(tiny_llama, tmp_path, strategy, capfd):
    """train.compile: the same losses (fp32) as without it, LoRA adapters (and their dropout masks,
    drawn outside the compiled code) inside the blocks and the packed attention path included, no
    recompilation per block (the KV cache is off in training and evaluation; generation runs eagerly)."""
    train = _jsonl(tmp_path / "c.jsonl", CHATS * 4)
    runs = {}
    for compiled in (False, True):
        cfg = _cfg(tiny_llama, tmp_path / str(compiled), train, packing=True)
        cfg["strategy"] = strategy
        cfg["train"].update(compile=compiled, epochs=2, gradient_checkpointing=True)
        cfg["eval"] = {"generate_rows": 0}  # (generation: below)
        runs[compiled] = lmtune.train(cfg, progress=False)
    losses = {k: [h["loss"] for h in r.history if "loss" in h] for k, r in runs.items()}
    assert len(losses[True]) == len(losses[False]) >= 4
    assert losses[True] == pytest.approx(losses[False], abs=2e-4)
    assert runs[True].metrics["validation"]["loss"] == pytest.approx(runs[False].metrics["validation"]["loss"], abs=2e-4)
    assert "recompil" not in capfd.readouterr().err.lower()

    # generation after training runs the blocks eagerly: the same run again, generating, compiles nothing new
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    cfg = _cfg(tiny_llama, tmp_path / "again", train, packing=True)
    cfg["strategy"] = strategy
    cfg["train"].update(compile=True, epochs=2, gradient_checkpointing=True)
    cfg["eval"] = {"generate_rows": 3, "max_new_tokens": 6}
    assert lmtune.train(cfg, progress=False).metrics["validation"]["generated_rows"] == 3
    assert counters["stats"]["unique_graphs"] == before
