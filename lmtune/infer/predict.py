"""Inference on a finished run: `Predictor`, from lmtune.infer.predictor (lmtune export is in lmtune.export)."""

from __future__ import annotations

from .predictor import Predictor

__all__ = ["Predictor"]
