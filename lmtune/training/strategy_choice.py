"""`strategy.name: auto`: which strategy a run trains with, from the task, the model's size and the
number of training examples; and the settings a strategy gets for the keys it requires (used by
`auto` and by `lmtune compare`).

The rule is `choose_strategy`; `resolve_auto` turns an `auto` config into the chosen strategy's
config, with the line that says why (for the log and the run folder's data.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core import models
from ..tasks import get_task

# Below this many parameters a model is small enough to fine-tune in full even on a few examples
# (measured against partial and lora: see the README's strategy comparison); at or above LARGE_MODEL, full fine-tuning's AdamW state (16 bytes a parameter with the
# weights and gradients) no longer fits common memory, so LoRA is chosen whatever the data.
MEDIUM_MODEL = 100_000_000
LARGE_MODEL = 1_000_000_000


@dataclass(frozen=True)
class StrategyChoice:
    name: str  # a strategy of lmtune.training.strategies
    rule: str  # why, in one line


def few_examples(task: str) -> int:
    """Fewer training examples than this are "few": too few to move every weight of a pretrained model
    without overfitting (each task says how many: Task.few_examples; a causal LM's instruction and chat
    data count as few below 10,000: the model has far more to forget, and its saved adapter is small)."""
    return get_task(task).few_examples


def choose_strategy(task: str, parameters: int, examples: int) -> StrategyChoice:
    """The strategy for `strategy.name: auto`, by the first line that applies:

    1. a model of at least 1,000M parameters (LARGE_MODEL): lora, whatever the data;
    2. few training examples (fewer than 1,000; causal_lm fewer than 10,000) and a model of at
       least 100M parameters (MEDIUM_MODEL): lora;
    3. otherwise (enough examples to move every weight, or a model small enough to move them on
       few): full. Freezing the bottom half (partial) or training adapters (lora) on a small
       model with few examples scored lower than full in the strategy comparison (README).

    `parameters` counts the model's body (no task head); `examples` the training split (after the
    validation split is held out and any augmentation)."""
    few = few_examples(task)
    size = f"{parameters:,} parameters"
    count = f"{examples:,} training examples"
    if parameters >= LARGE_MODEL:
        return StrategyChoice("lora", f"{size} (at least {LARGE_MODEL / 1e6:,.0f}M): lora whatever the data")
    if examples < few and parameters >= MEDIUM_MODEL:
        return StrategyChoice("lora", f"{count} (fewer than {few:,} for {task}) and {size} "
                                      f"(at least {MEDIUM_MODEL / 1e6:,.0f}M): lora")
    if examples < few:
        return StrategyChoice("full", f"{count} (fewer than {few:,} for {task}) and {size} "
                                      f"(under {MEDIUM_MODEL / 1e6:,.0f}M, small enough to train whole): full")
    return StrategyChoice("full", f"{count} (at least {few:,} for {task}) and {size} "
                                  f"(under {LARGE_MODEL / 1e6:,.0f}M): full")


def required_settings(name: str, num_layers: int) -> dict[str, Any]:
    """Values for the keys a strategy requires, where a config does not give them:
    partial freezes the bottom half of the layers (`num_layers // 2`); the others require none."""
    return {"freeze_layers": num_layers // 2} if name == "partial" else {}


def resolve_auto(task: str, model: str, examples: int) -> tuple[dict[str, Any], StrategyChoice]:
    """The strategy section that `strategy.name: auto` stands for (name and required settings) and
    why it was chosen. `model`: a plain folder or bundled name (a GGUF file resolved beforehand)."""
    choice = choose_strategy(task, models.parameter_count(model), examples)
    section = {"name": choice.name, **required_settings(choice.name, models.describe(model).num_layers)}
    return section, choice
