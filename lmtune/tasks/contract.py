"""What a task is: one `Task` object per task module (its `TASK`), registered in tasks/registry.py.

Nothing outside lmtune/tasks/ asks which task it has: the training loop, inference (the one path
of lmtune.infer.predictor: `lmtune eval`, `lmtune predict`, `lmtune.load(run)`, `lmtune serve`),
reports, search and the command line read what they need from the task's object. `Task.of(module)`
builds it from the module's functions and constants, and fails on the first one missing, so a task
module that does not implement the whole contract does not import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator, Literal

from ..core.config import DataConfig, EvalConfig, RunConfig
from ..data.readers import Table

Rows = tuple[Table, list[Any], "list[Any] | None"]


@dataclass(frozen=True, kw_only=True)
class Task:
    # ---- what the task is
    name: str
    config: type[RunConfig]  # its run config: the shared sections, with its own data and eval sections

    # ---- what is particular to it
    METRICS: tuple[str, ...]  # the names it reports (for train.metric); the first is the default
    GREATER_IS_BETTER: dict[str, bool]
    AUTO_MODEL: str  # the transformers Auto class of its head
    EAGER_MAX_LENGTH: int  # on CPU, eager attention up to this p90 input length
    GENERATIVE: bool  # lmtune.load gives a Generator; prompts, generate and chat apply
    compile_by_default: bool = False  # train.compile: auto compiles its runs (of enough steps)
    few_examples: int = 1_000  # strategy: auto counts fewer training examples than this as few
    explain: Literal["label", "words"] | None = None  # what lmtune explain attributes: the label, or each word's tag
    per_class_title: str = "Per class"  # the report's per-label table
    # lmtune export --format onnx: the head's outputs by name (("logits",), or QA's start and end
    # logits); empty: the task's models are not exported to ONNX
    onnx_outputs: tuple[str, ...] = ()

    # ---- training (the loop knows no task)
    load_data: Callable[[Any], Any]  # TaskData: read, check, split and describe the examples
    choose_max_length: Callable[..., Any]  # data.max_length: auto, from the training inputs
    prepare: Callable[[Table, Any, Any, list[str]], tuple[list[dict[str, Any]], int]]
    build_model: Callable[..., Any]  # (path, cfg, labels, attn_implementation=None)
    collator: Callable[..., Any]  # (tokenizer, cfg=None, model=None)
    # the training loss of a collated batch: (model, batch, cfg) -> a scalar tensor; None: the model's
    # own (`model(**batch).loss`), as for every task whose head computes its loss from the batch's labels
    training_loss: Callable[..., Any] | None = None
    sequences_per_example: int = 1  # rows of a collated batch per example (preference: the chosen and the rejected)
    # whether `prepare` runs the model over every example before training (preference's reference
    # scores): the plan counts that time; (cfg) -> bool
    scores_before_training: Callable[[Any], bool] = lambda cfg: False
    # how many items (examples, labelled tokens) a collated batch's training loss is the mean of
    loss_items: Callable[[dict[str, Any]], int]
    # per-example tensors for the metrics, of the same width in every batch
    eval_step: Callable[..., dict[str, Any]]  # (model, batch, cfg=None)
    compute_metrics: Callable[..., dict[str, Any]]  # (outputs, labels, cfg=None, features=None)
    # the final model's validation predictions as JSON rows for the run's report (validation_samples.jsonl):
    # (outputs, labels, cfg, features, table) with outputs and features as compute_metrics gets them
    validation_samples: Callable[..., list[dict[str, Any]]]
    # e.g. generation metrics (causal_lm: also "samples", its generations, for the report, which the
    # caller takes out): (model, tokenizer, data, cfg, *, log=None, progress=False)
    extra_metrics: Callable[..., dict[str, Any]]

    # ---- inference; `session` is an lmtune.infer.predictor.Predictor (model, tokenizer, labels, data
    # settings, run_batches, evaluate_table; for generative tasks a Generator)
    bare_labels: Callable[[Any], list[str]]  # labels of a model folder saved without lmtune.json
    bare_data: Callable[[list[str]], dict[str, Any]]  # data settings of such a folder
    # (session, path, columns, template) -> (table, inputs, second parts: pairs' second texts, contexts
    # or references) of an input file
    read_inputs: Callable[..., Rows]
    # the same a chunk of rows at a time where the format allows: (..., rows) -> iterator of those
    input_chunks: Callable[..., Iterator[Rows]]
    predict: Callable[..., list[Any]]  # (session, inputs, pairs): the Python API's results
    predict_rows: Callable[..., list[dict[str, Any]]]  # (session, inputs, pairs): lmtune predict's rows
    # a labelled file read and checked without the model (lmtune eval reads it before loading the
    # model): (session, path, columns); then the metrics of the model on it: (session, labelled)
    read_labelled: Callable[..., Any]
    evaluate_labelled: Callable[..., dict[str, Any]]
    # generative tasks: (session, row, where, template) -> (prompt, reference) of a file's row
    row_prompt: Callable[..., tuple[str, str | None]] | None = None
    # generative tasks: (messages, tokenizer) -> the prompt in the model's chat format
    prompt_text: Callable[..., str] | None = None

    @classmethod
    def of(cls, module: ModuleType, **particulars: Any) -> "Task":
        """The task of a module: `particulars` (name, config, ...) as given, every other field the
        module's attribute of that name (a field with a default may be left out)."""
        values = dict(particulars)
        for f in dataclasses.fields(cls):
            if f.name in values:
                continue
            if hasattr(module, f.name):
                values[f.name] = getattr(module, f.name)
            elif f.default is dataclasses.MISSING:
                raise TypeError(f"task module {module.__name__} lacks {f.name} (lmtune/tasks/contract.py)")
        return cls(**values)

    @property
    def data_section(self) -> type[DataConfig]:
        return self.config.model_fields["data"].annotation  # type: ignore[return-value]

    @property
    def eval_section(self) -> type[EvalConfig]:
        return self.config.model_fields["eval"].annotation  # type: ignore[return-value]

    def reads(self, section: str, key: str) -> bool:
        """Whether its runs have the key `section.key` (data or eval)."""
        return key in (self.data_section if section == "data" else self.eval_section).model_fields

    def head_suffix(self) -> str:
        """The end of the architecture name of its models (ForCausalLM)."""
        return self.AUTO_MODEL.removeprefix("AutoModel")
