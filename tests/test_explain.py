"""`lmtune explain`: integrated-gradients attributions that add up to the explained score's change
(completeness), one per word, for classification and token classification; the renderers (plain
text with markers off a terminal, escaped HTML) and the attention map; the command's bad-input
contract. Tiny random models saved as bare model folders, with weights drawn wide enough
(initializer_range 0.4) that the model is far from linear in its embeddings: a coarse integral
then misses completeness, so the tolerance below is a check that can fail."""

from __future__ import annotations

import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import lmtune
from lmtune.cli import main
from lmtune.core.errors import LmtuneError
from lmtune.infer.explain import attention_map, explain
from lmtune.infer.explain_render import color_enabled, render_html, render_text

from .conftest import build_tiny_bert, build_tiny_llama
from .test_inference import TEXTS

PNG = b"\x89PNG\r\n\x1a\n"
STEPS = 50
# completeness at STEPS Gauss-Legendre points: |delta| within 5% of the explained change (+ 1e-3
# for changes near zero). On these models the relative error at 50 steps is well under 1%; at 2
# steps it is far over 5%.
REL, ABS = 0.05, 1e-3
EXTRA = ["alice", "bob", "met", "in", "paris", "script", "alert", "<", ">", "/", "(", ")", "1"]


def _folder(path: Path, head: str, **config: object) -> Path:
    """The tiny BERT's tokenizer with a randomly initialised `head` model (a transformers class
    name), weights drawn with initializer_range 0.4, saved as a model folder."""
    import transformers

    build_tiny_bert(path, words=sorted({w for t in TEXTS for w in t.split()} | set(EXTRA)))
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.from_pretrained(path, initializer_range=0.4, **config)
    getattr(transformers, head)(cfg).save_pretrained(path)
    return path


def _tolerance(t) -> float:
    return REL * abs(t.score - t.baseline_score) + ABS


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("cls"), "BertForSequenceClassification", num_labels=3,
                   id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("ner"), "BertForTokenClassification", num_labels=3,
                   id2label={0: "O", 1: "B-PER", 2: "I-PER"}, label2id={"O": 0, "B-PER": 1, "I-PER": 2})


@pytest.fixture(scope="module")
def cls_model(classifier: Path):
    return lmtune.load(str(classifier))


def test_attributions_add_up_to_the_score_change(cls_model):
    explained = cls_model.explain(TEXTS, steps=STEPS)
    predicted = cls_model.predict(TEXTS)
    assert len(explained) == len(TEXTS)
    # explanations run in fp32 always; predictions in bf16 where train.precision: auto takes it
    close = 1e-4 if cls_model.accelerator.mixed_precision == "no" else 2e-2
    for e, p in zip(explained, predicted):
        assert len(e.targets) == 1
        assert e.label == p["label"] and e.confidence == pytest.approx(p["score"], abs=close)
        assert abs(e.delta) <= _tolerance(e.targets[0]), (e.input, e.delta, e.score, e.baseline_score)
        total = sum(e.targets[0].token_attributions)
        assert e.delta == pytest.approx(total - (e.score - e.baseline_score), abs=1e-9)
        assert abs(e.targets[0].special) < 1e-6  # the baseline keeps the special tokens: nothing on them
    # not vacuous: the words move the logit, and a coarse integral misses completeness
    assert max(abs(e.score - e.baseline_score) for e in explained) > 0.5
    coarse = explain(cls_model, TEXTS, steps=2)
    assert any(abs(e.delta) > _tolerance(e.targets[0]) for e in coarse)


def test_delta_is_captums_convergence_delta(cls_model):
    from captum.attr import LayerIntegratedGradients

    e = cls_model.explain("the plot was dull and the acting was awful", steps=STEPS)[0]
    model = cls_model.accelerator.unwrap_model(cls_model.model)
    plain = getattr(model, "_original_forward", model)  # (the fp32 forward, where the predictor autocasts to bf16)
    enc = cls_model.tokenizer(e.input, return_tensors="pt")
    base = enc["input_ids"].clone()
    base[0, 1:-1] = cls_model.tokenizer.pad_token_id
    lig = LayerIntegratedGradients(lambda ids, types: plain(input_ids=ids, token_type_ids=types).logits,
                                   model.get_input_embeddings())
    attributions, delta = lig.attribute(enc["input_ids"], base, target=cls_model.labels.index(e.label),
                                        additional_forward_args=(enc["token_type_ids"],), n_steps=STEPS,
                                        return_convergence_delta=True)
    assert e.delta == pytest.approx(float(delta), abs=1e-5)
    assert e.targets[0].token_attributions == pytest.approx(attributions.sum(-1)[0].tolist(), abs=1e-5)


def test_one_attribution_per_word_and_the_text_kept(cls_model):
    text = "a wonderful , warm and funny story"
    e = cls_model.explain(text)[0]
    assert e.words == text.split() and len(e.attributions) == len(e.words)
    assert "".join(g + w for g, w in zip(e.gaps, e.words)) == text
    assert e.tokens[0] == "[CLS]" and e.token_words[0] is None and not e.truncated
    pair = cls_model.explain(["great film"], pairs=["boring"])[0]
    assert pair.words == ["great", "film", "boring"] and len(pair.attributions) == 3
    kept, cls_model.max_length = cls_model.max_length, 5  # [CLS] + 3 words + [SEP]
    try:
        cut = cls_model.explain(text)[0]
    finally:
        cls_model.max_length = kept
    assert cut.truncated and cut.words == text.split()[:3] and len(cut.attributions) == 3
    with pytest.raises(LmtuneError, match="classification model predicts one label per input"):
        cls_model.explain(text, word=0)


def test_token_classification_explains_each_tagged_word(tagger):
    model = lmtune.load(str(tagger))
    sentences = [t.split() for t in TEXTS]
    tags = model.predict(sentences)
    explained = model.explain(sentences, steps=STEPS)
    assert sum(len(e.targets) for e in explained) > 0
    for e, words, sentence_tags in zip(explained, sentences, tags):
        assert e.words == words
        assert [t.word for t in e.targets] == [i for i, tag in enumerate(sentence_tags) if tag != "O"]
        for t in e.targets:
            assert t.label == sentence_tags[t.word] and len(t.attributions) == len(words)
            assert abs(t.delta) <= _tolerance(t)
    # the integration path run a few inputs at a time (the words' targets in two groups): the same numbers
    whole = model.explain([sentences[1]], steps=8)[0]
    few = model.explain([sentences[1]], steps=8, internal_batch_size=5)[0]
    assert len(few.targets) == len(whole.targets) > 5
    for a, b in zip(few.targets, whole.targets):
        assert a.attributions == pytest.approx(b.attributions, abs=1e-5) and a.delta == pytest.approx(b.delta, abs=1e-5)
    # one chosen word, whatever its tag; raw text reads the same words
    one = model.explain(TEXTS[1], word=3)[0]
    assert [t.word for t in one.targets] == [3] and one.targets[0].label == tags[1][3]
    with pytest.raises(LmtuneError, match="the input has 2 words"):
        model.explain("great film", word=5)


def test_plain_text_has_markers_and_colour_only_on_a_terminal(cls_model, monkeypatch):
    explained = cls_model.explain(TEXTS[:2])
    plain = render_text(explained, color=False)
    assert "\x1b[" not in plain and ("[+]" in plain or "[-]" in plain)
    assert "delta" in plain and explained[0].label in plain
    coloured = render_text(explained, color=True)
    assert "\x1b[48;5;" in coloured and "[+]" not in coloured

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert color_enabled(Terminal()) and not color_enabled(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not color_enabled(Terminal())


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_parses_and_escapes(cls_model):
    hostile = "<script>alert(1)</script> great film"
    page = render_html(cls_model.explain([hostile, "boring"]), title="<b>run</b>")
    parser = _Tags()
    parser.feed(page)
    parser.close()
    assert "script" not in parser.tags and "b" not in parser.tags
    assert parser.tags.count("section") == 2 and "<script" not in page
    assert "<script>alert(1)</script>" in "".join(parser.text)  # shown as text, whole
    assert "towards the prediction" in page  # the legend


def test_attention_map_is_a_png_and_the_kernel_is_restored(cls_model, tmp_path):
    body = cls_model.accelerator.unwrap_model(cls_model.model)
    before = body.config._attn_implementation
    path = attention_map(cls_model, "great film", tmp_path / "map.png")
    assert path.read_bytes()[:8] == PNG
    assert body.config._attn_implementation == before
    attention_map(cls_model, "great film", tmp_path / "mean.png", layer="mean")
    assert (tmp_path / "mean.png").read_bytes()[:8] == PNG
    with pytest.raises(LmtuneError, match="expected last, mean or a layer number from 0 to 1"):
        attention_map(cls_model, "great film", tmp_path / "x.png", layer=7)


# ---------------------------------------------------------------- the command


def _one_error(capsys, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as e:  # usage errors (argparse)
        code = int(e.code)
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmtune: error: "), err
    return lines[0]


def test_cli_text_prints_the_explanation_and_writes_the_attention_map(classifier, tmp_path, capsys):
    png = tmp_path / "map.png"
    assert main(["explain", str(classifier), "--text", "the plot was dull", "--attention", str(png),
                 "--steps", "20"]) == 0
    out, err = capsys.readouterr()
    assert "predicted " in out and "delta" in out and ("[+]" in out or "[-]" in out) and "\x1b[" not in out  # captured: not a terminal
    assert png.read_bytes()[:8] == PNG and "attention map" in err


def test_cli_input_file_to_html(tagger, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"tokens": t.split()}) + "\n" for t in TEXTS[:3]))
    out = tmp_path / "out.html"
    assert main(["explain", str(tagger), "--input", str(src), "-o", str(out)]) == 0
    parser = _Tags()
    parser.feed(out.read_text())
    assert parser.tags.count("section") == 3
    assert "wrote" in capsys.readouterr().err
    assert "exists; use --overwrite" in _one_error(capsys, ["explain", str(tagger), "--input", str(src), "-o", str(out)])
    assert "name the file .html" in _one_error(capsys, ["explain", str(tagger), "--input", str(src), "-o",
                                                         str(tmp_path / "out.txt")])
    assert "file not found" in _one_error(capsys, ["explain", str(tagger), "--input", str(tmp_path / "missing.txt")])


def test_cli_refuses_generative_and_masked_lm_runs(tmp_path, capsys):
    import transformers

    llama = build_tiny_llama(tmp_path / "llama")
    mlm = build_tiny_bert(tmp_path / "mlm")
    torch.manual_seed(0)
    transformers.BertForMaskedLM.from_pretrained(mlm).save_pretrained(mlm)
    for folder, task in ((llama, "causal_lm"), (mlm, "masked_lm")):
        line = _one_error(capsys, ["explain", str(folder), "--text", "hello"])
        assert "explain supports classification and token_classification" in line and task in line
    with pytest.raises(LmtuneError, match="explain supports classification and token_classification"):
        lmtune.load(str(mlm)).explain("hello [MASK]")


def test_cli_needs_a_text_or_an_input(classifier, capsys):
    assert "one of the arguments --text --input is required" in _one_error(capsys, ["explain", str(classifier)])
    assert "--steps 0" in _one_error(capsys, ["explain", str(classifier), "--text", "fine", "--steps", "0"])
    assert "predicts one label per input" in _one_error(capsys, ["explain", str(classifier), "--text", "fine",
                                                                  "--word", "0"])
