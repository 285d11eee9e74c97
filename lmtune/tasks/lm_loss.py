"""Causal-LM training loss with the LM head and cross-entropy computed in chunks of positions.

A small decoder's LM head is its largest matrix: for SmolLM2-135M, 2,400 trained positions make a
2,400 x 49,152 logit matrix, kept in bf16, copied to fp32 for the softmax, and matched by a gradient
of the same size, about 1.2 GB that the rest of the step does not need. Here each chunk of
positions gets its logits, loss and gradient in turn: the same loss and gradients, about 1 GB less
peak memory on that model.

The gradient of the mean cross-entropy with respect to a chunk's logits is known as soon as its
softmax is (softmax - one-hot, over the number of targets), so a plain linear head's gradients (for
its input, and for its weight where that trains) are computed chunk by chunk in the forward pass and
kept, and the backward pass only scales them by the gradient that reaches the loss. The logits are
never needed again: three matrix products with the head (logits, input gradient, weight gradient),
as without chunks, where recomputing them in the backward pass (activation checkpointing) made four
(on SmolLM2-135M, the head is about a fifth of a step's arithmetic). A head that is not a plain
nn.Linear is checkpointed instead.

`use_chunked_loss(model)` replaces the forward of one model instance (a transformers *ForCausalLM
with `get_decoder()` and an LM head) when it is given `shift_labels` and a `logits_to_keep` mask:
with gradients it returns the mean loss; without (evaluation), or with `per_position=True`, the
loss of each kept position, so that evaluation too never holds all logits at once. Preference
pairs need the per-position losses with gradients (each answer's summed log-probability): for a
frozen head (LoRA's) the input's gradient is again computed in the forward pass. Generation and plain calls go through the
model's own forward unchanged.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK = 1024  # positions per chunk: smaller chunks save little more memory and cost time


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction=reduction)


def _linear_chunk(part: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, wanted: torch.Tensor,
                  grad: bool) -> tuple[torch.dtype, torch.Tensor, torch.Tensor | None]:
    """One chunk of a linear head: its logits' dtype (bf16 under autocast, as the head's own call),
    each position's log-probability of its target, and (with `grad`) the gradient of each position's
    loss with respect to its logits, softmax - one-hot, in fp32."""
    logits = F.linear(part, weight, bias)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.take_along_dim(wanted[:, None], 1)[:, 0]
    if not grad:
        return logits.dtype, picked, None
    return logits.dtype, picked, log_probs.exp_().scatter_add_(1, wanted[:, None], log_probs.new_full((len(wanted), 1), -1.0))


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of hidden @ weight.T (+ bias) against targets, its gradients computed
    chunk by chunk in the forward pass (the module docstring)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk: int) -> torch.Tensor:
        count = max(targets.numel(), 1)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and ctx.needs_input_grad[2] else None
        for i in range(0, hidden.shape[0], chunk):
            part = hidden[i : i + chunk]
            dtype, picked, grad = _linear_chunk(part, weight, bias, targets[i : i + chunk], grad=True)
            total -= picked.sum()
            grad = grad.div_(count).to(dtype)  # d(mean loss)/d(logits): (softmax - one-hot) / count
            if grad_hidden is not None:
                grad_hidden[i : i + chunk] = grad @ weight.to(grad.dtype)
            if grad_weight is not None:
                grad_weight += grad.t() @ part.to(grad.dtype)
            if grad_bias is not None:
                grad_bias += grad.sum(0)
            del grad
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad_loss.to(grad_hidden.dtype),
                None if grad_weight is None else (grad_weight * grad_loss).to(ctx.weight_dtype),
                None if grad_bias is None else (grad_bias * grad_loss).to(ctx.weight_dtype),
                None, None)


class _LinearTokenLosses(torch.autograd.Function):
    """Cross-entropy of each position of hidden @ weight.T (+ bias) against its target, for a frozen
    head: the gradient of a position's loss with respect to its logits (softmax - one-hot) is known
    in the forward pass, so the input's gradient is computed there chunk by chunk and the backward
    pass scales each position's row by the gradient that reaches its loss."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk: int) -> torch.Tensor:
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for i in range(0, hidden.shape[0], chunk):
            dtype, picked, grad = _linear_chunk(hidden[i : i + chunk], weight, bias, targets[i : i + chunk],
                                                grad=grad_hidden is not None)
            losses[i : i + chunk] = -picked
            if grad is not None:
                grad_hidden[i : i + chunk] = grad.to(dtype) @ weight.to(dtype)
            del grad
        ctx.save_for_backward(grad_hidden)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[Any, ...]:
        (grad_hidden,) = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad_losses[:, None].to(grad_hidden.dtype),
                None, None, None, None)


def chunked_token_losses_with_grad(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                                   chunk: int = CHUNK) -> torch.Tensor:
    """Cross-entropy of each position [N] of head(hidden) against targets, chunk by chunk, with
    gradients: a frozen plain linear head computes them in the forward pass, another head (or one
    that trains, whose weight gradient needs each position's upstream gradient) is checkpointed."""
    if type(head) is torch.nn.Linear and not head.weight.requires_grad and (head.bias is None or not head.bias.requires_grad):
        return _LinearTokenLosses.apply(hidden, head.weight, head.bias, targets, chunk)
    return torch.cat([checkpoint(_chunk_loss, head, hidden[i : i + chunk], targets[i : i + chunk], "none", use_reentrant=False)
                      for i in range(0, hidden.shape[0], chunk)])


def chunked_cross_entropy(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Mean cross-entropy of head(hidden) [N, vocab] against targets [N], chunk by chunk."""
    if type(head) is torch.nn.Linear:
        return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk)
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, hidden.shape[0], chunk):
        total = total + checkpoint(_chunk_loss, head, hidden[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
    return total / max(targets.numel(), 1)


def chunked_token_losses(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Cross-entropy of each position [N], without gradients (evaluation), chunk by chunk."""
    with torch.no_grad():
        return torch.cat([_chunk_loss(head, hidden[i : i + chunk], targets[i : i + chunk], "none")
                          for i in range(0, hidden.shape[0], chunk)])


def use_chunked_loss(model: Any, chunk: int = CHUNK) -> bool:
    """Give `model` the chunked training loss; False (and nothing changed) when it lacks the parts."""
    if not (hasattr(model, "get_decoder") and model.get_output_embeddings() is not None):
        return False
    original = model.forward

    def forward(self: Any, *args: Any, shift_labels: Any = None, logits_to_keep: Any = 0, per_position: bool = False,
                **kwargs: Any) -> Any:
        if shift_labels is None or not isinstance(logits_to_keep, torch.Tensor):
            return original(*args, shift_labels=shift_labels, logits_to_keep=logits_to_keep, **kwargs)
        from transformers.modeling_outputs import CausalLMOutputWithPast

        kwargs.pop("labels", None)  # shift_labels are the targets at the kept positions
        hidden = self.get_decoder()(*args, **kwargs).last_hidden_state[logits_to_keep]
        head = self.get_output_embeddings()
        if torch.is_grad_enabled() and per_position:  # each position's loss, with gradients (preference pairs)
            return CausalLMOutputWithPast(loss=chunked_token_losses_with_grad(head, hidden, shift_labels, chunk))
        if torch.is_grad_enabled():
            return CausalLMOutputWithPast(loss=chunked_cross_entropy(head, hidden, shift_labels, chunk))
        # evaluation: the loss of every kept position, for per-example sums
        return CausalLMOutputWithPast(loss=chunked_token_losses(head, hidden, shift_labels, chunk))

    model.forward = types.MethodType(forward, model)
    model.lmtune_chunked_loss = True
    return True


def has_chunked_loss(model: Any) -> bool:
    """Whether `model` (possibly inside a DDP/FSDP wrapper or a PEFT model) has the chunked loss."""
    inner = getattr(model, "module", model)  # PEFT models pass attribute lookups to their base model
    return bool(getattr(inner, "lmtune_chunked_loss", False))
