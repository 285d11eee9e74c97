"""Text generation with a fine-tuned run or a base model (`Generator`, from lmtune.inference; the
decoding itself is lmtune.decoding)."""

from __future__ import annotations

from .decoding import Generation, GenerationSettings
from .inference import Generator
from .saved_run import read_run
from .tasks import get_task

__all__ = ["Generation", "GenerationSettings", "Generator", "is_generative"]


def is_generative(target: str) -> bool:
    """Whether a run folder or model is a text generator (False for anything that is not a run or
    model: the loader then says what is wrong with it)."""
    from .errors import LmtuneError

    try:
        return bool(get_task(read_run(target).task).GENERATIVE)
    except LmtuneError:
        return False
