"""Inference on a finished run: `Predictor.from_run(dir).predict(texts)` and evaluation on a file."""

from __future__ import annotations

import json
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


def load_model(model_dir: Path, task: Any, cfg: RunConfig | None) -> Any:
    """A saved model folder: a full transformers model, or a PEFT adapter on its base model."""
    adapter = model_dir / "adapter_config.json"
    if not adapter.is_file():
        return models.load_pretrained(task.AUTO_MODEL, model_dir)
    from peft import PeftModel

    base = json.loads(adapter.read_text())["base_model_name_or_path"]
    labels = json.loads((model_dir / "lmtune.json").read_text())["labels"]
    if not Path(base).exists():
        raise LmtuneError(f"{adapter}: the base model {base} is not there any more")
    if cfg is None:
        raise LmtuneError(f"{model_dir}: an adapter needs the run folder around it (with config.yaml)")
    return PeftModel.from_pretrained(task.build_model(base, cfg, labels), model_dir)


class Predictor:
    """A fine-tuned model with its tokenizer, labels and the run's data settings."""

    def __init__(self, model_dir: Path, cfg: RunConfig | None) -> None:
        from .training import make_accelerator

        self.model_dir = model_dir
        self.task_name = cfg.task if cfg else "classification"
        self.task = get_task(self.task_name)
        self.tokenizer = models.load_tokenizer(model_dir)
        self.model = load_model(model_dir, self.task, cfg)
        info = model_dir / "lmtune.json"
        if info.is_file():
            self.labels = json.loads(info.read_text())["labels"]
        else:
            id2label = self.model.config.id2label
            self.labels = [id2label[i] for i in range(len(id2label))]
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

    def predict(self, texts: list[str] | str, pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """Predictions for raw texts (and optional second texts of a pair), in input order."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return []
        return self.task.decode(self.logits(list(texts), pairs), self.labels)

    def read_inputs(self, path: str | Path) -> tuple[Table, list[str], list[str] | None]:
        path = Path(path)
        if path.suffix.lower() == ".txt":
            from .data.readers import _text

            lines = _text(path).splitlines()
            rows = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
            if not rows:
                raise LmtuneError(f"{path}: no examples in the file")
            table = Table(path, ["text"], [{"text": t} for _, t in rows], [n for n, _ in rows])
            return table, [t for _, t in rows], None
        table = read_table(path)
        table.require_columns(self.text_column, self.text_pair_column)
        texts = [str(r[self.text_column]) for r in table.rows]
        pairs = [str(r[self.text_pair_column]) for r in table.rows] if self.text_pair_column else None
        return table, texts, pairs

    def evaluate_file(self, path: str | Path) -> dict[str, Any]:
        """Task metrics on a labelled file (same columns as training)."""
        table, texts, pairs = self.read_inputs(path)
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
