"""Fine-tuning strategies. Each is a small function with one contract:

    strategy(model, strategy_cfg, lr, weight_decay) -> Plan(model, groups, update)

It freezes what it freezes (requires_grad=False), may wrap the model (LoRA adds adapters), and
returns optimizer parameter groups with their own learning rates, plus `update(step, epoch)`, which
the loop calls after every optimizer step (gradual unfreezing uses it; for the others it does
nothing). The loop never asks which strategy it has. Within every group, biases and norm weights
(1-d parameters) get no weight decay.

Layout: a model's parameters fall into "embeddings", "layer.<i>" (i = 0 is the bottom transformer
block) and "head" (everything above the last block: pooler, final norm, classifier, LM head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..core.config import AdaptiveStrategy, FullStrategy, GradualStrategy, LoraStrategy, PartialStrategy
from ..core.errors import LmtuneError
from ..core.models import wrapping_adapters


def _no_update(step: int, epoch: int) -> str | None:
    return None


@dataclass
class Plan:
    model: nn.Module
    groups: list[dict[str, Any]]
    # called after every optimizer step with (steps done, epochs done); returns a message when it
    # changed what trains
    update: Callable[[int, int], str | None] = _no_update


@dataclass
class Layout:
    embeddings: list[tuple[str, nn.Parameter]]
    layers: list[list[tuple[str, nn.Parameter]]]
    head: list[tuple[str, nn.Parameter]]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The stack of transformer blocks: the largest ModuleList whose items are all the same class."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) != 1:
                continue
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, module)
    if best is None:
        raise LmtuneError(f"cannot find the transformer layers of {type(model).__name__}")
    return best[1], best[2]


def layout(model: nn.Module) -> Layout:
    prefix, blocks = find_blocks(model)
    embedding_weight = model.get_input_embeddings().weight
    layers: list[list[tuple[str, nn.Parameter]]] = [[] for _ in blocks]
    embeddings, head = [], []
    for name, param in model.named_parameters():
        if name.startswith(prefix + "."):
            index = int(name[len(prefix) + 1 :].split(".")[0])
            layers[index].append((name, param))
        elif param is embedding_weight or any("embed" in part for part in name.split(".")[:-1]):
            embeddings.append((name, param))
        else:
            head.append((name, param))
    return Layout(embeddings, layers, head)


def _groups(named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float, label: str) -> list[dict[str, Any]]:
    decay = [p for _, p in named if p.requires_grad and p.ndim >= 2]
    no_decay = [p for _, p in named if p.requires_grad and p.ndim < 2]
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": label})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": label + ".no_decay"})
    return groups


def _freeze(named: list[tuple[str, nn.Parameter]]) -> None:
    for _, p in named:
        p.requires_grad_(False)


def full(model: nn.Module, cfg: FullStrategy, lr: float, weight_decay: float) -> Plan:
    for p in model.parameters():
        p.requires_grad_(True)
    return Plan(model, _groups(list(model.named_parameters()), lr, weight_decay, "all"))


def partial(model: nn.Module, cfg: PartialStrategy, lr: float, weight_decay: float) -> Plan:
    lay = layout(model)
    if cfg.freeze_layers > len(lay.layers):
        raise LmtuneError(
            f"strategy.freeze_layers: {cfg.freeze_layers} is more than the {len(lay.layers)} layers of the model"
        )
    for p in model.parameters():
        p.requires_grad_(True)
    if cfg.freeze_embeddings:
        _freeze(lay.embeddings)
    for block in lay.layers[: cfg.freeze_layers]:
        _freeze(block)
    return Plan(model, _groups(list(model.named_parameters()), lr, weight_decay, "trainable"))


def _layerwise_groups(lay: Layout, lr: float, decay: float, head_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Head at head_lr, layer k from the top at lr * decay**k, the embeddings below the bottom layer."""
    n = len(lay.layers)
    groups = _groups(lay.head, head_lr, weight_decay, "head")
    for i, block in enumerate(lay.layers):
        groups += _groups(block, lr * decay ** (n - 1 - i), weight_decay, f"layer.{i}")
    groups += _groups(lay.embeddings, lr * decay**n, weight_decay, "embeddings")
    return groups


def adaptive(model: nn.Module, cfg: AdaptiveStrategy, lr: float, weight_decay: float) -> Plan:
    lay = layout(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return Plan(model, _layerwise_groups(lay, lr, cfg.decay, lr * cfg.head_lr_multiplier, weight_decay))


def gradual(model: nn.Module, cfg: GradualStrategy, lr: float, weight_decay: float) -> Plan:
    """All parameters are in the optimizer from the start; frozen ones simply get no gradient
    (AdamW skips them, weight decay included) until their stage comes."""
    lay = layout(model)
    for p in model.parameters():
        p.requires_grad_(True)
    groups = _layerwise_groups(lay, lr, cfg.decay, lr, weight_decay)
    # stage 0: the head; stage k: the top k layers too; last stage: the embeddings too
    stages = [lay.head, *reversed(lay.layers), lay.embeddings]
    for named in stages[1:]:
        _freeze(named)
    state = {"stage": 0}

    def update(step: int, epoch: int) -> str | None:
        count = epoch if cfg.unit == "epoch" else step
        stage = min(count // cfg.unfreeze_every, len(stages) - 1)
        if stage <= state["stage"]:
            return None
        params = dict(model.named_parameters())  # by name: FSDP replaces the parameters it shards
        for named in stages[state["stage"] + 1 : stage + 1]:
            for name, _ in named:
                params[name].requires_grad_(True)
        state["stage"] = stage
        trainable, _ = parameter_counts(model)
        what = "the embeddings" if stage == len(stages) - 1 else f"layer {len(lay.layers) - stage}"
        return f"gradual unfreezing: {what} unfrozen; {trainable:,} parameters train now"

    return Plan(model, groups, update)


def head_modules(model: nn.Module) -> list[str]:
    """Names of the task-head modules outside the transformer body (classifier, score, pooler),
    which a new head must train in full; norms and an LM head tied to the embeddings are left out,
    and so is a module that holds such a head (a masked LM's cls.predictions, whose bias is the
    decoder's: peft's copy of it would save one tensor under two names; its other parts are listed)."""
    lay = layout(model)
    tied = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    holds = [n for n, m in model.named_modules() if m is output and getattr(output, "weight", None) is tied]
    names = []
    for name, param in lay.head:
        if param is tied or "norm" in name.lower():
            continue
        module = name.rsplit(".", 1)[0]
        if any(h.startswith(module + ".") for h in holds):
            continue
        if module not in names:
            names.append(module)
    return names


def lora(model: nn.Module, cfg: LoraStrategy, lr: float, weight_decay: float) -> Plan:
    from peft import LoraConfig, get_peft_model

    prefix, blocks = find_blocks(model)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(prefix + ".")]
    if cfg.target_modules:
        targets: list[str] | str = list(cfg.target_modules)
        matched = [t for t in targets if any(n == t or n.endswith("." + t) for n, _ in model.named_modules())]
        missing = sorted(set(targets) - set(matched))
        if missing:
            raise LmtuneError(f"strategy.target_modules: {', '.join(map(repr, missing))} match no module of the model")
    else:
        targets = sorted({n.rsplit(".", 1)[-1] for n in linear})
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        # full dotted names: peft matches them as suffixes, and a bare "dense" would catch the
        # dense layers inside every block too
        modules_to_save=head_modules(model) or None,
    )
    with wrapping_adapters():
        wrapped = get_peft_model(model, config)
    named = [(n, p) for n, p in wrapped.named_parameters() if p.requires_grad]
    return Plan(wrapped, _groups(named, lr, weight_decay, "lora"))


STRATEGIES: dict[str, Callable[..., Plan]] = {
    "full": full,
    "partial": partial,
    "adaptive": adaptive,
    "lora": lora,
    "gradual": gradual,
}


# train.lr when the config leaves it out. LoRA's adapters start at zero (B) and are scaled by
# alpha / r: they need a larger step than full fine-tuning to move in the same number of steps.
DEFAULT_LR: dict[str, float] = {"full": 5e-5, "partial": 5e-5, "adaptive": 5e-5, "gradual": 5e-5, "lora": 2e-4}


def apply(model: nn.Module, cfg: Any, lr: float, weight_decay: float) -> Plan:
    return STRATEGIES[cfg.name](model, cfg, lr, weight_decay)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters of the model as it is now."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def describe(model: nn.Module, groups: list[dict[str, Any]]) -> str:
    trainable, total = parameter_counts(model)
    lrs = sorted({g["lr"] for g in groups})
    lr_text = f"lr {lrs[0]:.3g}" if len(lrs) == 1 else f"lr {lrs[0]:.3g} .. {lrs[-1]:.3g} in {len(lrs)} groups"
    return f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.1f}%), {lr_text}"
