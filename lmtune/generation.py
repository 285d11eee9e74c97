"""Text generation with a fine-tuned run or a base model: `Generator` (lmtune.inference) with its
settings and results (lmtune.decoding), importable from here."""

from __future__ import annotations

from .decoding import Generation, GenerationSettings
from .inference import Generator

__all__ = ["Generation", "GenerationSettings", "Generator"]
