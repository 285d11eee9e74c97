import pytest
import torch
from torch import nn

from lmtune.training.cpu.dropout import PackedDropout, keep_probability, packed_dropout, use_packed


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drops_at_the_rate_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(1_000_003)  # not a multiple of four draws a word
    y, keep = packed_dropout(x, p)
    kept = keep.float().mean().item()
    # binomial standard error at n = 1e6 is at most 5e-4
    assert kept == pytest.approx(1 - p, abs=3e-3)
    assert keep_probability(p) == pytest.approx(1 - p, abs=1 / 65536)
    assert y.mean().item() == pytest.approx(1.0, abs=6e-3)
    assert y.unique().tolist() == pytest.approx([0.0, 1 / keep_probability(p)])


def test_every_lane_of_a_word_drops_alike():
    """Each 64-bit word gives four 16-bit draws; a lane that never drops (a word drawn without its sign
    bit) would keep 1/4 of the elements always."""
    torch.manual_seed(1)
    _, keep = packed_dropout(torch.ones(4 * 250_000), 0.1)
    per_lane = keep.view(-1, 4).float().mean(0)
    assert per_lane.tolist() == pytest.approx([0.9] * 4, abs=4e-3)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(3, 7, 5, dtype=torch.bfloat16, requires_grad=True)
    y = PackedDropout(0.3)(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    kept = y != 0
    scale = 1 / keep_probability(0.3)
    assert 0 < kept.sum() < kept.numel()
    torch.testing.assert_close(x.grad, (grad * kept * scale).to(x.grad.dtype))
    torch.testing.assert_close(y, (x * kept * scale).detach().to(y.dtype))


def test_seeded_and_identity_when_evaluating():
    x = torch.randn(64, 32)
    d = PackedDropout(0.2)
    torch.manual_seed(3)
    a = d(x)
    torch.manual_seed(3)
    b = d(x)
    c = d(x)
    assert torch.equal(a, b) and not torch.equal(b, c)
    assert torch.equal(d.eval()(x), x)
    assert torch.equal(PackedDropout(0.0)(x), x)


def test_compiled_code_draws_the_same_masks_as_eager():
    """The mask is a custom operator: compilation calls it as it is (no masks from inductor's own
    generator), does not merge two draws over the same input, and does not draw again for backward."""
    first, second = PackedDropout(0.25, site="first"), PackedDropout(0.25, site="second")
    w = torch.randn(16, 8)

    def block(x):
        return torch.nn.functional.silu(first(x) @ w) + second(x) @ w

    compiled = torch.compile(block, dynamic=True, fullgraph=True)
    results = []
    for fn in (block, compiled):
        torch.manual_seed(4)
        x = torch.randn(5, 16, requires_grad=True)
        out = fn(x)
        out.sum().backward()
        results.append((out.detach(), x.grad, torch.rand(1)))
    (eager_out, eager_grad, eager_next), (comp_out, comp_grad, comp_next) = results
    torch.testing.assert_close(comp_out, eager_out)
    torch.testing.assert_close(comp_grad, eager_grad)
    assert torch.equal(comp_next, eager_next)  # as many draws in both
    # the two dropouts over the same input drew different masks
    torch.manual_seed(5)
    x = torch.randn(50, 16)
    assert not torch.equal(first(x) == 0, second(x) == 0)


def test_use_packed_replaces_the_model_and_adapter_dropouts():
    from peft import LoraConfig, get_peft_model

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.drop, self.second, self.idle = nn.Linear(8, 8), nn.Dropout(0.1), nn.Linear(8, 2), nn.Dropout(0.0)

    torch.manual_seed(6)
    model = get_peft_model(Net(), LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["first", "second"]))
    assert use_packed(model) == 3  # two adapters' and the model's own
    packed = [m for m in model.modules() if isinstance(m, PackedDropout)]
    assert len(packed) == 3 and all(d.p == 0.1 for d in packed)
    assert len({d.site for d in packed}) == 3
    # a dropout that drops nothing is left as it is, and a second call finds nothing more to do
    assert sum(type(m) is nn.Dropout for m in model.modules()) == 1
    assert use_packed(model) == 0


def test_use_packed_gives_an_encoders_layers_shared_sites():
    """Every layer's dropouts are named below the layer, so the layers' twins share a site (as compiled
    blocks need) and the dropouts of one layer differ."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
    model = BertForSequenceClassification(config)
    # per layer: the attention output's and the feed-forward network's, and the attention's own
    # (whose p the attention function reads; the probabilities' mask stays torch's); embeddings, head
    assert use_packed(model) == 3 * 3 + 2
    sites = [m.site for m in model.modules() if isinstance(m, PackedDropout)]
    assert sorted(set(sites)) == ["attention.output.dropout", "attention.self.dropout", "bert.embeddings.dropout",
                                  "dropout", "output.dropout"]
    assert not any(type(m) is nn.Dropout and m.p > 0 for m in model.modules())
    assert model.bert.encoder.layer[0].attention.self.dropout.p == config.attention_probs_dropout_prob
