"""The input embedding's gradient, cleared row by row on CPU.

A batch touches a few hundred of an encoder's ~30,000 word-embedding rows, yet torch's backward
writes the whole dense gradient every step: it allocates the matrix, fills it with zeros and adds
the touched rows; zero_grad then frees it. On a CPU the fill alone is a visible share of a short
encoder step (the README's step breakdown). Here the embedding hands autograd a sparse gradient
(nn.Embedding(sparse=True)) and autograd adds it into one dense gradient that lives across steps;
after each optimizer step only the rows that were touched are cleared. Clipping reads and scales
only those rows too (the others are zero), and leaves the gradients as they are when their norm is
within the limit (torch's clip_grad_norm_ multiplies them by 1.0 then).

AdamW, clipping and checkpoints still see the same dense gradient, so the arithmetic is the plain
path's; only the order in which a repeated token's contributions are summed may differ (float
rounding). Not used where the matrix is tied to an output layer (whose gradient is dense anyway),
nor under several processes (DDP reduces dense buckets).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


class RowGradients:
    """Keeps `embedding`'s dense gradient between steps and clears the rows each step touched."""

    def __init__(self, embedding: nn.Embedding) -> None:
        self.weight = embedding.weight
        self.buffer: torch.Tensor | None = None
        self.touched: list[torch.Tensor] = []
        self._rows: torch.Tensor | None = None
        embedding.sparse = True
        self.weight.register_hook(self._on_gradient)

    def rows(self) -> torch.Tensor:
        """The rows touched since the gradient was last cleared, each once."""
        if self._rows is None:
            self._rows = torch.cat(self.touched).unique() if self.touched else torch.empty(0, dtype=torch.long)
        return self._rows

    def clip(self, parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        """torch.nn.utils.clip_grad_norm_ for the model's `parameters`, this embedding among them;
        returns the total norm."""
        grads = [p.grad for p in parameters if p.grad is not None and p is not self.weight]
        embedding = self.weight.grad
        rows = self.rows() if embedding is not None else None
        picked = embedding.index_select(0, rows) if embedding is not None else None
        total = torch.nn.utils.get_total_norm(grads + ([picked] if picked is not None else []))
        coef = max_norm / (total + 1e-6)
        if coef < 1:
            torch._foreach_mul_(grads, coef)
            if picked is not None:
                embedding.index_copy_(0, rows, picked.mul_(coef))
        return total

    def _on_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        if grad.is_sparse:
            self.touched.append(grad._indices()[0])
            self._rows = None
            if self.weight.grad is None:  # autograd adds the sparse rows into this dense gradient
                self.weight.grad = self.buffer if self.buffer is not None else torch.zeros_like(self.weight)
                self.buffer = None
        return grad

    def after_step(self, *_: Any) -> None:
        """Optimizer step post-hook: clear the touched rows and take the gradient back, so that
        zero_grad(set_to_none=True) frees nothing and the next backward reuses it."""
        grad = self.weight.grad
        if grad is None or grad.is_sparse:
            self.touched.clear()
            self._rows = None
            return
        if self.touched:
            grad.index_fill_(0, self.rows(), 0.0)
        else:
            grad.zero_()
        self.touched.clear()
        self._rows = None
        self.weight.grad = None
        self.buffer = grad


def use(model: nn.Module, optimizer: torch.optim.Optimizer) -> RowGradients | None:
    """Row-cleared gradients for `model`'s input embedding, when that is a plain nn.Embedding not tied
    to the output layer and trained by `optimizer`. Returns None where not used. (For a model on
    the CPU, in one process: the caller's choice.)"""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if type(embedding) is not nn.Embedding or embedding.max_norm is not None:
        return None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and getattr(output, "weight", None) is embedding.weight:
        return None
    if not embedding.weight.requires_grad or not any(p is embedding.weight for g in optimizer.param_groups for p in g["params"]):
        return None  # (a frozen embedding: LoRA, partial; gradual unfreezing's until its stage)
    rows = RowGradients(embedding)
    optimizer.register_step_post_hook(rows.after_step)
    return rows

