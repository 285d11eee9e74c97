"""The one inference path: every task module keeps the contract; a file and the same inputs as Python
objects give the same rows; batched predictions equal one-at-a-time ones; generation settings are
honoured. Tiny random models saved as bare model folders (the contract does not need trained ones)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lmtune
from lmtune.core.errors import LmtuneError
from lmtune.tasks import TASKS, get_task
from lmtune.tasks.contract import Task
from lmtune.tasks.decoding import GenerationSettings

from .conftest import build_tiny_bert, build_tiny_llama

TEXTS = ["great film", "the plot was dull and the acting was awful", "fine", "a wonderful , warm and funny story",
         "boring", "not bad at all , really quite good"]


def _head_folder(path: Path, head: str, **config: object) -> Path:
    """The tiny BERT with a random task head (`head`: a transformers class name), saved as a folder."""
    import transformers

    build_tiny_bert(path, words=sorted({w for t in TEXTS for w in t.split()} | {"who", "wrote", "it", "?", "alice", "bob"}))
    torch.manual_seed(0)
    model = getattr(transformers, head).from_pretrained(path, **config)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _head_folder(tmp_path_factory.mktemp("cls"), "BertForSequenceClassification", num_labels=3,
                        id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = build_tiny_llama(tmp_path_factory.mktemp("llama"))
    # untie the output layer so that the random model does not repeat one word forever
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path)
    model.config.tie_word_embeddings = False
    torch.manual_seed(3)
    untied = LlamaForCausalLM(model.config)
    untied.model.load_state_dict(model.model.state_dict())
    untied.save_pretrained(path)
    return path


def test_every_task_module_keeps_the_contract():
    members = [name for name in dir(Task) if not name.startswith("_")] + list(Task.__annotations__)
    for name in TASKS:
        module = get_task(name)
        missing = [m for m in members if not hasattr(module, m)]
        assert not missing, f"{name} lacks {missing}"


def test_classification_batched_equals_one_at_a_time_and_file_equals_python(classifier, tmp_path):
    model = lmtune.load(str(classifier))
    assert model.labels == ["neg", "neu", "pos"]
    model.batch_size = 4  # two batches, the longest inputs first
    batched = model.predict(TEXTS)
    alone = [model.predict(t)[0] for t in TEXTS]
    for a, b in zip(batched, alone):
        assert a["label"] == b["label"]
        for label in model.labels:
            assert a["probabilities"][label] == pytest.approx(b["probabilities"][label], abs=1e-5)
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    _, inputs, pairs = model.read_inputs(tmp_path / "in.txt")
    assert model.predict_rows(inputs, pairs) == model.predict_rows(TEXTS)
    assert [r["text"] for r in model.predict_rows(TEXTS)] == TEXTS  # input order


def test_a_classifier_predicts_with_the_first_token_layer_and_the_plain_models_probabilities(classifier):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = lmtune.load(str(classifier))
    last = model.accelerator.unwrap_model(model.model).bert.encoder.layer[-1]
    assert "forward" in vars(last)  # the last layer computes the first token only (lmtune/training/cpu/first_token.py)
    plain = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    with torch.no_grad():
        probabilities = plain(**AutoTokenizer.from_pretrained(classifier)(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1)
    # a model folder predicts with train.precision: auto, bf16 autocast on a CPU with fast bf16: there
    # the plain fp32 model's probabilities are matched to bf16's rounding, elsewhere to fp32's
    tolerance = 1e-5 if model.accelerator.mixed_precision == "no" else 1e-2
    for row, expected in zip(model.predict(TEXTS), probabilities):
        assert [row["probabilities"][label] for label in model.labels] == pytest.approx(expected.tolist(), abs=tolerance)


def test_text_pairs_as_lists_dicts_or_pairs_give_the_same_rows(classifier):
    model = lmtune.load(str(classifier))
    a = model.predict_rows(TEXTS[:3], TEXTS[3:])
    b = model.predict_rows([[x, y] for x, y in zip(TEXTS[:3], TEXTS[3:])])
    c = model.predict_rows([{"text": x, "text_pair": y} for x, y in zip(TEXTS[:3], TEXTS[3:])])
    assert a == b == c and a[0]["text_pair"] == TEXTS[3]
    with pytest.raises(LmtuneError, match="inputs\\[1\\]: expected a text, \\[text, text_pair\\]"):
        model.predict_rows([["fine", "ok"], 3])


def test_a_batch_mixing_single_texts_and_pairs_predicts_each_as_alone(classifier):
    model = lmtune.load(str(classifier))
    mixed = ["a lovely film", ["good acting", "dull plot"], {"text": "fine", "text_pair": "boring"}, "great film"]
    rows = model.predict_rows(mixed)
    alone = [model.predict_rows([x])[0] for x in mixed]
    for row, one in zip(rows, alone):
        assert row["label"] == one["label"] and row.keys() == one.keys()
        assert [row["probabilities"][k] for k in model.labels] == pytest.approx([one["probabilities"][k] for k in model.labels], abs=1e-5)
    assert "text_pair" not in rows[0] and rows[1]["text_pair"] == "dull plot" and rows[2]["text_pair"] == "boring"
    assert [r["label"] for r in model.predict(mixed)] == [r["label"] for r in rows]


def test_an_input_longer_than_max_length_is_cut_and_flagged(classifier):
    model = lmtune.load(str(classifier))
    model.max_length = 8
    rows = model.predict_rows(["great film", " ".join(["boring"] * 20)])
    assert "truncated" not in rows[0] and rows[1]["truncated"] is True


def test_token_classification_file_and_python_rows_agree(tmp_path):
    folder = _head_folder(tmp_path / "ner", "BertForTokenClassification", num_labels=3,
                          id2label={0: "O", 1: "B-PER", 2: "I-PER"}, label2id={"O": 0, "B-PER": 1, "I-PER": 2})
    model = lmtune.load(str(folder))
    sentences = [t.split() for t in TEXTS]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"tokens": s}) + "\n" for s in sentences))
    _, inputs, pairs = model.read_inputs(tmp_path / "in.jsonl")
    rows = model.predict_rows(inputs, pairs)
    assert rows == model.predict_rows(sentences)
    assert [len(r["tags"]) for r in rows] == [len(s) for s in sentences]
    model.batch_size = 1
    assert model.predict_rows(sentences) == rows  # batches of one: the same tags
    texts = model.predict_rows(TEXTS[:2])
    assert all(set(r) == {"text", "entities"} for r in texts)


def test_question_answering_file_and_python_rows_agree(tmp_path):
    folder = _head_folder(tmp_path / "qa", "BertForQuestionAnswering")
    model = lmtune.load(str(folder))
    pairs = [("who wrote it ?", "alice wrote it"), ("who wrote it ?", "bob wrote it , not alice")]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": q, "context": c}) + "\n" for q, c in pairs))
    _, questions, contexts = model.read_inputs(tmp_path / "q.jsonl")
    rows = model.predict_rows(questions, contexts)
    assert rows == model.predict_rows([{"question": q, "context": c} for q, c in pairs])
    for row, (_, context) in zip(rows, pairs):
        assert row["answer"] == context[row["start"]:row["end"]]


def test_masked_lm_fills_every_mask_in_batches(tmp_path):
    folder = _head_folder(tmp_path / "mlm", "BertForMaskedLM")
    model = lmtune.load(str(folder))
    assert model.task_name == "masked_lm"
    texts = ["great [MASK]", "the plot was [MASK] and the acting was [MASK]"]
    rows = model.predict_rows(texts)
    assert [len(r["masks"]) for r in rows] == [1, 2] and all(len(m) == 5 for r in rows for m in r["masks"])
    model.batch_size = 1
    assert model.predict_rows(texts) == rows
    with pytest.raises(LmtuneError, match=r"inputs\[0\]: no \[MASK\] token"):
        model.predict(["no mask here"])


# ---------------------------------------------------------------- generation


def test_batched_greedy_generation_equals_one_at_a_time_and_the_stream(llama):
    gen = lmtune.load(str(llama))
    prompts = [gen.prompt("what does a flat fix cost ?"), gen.prompt("hi"), gen.prompt("when do you open on sunday ?")]
    settings = GenerationSettings(max_new_tokens=10)
    batched = gen.generate_batch(prompts, settings, raw=True)
    assert [g.text for g in batched] == [gen.generate_batch([p], settings, raw=True)[0].text for p in prompts]
    pieces = list(gen.stream(prompts[0], settings, raw=True))
    assert "".join(pieces).strip() == batched[0].text
    for g in batched:
        assert g.completion_tokens <= 10 and g.finish_reason in ("stop", "length")
        assert g.prompt_tokens == len(gen.tokenizer(prompts[batched.index(g)], add_special_tokens=False)["input_ids"])


def test_max_new_tokens_and_stop_strings_are_honoured(llama):
    gen = lmtune.load(str(llama))
    prompt = gen.prompt("what does a flat fix cost ?")
    long = gen.generate_batch([prompt], GenerationSettings(max_new_tokens=12), raw=True)[0]
    short = gen.generate_batch([prompt], GenerationSettings(max_new_tokens=3), raw=True)[0]
    assert short.completion_tokens <= 3 and long.text.startswith(short.text)
    words = long.text.split()
    assert len(words) >= 3, long.text
    stop = words[2]
    cut = gen.generate_batch([prompt], GenerationSettings(max_new_tokens=12, stop=(stop,)), raw=True)[0]
    assert cut.text == long.text[: long.text.find(stop)].strip() and cut.finish_reason == "stop"
    streamed = "".join(gen.stream(prompt, GenerationSettings(max_new_tokens=12, stop=(stop,)), raw=True))
    assert stop not in streamed and streamed.strip() == cut.text


def test_seeded_sampling_is_reproducible(llama):
    gen = lmtune.load(str(llama))
    prompts = [gen.prompt("hi"), gen.prompt("what is the price ?")]
    sampled = GenerationSettings(max_new_tokens=12, temperature=1.5, seed=7)
    first = [g.text for g in gen.generate_batch(prompts, sampled, raw=True)]
    assert [g.text for g in gen.generate_batch(prompts, sampled, raw=True)] == first
    others = {tuple(g.text for g in gen.generate_batch(prompts, GenerationSettings(max_new_tokens=12, temperature=1.5, seed=s), raw=True))
              for s in range(1, 6)}
    assert len(others) > 1  # the seed matters


def test_bad_generation_settings_are_named():
    problems = GenerationSettings(max_new_tokens=0, temperature=-1, top_p=0, top_k=-2, stop=("",)).problems()
    assert [p.split(":")[0] for p in problems] == ["max_new_tokens", "temperature", "top_p", "top_k", "stop"]
    assert np.isfinite(GenerationSettings().temperature)


def test_a_file_streams_through_in_chunks_with_the_same_rows(classifier, llama, tmp_path):
    model = lmtune.load(str(classifier))
    (tmp_path / "in.csv").write_text("text,label\n" + "".join(f'"{t}",pos\n' for t in TEXTS))
    assert list(model.predict_file(tmp_path / "in.csv", chunk_rows=4)) == model.predict_rows(TEXTS)
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n\n")
    assert list(model.predict_file(tmp_path / "in.txt", chunk_rows=1)) == model.predict_rows(TEXTS)
    gen = lmtune.load(str(llama))
    gen.settings = GenerationSettings(max_new_tokens=4)
    rows = [{"messages": [{"role": "user", "content": q}]} for q in ("hi", "what is the price ?", "when do you open ?")]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, prompts, references = gen.read_inputs(tmp_path / "chats.jsonl")
    whole = gen.predict_rows(prompts, references)
    assert list(gen.predict_file(tmp_path / "chats.jsonl", chunk_rows=2)) == whole
    assert [r["prompt"] for r in whole] == [gen.prompt(q) for q in ("hi", "what is the price ?", "when do you open ?")]


def test_python_generation_puts_a_prompt_in_the_chat_format_as_the_command_line_does(llama, capsys):
    from lmtune.cli import main

    gen = lmtune.load(str(llama))
    question = "when do you open ?"
    templated = gen.prompt(question)
    assert templated != question  # the tiny llama has a chat template
    settings = GenerationSettings(max_new_tokens=6)
    [expected] = gen.generate_batch([templated], settings, raw=True)
    [asked] = gen.generate_batch([question], settings)
    assert asked.prompt_tokens == expected.prompt_tokens == len(gen.tokenizer(templated, add_special_tokens=False)["input_ids"])
    assert asked.text == expected.text
    assert gen.generate(question, max_new_tokens=6) == expected.text
    assert "".join(gen.stream(question, settings)).strip() == expected.text
    # raw=True: the text continued as it is
    [as_is] = gen.generate_batch([question], settings, raw=True)
    assert as_is.prompt_tokens == len(gen.tokenizer(question, add_special_tokens=False)["input_ids"]) < asked.prompt_tokens
    assert gen.generate(question, max_new_tokens=6, raw=True) == as_is.text
    # the command line answers the same, and predict takes a prompt the same way
    assert main(["generate", str(llama), "--prompt", question, "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == expected.text
    assert main(["generate", str(llama), "--prompt", question, "--max-new-tokens", "6", "--raw"]) == 0
    assert capsys.readouterr().out.strip() == as_is.text
    gen.settings = settings
    assert gen.predict([question]) == [expected.text]
    assert gen.predict_rows([question]) == [{"prompt": question, "generation": expected.text}]
    assert gen.predict_rows([question], raw=True) == [{"prompt": question, "generation": as_is.text}]


def test_lmtune_predict_reads_a_txt_by_paragraph_or_by_line_and_templates_each_prompt_unless_raw(llama, tmp_path, capsys):
    from lmtune.cli import main

    gen = lmtune.load(str(llama))
    gen.settings = GenerationSettings(max_new_tokens=5)
    questions = ["hi", "what is the price ?", "when do you open ?"]
    templated, as_is = gen.predict(questions), gen.predict(questions, raw=True)
    assert templated != as_is

    def predicted(path, *flags):
        assert main(["predict", str(llama), str(path), "--max-new-tokens", "5", *flags]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(questions) + "\n")  # no blank line between them: a prompt per line
    assert [(r["prompt"], r["generation"]) for r in predicted(lines)] == list(zip(questions, templated))
    assert [r["generation"] for r in predicted(lines, "--raw")] == as_is
    paragraphs = tmp_path / "paragraphs.txt"
    paragraphs.write_text("hi\n\nwhat is\nthe price ?\n\nwhen do you open ?\n")  # a prompt per paragraph
    rows = predicted(paragraphs)
    assert [r["prompt"] for r in rows] == ["hi", "what is\nthe price ?", "when do you open ?"]
    assert rows[0]["generation"] == templated[0] and rows[2]["generation"] == templated[2]


def test_generation_from_a_model_that_does_not_generate_is_refused_in_one_line(classifier, tmp_path, capsys):
    import shutil

    import yaml

    from lmtune.cli import main
    from lmtune.infer.generation import Generator

    run = tmp_path / "sentiment"  # a classification run folder (its model: the tiny classifier)
    shutil.copytree(classifier, run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(classifier), "data": {"train": "train.csv"}}))
    assert main(["generate", str(run), "--prompt", "hi"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"lmtune: error: {run}: a classification run does not generate text; "
                   f"use lmtune predict {run} FILE for its predictions\n")
    with pytest.raises(LmtuneError, match=r"a classification run does not generate text; use lmtune\.load\(run\)\.predict"):
        Generator.load(run)
    with pytest.raises(LmtuneError, match=f"{classifier}: a classification model does not generate text"):
        Generator(str(classifier))
