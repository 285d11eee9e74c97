"""What every task module provides: for training (the loop knows no task) and for inference (the one
path of lmtune.infer.predictor: `lmtune eval`, `lmtune predict`, `lmtune.load(run)` and `lmtune serve`).
Task modules satisfy `Task` as modules; `get_task(name)` returns one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from ..data.readers import Table


class Task(Protocol):
    # ---- training
    METRICS: tuple[str, ...]  # the names it reports (for train.metric)
    GREATER_IS_BETTER: dict[str, bool]
    AUTO_MODEL: str  # the transformers Auto class of its head
    EAGER_MAX_LENGTH: int  # on CPU, eager attention up to this p90 input length

    def load_data(self, cfg: Any) -> Any: ...  # TaskData: read, check, split and describe the examples
    def prepare(self, table: Table, tokenizer: Any, cfg: Any, labels: list[str]) -> tuple[list[dict[str, Any]], int]: ...
    def build_model(self, path: Any, cfg: Any, labels: list[str], attn_implementation: str | None = None) -> Any: ...
    def collator(self, tokenizer: Any, cfg: Any = None, model: Any = None) -> Any: ...
    # how many items (examples, labelled tokens) a collated batch's training loss is the mean of
    def loss_items(self, batch: dict[str, Any]) -> int: ...
    # per-example tensors for the metrics, of the same width in every batch
    def eval_step(self, model: Any, batch: dict[str, Any], cfg: Any = None) -> dict[str, Any]: ...
    def compute_metrics(self, outputs: dict[str, np.ndarray], labels: list[str], cfg: Any = None, features: Any = None) -> dict[str, Any]: ...
    # the final model's validation predictions as JSON rows for the run's report (validation_samples.jsonl):
    # `outputs` and `features` as compute_metrics gets them (the whole split, in data order), `table` the
    # validation Table
    def validation_samples(self, outputs: dict[str, np.ndarray], labels: list[str], cfg: Any, features: Any,
                           table: Table) -> list[dict[str, Any]]: ...
    # e.g. generation metrics (causal_lm: also "samples", its generations, for the report, which the
    # caller takes out); `log(line)` announces long work, `progress`: a progress bar for it
    def extra_metrics(self, model: Any, tokenizer: Any, data: Any, cfg: Any, *, log: Callable[[str], None] | None = None,
                      progress: bool = False) -> dict[str, Any]: ...

    # ---- inference; `session` is an lmtune.infer.predictor.Predictor (model, tokenizer, labels, data
    # settings, run_batches, evaluate_table; for generative tasks a Generator)
    GENERATIVE: bool  # whether lmtune.load gives a Generator

    def bare_labels(self, model: Any) -> list[str]: ...  # labels of a model folder saved without lmtune.json
    def bare_data(self, labels: list[str]) -> dict[str, Any]: ...  # data settings of such a folder
    # (table, inputs, second parts: pairs' second texts, contexts or references) of an input file
    def read_inputs(self, session: Any, path: Path, columns: list[str] | None, template: str | None) -> tuple[Table, list[Any], list[Any] | None]: ...
    # the same a chunk of rows at a time where the format allows (a file larger than memory streams)
    def input_chunks(self, session: Any, path: Path, columns: list[str] | None, template: str | None, rows: int) -> Iterator[tuple[Table, list[Any], list[Any] | None]]: ...
    def predict(self, session: Any, inputs: list[Any], pairs: list[Any] | None) -> list[Any]: ...  # Python API
    def predict_rows(self, session: Any, inputs: list[Any], pairs: list[Any] | None) -> list[dict[str, Any]]: ...  # lmtune predict's rows
    # a labelled file read and checked without the model (lmtune eval reads it before loading the
    # model), and the metrics of the model on it
    def read_labelled(self, session: Any, path: Path, columns: list[str] | None) -> Any: ...
    def evaluate_labelled(self, session: Any, labelled: Any) -> dict[str, Any]: ...
