"""Text generation with a fine-tuned run or a base model: one prompt (streamed), or one generation
per row of a file (chat messages, instruction fields or a prompt template)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from . import models
from .config import RunConfig
from .errors import LmtuneError
from .tasks import causal_lm


def _run_config(path: Path) -> RunConfig | None:
    if (path / "config.yaml").is_file() and (path / "model").is_dir():
        return RunConfig.model_validate(yaml.safe_load((path / "config.yaml").read_text()))
    return None


def is_generative(target: str) -> bool:
    """Whether a run folder or model is a text generator (as opposed to a classifier)."""
    path = Path(target)
    cfg = _run_config(path)
    if cfg is not None:
        return cfg.task == "causal_lm"
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return json.loads((path / "adapter_config.json").read_text()).get("task_type") == "CAUSAL_LM"
    is_model = target in models.BUNDLED or (path / "config.json").is_file() or (path.is_file() and path.suffix == ".gguf")
    if not is_model:
        return False  # not a model: the run-folder reader says what is wrong with it
    source = models.source_of(target)
    if source.suffix == ".gguf":
        return True
    config = json.loads((source / "config.json").read_text())
    return any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])


class Generator:
    """A causal LM with its tokenizer, ready to generate."""

    def __init__(self, model_dir: Path, cfg: RunConfig | None) -> None:
        import torch

        from .predict import recorded_attention

        self.cfg = cfg
        self.tokenizer = models.load_tokenizer(model_dir)
        attention = recorded_attention(model_dir)  # the run's kernel: its own evaluation numbers
        adapter = model_dir / "adapter_config.json"
        if adapter.is_file():
            from peft import PeftModel

            base = json.loads(adapter.read_text())["base_model_name_or_path"]
            if not Path(base).exists():
                raise LmtuneError(f"{adapter}: the base model {base} is not there any more")
            base_model = models.load_pretrained(causal_lm.AUTO_MODEL, base, attn_implementation=attention)
            self.model = PeftModel.from_pretrained(base_model, model_dir)
        else:
            self.model = models.load_pretrained(causal_lm.AUTO_MODEL, model_dir, attn_implementation=attention)
        self.model.config.use_cache = True
        self.model.eval()
        self.dtype = torch.float32

    @classmethod
    def load(cls, target: str) -> "Generator":
        path = Path(target)
        cfg = _run_config(path)
        if cfg is not None:
            return cls(path / "model", cfg)
        if not path.exists() and target not in models.BUNDLED:
            models.source_of(target)  # raises the unknown-model error
        return cls(models.resolve(target), None)

    def prompt(self, text: str, *, raw: bool = False) -> str:
        """A user message in the model's chat format (or the text itself with raw=True or when the
        tokenizer has no chat template)."""
        if raw or not getattr(self.tokenizer, "chat_template", None):
            return text
        return causal_lm.prompt_text([{"role": "user", "content": text}], self.tokenizer)

    def generate(self, prompt: str, *, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 stream: bool = False) -> str:
        streamer = None
        if stream:
            from transformers import TextStreamer

            streamer = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        return causal_lm.generate_text(
            self.model, self.tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, streamer=streamer,
        )

    def row_prompt(self, row: dict[str, Any], where: str, template: str | None) -> tuple[str, str | None]:
        """(prompt, reference) for a row: chat messages up to the last assistant turn, a prompt
        template over the row's columns, instruction fields, or a text column (continued as is)."""
        if "messages" in row or "conversations" in row:
            cfg = self.cfg or RunConfig.model_validate({"model": "x", "data": {"train": "x"}})
            messages = causal_lm.messages_of(row, where, cfg, need_answer=False)
            reference = None
            if messages[-1]["role"] == "assistant":
                reference = messages.pop()["content"]
            return causal_lm.prompt_text(messages, self.tokenizer), reference
        d = self.cfg.data if self.cfg else None
        template = template or (d.prompt_template if d else None)
        response_column = d.response_column if d else "output"
        if template is None and "instruction" in row:
            template = "{instruction}" + ("\n\n{input}" if str(row.get("input") or "").strip() else "")
        if template is not None:
            fields = causal_lm._template_fields(template)
            missing = [f for f in fields if f not in row]
            if missing:
                raise LmtuneError(f"{where}: the prompt template names column {missing[0]!r}, which the row does not have")
            text = template.format(**{k: "" if v is None else v for k, v in row.items()})
            reference = row.get(response_column)
            return self.prompt(text), reference if isinstance(reference, str) else None
        for column in ("prompt", "text"):
            if isinstance(row.get(column), str):
                return row[column], None
        raise LmtuneError(f"{where}: no messages, instruction, prompt or text column, and no --prompt-template")

    def evaluate_file(self, path: str) -> dict[str, Any]:
        """Loss, perplexity and (for instructions and chats) generation metrics on a file shaped
        like the run's training data."""
        import torch

        from .tasks.common import TaskData

        if self.cfg is None:
            raise LmtuneError("evaluating a generative model needs its run folder (for the data columns and template)")
        table = causal_lm.read_texts(path, "auto")
        shape = causal_lm.detect_shape(table, self.cfg)
        causal_lm._check_table(table, shape, self.cfg)
        unpacked = self.cfg.model_copy(update={"data": self.cfg.data.model_copy(update={"packing": False})})
        features, truncated = causal_lm.prepare(table, self.tokenizer, unpacked, [], shape)
        collate = causal_lm.collator(self.tokenizer, self.cfg, self.model)
        parts: dict[str, list[Any]] = {"loss_sum": [], "tokens": []}
        with torch.no_grad():
            for start in range(0, len(features), 8):
                batch = collate(features[start : start + 8])
                batch.pop("num_tokens")
                out = causal_lm.eval_step(self.model, batch, self.cfg)
                for key in parts:
                    parts[key].append(out[key].float().numpy())
        import numpy as np

        metrics = causal_lm.compute_metrics({k: np.concatenate(v) for k, v in parts.items()}, [], self.cfg)
        data = TaskData(table, table, None, [], [])
        data.shape = shape  # type: ignore[attr-defined]
        metrics.update(causal_lm.extra_metrics(self.model, self.tokenizer, data, self.cfg))
        metrics["examples"] = len(table)
        metrics["truncated"] = truncated
        return metrics
