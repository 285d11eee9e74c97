"""One module per task. Each says how to read and tokenize its data, which head to build, how to
compute its metrics, and at inference how to read inputs, predict and write result rows; neither the
training loop nor the inference path knows any of it. What a task module provides: tasks/contract.py.
"""

from __future__ import annotations

from types import ModuleType

from ..core.errors import LmtuneError

TASKS = ("classification", "causal_lm", "token_classification", "masked_lm", "question_answering")


def get_task(name: str) -> ModuleType:
    if name == "classification":
        from . import classification

        return classification
    if name == "causal_lm":
        from . import causal_lm

        return causal_lm
    if name == "token_classification":
        from . import token_classification

        return token_classification
    if name == "masked_lm":
        from . import masked_lm

        return masked_lm
    if name == "question_answering":
        from . import question_answering

        return question_answering
    raise LmtuneError(f"task: unknown task {name!r}; expected one of {', '.join(TASKS)}")
