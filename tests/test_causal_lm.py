"""Causal LM on a tiny random Llama: loss masks, packing, data shapes, LoRA, generation, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lmtune
from lmtune.cli import main
from lmtune.tasks.run_config import validate
from lmtune.core.errors import LmtuneError
from lmtune.core.models import load_tokenizer
from lmtune.data.readers import Table
from lmtune.tasks import causal_lm, decoding
from lmtune.tasks.decoding import GenerationSettings

from .conftest import report_sections

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

    from lmtune.infer.generation import Generator
    from lmtune.export.run import export

    train = _jsonl(tmp_path / "chat.jsonl", CHATS * 4)
    cfg = _cfg(tiny_llama, tmp_path, train)
    cfg["strategy"] = {"name": "lora", "r": 4, "alpha": 8}
    result = lmtune.train(cfg, progress=False)
    assert {"diagnosis", "metrics", "loss", "perplexity", "generations"} <= report_sections(result.output_dir)
    samples = [json.loads(line) for line in (result.output_dir / "validation_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all({"prompt", "reference", "generated"} <= set(r) for r in samples)
    adapter = load_file(str(result.output_dir / "model" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(float(v.abs().sum()) > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero
    gen = Generator.load(str(result.output_dir))
    assert all(m.merged for m in gen.model.modules() if hasattr(m, "lora_A"))  # inference folds the adapters in
    from lmtune.infer.saved_run import load_model, read_run
    from lmtune.tasks import get_task

    saved = load_model(read_run(result.output_dir), get_task("causal_lm"))  # the adapter on its base, as saved
    trained_base = {k: v for k, v in saved.get_base_model().state_dict().items() if "lora_" not in k}
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


# ---------------------------------------------------------------- truncation: the prompt goes first

WORDS = [w for w in sorted(set(__import__("tests.conftest", fromlist=["LM_WORDS"]).LM_WORDS))
         if w not in ("user", "assistant", "system")]


def _words(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_a_long_instruction_loses_the_middle_of_its_input_and_keeps_head_and_answer(tiny_llama, tmp_path):
    dialogue = " ".join(WORDS[:30])
    rows = [{"dialogue": dialogue, "summary": "dog runs ."}]
    tok = load_tokenizer(tiny_llama)
    whole, _ = _features(tiny_llama, tmp_path, rows, prompt_template="summarize : {dialogue}",
                         response_column="summary", max_length=256)
    assert len(whole[0]["input_ids"]) == 41  # <|im_start|> user summarize : (30 words) <|im_end|> ... 3 + <|im_end|>
    cfg = validate(_cfg(tiny_llama, tmp_path, _jsonl(tmp_path / "d.jsonl", rows), prompt_template="summarize : {dialogue}",
                        response_column="summary", max_length=24))
    table = Table(tmp_path / "d.jsonl", list(rows[0]), rows, [1])
    [f], truncated = causal_lm.prepare(table, tok, cfg, [])
    assert len(f["input_ids"]) == 24
    assert (truncated, truncated.prompt, truncated.response) == (1, 1, 0)
    # 17 tokens too many: 17 words from the middle of the dialogue; its first 6 and last 7 words stay
    kept = WORDS[:6] + WORDS[23:30]
    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    expected = ([im_start] + _words(tok, "user summarize :") + _words(tok, " ".join(kept))
                + [im_end, im_start] + _words(tok, "assistant dog runs .") + [im_end])
    assert f["input_ids"] == expected
    assert [i for i, lab in zip(f["input_ids"], f["labels"]) if lab != -100] == _words(tok, "dog runs .") + [im_end]


def test_an_answer_too_long_for_the_limit_keeps_its_beginning_and_a_quarter_of_prompt(tiny_llama, tmp_path):
    rows = [{"instruction": "summarize", "input": " ".join(WORDS[:10]), "output": " ".join(WORDS[10:40])}]
    tok = load_tokenizer(tiny_llama)
    cfg = validate(_cfg(tiny_llama, tmp_path, _jsonl(tmp_path / "d.jsonl", rows), max_length=24))
    [f], truncated = causal_lm.prepare(Table(tmp_path / "d.jsonl", list(rows[0]), rows, [1]), tok, cfg, [])
    assert (truncated.prompt, truncated.response) == (0, 1)
    # the prompt keeps 24 // 4 = 6 tokens (the input goes, then the head from its start): the turn markers
    prompt = f["input_ids"][:6]
    assert tok.convert_ids_to_tokens(prompt)[-3:] == ["<|im_end|>", "<|im_start|>", "assistant"]
    assert not set(prompt) & set(_words(tok, " ".join(WORDS[:10])))  # no word of the input is left
    # and the answer its first 18 words, all trained
    assert f["input_ids"][6:] == _words(tok, " ".join(WORDS[10:28]))
    assert f["labels"][6:] == f["input_ids"][6:] and all(lab == -100 for lab in f["labels"][:6])


def test_a_long_chat_loses_its_oldest_turns_first_and_keeps_the_system_prompt(tiny_llama, tmp_path):
    chat = {"messages": [
        {"role": "system", "content": "hi"},
        {"role": "user", "content": " ".join(WORDS[:10])},
        {"role": "assistant", "content": " ".join(WORDS[10:15])},
        {"role": "user", "content": " ".join(WORDS[15:20])},
        {"role": "assistant", "content": "no , closed ."},
    ]}
    tok = load_tokenizer(tiny_llama)
    [whole], _ = _features(tiny_llama, tmp_path, [chat], max_length=256)
    full = whole["input_ids"]
    cfg = validate(_cfg(tiny_llama, tmp_path, _jsonl(tmp_path / "d.jsonl", [chat]), max_length=len(full) - 12))
    [f], truncated = causal_lm.prepare(Table(tmp_path / "d.jsonl", ["messages"], [chat], [1]), tok, cfg, [])
    assert (truncated.prompt, truncated.response) == (1, 0)
    first_user_word = full.index(_words(tok, WORDS[0])[0])
    assert f["input_ids"] == full[:first_user_word] + full[first_user_word + 12 :]  # the 12 oldest tokens after the system turn
    assert tok.decode(f["input_ids"][:4]) == "<|im_start|> system hi <|im_end|>"
    trained = [i for i, lab in zip(f["input_ids"], f["labels"]) if lab != -100]
    assert trained[-5:] == _words(tok, "no , closed .") + [tok.convert_tokens_to_ids("<|im_end|>")]


def test_both_kinds_of_cut_are_counted_in_the_log_and_data_json(tiny_llama, tmp_path, capfd):
    rows = ([{"instruction": "summarize", "input": " ".join(WORDS[:40]), "output": "dog runs ."}] * 2
            + [{"instruction": "summarize", "input": "the cat", "output": " ".join(WORDS[:40])}]
            + INSTRUCTIONS)
    train = _jsonl(tmp_path / "d.jsonl", rows)
    cfg = _cfg(tiny_llama, tmp_path, train, max_length=32)
    cfg["train"].update(epochs=1)
    cfg["eval"] = {"generate_rows": 0}
    lmtune.train(cfg, progress=False)
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["truncated_to_max_length"] == {"train": 3, "validation": 3}
    assert data["truncation"]["train"] == {"prompt": 2, "response": 1}
    err = capfd.readouterr().err
    assert "train: 3 of 6 inputs longer than data.max_length=32 were truncated: 2 lost prompt tokens only" in err
    assert "1 also the end of an answer" in err


def test_data_preview_shows_a_cut_prompt_and_the_trained_end_token(tiny_llama, tmp_path, capsys):
    rows = [{"dialogue": " ".join(WORDS[:30]), "summary": "dog runs ."}] * 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(_cfg(tiny_llama, tmp_path, _jsonl(tmp_path / "d.jsonl", rows), max_length=24,
                                   prompt_template="summarize : {dialogue}", response_column="summary")))
    assert main(["data", "preview", str(cfg), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "[[dog runs . <|im_end|>]]" in out and "24 tokens, 4 trained" in out
    assert "1 of these examples were truncated to data.max_length=24: 1 lost prompt tokens only" in out


# ---------------------------------------------------------------- the end token is trained, generation stops on it

PLAIN_TEMPLATE = (  # a template that ends a turn with plain text, no special token
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def _trained_runs(feature):
    """The trained tokens of a feature, as runs of consecutive positions."""
    runs, current = [], []
    for i, lab in zip(feature["input_ids"], feature["labels"]):
        if lab != -100:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("shape", ["instruction", "chat", "packed", "plain template", "no template"])
def test_the_end_token_is_trained_after_every_answer(tiny_llama, tmp_path, shape):
    tok = load_tokenizer(tiny_llama)
    if shape == "plain template":
        tok.chat_template = PLAIN_TEMPLATE
    if shape == "no template":
        tok.chat_template = None
    rows = INSTRUCTIONS if shape == "instruction" else CHATS
    cfg = validate(_cfg(tiny_llama, tmp_path, _jsonl(tmp_path / "d.jsonl", rows), packing=shape == "packed", max_length=256))
    features, _ = causal_lm.prepare(Table(tmp_path / "d.jsonl", list(rows[0]), rows, [1, 2, 3]), tok, cfg, [])
    answers = sum(1 for r in rows for m in r.get("messages", r.get("conversations", [{"role": "assistant"}]))
                  if m.get("role", m.get("from")) in ("assistant", "gpt"))
    runs = [run for f in features for run in _trained_runs(f)]
    assert len(runs) == answers == (3 if shape == "instruction" else 4)
    assert all(run[-1] == tok.eos_token_id for run in runs)  # every answer ends with a trained EOS (<|im_end|>)
    if shape == "plain template":  # added after the template's text, which has no end token
        assert tok.decode(features[0]["input_ids"]).endswith("assistant : twelve euro please . . <|im_end|>")


def test_text_blocks_train_the_end_token_after_every_document(tiny_llama, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the bike is red .\n\nthe cat sits .\n\nhello .\n")
    cfg = validate({**_cfg(tiny_llama, tmp_path, text, max_length=64), "data": {"train": str(text), "max_length": 64}})
    tok = load_tokenizer(tiny_llama)
    [block], _ = causal_lm.prepare(causal_lm.read_texts(text, "auto"), tok, cfg, [])
    eos = tok.eos_token_id
    assert block["labels"] == block["input_ids"] and block["input_ids"].count(eos) == 3 and block["input_ids"][-1] == eos


def _llama_ending_turns_with_a_non_eos_token(src, dst):
    """The tiny Llama with `<pad>` as its EOS (tokenizer, model and generation config), while its
    chat template still ends each turn with <|im_end|>: as for models whose EOS is not the template's."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    tok.eos_token = "<pad>"
    tok.save_pretrained(dst)
    model = AutoModelForCausalLM.from_pretrained(dst)
    model.config.eos_token_id = model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<pad>")
    model.save_pretrained(dst)
    return dst


def test_a_tuned_model_ends_its_answers(tiny_llama, tmp_path):
    model_dir = _llama_ending_turns_with_a_non_eos_token(tiny_llama, tmp_path / "model")
    chats = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for q, a in [("what does a flat fix cost ?", "twelve euro ."), ("when do you open ?", "at nine .")]] * 8
    train = _jsonl(tmp_path / "chat.jsonl", chats)
    cfg = _cfg(model_dir, tmp_path, train)
    cfg["train"].update(epochs=6, batch_size=4, compile=False)
    cfg["eval"] = {"generate_rows": 2, "max_new_tokens": 20}
    result = lmtune.train(cfg, progress=False)
    assert result.metrics["validation"]["hit_token_limit"] == 0  # both generations ended
    gen = lmtune.load(str(result.output_dir))
    tok = gen.tokenizer
    settings = GenerationSettings(max_new_tokens=20)
    first, second = gen.generate_batch(["what does a flat fix cost ?", "when do you open ?"], settings)
    for g in (first, second):
        assert g.finish_reason == "stop" and g.completion_tokens < 20
        assert g.token_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert first.text == "twelve euro ."
    # batched and one by one give the same greedy answers
    assert [gen.generate_batch([p], settings, raw=True)[0].text for p in (gen.prompt("what does a flat fix cost ?"), gen.prompt("when do you open ?"))] \
        == [first.text, second.text]
    # a prompt is a user message in the chat format, in Python as on the command line
    assert gen.generate("what does a flat fix cost ?", max_new_tokens=20) == "twelve euro ."
    assert "".join(gen.stream("when do you open ?", settings)).strip() == second.text


def test_turn_end_ids_name_the_eos_and_the_templates_end_token(tiny_llama, tmp_path):
    model_dir = _llama_ending_turns_with_a_non_eos_token(tiny_llama, tmp_path / "model")
    tok = load_tokenizer(model_dir)
    assert decoding.turn_end_ids(tok) == [tok.convert_tokens_to_ids("<pad>"), tok.convert_tokens_to_ids("<|im_end|>")]
    tok.chat_template = PLAIN_TEMPLATE
    assert decoding.turn_end_ids(tok) == [tok.convert_tokens_to_ids("<pad>")]


# ---------------------------------------------------------------- metrics as shares


def test_generation_metrics_are_shares():
    import sacrebleu
    from rouge_score import rouge_scorer

    def numbers(scores):  # (beside them, sacreBLEU's signatures: checked in test_translation.py)
        return {k: v for k, v in scores.items() if not k.endswith("_signature")}

    same = numbers(causal_lm.text_scores(["the bike shop opens at nine on tuesday ."], ["the bike shop opens at nine on tuesday ."]))
    assert same == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "bleu": 1.0, "chrf": 1.0})
    preds, refs = ["the shop opens at nine", "a red bike"], ["the bike shop opens at nine on tuesday", "the bike is red"]
    scores = numbers(causal_lm.text_scores(preds, refs))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert scores["rougeL"] == pytest.approx(np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]))
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score / 100)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score / 100)
    assert all(0 < v < 1 for v in scores.values())


def test_training_and_loading_a_lora_run_warn_nothing_about_gradient_checkpointing(tiny_llama, tmp_path):
    import warnings

    cfg = _cfg(tiny_llama, tmp_path, _jsonl(tmp_path / "chat.jsonl", CHATS))
    cfg["strategy"] = {"name": "lora", "r": 4, "alpha": 8}
    cfg["train"]["epochs"] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = lmtune.train(cfg, progress=False)
        generator = lmtune.load(str(result.output_dir))
        generator.generate("hi", max_new_tokens=2)
        warnings.warn("another warning", FutureWarning)  # others still show
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "is_gradient_checkpointing" in m]
    assert "another warning" in messages
