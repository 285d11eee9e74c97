"""The last encoder layer computed for the first token only, where the head reads nothing else.

A BERT-style sequence classifier reads one position of the encoder's output: the first ([CLS],
<s>), through the pooler or the classification head. The last layer's output at every other
position is computed and thrown away: its query projection, attention, output projection and
feed-forward network for all tokens. Only the keys and values of that layer need every token. Here
the last layer computes its keys and values for all tokens and everything else for the first token
alone, so a 6-layer encoder does about a sixth less work per step, forward and backward, with the
same logits: the plain layer's arithmetic, row by row.

The last hidden state then has one position (the first). Models whose head reads other positions
(token classification, question answering, masked LM, decoder classifiers that read the last
token) are not changed, nor are layers with cross-attention. Applied to the model being trained
(and evaluated) and to a finished run's model for inference (lmtune eval, predict, serve, explain's
attributions): a saved model is the plain one, and what reads the last layer at every position
(explain's attention maps) runs inside `whole_last_layer`.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Iterator

import torch
from torch import nn

# classifiers whose head reads the encoder's output at the first position only
FIRST_TOKEN_HEADS = frozenset({
    "BertForSequenceClassification",
    "CamembertForSequenceClassification",
    "ElectraForSequenceClassification",
    "RobertaForSequenceClassification",
    "XLMRobertaForSequenceClassification",
})


def _first_token_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor:
    """BertLayer.forward (self-attention, then the feed-forward network) for the first position."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attention = self.attention.self
    first = hidden_states[:, :1]
    batch = hidden_states.shape[0]
    heads = (batch, -1, attention.num_attention_heads, attention.attention_head_size)
    query = attention.query(first).view(*heads).transpose(1, 2)
    key = attention.key(hidden_states).view(*heads).transpose(1, 2)
    value = attention.value(hidden_states).view(*heads).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] != 1:
        attention_mask = attention_mask[:, :, :1]  # the first query's row of [batch, 1, queries, keys]
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    context, _ = interface(
        attention,
        query,
        key,
        value,
        attention_mask,
        dropout=attention.dropout.p if attention.training else 0.0,
        scaling=attention.scaling,
    )
    context = context.reshape(batch, 1, -1)
    attended = self.attention.output(context, first)
    return self.feed_forward_chunk(attended)


def _plain_layer(layer: nn.Module) -> bool:
    attention = getattr(layer, "attention", None)
    inner = getattr(attention, "self", None)
    return (
        all(isinstance(getattr(inner, name, None), nn.Module) for name in ("query", "key", "value"))
        and hasattr(attention, "output")
        and hasattr(layer, "feed_forward_chunk")
        and not getattr(layer, "add_cross_attention", False)
        and not getattr(layer, "is_decoder", False)
        and hasattr(inner, "scaling")
        and hasattr(inner, "config")
    )


def use(model: nn.Module) -> bool:
    """Compute `model`'s last encoder layer for the first token only; False (nothing changed) where
    its head reads more than the first position or its layers are not BERT's. `model`: a
    transformers model, or a PEFT model around one."""
    if hasattr(model, "get_base_model"):  # a PEFT model (a LoRA run's, for inference)
        model = model.get_base_model()
    if type(model).__name__ not in FIRST_TOKEN_HEADS:
        return False
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList) or not layers or not _plain_layer(layers[-1]):
        return False
    last = layers[-1]
    last.forward = types.MethodType(_first_token_forward, last)
    return True


def _first_token_only(module: nn.Module) -> bool:
    forward = vars(module).get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _first_token_forward


@contextlib.contextmanager
def whole_last_layer(model: nn.Module) -> Iterator[None]:
    """Inside the block, a model given to `use` computes its last layer at every position again,
    as the plain model does (for what reads more than the head's output: attention maps, hidden
    states); afterwards the last layer computes the first token only again."""
    changed = [module for module in model.modules() if _first_token_only(module)]
    for module in changed:
        del module.forward
    try:
        yield
    finally:
        for module in changed:
            module.forward = types.MethodType(_first_token_forward, module)
