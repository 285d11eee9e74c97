"""Fully sharded training (`train.distributed: fsdp`) with PyTorch's own FSDP (`fully_shard`, the
second version of torch.distributed's FSDP, which runs on CPUs with gloo as on GPUs with NCCL).

Each transformer block and then the whole model are sharded: every process holds 1/N of the
parameters, gradients and optimizer state, and a block's parameters are gathered only while it
runs. Because the sharded parameters are new tensors, the optimizer's parameter groups (the
strategy's layer-wise learning rates, say) are rebuilt by parameter name after sharding.

A run on FSDP saves its checkpoints with torch.distributed.checkpoint: every process writes its
own shards, and a checkpoint loads into any number of processes (it is resharded on load), one
process without a process group included. The model folders (best/, model/) are ordinary
transformers folders, gathered from the shards.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

SHARDS = "sharded"  # the checkpoint's subfolder for model and optimizer shards


@contextlib.contextmanager
def _one_process_is_fine() -> Iterator[None]:
    """torch.distributed.checkpoint warns when there is no process group: one process is a use it supports."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def shard(model: torch.nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shard `model` in place (blocks, then the root) and return `groups` with its new parameters."""
    from torch.distributed.fsdp import fully_shard

    from .strategies import find_blocks

    names = {id(p): n for n, p in model.named_parameters()}
    by_name = [[names[id(p)] for p in g["params"]] for g in groups]
    _, blocks = find_blocks(model)
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    params = dict(model.named_parameters())
    return [{**g, "params": [params[n] for n in ns]} for g, ns in zip(groups, by_name)]


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights, gathered on the first process (every process must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_folder(model: torch.nn.Module, folder: Path) -> None:
    """Load a model folder that `save_pretrained` wrote into a sharded model (each process reads it)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    weights: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    # tied weights (an LM head sharing the embedding matrix) are saved once: not strict
    result = set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    if result.unexpected_keys:
        raise RuntimeError(f"{folder} does not match the model: unexpected {list(result.unexpected_keys)[:3]}")


def save_shards(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every process writes its shards of the model and the optimizer state to folder/sharded."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    with _one_process_is_fine():
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder / SHARDS))


def load_shards(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load folder/sharded into the model and optimizer, resharded to this number of processes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    with _one_process_is_fine():
        dcp.load(state, checkpoint_id=str(folder / SHARDS))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
