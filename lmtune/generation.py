"""Text generation with a fine-tuned run or a base model: `Generator` (lmtune.inference) with its
settings and results (lmtune.tasks.decoding), importable from here."""

from __future__ import annotations

from .inference import Generator
from .tasks.decoding import Generation, GenerationSettings

__all__ = ["Generation", "GenerationSettings", "Generator"]
