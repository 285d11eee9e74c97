"""Checkpoints of an adapter (LoRA) run without the frozen base model.

A LoRA run trains the adapters and a new task head on a base model that never changes. Its
checkpoints hold what trains (every parameter that needs a gradient, and the buffers), plus the
optimizer, scheduler and random state that accelerate saves as usual; on resume the frozen base
is the model that the run's config names, built again as at the start of the run. accelerate's
save/load hooks carry this: the model's part of a checkpoint is `TRAINABLE` instead of the whole
model. A checkpoint that holds the whole model (no `TRAINABLE` in it) is still loaded whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import LmtuneError
from ..core.models import is_adapter

TRAINABLE = "trainable.safetensors"


def frozen_names(model: torch.nn.Module) -> set[str]:
    """State-dict names of the parameters that do not train (a tied weight under each of its names)."""
    return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (the model's state dict) without its frozen parameters."""
    frozen = frozen_names(model)
    return {name: t.detach().contiguous() for name, t in state.items() if name not in frozen}


def load_trainable(model: torch.nn.Module, path: Path) -> None:
    """Load what `trainable_state` kept into a model whose frozen parameters are in place already."""
    from safetensors.torch import load_file

    result = model.load_state_dict(load_file(str(path)), strict=False)
    absent = sorted(set(result.missing_keys) - frozen_names(model))
    if result.unexpected_keys or absent:
        which = f"unexpected {list(result.unexpected_keys)[:3]}" if result.unexpected_keys else f"missing {absent[:3]}"
        raise LmtuneError(f"{path} does not match the model being trained: {which}")


def leave_out_frozen_base(accelerator: Any) -> None:
    """From now on, `accelerator.save_state` writes an adapter model's trainable part to `TRAINABLE`
    (instead of the whole model) and `accelerator.load_state` reads it back from there."""
    from safetensors.torch import save_file

    # The bare model's names (not those of a DDP wrapper): a checkpoint loads into any number of processes.
    def adapter(model: Any) -> bool:
        return is_adapter(accelerator.unwrap_model(model))

    def save(models: list[Any], weights: list[dict[str, torch.Tensor]], folder: str) -> None:
        # `models` is the accelerator's own list: only `weights` (what accelerate will write) changes
        for i in reversed([i for i, m in enumerate(models) if adapter(m)]):
            weights.pop(i)
            if accelerator.is_main_process:
                bare = accelerator.unwrap_model(models[i])
                save_file(trainable_state(bare, bare.state_dict()), str(Path(folder) / TRAINABLE), metadata={"format": "pt"})

    def load(models: list[Any], folder: str) -> None:
        path = Path(folder) / TRAINABLE
        if not path.is_file():  # the whole model: accelerate loads it
            return
        for model in [m for m in models if adapter(m)]:
            models.remove(model)
            load_trainable(accelerator.unwrap_model(model), path)

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)
