"""Row-cleared embedding gradients train exactly as torch's dense ones."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from lmtune.core.config import FullStrategy, GradualStrategy
from lmtune.training import strategies
from lmtune.training.cpu import row_gradients


def _model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    return BertForSequenceClassification(config)


def _batches(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    # few tokens (0..39) out of 200: most rows are never touched; each batch repeats some
    return [{"input_ids": torch.randint(1, 40, (4, 7), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}
            for _ in range(n)]


def _train(rows: bool, accumulate: int = 1, strategy=FullStrategy(), max_norm: float = 1.0,
           norms: list[float] | None = None) -> tuple[BertForSequenceClassification, list[float], object]:
    model = _model()
    plan = strategies.apply(model, strategy, 1e-2, 0.01)
    optimizer = torch.optim.AdamW(plan.groups, lr=1e-2, fused=True)
    used = row_gradients.use(plan.model, optimizer) if rows else None
    losses = []
    for i, batch in enumerate(_batches(12)):
        plan.update(i // accumulate, 0)
        loss = plan.model(**batch).loss / accumulate
        loss.backward()
        losses.append(loss.item())
        if (i + 1) % accumulate == 0:
            clip = used.clip if used is not None else torch.nn.utils.clip_grad_norm_
            norm = clip(plan.model.parameters(), max_norm)
            if norms is not None:
                norms.append(float(norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return plan.model, losses, used


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    # atol: the keys' biases get a gradient of zero but for rounding, which Adam scales up to
    # steps of 1e-6; every other weight agrees to 3e-7, against updates of about 1e-2 a step
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=name)


def test_same_losses_and_weights_as_dense_gradients():
    dense, dense_losses, _ = _train(rows=False)
    model, losses, used = _train(rows=True)
    assert used is not None and model.get_input_embeddings().sparse
    torch.testing.assert_close(losses, dense_losses, rtol=1e-5, atol=1e-6)
    _assert_same(model, dense)
    embedding = model.get_input_embeddings().weight
    # the gradient is kept between steps, cleared: the next backward adds into zeros
    assert embedding.grad is None and used.buffer is not None and not used.buffer.any()
    # rows no batch touched still moved by weight decay alone, as under dense AdamW
    assert not torch.equal(embedding[100:], _model().get_input_embeddings().weight[100:])


def test_same_clipping_as_torch():
    dense_norms, norms = [], []
    dense, _, _ = _train(rows=False, max_norm=0.05, norms=dense_norms)
    model, _, _ = _train(rows=True, max_norm=0.05, norms=norms)
    assert min(dense_norms) > 0.05  # (every step was clipped)
    torch.testing.assert_close(norms, dense_norms, rtol=1e-5, atol=0)
    _assert_same(model, dense)


def test_same_weights_with_gradient_accumulation():
    dense, _, _ = _train(rows=False, accumulate=3)
    model, _, _ = _train(rows=True, accumulate=3)
    _assert_same(model, dense)


def test_left_out_under_gradual_unfreezing():
    # the embedding is in the optimizer from the start, frozen until the last stage
    gradual = GradualStrategy(name="gradual", unfreeze_every=2, unit="step")
    dense, _, _ = _train(rows=False, strategy=gradual)
    model, _, used = _train(rows=True, strategy=gradual)
    assert used is None
    _assert_same(model, dense)


def test_not_used_for_a_tied_or_frozen_embedding():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    tied = BertForMaskedLM(config)
    assert row_gradients.use(tied, torch.optim.AdamW(tied.parameters())) is None
    model = _model()
    trained = [p for n, p in model.named_parameters() if "word_embeddings" not in n]
    assert row_gradients.use(model, torch.optim.AdamW(trained)) is None
    assert not model.get_input_embeddings().sparse
