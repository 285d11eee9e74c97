"""The speed-ups of a training step, behind one entry point: `speed_ups(model, accelerator)`, which
the loop calls once, on the model as it will train (its strategy applied, before FSDP shards it: a
sharded model's class is FSDP's). Each module's text says in full what it changes and why; here a
line each:

- first_token: a classifier whose head reads the first position only computes its last encoder
  layer for that position alone (the same logits for less work; on every device, and in inference).
- dropout: dropout masks from packed random words, where torch draws one Bernoulli number per
  element on CPU, a large share of an encoder's or a LoRA step (on other devices, torch's dropout).
- row_gradients: the word embedding's gradient kept dense across steps and cleared row by row after
  each one, not a whole matrix zeroed every step (CPU, one process: DDP reduces dense buckets).
- heap: while the run trains, large tensors come from malloc's heap, not fresh mmaps whose pages the
  kernel faults in and zeroes again at every step (CPU, glibc).
- lmtune/tasks/lm_loss.py stays with its task (the task owns its loss): a causal LM's head and loss in
  chunks of positions, so that the whole logits matrix and its gradient are never held at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ContextManager

from . import dropout, first_token, heap, row_gradients


@dataclass
class SpeedUps:
    """What the loop needs of the speed-ups after the model is built: the clipping that knows of
    row-cleared gradients (once the optimizer exists) and the heap to train in."""

    model: Any
    accelerator: Any

    @property
    def on_cpu(self) -> bool:
        return self.accelerator.device.type == "cpu"

    def gradient_clipping(self, optimizer: Any) -> Callable[[float], Any]:
        """Clipping to a maximum norm, for the optimizer just built (before accelerate prepares it):
        accelerate's clip_grad_norm_, or, where the embedding's gradient is cleared row by row, the
        same clipping over its touched rows."""
        rows = None
        if self.on_cpu and self.accelerator.num_processes == 1:  # (DDP reduces dense gradients)
            rows = row_gradients.use(self.model, optimizer)
        # (the model's parameters are the same tensors once accelerate has prepared it)
        model, accelerator = self.model, self.accelerator
        if rows is None or accelerator.scaler is not None:
            return lambda max_norm: accelerator.clip_grad_norm_(model.parameters(), max_norm)
        return lambda max_norm: rows.clip(model.parameters(), max_norm)

    def heap(self) -> ContextManager[None]:
        """The block to train in: on CPU, large tensors served from the heap (heap.py)."""
        return heap.kept_in_heap(self.on_cpu)

    def trim_heap(self, limit: int) -> bool:
        """Between steps: the heap's free memory handed back once the process holds more than `limit`
        bytes (heap.trim_above); nothing elsewhere than on CPU."""
        return self.on_cpu and heap.trim_above(limit)


def speed_ups(model: Any, accelerator: Any) -> SpeedUps:
    """Apply the speed-ups that change the model (the first token's last layer, packed dropout
    masks: the model's own and LoRA's) and return the ones the loop applies later."""
    first_token.use(model)  # (a classifier that reads the first position: its last layer computes that one)
    dropout.use_packed(model)
    return SpeedUps(model, accelerator)
