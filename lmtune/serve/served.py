"""What one server serves: the loaded model, its name and task, and the worker that calls it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import LmtuneError
from ..tasks import TASKS, get_task
from .batching import Closed, Job, MicroBatcher, QueueFull, Work
from .errors import ApiError
from .options import ServeOptions


def model_name(target: str) -> str:
    """The name clients use: a run folder's or model folder's base name, or a bundled model's name."""
    path = Path(target)
    if path.exists():
        return path.resolve().name
    return path.name or target


def _name_of_loaded(model: Any) -> str:
    name = getattr(model, "name", None)  # a Predictor's: its run folder's, else its model folder's
    if isinstance(name, str) and name:
        return name
    model_dir = getattr(model, "model_dir", None)
    if isinstance(model_dir, Path):
        return model_dir.parent.name if model_dir.name == "model" else model_dir.name
    return "model"


@dataclass
class Served:
    """The model behind the server. Exactly one of predictor / generator is set."""

    name: str
    task: str
    labels: list[str]
    predictor: Any = None  # lmtune.infer.predictor.Predictor (or anything with predict_rows)
    generator: Any = None  # lmtune.infer.generation.Generator (or anything with generate_batch and stream)
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def of(cls, target_or_model: Any, name: str | None = None) -> "Served":
        """Load a run folder / model name / model folder, or take a loaded Predictor or Generator."""
        if isinstance(target_or_model, (str, Path)):
            from ..infer.predictor import load  # (torch: imported when a model is loaded)

            target = str(target_or_model)
            loaded = load(target)
            name = name or model_name(target)
        else:
            loaded = target_or_model
            name = name or _name_of_loaded(loaded)
        task = getattr(loaded, "task_name", None)
        if task not in TASKS:
            raise LmtuneError(f"cannot serve a {type(loaded).__name__}: expected a run folder, a model or a loaded Predictor/Generator")
        if get_task(task).GENERATIVE:
            return cls(name, task, [], generator=loaded)
        return cls(name, task, list(loaded.labels), predictor=loaded)

    @property
    def generative(self) -> bool:
        return self.generator is not None

    def card(self) -> dict[str, Any]:
        """The model in the shape of OpenAI's /v1/models entries, with its task and labels."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "lmtune",
                "task": self.task, "labels": self.labels}

    def check_name(self, requested: str | None) -> None:
        if requested is not None and requested != self.name:
            raise ApiError(404, f"model {requested!r} not found; this server serves {self.name!r}",
                           param="model", code="model_not_found")

    def need_predictor(self) -> Any:
        if self.predictor is None:
            raise ApiError(400, f"{self.name} generates text: use /v1/chat/completions or /v1/completions, not /v1/predict")
        return self.predictor

    def need_generator(self) -> Any:
        if self.generator is None:
            raise ApiError(400, f"{self.name} is a {self.task} model: use /v1/predict; chat and completions need a "
                                "generative (causal_lm) model")
        return self.generator


@dataclass
class ServeContext:
    """Everything a route needs: the model, the options and the one worker that calls the model."""

    served: Served
    options: ServeOptions
    batcher: MicroBatcher

    def submit(self, work: Work, items: list[Any], key: Hashable | None = None) -> Job:
        try:
            return self.batcher.submit(work, items, key)
        except QueueFull as e:
            raise ApiError(503, f"the server is busy ({e}); retry in a moment", headers={"Retry-After": "1"}) from None
        except Closed as e:
            raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None

    async def run(self, work: Work, items: list[Any], key: Hashable | None = None) -> list[Any]:
        job = self.submit(work, items, key)
        try:
            return await asyncio.wrap_future(job.future)
        except Closed as e:
            raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None
        finally:
            self.batcher.cancel(job)  # a client gone while waiting frees its slot
