"""Text generation with a fine-tuned run or a base model: `Generator` (lmtune.infer.predictor) with its
settings and results (lmtune.tasks.decoding), importable from here."""

from __future__ import annotations

from ..tasks.decoding import Generation, GenerationSettings
from .predictor import Generator

__all__ = ["Generation", "GenerationSettings", "Generator"]
