"""One module per task. Each says how to read and tokenize its data, which head to build, how to
compute its metrics and how to turn outputs into user-facing predictions; the loop knows none of it.

A task module provides:
  METRICS                                   names it reports (for train.metric)
  GREATER_IS_BETTER                         metric name -> bool
  AUTO_MODEL                                the transformers Auto class of its head
  EAGER_MAX_LENGTH                          on CPU, eager attention up to this p90 input length
  load_data(cfg) -> TaskData                read, check, split and describe the examples
  prepare(rows, tokenizer, cfg, labels)     tokenized features (dicts of lists)
  build_model(path, cfg, labels)            the pretrained body with the task head
  collator(tokenizer, cfg, model)           batch collation with dynamic padding
  eval_step(model, batch, cfg) -> dict      per-example tensors for the metrics (same width in every batch)
  compute_metrics(outputs, labels, cfg)     metrics from the gathered eval_step outputs
  extra_metrics(model, tokenizer, data, cfg) -> dict   e.g. generation metrics
  decode(logits, labels) -> list[dict]      user-facing predictions
                                            (token_classification: see its module and predict.py)
"""

from __future__ import annotations

from types import ModuleType

from ..errors import LmtuneError

TASKS = ("classification", "causal_lm", "token_classification", "masked_lm", "question_answering")


def get_task(name: str) -> ModuleType:
    if name == "classification":
        from . import classification

        return classification
    if name == "causal_lm":
        from . import causal_lm

        return causal_lm
    if name == "token_classification":
        from . import token_classification

        return token_classification
    if name == "masked_lm":
        from . import masked_lm

        return masked_lm
    if name == "question_answering":
        from . import question_answering

        return question_answering
    raise LmtuneError(f"task: unknown task {name!r}; expected one of {', '.join(TASKS)}")
