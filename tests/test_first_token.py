"""The last layer computed for the first token only gives a classifier the plain model's logits and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from lmtune.core.config import LoraStrategy
from lmtune.training import strategies
from lmtune.training.cpu import first_token

SIZES = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padded rows: the first token must not attend to their padding
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def _pair(model_class, config_class, attention: str):
    torch.manual_seed(0)
    plain = model_class(config_class(**SIZES, attn_implementation=attention))
    changed = copy.deepcopy(plain)
    assert first_token.use(changed)
    return plain, changed


def _assert_same_step(plain, changed, *, train: bool) -> None:
    plain.train(train)
    changed.train(train)
    batch = _batch()
    a, b = plain(**batch), changed(**batch)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-6)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(plain.named_parameters(), changed.parameters()):
        if p.grad is None:
            assert q.grad is None, name
        else:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("model_class,config_class", [(BertForSequenceClassification, BertConfig),
                                                      (RobertaForSequenceClassification, RobertaConfig)])
def test_same_logits_and_gradients(model_class, config_class, attention) -> None:
    plain, changed = _pair(model_class, config_class, attention)
    _assert_same_step(plain, changed, train=True)
    _assert_same_step(plain, changed, train=False)
    assert changed(**_batch(), output_hidden_states=True).hidden_states[-1].shape[1] == 1  # (one position computed)


def test_same_with_gradient_checkpointing_and_lora() -> None:
    plain, changed = _pair(BertForSequenceClassification, BertConfig, "eager")
    for model in (plain, changed):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _assert_same_step(plain, changed, train=True)

    plain, changed = _pair(BertForSequenceClassification, BertConfig, "eager")
    lora = LoraStrategy(name="lora", r=4, dropout=0.0, target_modules=["query", "value"])
    adapted = []
    for model in (plain, changed):  # the same adapters on both (LoRA's B starts at zero: not here)
        torch.manual_seed(3)
        adapted.append(strategies.apply(model, lora, 1e-3, 0.0).model)
        for name, p in adapted[-1].named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    a, b = adapted
    _assert_same_step(a, b, train=True)


def test_not_used_where_the_head_reads_other_positions() -> None:
    bert = BertConfig(**SIZES)
    assert not first_token.use(BertForTokenClassification(bert))
    assert not first_token.use(BertForMaskedLM(bert))
    llama = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                        num_labels=2, pad_token_id=0)
    assert not first_token.use(LlamaForSequenceClassification(llama))  # (its head reads the last token)
    tagger = BertForTokenClassification(bert)
    assert not first_token.use(tagger)
    assert "forward" not in vars(tagger.bert.encoder.layer[-1])  # (nothing changed: the class's own forward)
    classifier = BertForSequenceClassification(bert)
    assert first_token.use(classifier)
    assert "forward" in vars(classifier.bert.encoder.layer[-1])


def test_whole_last_layer_computes_every_position_inside_and_the_first_token_after() -> None:
    plain, changed = _pair(BertForSequenceClassification, BertConfig, "eager")
    plain.eval(), changed.eval()
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        expected = plain(**batch, output_attentions=True, output_hidden_states=True)
        with first_token.whole_last_layer(changed):
            inside = changed(**batch, output_attentions=True, output_hidden_states=True)
        after = changed(**batch, output_hidden_states=True)
    assert len(inside.attentions) == len(expected.attentions) == 2
    for a, b in zip(inside.attentions + inside.hidden_states, expected.attentions + expected.hidden_states):
        torch.testing.assert_close(a, b)
    assert after.hidden_states[-1].shape[1] == 1  # (the first-token layer again)
    torch.testing.assert_close(after.logits, expected.logits, rtol=1e-5, atol=1e-6)


def test_used_through_a_peft_model() -> None:
    model = BertForSequenceClassification(BertConfig(**SIZES))
    lora = LoraStrategy(name="lora", r=4, dropout=0.0, target_modules=["query", "value"])
    adapted = strategies.apply(model, lora, 1e-3, 0.0).model
    assert first_token.use(adapted)
    assert "forward" in vars(model.bert.encoder.layer[-1])
