"""lmtune: fine-tune pretrained language models for your own task, end to end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["LmtuneError", "load", "train", "load_config"]

from .core import __version__  # (defined in core, where every layer can read it)
from .core.errors import LmtuneError

if TYPE_CHECKING:
    from .core.config import RunConfig
    from .infer.predictor import Predictor
    from .training.loop import RunResult


def load(run_dir: str) -> "Predictor":
    """Load a finished run (or a saved model folder, or a bundled model name for generation): a
    Predictor with `.predict(inputs)`, `.predict_rows(inputs)` and `.evaluate_file(path)`; for a
    causal LM a Generator, which also has `.generate(prompt)`, `.generate_batch(prompts)` and
    `.stream(prompt)`: each prompt a user message in the model's chat template, as `lmtune generate`
    takes it (raw=True: the text continued as it is)."""
    from .infer.predictor import load as _load

    return _load(run_dir)


def load_config(path: str, overrides: list[str] | None = None) -> "RunConfig":
    """Read, override and validate a run config; raises LmtuneError listing every problem."""
    from .tasks.run_config import load_config as _load

    return _load(path, overrides or [])


def train(config: "RunConfig | str | dict[str, Any]", **kwargs: Any) -> "RunResult":
    """Train from a config (object, YAML path or dict), then write the run's report.html (train.report).
    See `lmtune.training.loop.train` for the options."""
    from .tasks.run_config import as_config
    from .report import report_run
    from .training.loop import train as _train

    cfg = as_config(config)
    result = _train(cfg, **kwargs)
    report_run(result.output_dir, cfg.train.report)
    return result
