"""Inference on a finished run: `Predictor.from_run(dir).predict(texts)` and evaluation on a file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from . import models
from .config import RunConfig
from .data.batching import EpochBatchSampler
from .data.readers import Table, read_table
from .errors import LmtuneError
from .tasks import get_task


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def _run_parts(run_dir: str | Path) -> tuple[Path, RunConfig | None]:
    path = Path(run_dir)
    if _is_model_dir(path / "model"):
        cfg = None
        if (path / "config.yaml").is_file():
            cfg = RunConfig.model_validate(yaml.safe_load((path / "config.yaml").read_text()))
        return path / "model", cfg
    if _is_model_dir(path):
        return path, None
    if (path / "config.yaml").is_file():
        raise LmtuneError(f"{path}: the run has no model/ yet (unfinished? resume it with lmtune train --resume)")
    raise LmtuneError(f"{path}: not a run folder or model folder (no model/config.json)")


def recorded_attention(model_dir: Path) -> str | None:
    """The attention kernel the run trained and evaluated with (model/lmtune.json), so that a saved
    model gives the run's own numbers: eager and SDPA attention differ in the last bits, enough to
    flip a close answer. None (transformers' default) for a folder without the record."""
    info = model_dir / "lmtune.json"
    return json.loads(info.read_text()).get("attention") if info.is_file() else None


def load_model(model_dir: Path, task: Any, cfg: RunConfig | None) -> Any:
    """A saved model folder: a full transformers model, or a PEFT adapter on its base model, with
    the attention kernel of the run."""
    attention = recorded_attention(model_dir)
    adapter = model_dir / "adapter_config.json"
    if not adapter.is_file():
        return models.load_pretrained(task.AUTO_MODEL, model_dir, attn_implementation=attention)
    from peft import PeftModel

    base = json.loads(adapter.read_text())["base_model_name_or_path"]
    labels = json.loads((model_dir / "lmtune.json").read_text())["labels"]
    if not Path(base).exists():
        raise LmtuneError(f"{adapter}: the base model {base} is not there any more")
    if cfg is None:
        raise LmtuneError(f"{model_dir}: an adapter needs the run folder around it (with config.yaml)")
    return PeftModel.from_pretrained(task.build_model(base, cfg, labels, attn_implementation=attention), model_dir)


def _task_of(model_dir: Path) -> str:
    """The task of a model folder without a run config: what lmtune.json or the architecture
    says, else classification."""
    info = model_dir / "lmtune.json"
    if info.is_file() and json.loads(info.read_text()).get("task"):
        return json.loads(info.read_text())["task"]
    config = model_dir / "config.json"
    if config.is_file():
        architectures = json.loads(config.read_text()).get("architectures") or []
        if any(a.endswith("ForTokenClassification") for a in architectures):
            return "token_classification"
        if any(a.endswith("ForQuestionAnswering") for a in architectures):
            return "question_answering"
    return "classification"


class Predictor:
    """A fine-tuned model with its tokenizer, labels and the run's data settings."""

    def __init__(self, model_dir: Path, cfg: RunConfig | None) -> None:
        from .training import make_accelerator

        self.model_dir = model_dir
        self.cfg = cfg
        self.task_name = cfg.task if cfg else _task_of(model_dir)
        self.task = get_task(self.task_name)
        self.tokenizer = models.load_tokenizer(model_dir)
        self.model = load_model(model_dir, self.task, cfg)
        info = model_dir / "lmtune.json"
        if info.is_file():
            self.labels = json.loads(info.read_text())["labels"]
        elif self.task_name == "question_answering":
            self.labels = []  # a bare model folder: SQuAD v1.1, always an answer
        else:
            id2label = self.model.config.id2label
            self.labels = [id2label[i] for i in range(len(id2label))]
        if self.task_name in ("token_classification", "question_answering", "masked_lm"):
            from .config import DataConfig

            # the run's data settings, or the defaults for a bare model folder
            defaults = {"tag_scheme": self.task.scheme_of(self.labels)} if self.task_name == "token_classification" else {}
            # (a bare folder has no training data to size inputs by: windows and blocks of 256 tokens)
            self.data = cfg.data if cfg else DataConfig(train="", max_length=256, **defaults)
        self.text_column = cfg.data.text_column if cfg else "text"
        self.text_pair_column = cfg.data.text_pair_column if cfg else None
        self.label_column = cfg.data.label_column if cfg else "label"
        self.max_length = cfg.data.max_length if cfg else 512
        self.batch_size = (cfg.train.eval_batch_size or 2 * cfg.train.batch_size) if cfg else 64
        precision = cfg.train.precision if cfg else "auto"
        self.accelerator = make_accelerator(precision)
        self.model = self.accelerator.prepare(self.model)
        self.model.eval()

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "Predictor":
        return cls(*_run_parts(run_dir))

    def _features(self, texts: list[str], pairs: list[str] | None) -> list[dict[str, Any]]:
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(texts))]

    @torch.no_grad()
    def logits(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        features = self._features(texts, pairs)
        sampler = EpochBatchSampler([len(f["input_ids"]) for f in features], self.batch_size, seed=0, shuffle=False)
        collate = self.task.collator(self.tokenizer, None)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for batch_ids in sampler:
            batch = collate([features[i] for i in batch_ids]).to(self.accelerator.device)
            with self.accelerator.autocast():
                logits = self.model(**batch).logits
            out[batch_ids] = logits.float().cpu().numpy()
        return out

    def predict(self, texts: list[str] | str, pairs: list[str] | None = None) -> list[Any]:
        """Predictions for raw texts (and optional second texts of a pair), in input order.

        Token classification: for each raw text, its entities [{text, type, start, end, score}]
        with character offsets into the text; for each list of tokens, one tag per token.
        Question answering: texts are the questions and pairs their contexts (or texts are
        {question, context} objects); for each, {answer, score, start, end} with character offsets
        into the context (an empty answer at -1 when a SQuAD v2.0 model finds none).
        Masked LM: for each text, per mask token (e.g. [MASK]) the 5 likeliest tokens {token, score}."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return []
        if self.task_name == "token_classification":
            return self._predict_words(list(texts))
        if self.task_name == "question_answering":
            return self._predict_answers(list(texts), pairs)
        if self.task_name == "masked_lm":
            return self._fill_masks(list(texts))
        return self.task.decode(self.logits(list(texts), pairs), self.labels)

    # ------------------------------------------------------------ token classification

    @torch.no_grad()
    def _window_probabilities(self, features: list[dict[str, Any]]) -> list[np.ndarray]:
        """Tag probabilities [tokens, tags] of each window, unpadded."""
        sampler = EpochBatchSampler([len(f["input_ids"]) for f in features], self.batch_size, seed=0, shuffle=False)
        collate = self.task.collator(self.tokenizer, None)
        out: list[np.ndarray] = [np.zeros(0)] * len(features)
        for batch_ids in sampler:
            batch = collate([features[i] for i in batch_ids]).to(self.accelerator.device)
            with self.accelerator.autocast():
                logits = self.model(**batch).logits
            probs = torch.softmax(logits.float(), -1).cpu().numpy()
            width = probs.shape[1]
            for row, i in zip(probs, batch_ids):
                n = len(features[i]["input_ids"])
                out[i] = row[:n] if self.tokenizer.padding_side == "right" else row[width - n :]
        return out

    def _predict_words(self, inputs: list[Any]) -> list[Any]:
        for i, x in enumerate(inputs):
            if not isinstance(x, str) and not (isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x)):
                raise LmtuneError(f"input {i + 1}: expected a text or a list of tokens (strings), got {str(x)[:80]}")
        out: list[Any] = [[] if isinstance(x, (list, tuple)) and not x else None for x in inputs]
        for split in (False, True):
            which = [i for i, x in enumerate(inputs) if isinstance(x, str) != split and out[i] is None]
            if not which:
                continue
            group = [list(inputs[i]) if split else inputs[i] for i in which]
            wins, _, encoding, _ = self.task.windows(
                self.tokenizer, group, self.data.max_length, self.data.doc_stride, split_into_words=split
            )
            probs = self._window_probabilities([w.features for w in wins])
            for i, pred in zip(which, self.task.decode(probs, self.labels, wins, group, encoding)):
                out[i] = pred
        return out

    def _evaluate_words(self, path: Path) -> dict[str, Any]:
        known = path.suffix.lower() in (*self.task.CONLL_SUFFIXES, ".jsonl", ".json")
        table = self.task.read_sentences(path, self.data.model_copy(update={"format": "auto"}) if known else self.data)
        self.task.check_tags(table, self.data.tag_scheme, self.labels, where="the model's tags")
        return self._evaluate_table(table)

    # ------------------------------------------------------------ question answering

    def _predict_answers(self, questions: list[Any], contexts: list[str] | None) -> list[dict[str, Any]]:
        if contexts is None:
            if not all(isinstance(q, dict) and "question" in q and "context" in q for q in questions):
                raise LmtuneError("question answering needs contexts: predict(questions, contexts) or [{question, context}, ...]")
            questions, contexts = [q["question"] for q in questions], [q["context"] for q in questions]
        if len(questions) != len(contexts):
            raise LmtuneError(f"{len(questions)} questions but {len(contexts)} contexts")
        for i, (q, c) in enumerate(zip(questions, contexts)):
            if not isinstance(q, str) or not q.strip() or not isinstance(c, str) or not c.strip():
                raise LmtuneError(f"input {i + 1}: the question and the context must be non-empty texts")
        wins, _ = self.task.windows(self.tokenizer, questions, contexts, self.data.max_length, self.data.doc_stride)
        width = max(len(w["input_ids"]) for w in wins)
        start, end = np.full((len(wins), width), self.task.MASKED, np.float32), np.full((len(wins), width), self.task.MASKED, np.float32)
        sampler = EpochBatchSampler([len(w["input_ids"]) for w in wins], self.batch_size, seed=0, shuffle=False)
        collate = self.task.collator(self.tokenizer)
        with torch.no_grad():
            for batch_ids in sampler:
                batch = collate([wins[i] for i in batch_ids]).to(self.accelerator.device)
                with self.accelerator.autocast():
                    out = self.model(**batch)
                n = out.start_logits.shape[1]
                start[batch_ids, :n] = out.start_logits.float().cpu().numpy()
                end[batch_ids, :n] = out.end_logits.float().cpu().numpy()
        return self.task.best_answers(start, end, wins, len(questions), contexts, self.data.max_answer_length,
                                      self.task.NO_ANSWER in self.labels)

    # ------------------------------------------------------------ masked LM

    @torch.no_grad()
    def _fill_masks(self, texts: list[str], top_k: int = 5) -> list[list[list[dict[str, Any]]]]:
        mask = self.tokenizer.mask_token
        if any(mask not in t for t in texts):
            raise LmtuneError(f"input {next(i for i, t in enumerate(texts) if mask not in t) + 1}: no {mask} token to fill in")
        out = []
        for text in texts:
            enc = self.tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt").to(self.accelerator.device)
            with self.accelerator.autocast():
                logits = self.model(**enc).logits[0].float()
            where = (enc["input_ids"][0] == self.tokenizer.mask_token_id).nonzero()[:, 0]
            probs, ids = torch.softmax(logits[where], -1).topk(top_k, dim=-1)
            out.append([
                [{"token": self.tokenizer.decode([int(i)]).strip(), "score": round(float(p), 6)} for p, i in zip(ps, row)]
                for ps, row in zip(probs, ids)
            ])
        return out

    # ------------------------------------------------------------ evaluation on windows

    def _evaluate_table(self, table: Table) -> dict[str, Any]:
        """Metrics of a task whose examples become windows (token classification, QA)."""
        from types import SimpleNamespace

        cfg = self.cfg if self.cfg is not None else SimpleNamespace(data=self.data, train=SimpleNamespace(seed=0))
        features, _ = self.task.prepare(table, self.tokenizer, cfg, self.labels)
        collate = self.task.collator(self.tokenizer, cfg, self.model)
        sampler = EpochBatchSampler([len(f["input_ids"]) for f in features], self.batch_size, seed=0, shuffle=False)
        parts: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for batch_ids in sampler:
                batch = {k: v.to(self.accelerator.device) for k, v in collate([features[i] for i in batch_ids]).items()}
                with self.accelerator.autocast():
                    out = self.task.eval_step(self.model, batch, cfg)
                for key, value in out.items():
                    parts.setdefault(key, []).append(value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy())
        # back in data order, which the features (and the task's mapping to examples) follow
        inverse = np.argsort([i for batch_ids in sampler for i in batch_ids])
        outputs = {k: np.concatenate(v)[inverse] for k, v in parts.items()}
        metrics = self.task.compute_metrics(outputs, self.labels, cfg, features)
        metrics["examples"] = len(table)
        return metrics

    # ------------------------------------------------------------ input files

    def _columns(self, path: Path, columns: list[str] | None, *, named: bool) -> list[str] | None:
        """The column names to read `path` with: those given (--columns), else, for a CSV or TSV
        file, the run's data.columns. `named`: whether this file is read by named columns at all."""
        if not named:
            if columns is not None:
                raise LmtuneError(f"--columns: {path} is read by a {self.task_name} model as it is "
                                  f"({path.suffix or 'no extension'}), not by named CSV/TSV columns")
            return None
        if columns is not None:
            return columns
        run = self.cfg.data.columns if self.cfg is not None else None
        return run if run and path.suffix.lower() in (".csv", ".tsv") else None

    def read_inputs(self, path: str | Path, columns: list[str] | None = None) -> tuple[Table, list[Any], list[str] | None]:
        """The inputs of a file: the table, the texts (or token lists, or questions) and the second
        texts of pairs (or contexts). `columns`: the column names of a CSV/TSV file without a header."""
        path = Path(path)
        if self.task_name == "question_answering":
            self._columns(path, columns, named=False)
            table = self.task.read_questions(path, self.data.model_copy(update={"format": "auto"}), answers=False)
            return table, [r["question"] for r in table.rows], [r["context"] for r in table.rows]
        if self.task_name == "token_classification" and path.suffix.lower() != ".txt":
            # CoNLL (tags, if any, ignored) or rows with a list of tokens (or a text column)
            if self.task.is_conll(path, "auto"):
                self._columns(path, columns, named=False)
                table = self.task.read_sentences(path, self.data, tags=False)
                return table, [r["tokens"] for r in table.rows], None
            table = read_table(path, columns=self._columns(path, columns, named=True))
            if self.data.tokens_column in table.columns:
                table = self.task.read_sentences(path, self.data.model_copy(update={"format": "auto"}), tags=False)
                return table, [r["tokens"] for r in table.rows], None
            table.require_columns(self.text_column)
            return table, [str(r[self.text_column]) for r in table.rows], None
        if path.suffix.lower() == ".txt":
            from .data.readers import _text

            self._columns(path, columns, named=False)
            lines = _text(path).splitlines()
            rows = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
            if not rows:
                raise LmtuneError(f"{path}: no examples in the file")
            table = Table(path, ["text"], [{"text": t} for _, t in rows], [n for n, _ in rows])
            return table, [t for _, t in rows], None
        table = read_table(path, columns=self._columns(path, columns, named=True))
        table.require_columns(self.text_column, self.text_pair_column)
        texts = [str(r[self.text_column]) for r in table.rows]
        pairs = [str(r[self.text_pair_column]) for r in table.rows] if self.text_pair_column else None
        return table, texts, pairs

    def evaluate_file(self, path: str | Path, columns: list[str] | None = None) -> dict[str, Any]:
        """Task metrics on a labelled file (same columns as training; `columns`: the column names
        of a CSV/TSV file without a header, by default the run's data.columns)."""
        if self.task_name != "classification":
            self._columns(Path(path), columns, named=False)
        if self.task_name == "token_classification":
            return self._evaluate_words(Path(path))
        if self.task_name == "masked_lm":  # masked once with the run's seed, like its validation set
            return self._evaluate_table(self.task.read_table_to_mask(path, self.data))
        if self.task_name == "question_answering":
            table = self.task.read_questions(path, self.data.model_copy(update={"format": "auto"}))
            table, note = self.task.drop_broken_answers(table, self.data.max_broken_answers)
            if note:
                print(f"lmtune: {note}", file=sys.stderr)
            return self._evaluate_table(table)
        table, texts, pairs = self.read_inputs(path, columns)
        table.require_columns(self.label_column)
        label_ids = {label: i for i, label in enumerate(self.labels)}
        refs = []
        for i, row in enumerate(table.rows):
            label = str(row[self.label_column])
            if label not in label_ids:
                raise LmtuneError(
                    f"{table.where(i)}: label {label!r} is not one the model knows ({', '.join(self.labels)})"
                )
            refs.append(label_ids[label])
        logits = self.logits(texts, pairs)
        loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.tensor(refs), reduction="none")
        outputs = {"logits": logits, "references": np.array(refs), "loss": loss.numpy()}
        metrics = self.task.compute_metrics(outputs, self.labels)
        metrics["examples"] = len(refs)
        return metrics


def export(run_dir: str | Path, out: str | Path, *, merge: bool, overwrite: bool = False) -> Path:
    """Write the run's model as a plain transformers folder (adapters merged into the weights)."""
    import shutil

    from .rundir import replace_dir_atomic

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise LmtuneError(f"{out} exists; use --overwrite to replace it")
    predictor = Predictor.from_run(run_dir)
    model = predictor.accelerator.unwrap_model(predictor.model)
    if models.is_adapter(model):
        if not merge:
            raise LmtuneError(f"{run_dir}: the model is a LoRA adapter; pass --merge to fold it into the base weights")
        model = model.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    predictor.tokenizer.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_dir_atomic(tmp, out)
    return out
