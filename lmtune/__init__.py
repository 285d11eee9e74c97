"""lmtune: fine-tune pretrained language models for your own task, end to end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LmtuneError", "load", "train", "load_config"]

from .errors import LmtuneError

if TYPE_CHECKING:
    from .config import RunConfig
    from .generation import Generator
    from .predict import Predictor
    from .training import RunResult


def load(run_dir: str) -> "Predictor | Generator":
    """Load a finished run (or a saved model folder, or a bundled model name for generation):
    a classifier gives `.predict(["text", ...])`, a causal LM `.generate(prompt)`."""
    from .generation import Generator, is_generative
    from .predict import Predictor

    if is_generative(run_dir):
        return Generator.load(run_dir)
    return Predictor.from_run(run_dir)


def load_config(path: str, overrides: list[str] | None = None) -> "RunConfig":
    """Read, override and validate a run config; raises LmtuneError listing every problem."""
    from .config import load_config as _load

    return _load(path, overrides or [])


def train(config: "RunConfig | str | dict[str, Any]", **kwargs: Any) -> "RunResult":
    """Train from a config (object, YAML path or dict). See `lmtune.training.train` for the options."""
    from .training import train as _train

    return _train(config, **kwargs)
