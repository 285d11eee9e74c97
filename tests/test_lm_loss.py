"""The chunked LM-head loss gives the model's own loss and gradients."""

from __future__ import annotations

import pytest
import torch

from lmtune.tasks.lm_loss import use_chunked_loss


class _WrappedHead(torch.nn.Linear):
    """A head that is not a plain nn.Linear: its chunks are checkpointed instead."""


@pytest.mark.parametrize("head", ["linear", "linear, frozen", "other module"])
def test_chunked_loss_matches_the_model_loss_and_gradients(tiny_llama, head):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ids = torch.randint(4, 60, (3, 11))
    keep = torch.rand(3, 11) < 0.7
    keep[:, -1] = False
    targets = ids[:, 1:][keep[:, :-1]]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "logits_to_keep": keep, "shift_labels": targets}

    def loss_and_grads(chunked: bool):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="eager")
        model.config.tie_word_embeddings = False  # (an output layer of its own, with a bias: every gradient checked)
        model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        torch.manual_seed(1)
        torch.nn.init.normal_(model.lm_head.weight, std=0.1)
        torch.nn.init.normal_(model.lm_head.bias, std=0.1)
        model.lm_head.requires_grad_(head != "linear, frozen")
        if head == "other module":
            model.lm_head.__class__ = _WrappedHead
        if chunked:
            assert use_chunked_loss(model, chunk=4)  # several chunks, the last one short
        loss = model(**batch, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(False)
    chunked_loss, chunked_grads = loss_and_grads(True)
    assert targets.numel() > 8
    assert torch.allclose(loss, chunked_loss, atol=1e-5)
    assert grads.keys() == chunked_grads.keys() and len(grads) > 5
    assert ("lm_head.bias" in grads) == (head != "linear, frozen")
    for name in grads:
        assert torch.allclose(grads[name], chunked_grads[name], atol=1e-5), name


def test_evaluation_losses_per_position_match_the_logits(tiny_llama):
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from lmtune.tasks.lm_loss import has_chunked_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert not has_chunked_loss(model) and use_chunked_loss(model, chunk=5) and has_chunked_loss(model)
    ids = torch.randint(4, 60, (2, 9))
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[:, -1] = False
    targets = ids[:, 1:].reshape(-1)
    with torch.no_grad():
        losses = model(input_ids=ids, logits_to_keep=keep, shift_labels=targets).loss
        logits = model(input_ids=ids).logits[:, :-1].reshape(-1, model.config.vocab_size)
    assert losses.shape == (16,)
    assert torch.allclose(losses, F.cross_entropy(logits, targets, reduction="none"), atol=1e-5)


def test_evaluation_and_generation_use_the_models_own_forward(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    use_chunked_loss(model)
    ids = torch.randint(4, 60, (1, 6))
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, 6, model.config.vocab_size)
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 9)


@pytest.mark.parametrize("head", ["linear, frozen", "linear", "other module"])
def test_losses_per_position_with_gradients_match_the_logits(tiny_llama, head):
    """Preference pairs weigh each position's loss (by its answer's share of the DPO gradient): the
    chunked losses and their gradients equal those from the model's own logits."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ids = torch.randint(4, 60, (3, 10))
    keep = torch.rand(3, 10) < 0.6
    keep[:, -1] = False
    targets = ids[:, 1:][keep[:, :-1]]
    weights = torch.randn(int(keep.sum()))

    def losses_and_grads(chunked: bool):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="eager")
        model.lm_head.requires_grad_(head != "linear, frozen")
        if head == "other module":
            model.lm_head.__class__ = _WrappedHead
        if chunked:
            assert use_chunked_loss(model, chunk=3)
            losses = model(input_ids=ids, logits_to_keep=keep, shift_labels=targets, per_position=True).loss
        else:
            logits = model(input_ids=ids).logits[keep]
            losses = F.cross_entropy(logits, targets, reduction="none")
        (losses * weights).sum().backward()
        return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    losses, grads = losses_and_grads(False)
    chunked, chunked_grads = losses_and_grads(True)
    assert losses.shape == chunked.shape and losses.numel() > 6
    assert torch.allclose(losses, chunked, atol=1e-5)
    assert grads.keys() == chunked_grads.keys() and len(grads) > 5
    for name in grads:
        assert torch.allclose(grads[name], chunked_grads[name], atol=1e-5), name
