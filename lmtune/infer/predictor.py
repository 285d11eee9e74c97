"""The one inference path: a saved run's model, tokenizer and data settings on the run's device
(`Predictor`; `Generator` adds text generation), and one batched loop (`Predictor.run_batches`, on
the evaluation engine that training evaluates with: lmtune.training.evaluation.forward_batches).

Everything a task does with inputs (read them from a file, predict, turn predictions into rows,
score a labelled file) is the task module's (see lmtune/tasks/contract.py); `lmtune eval`,
`lmtune predict`, `lmtune.load(run)` and `lmtune serve` all come here.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..core import models
from ..core.config import DataConfig, RunConfig
from ..core.errors import LmtuneError, option
from ..core.runtime import make_accelerator
from ..data.readers import Table
from ..tasks import decoding, get_task
from ..tasks.decoding import Generation, GenerationSettings
from ..tasks.inputs import CHUNK_ROWS
from ..training.cpu import first_token
from ..training.cpu.heap import kept_in_heap
from ..training.evaluation import Step, by_example, forward_batches
from .explain import explain
from .saved_run import SavedRun, load_model, read_for_inference, read_run

GENERATION_BATCH = 16  # a Generator's default batch (lmtune predict --batch-size sets it)


class Predictor:
    """A saved run's model ready for inference. Inputs are sorted by length and batched, run under
    torch.inference_mode() on the run's device, in bf16 where the hardware is fast in it
    (train.precision: auto), and come back in input order."""

    def __init__(self, saved: SavedRun | str | Path, cfg: RunConfig | None = None, *, model: Any = None) -> None:
        """`model`: a stand-in for the run's torch model, called as it is (in fp32, without the
        torch-only speed-ups) with a batch's tensors as keyword arguments, returning the outputs by
        name: an ONNX Runtime session (lmtune.export.onnx_backend). None: the run's model."""
        if not isinstance(saved, SavedRun):
            saved = read_run(saved)
        if cfg is not None:
            saved = replace(saved, cfg=cfg, task=cfg.task)
        self.saved = saved
        self.cfg = saved.cfg
        self.model_dir = saved.model_dir
        self.task_name = saved.task
        self.task = get_task(saved.task)
        self.tokenizer = models.load_tokenizer(saved.model_dir)
        self.runs_torch = model is None
        if model is None:
            model = load_model(saved, self.task)
            if models.is_adapter(model):
                # LoRA folded into the weights it adapts: the same outputs, without two more small
                # matrix products per adapted layer (greedy generation on SmolLM2 with r 16: 1.7x to
                # 1.9x faster). peft unmerges it by itself where a caller disables the adapters.
                model.merge_adapter()
        self.labels: list[str] = saved.labels if saved.labels is not None else self.task.bare_labels(model)
        cfg = self.cfg
        # the run's data settings, or the defaults for a bare model folder (which has no training
        # data to size inputs by: windows and blocks of 256 tokens, single texts up to 512)
        self.data: DataConfig = cfg.data if cfg else self.task.data_section(train="", max_length=256, **self.task.bare_data(self.labels))
        self.max_length: int = cfg.data.max_length if cfg else 512
        evaluation = cfg.train.eval_batch_size if cfg else 64
        self.batch_size: int = evaluation if isinstance(evaluation, int) else 2 * cfg.train.batch_size
        precision = (cfg.train.precision if cfg else "auto") if self.runs_torch else "fp32"
        self.accelerator = make_accelerator(precision)
        if self.runs_torch:
            first_token.use(model)  # (a classifier that reads the first position: its last layer computes that one)
            model = self.accelerator.prepare(model)
            model.eval()
        self.model = model
        self.settings = GenerationSettings()  # for generative tasks: what predict_rows generates with
        self.progress = False  # a progress bar on stderr for long inputs (lmtune predict and eval set it)

    @classmethod
    def from_run(cls, target: str | Path) -> "Predictor":
        return cls(read_run(target))

    @property
    def name(self) -> str:
        return self.saved.name

    # ------------------------------------------------------------ the batched loop

    def run_batches(self, features: list[dict[str, Any]], step: Step, collate: Callable[[list[Any]], Any],
                    progress: Callable[[int], Any] | None = None) -> list[dict[str, np.ndarray]]:
        """`step(model, batch)` over the features, longest first, `batch_size` at a time; for each
        feature (in input order) the rows of step's outputs that belong to it (padded to its batch's
        width)."""
        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
        if progress is None and self.progress and len(features) > self.batch_size:
            from tqdm.auto import tqdm

            with tqdm(total=len(features), unit="input", file=sys.stderr, disable=None) as bar:
                return self.run_batches(features, step, collate, bar.update)
        chunks = (order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size))
        batches = ((ids, collate([features[i] for i in ids])) for ids in chunks)
        with self._heap():
            parts = forward_batches(self.model, batches, step, device=self.accelerator.device,
                                    autocast=self.accelerator.autocast, progress=progress)
        return by_example(parts, len(features))

    def _heap(self) -> Any:
        """On CPU, large tensors served from the heap while the batches run, as in training
        (training/cpu/heap.py): `lmtune eval` of a SmolLM2 run on 23 blocks of 256 tokens, 3.0 s
        against 3.3 s (Xeon with AMX, bf16). Not for generation, whose tensors are small: 1.78 s
        against 1.74 s for 128 new tokens."""
        return kept_in_heap(self.accelerator.device.type == "cpu" and self.runs_torch)

    def evaluate_table(self, table: Table) -> dict[str, Any]:
        """Task metrics on examples that the task prepares as for its validation set (its eval_step
        outputs have the same width in every batch)."""
        from types import SimpleNamespace

        cfg = self.cfg if self.cfg is not None else SimpleNamespace(data=self.data, train=SimpleNamespace(seed=0))
        features, _ = self.task.prepare(table, self.tokenizer, cfg, self.labels)
        rows = self.run_batches(features, lambda model, batch: self.task.eval_step(model, batch, cfg),
                                self.task.collator(self.tokenizer, cfg, self.model))
        outputs = {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}
        metrics = self.task.compute_metrics(outputs, self.labels, cfg, features)
        metrics["examples"] = len(table)
        return metrics

    # ------------------------------------------------------------ what the task does

    def predict(self, inputs: list[Any] | Any, pairs: list[str] | None = None) -> list[Any]:
        """Predictions for Python inputs, in input order (see the task module's `predict`):
        classification {label, score, probabilities}; token classification entities with character
        offsets (or a tag per token for lists of tokens); question answering (questions with
        `pairs` as contexts, or {question, context} objects) {answer, score, start, end}; masked LM
        the likeliest tokens per mask token; causal LM generated texts."""
        if isinstance(inputs, (str, dict)):
            inputs = [inputs]
        inputs = list(inputs)
        return self.task.predict(self, inputs, pairs) if inputs else []

    def predict_rows(self, inputs: list[Any], pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """The rows that `lmtune predict` writes, one per input, in input order. Inputs are texts;
        for text pairs also [text, text_pair] or {text, text_pair}; for question answering
        {question, context}; for token classification also lists of tokens. An input longer than
        the model takes is cut, and its row says "truncated": true."""
        inputs = list(inputs)
        return self.task.predict_rows(self, inputs, pairs) if inputs else []

    def read_inputs(self, path: str | Path, columns: list[str] | None = None,
                    template: str | None = None) -> tuple[Table, list[Any], list[Any] | None]:
        """The inputs of a file: the table, the inputs (texts, token lists, questions or prompts)
        and their second parts (pairs' second texts, contexts, or generation references).
        `columns`: the column names of a CSV/TSV file without a header; `template`: a prompt
        template over the columns (generation only)."""
        return self.task.read_inputs(self, Path(path), columns, template)

    def predict_file(self, path: str | Path, columns: list[str] | None = None, template: str | None = None,
                     chunk_rows: int | None = None, **options: Any) -> Iterator[dict[str, Any]]:
        """predict_rows for every input of a file, in file order, read and predicted a chunk of
        rows at a time where the format allows it (.txt, .csv, .tsv, .jsonl; see each task's
        input_chunks), so that a file larger than memory streams through. `options` go to
        predict_rows (a Generator's raw)."""
        bar, shown = None, self.progress
        self.progress = False  # one bar for the file, not one per chunk
        try:
            for _, inputs, pairs in self.task.input_chunks(self, Path(path), columns, template, chunk_rows or CHUNK_ROWS):
                if shown and bar is None:  # after the first chunk was read: a bad file is only its error line
                    from tqdm.auto import tqdm

                    bar = tqdm(unit="row", file=sys.stderr, disable=None)
                yield from self.predict_rows(inputs, pairs, **options)
                if bar is not None:
                    bar.update(len(inputs))
        finally:
            self.progress = shown
            if bar is not None:
                bar.close()

    def evaluate_file(self, path: str | Path, columns: list[str] | None = None) -> dict[str, Any]:
        """Task metrics on a labelled file shaped like the training data (`columns`: the column
        names of a CSV/TSV file without a header, by default the run's data.columns)."""
        return self.evaluate_labelled(self.task.read_labelled(self, Path(path), columns))

    def evaluate_labelled(self, labelled: Any) -> dict[str, Any]:
        """Task metrics on what the task's read_labelled read of a labelled file."""
        return self.task.evaluate_labelled(self, labelled)

    def explain(self, inputs: list[Any] | Any, pairs: list[str] | None = None, **options: Any) -> list[Any]:
        """Which words each prediction rests on (integrated gradients; classification and token
        classification): one lmtune.infer.explain.Explanation per input. Options: steps, word,
        internal_batch_size (see lmtune.infer.explain.explain)."""
        return explain(self, inputs, pairs, **options)


class Generator(Predictor):
    """A causal LM ready to generate: batched (left padding, KV cache) or streamed.

    `predict`, `predict_rows`, `predict_file`, `generate`, `generate_batch` and `stream` take a
    prompt as a user message and put it in the model's chat format (see `prompt`), as `lmtune
    generate` and `lmtune predict` do; with raw=True they continue the text as it is (a plain-text
    model's input, or a prompt already in the chat format from `chat_prompt`). A file's rows with
    chat messages, a prompt template or instruction fields are put in the chat format as they are
    read, and generated from as they are."""

    def __init__(self, saved: SavedRun | str | Path, cfg: RunConfig | None = None) -> None:
        if not isinstance(saved, SavedRun):
            saved = read_run(saved)
        task = cfg.task if cfg is not None else saved.task
        if not get_task(task).GENERATIVE:
            instead = option(f"lmtune predict {saved.folder} FILE", "lmtune.load(run).predict(inputs)")
            raise LmtuneError(f"{saved.folder}: a {task} {'run' if saved.cfg is not None else 'model'} does not "
                              f"generate text; use {instead} for its predictions")
        super().__init__(saved, cfg)
        self.model.config.use_cache = True
        # prompts generated at a time: each holds a KV cache as long as the prompt and its answer
        self.batch_size = GENERATION_BATCH

    @classmethod
    def load(cls, target: str | Path) -> "Generator":
        return cls(read_run(target))

    def _autocast(self) -> contextlib.AbstractContextManager:
        return self.accelerator.autocast()

    def predict(self, inputs: list[Any] | Any, references: list[str | None] | None = None, *,
                raw: bool = False) -> list[Any]:
        """The generated text for each prompt, a user message in the model's chat format (raw=True:
        the text continued as it is), with the Generator's settings."""
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        return self.task.predict(self, inputs, references, raw=raw) if inputs else []

    def predict_rows(self, inputs: list[Any], references: list[str | None] | None = None, *,
                     raw: bool = False) -> list[dict[str, Any]]:
        """{prompt, generation[, reference]} for each prompt, as `predict` generates it."""
        inputs = list(inputs)
        return self.task.predict_rows(self, inputs, references, raw=raw) if inputs else []

    def prompt(self, text: str, *, raw: bool = False) -> str:
        """A user message in the model's chat format (or the text itself with raw=True or when the
        tokenizer has no chat template): what generate, generate_batch and stream generate from."""
        if raw or not getattr(self.tokenizer, "chat_template", None):
            return text
        return self.chat_prompt([{"role": "user", "content": text}])

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The text that asks the model for the next assistant turn after `messages`
        ([{role, content}, ...]) in the model's chat format."""
        return self.task.prompt_text(messages, self.tokenizer)

    def generate_batch(self, prompts: list[str], settings: GenerationSettings | None = None, *, raw: bool = False,
                       batch_size: int | None = None, progress: Callable[[int], Any] | None = None,
                       on_piece: Callable[[str], Any] | None = None,
                       cancel: threading.Event | None = None) -> list[Generation]:
        """One Generation (text, token counts, finish reason) per prompt, in order, generated in
        batches of `batch_size` (default: the Generator's batch_size; see lmtune.tasks.decoding.generate).
        Each prompt is a user message in the chat format; raw=True: the texts as they are.
        `on_piece` (one prompt): called with the text piece by piece as it is generated; `cancel`:
        when set, generation ends after the token in progress."""
        texts = [self.prompt(p, raw=raw) for p in prompts]
        with self._autocast():
            return decoding.generate(self.model, self.tokenizer, texts, settings or self.settings,
                                     batch_size=batch_size or self.batch_size, progress=progress,
                                     on_piece=on_piece, cancel=cancel)

    def stream(self, prompt: str, settings: GenerationSettings | None = None,
               cancel: threading.Event | None = None, *, raw: bool = False) -> Iterator[str]:
        """The text of one generation piece by piece; the generator returns the Generation (the
        streaming mode of generate_batch, run in a thread of its own: lmtune.tasks.decoding.stream).
        Setting `cancel` ends the generation after the token in progress. The prompt is a user
        message in the chat format; raw=True: the text as it is."""
        return decoding.stream(self.model, self.tokenizer, self.prompt(prompt, raw=raw), settings or self.settings,
                               context=self._autocast, cancel=cancel)

    def generate(self, prompt: str, *, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 stream: bool = False, settings: GenerationSettings | None = None, raw: bool = False) -> str:
        """The generated text for one prompt, a user message in the model's chat format (raw=True:
        the text continued as it is), printed to stdout as it comes with stream=True."""
        settings = settings or GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        if not stream:
            return self.generate_batch([prompt], settings, raw=raw)[0].text
        pieces: list[str] = []

        def show(piece: str) -> None:
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()

        self.generate_batch([prompt], settings, raw=raw, on_piece=show)
        sys.stdout.write("\n")
        return "".join(pieces).strip()

    def row_prompt(self, row: dict[str, Any], where: str, template: str | None) -> tuple[str, str | None]:
        """(prompt, reference) for a row of a file (see the causal_lm task's `row_prompt`)."""
        return self.task.row_prompt(self, row, where, template)


def load(target: str | Path | SavedRun) -> Predictor:
    """A finished run, a model folder, a GGUF file or a bundled model name (or what read_for_inference
    read of one), ready for inference: a Generator for generative tasks, else a Predictor."""
    saved = target if isinstance(target, SavedRun) else read_for_inference(target)
    return (Generator if get_task(saved.task).GENERATIVE else Predictor)(saved)
