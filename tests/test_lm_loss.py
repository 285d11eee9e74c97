"""The chunked LM-head loss gives the model's own loss and gradients."""

from __future__ import annotations

import torch

from lmtune.lm_loss import use_chunked_loss


def test_chunked_loss_matches_the_model_loss_and_gradients(tiny_llama):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ids = torch.randint(4, 60, (3, 11))
    keep = torch.rand(3, 11) < 0.7
    keep[:, -1] = False
    targets = ids[:, 1:][keep[:, :-1]]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "logits_to_keep": keep, "shift_labels": targets}

    def loss_and_grads(chunked: bool):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="eager")
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
    for name in grads:
        assert torch.allclose(grads[name], chunked_grads[name], atol=1e-5), name


def test_evaluation_and_generation_use_the_models_own_forward(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    use_chunked_loss(model)
    ids = torch.randint(4, 60, (1, 6))
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, 6, model.config.vocab_size)
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 9)
