"""`lmtune export --format gguf`: the file that llama.cpp runs, read back by transformers' own GGUF
loader (the same logits, the same tokens), its metadata (tokenizer, special tokens, chat template),
the Ollama Modelfile's template rebuilding the chat template's conversations, and the bad input.
llama.cpp itself runs the exports in benchmarks/llamacpp.py (its package compiles for minutes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import pytest
import torch

import lmtune
from lmtune.cli import main
from lmtune.export.ollama import turn_parts
from lmtune.export.run import export
from lmtune.tasks.chat import PLAIN_CHAT_TEMPLATE, render_chat

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parent.parent

PROMPTS = ["what does a flat fix cost ?", "when do you open on saturday ?", "hello", "do you rent bikes ?",
           "the red bike is how much ?"]
CHATS = [
    {"messages": [{"role": "user", "content": "when do you open ?"}, {"role": "assistant", "content": "at nine"}]},
    {"messages": [{"role": "user", "content": "how much does a tire cost ?"},
                  {"role": "assistant", "content": "twelve euro"}]},
    {"messages": [{"role": "system", "content": "you fix bikes"}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello what can we fix ?"}]},
]


def _run(model: Path, tmp_path: Path, strategy: str = "lora") -> Path:
    train = tmp_path / "chat.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in CHATS * 4) + "\n")
    cfg = {
        "model": str(model), "task": "causal_lm", "output_dir": str(tmp_path / "run"),
        "data": {"train": str(train), "validation": str(train), "max_length": 64},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "precision": "fp32"},
        "strategy": {"name": strategy, **({"r": 4, "alpha": 8} if strategy == "lora" else {})},
        "eval": {"generate_rows": 0},
    }
    return lmtune.train(cfg, progress=False).output_dir


def _read_back(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = next(folder.glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=path.name), gguf.GGUFReader(path)


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.fixture(scope="module")
def lora_run(tiny_bpe_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tiny_bpe_llama, tmp_path_factory.mktemp("gguf-run"))


def _logits_of(model, tokenizer, prompts: list[str]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**tokenizer(p, return_tensors="pt")).logits[0] for p in prompts]


def test_f32_reads_back_with_the_runs_logits_and_tokens(lora_run, tmp_path):
    out = export(lora_run, tmp_path / "g", format="gguf", type="f32")
    gen = lmtune.load(str(lora_run))
    model, tokenizer, _ = _read_back(out)
    prompts = [gen.prompt(p) for p in PROMPTS]  # in the chat template, as lmtune generates from them
    for p in prompts:
        assert tokenizer(p)["input_ids"] == gen.tokenizer(p)["input_ids"]
    ours = _logits_of(gen.model, gen.tokenizer, prompts)
    theirs = _logits_of(model, tokenizer, prompts)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max().item() <= 1e-4


def test_f16_and_q8_0_are_close_and_typed_as_asked(lora_run, tmp_path):
    gen = lmtune.load(str(lora_run))
    prompts = [gen.prompt(p) for p in PROMPTS]
    ours = _logits_of(gen.model, gen.tokenizer, prompts)
    for type, bound in (("f16", 2e-2), ("q8_0", 1e-1)):
        out = export(lora_run, tmp_path / type, format="gguf", type=type)
        model, tokenizer, reader = _read_back(out)
        kinds = {t.name: t.tensor_type.name for t in reader.tensors}
        assert kinds["blk.0.attn_norm.weight"] == "F32" and kinds["output_norm.weight"] == "F32"
        assert kinds["blk.0.attn_q.weight"] == type.upper() and kinds["token_embd.weight"] == type.upper()
        assert "output.weight" not in kinds  # tied: llama.cpp reads token_embd as the head
        diffs = [(a - b).abs().max().item() for a, b in zip(ours, _logits_of(model, tokenizer, prompts))]
        assert 0 < max(diffs) <= bound, (type, diffs)
        agree = [bool((a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9)
                 for a, b in zip(ours, _logits_of(model, tokenizer, prompts))]
        assert all(agree), type


def test_metadata_carries_the_tokenizer_its_special_tokens_and_the_chat_template(lora_run, tmp_path):
    out = export(lora_run, tmp_path / "g", format="gguf", type="f32")
    gen = lmtune.load(str(lora_run))
    tok = gen.tokenizer
    _, _, reader = _read_back(out)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == gen.model.config.vocab_size and tokens[tok.eos_token_id] == "<|im_end|>"
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[tok.eos_token_id] == gguf.TokenType.CONTROL and types[10] == gguf.TokenType.NORMAL
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False
    assert _field(reader, "tokenizer.chat_template") == tok.chat_template
    assert len(_field(reader, "tokenizer.ggml.merges")) > 100
    assert _field(reader, "llama.attention.head_count_kv") == 2 and _field(reader, "llama.block_count") == 2
    modelfile = (out / "Modelfile").read_text()
    gguf_name = next(out.glob("*.gguf")).name
    assert modelfile.startswith(f"FROM ./{gguf_name}\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'TEMPLATE """{{ range $i, $m := .Messages }}' in modelfile and "SYSTEM" not in modelfile


LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
WITH_DEFAULT_SYSTEM = (
    "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("template", ["chatml", LLAMA3, WITH_DEFAULT_SYSTEM, PLAIN_CHAT_TEMPLATE])
def test_the_modelfiles_turn_parts_rebuild_the_templates_conversations(tiny_bpe_llama, template):
    from lmtune.core.models import load_tokenizer

    tok = load_tokenizer(tiny_bpe_llama)
    template = tok.chat_template if template == "chatml" else template
    parts = turn_parts(tok, template)
    for chat in CHATS + [{"messages": CHATS[0]["messages"] + CHATS[1]["messages"]}]:
        for messages, gen in ((chat["messages"], False), (chat["messages"][:-1], True)):
            expected = tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                               add_generation_prompt=gen)
            assert parts.render(messages, gen) == expected
    assert (parts.default_system == "You are a helpful assistant.") == (template == WITH_DEFAULT_SYSTEM)


def test_the_plain_template_is_the_layout_lmtune_uses_without_one(tiny_bpe_llama):
    from lmtune.core.models import load_tokenizer

    tok = load_tokenizer(tiny_bpe_llama)
    tok.chat_template = None
    for chat in CHATS:
        text, _ = render_chat(chat["messages"], tok)
        assert tok.apply_chat_template(chat["messages"], chat_template=PLAIN_CHAT_TEMPLATE, tokenize=False) == text


def test_a_full_run_exports_and_a_default_output_goes_in_the_run(tiny_bpe_llama, tmp_path, capsys):
    run = _run(tiny_bpe_llama, tmp_path, strategy="full")
    assert main(["export", str(run), "--format", "gguf"]) == 0
    assert "GGUF" in capsys.readouterr().err
    folder = run / "export" / "gguf-f16"
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "run-f16.gguf"]
    model, tokenizer, _ = _read_back(folder)
    gen = lmtune.load(str(run))
    a, b = _logits_of(gen.model, gen.tokenizer, PROMPTS[:2]), _logits_of(model, tokenizer, PROMPTS[:2])
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) <= 2e-2


# ------------------------------------------------------------ bad input


def _error(capsys, *argv: str) -> str:
    capsys.readouterr()  # (what came before: a training log)
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_classifier_cannot_become_a_gguf(tiny_bert, toy_data, tmp_path, capsys):
    from .conftest import tiny_config

    run = lmtune.train(tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=1), progress=False).output_dir
    msg = _error(capsys, "export", str(run), "--format", "gguf", "-o", str(tmp_path / "g"))
    assert "classification model cannot be exported to GGUF" in msg
    assert not (tmp_path / "g").exists() and not (tmp_path / "g.tmp").exists()


def test_a_model_family_the_writer_does_not_know_is_named(tmp_path, capsys, tiny_bpe_llama):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path / "qwen2"
    Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                 num_key_value_heads=2, vocab_size=400)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bpe_llama).save_pretrained(folder)
    msg = _error(capsys, "export", str(folder), "--format", "gguf", "-o", str(tmp_path / "g"))
    assert "GGUF export knows the Llama family; this model is 'qwen2' (Qwen2ForCausalLM)" in msg
    assert not (tmp_path / "g").exists() and not (tmp_path / "g.tmp").exists()


def test_a_word_level_tokenizer_is_refused(tiny_llama, tmp_path, capsys):
    msg = _error(capsys, "export", str(tiny_llama), "--format", "gguf", "-o", str(tmp_path / "g"))
    assert "GGUF export writes byte-level BPE tokenizers" in msg and "WordLevel" in msg
    assert not (tmp_path / "g.tmp").exists()


def test_an_existing_output_is_kept_and_an_unknown_type_is_one_line(lora_run, tmp_path, capsys):
    out = tmp_path / "g"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _error(capsys, "export", str(lora_run), "--format", "gguf", "-o", str(out)) == \
        f"lmtune: error: {out} exists; use --overwrite to replace it"
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit) as e:  # argparse: one usage line and the choices
        main(["export", str(lora_run), "--format", "gguf", "--type", "q4_k"])
    assert e.value.code == 2
    assert "invalid choice: 'q4_k'" in capsys.readouterr().err
    assert main(["export", str(lora_run), "--format", "gguf", "-o", str(out), "--overwrite", "--type", "q8_0"]) == 0
    assert not (out / "keep.txt").exists() and (out / "run-q8_0.gguf").is_file()


def test_an_unfinished_run_is_refused(lora_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "unfinished"
    shutil.copytree(lora_run, run)
    shutil.rmtree(run / "model")
    msg = _error(capsys, "export", str(run), "--format", "gguf", "-o", str(tmp_path / "g"))
    assert "unfinished" in msg or "no model" in msg
    assert not (tmp_path / "g").exists()


# ------------------------------------------------------------ the bundled SmolLM2


@pytest.mark.slow
def test_a_tuned_smollm2_reads_back_with_equal_logits_on_five_prompts(tmp_path, capsys):
    run = tmp_path / "tuned"
    assert main(["train", str(ROOT / "examples/chat_sft.yaml"), f"output_dir={run}", "train.max_steps=2",
                 "train.lr=1e-3", "train.batch_size=4", "data.max_length=128", "eval.generate_rows=0",
                 "--no-progress"]) == 0
    out = export(run, tmp_path / "g", format="gguf", type="f32")
    gen = lmtune.load(str(run))
    model, tokenizer, reader = _read_back(out)
    assert _field(reader, "tokenizer.chat_template") == gen.tokenizer.chat_template
    prompts = [gen.prompt(p) for p in ["When are you open?", "How much is a flat fix?", "Do you sell helmets?",
                                       "Hello!", "Can I rent a bike for a day?"]]
    for p in prompts:
        assert tokenizer(p)["input_ids"] == gen.tokenizer(p)["input_ids"]
    from lmtune.export.run import merged_model
    from lmtune.infer.saved_run import read_run

    ours = merged_model(read_run(run))  # lmtune's model in fp32 (the run may evaluate in bf16)
    for a, b in zip(_logits_of(ours, gen.tokenizer, prompts), _logits_of(model, tokenizer, prompts)):
        assert (a - b).abs().max().item() <= 1e-4
