"""The run config's shared sections: typed, strict. The classes here are the schema; their docstrings are
the help. Each task adds its own data and eval keys in its module (lmtune/tasks/), and its run config
is a subclass of RunConfig; lmtune/tasks/run_config.py puts them together.

Here too: reading YAML, `dotted.key=value` overrides, and turning pydantic's errors into one line per
problem with its key path (a misspelled key with the closest valid one suggested), so that
`load_config` lists every problem at once in one `LmtuneError`, before any work starts.
"""

from __future__ import annotations

import difflib
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from . import memory, models
from .errors import LmtuneError


_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_INT_TEXT = re.compile(r"[-+]?[0-9]+")


def number_from_text(value: Any, annotation: Any) -> Any:
    """`value` as the number a field of type `annotation` takes, when it is a text that reads as
    one (PyYAML's YAML 1.1 leaves `1e-4` a string, so a config read with yaml.safe_load has such
    texts); anything else as it is, for the schema to judge. A field that also takes text (a
    search choice) keeps its texts."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [m for m in get_args(annotation) if m is not type(None)]
        if str in members:
            return value
        for member in members:
            number = number_from_text(value, member)
            if number is not value:
                return number
        return value
    if get_origin(annotation) is list and isinstance(value, list):
        (item,) = get_args(annotation)
        return [number_from_text(v, item) for v in value]
    if isinstance(value, str) and annotation is float and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, str) and annotation is int and _INT_TEXT.fullmatch(value.strip()):
        return int(value)
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _numbers_from_text(cls, data: Any) -> Any:
        """Strict, but `lr: "1e-4"` is a number (see number_from_text); `lr: fast` is still an error."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: number_from_text(v, fields[k].annotation) if k in fields else v for k, v in data.items()}

    def problems(self, check_files: bool = True) -> list[str]:
        """What the schema cannot say (a key that contradicts another): a section with such a rule
        adds its own lines to super()'s."""
        return []


class CleanConfig(Section):
    """Cleaning of the training file before it is split (classification): text changes, then
    dropped rows, each written with its reason to dropped.jsonl in the run folder."""

    nfkc: bool = Field(True, description="Unicode NFKC normalisation")
    collapse_whitespace: bool = Field(True, description="runs of whitespace become one space; ends trimmed")
    fix_mojibake: bool = Field(
        False, description="repair mojibake with ftfy (UTF-8 read as Latin-1/CP-1252: 'cafÃ©' becomes 'café'), before the other changes"
    )
    strip_html: bool = Field(False, description="remove HTML tags and unescape entities")
    lowercase: bool = Field(False, description="lower-case the text")
    drop_empty: bool = Field(True, description="drop rows whose text is empty after cleaning")
    min_chars: int | None = Field(None, ge=0, description="drop texts shorter than this")
    max_chars: int | None = Field(None, ge=1, description="drop texts longer than this")
    dedupe: Literal["none", "exact", "normalised"] = Field(
        "exact", description="drop repeated texts after the first (normalised: NFKC, case-folded, single spaces)"
    )
    conflicts: Literal["keep", "drop", "majority"] = Field(
        "drop", description="texts whose copies carry different labels: keep them, drop them, or keep the majority label"
    )


class AugmentConfig(Section):
    """EDA augmentation of the training split only (classification, token_classification), seeded by
    train.seed. Tagged sentences: the word operations touch O words only; entities move whole."""

    n_per_example: int = Field(1, ge=1, le=32, description="augmented copies per training example")
    p_delete: float = Field(0.1, ge=0, le=1, description="per-word probability of deletion (a text is never emptied)")
    p_swap: float = Field(0.1, ge=0, le=1, description="per-word probability of a swap with another word")
    p_insert: float = Field(0.1, ge=0, le=1, description="per-word probability of inserting one of its synonyms")
    p_synonym: float = Field(0.1, ge=0, le=1, description="per-word probability of synonym replacement")
    p_entity: float = Field(
        0.1, ge=0, le=1, description="token_classification: per-entity probability of replacement by another training mention of its type"
    )
    synonyms: str | None = Field(None, description="synonym file: JSON {word: [synonyms]} or 'word<TAB>syn,syn' lines")
    embedding_synonyms: bool = Field(
        True, description="also take synonyms from the model's input-embedding neighbours (whole words, no stop words)"
    )
    protect: list[str] = Field(default_factory=list, description="words never changed (label-bearing words)")


def _max_length(value: Any) -> int | str:
    # one message for both forms (a plain union would report each of its members)
    if value == "auto" or (type(value) is int and 8 <= value <= 65536):
        return value
    raise PydanticCustomError("max_length", "expected auto or a whole number of tokens from 8 to 65536")


MaxLength = Annotated[Union[int, Literal["auto"]], PlainValidator(_max_length)]


def _threads(value: Any) -> int | str:
    if value == "auto" or (type(value) is int and value >= 1):
        return value
    raise PydanticCustomError("threads", "expected auto or a whole number of threads, at least 1")


Threads = Annotated[Union[int, Literal["auto"]], PlainValidator(_threads)]


def _micro_batch(value: Any) -> int | str:
    if value == "auto" or (type(value) is int and value >= 1):
        return value
    raise PydanticCustomError("micro_batch_size", "expected auto or a whole number of examples, at least 1")


MicroBatch = Annotated[Union[int, Literal["auto"]], PlainValidator(_micro_batch)]

AUTO_BATCH = 32  # train.batch_size: auto


def _batch(value: Any) -> int:
    # auto is the default batch itself: the step's arithmetic does not depend on the machine; what
    # fits the memory is the micro-batch's business (train.micro_batch_size: auto)
    if value == "auto":
        return AUTO_BATCH
    if type(value) is int and value >= 1:
        return value
    raise PydanticCustomError("batch_size", "expected auto or a whole number of examples, at least 1")


BatchSize = Annotated[Union[int, Literal["auto"]], PlainValidator(_batch)]


def _eval_batch(value: Any) -> int | str:
    if value is None or value == "auto":
        return "auto"
    if type(value) is int and value >= 1:
        return value
    raise PydanticCustomError("eval_batch_size", "expected auto or a whole number of examples, at least 1")


EvalBatch = Annotated[Union[int, Literal["auto"]], PlainValidator(_eval_batch)]


def _checkpointing(value: Any) -> bool | str:
    if value == "auto" or type(value) is bool:
        return value
    raise PydanticCustomError("gradient_checkpointing", "expected auto, true or false")


Checkpointing = Annotated[Union[bool, Literal["auto"]], PlainValidator(_checkpointing)]


def _memory_limit(value: Any) -> str:
    try:
        return memory.parse_limit(value).setting
    except ValueError:
        raise PydanticCustomError("memory_limit", f"expected {memory.LIMIT_FORMS}") from None


MemoryLimit = Annotated[str, PlainValidator(_memory_limit)]


class DataConfig(Section):
    """Where the examples are and which columns hold what. Relative paths are relative to the
    current directory."""

    train: str = Field(
        description="training file (.csv, .tsv, .jsonl, .json list of objects; .txt for text; .conll for token_classification)"
    )
    validation: str | None = Field(
        None, description="validation file; when omitted, a seeded stratified split of train (copies of a text on one side)"
    )
    test: str | None = Field(None, description="optional test file, evaluated once with the best model")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "txt", "conll"] = Field(
        "auto", description="file format; auto goes by the file extension (token_classification: .conll and .txt are CoNLL)"
    )
    validation_size: float = Field(
        0.1, gt=0, lt=1, description="share of train held out when no validation file is given"
    )
    max_length: MaxLength = Field(
        "auto", description="tokens per input (longer ones are cut, counted) or per block/window; auto: the 99th "
        "percentile of the training inputs rounded up to a multiple of 8, at most the model's positions and "
        "8192 / train.batch_size (the length rule: a batch holds at most 8192 tokens; micro-batches keep its memory within the budget) "
        "and the longest at which a micro-batch of one fits train.memory_limit; blocks (masked_lm, "
        "causal_lm text): 256, capped the same way; question_answering windows: the percentile, at most 384",
    )
    # token_classification
    # question_answering


class ParallelFiles(Section):
    """Two line-aligned files, one sentence a line (Moses format: Multi30k's train.en and train.de,
    WMT, OPUS): line n of target translates line n of source. Their extensions name the languages."""

    source: str = Field(description="the source-language file, e.g. train.en")
    target: str = Field(description="the target-language file, e.g. train.de")


def data_files(data: DataConfig) -> dict[str, str]:
    """The data files of a config by key: train, validation, test; for two line-aligned files,
    train.source and train.target (and so on)."""
    files: dict[str, str] = {}
    for key in ("train", "validation", "test"):
        value = getattr(data, key)
        if isinstance(value, ParallelFiles):
            files.update({f"{key}.source": value.source, f"{key}.target": value.target})
        elif value is not None:
            files[key] = value
    return files


class EvalConfig(Section):
    """What every evaluation measures besides validation: the same metrics on a sample of the training
    split (the train-validation gap shows overfitting), the perplexity of general text (forgetting),
    and generation metrics (causal_lm with references: greedy outputs on some validation rows)."""

    train_sample: int = Field(
        1000, ge=0, description="score a seeded sample of this many training rows at every evaluation, at most as "
        "many as the validation rows (the overfitting diagnosis compares the two); 0: none"
    )


class FullStrategy(Section):
    """Train every parameter with one learning rate."""

    name: Literal["full"] = "full"


class PartialStrategy(Section):
    """Freeze the embeddings and the bottom `freeze_layers` transformer layers; train the rest."""

    name: Literal["partial"]
    freeze_layers: int = Field(ge=0, description="number of bottom layers to freeze")
    freeze_embeddings: bool = Field(True, description="also freeze the embeddings")


class AdaptiveStrategy(Section):
    """Discriminative learning rates: layer k from the top trains at lr * decay**k, the embeddings
    lowest, the task head at lr * head_lr_multiplier."""

    name: Literal["adaptive"]
    decay: float = Field(0.8, gt=0, le=1, description="per-layer learning-rate decay from the top")
    head_lr_multiplier: float = Field(1.0, gt=0, description="task head learning rate = lr * this")


class LoraStrategy(Section):
    """Low-rank adapters (peft LoRA) on the linear projections of the transformer layers; the base
    model stays frozen, a new task head (classifier) trains in full. Saves a PEFT adapter."""

    name: Literal["lora"]
    r: int = Field(8, ge=1, description="rank of the adapters")
    alpha: float = Field(16, gt=0, description="scaling numerator: updates are scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] | None = Field(
        None, description="module names to adapt (e.g. [q_proj, v_proj]); default: every linear layer in the blocks"
    )


class GradualStrategy(Section):
    """Gradual unfreezing (ULMFiT): first only the head trains, then one more layer from the top
    every `unfreeze_every` epochs (or steps), the embeddings last. Optional discriminative decay."""

    name: Literal["gradual"]
    unfreeze_every: int = Field(1, ge=1, description="epochs (or steps) between unfreezing steps")
    unit: Literal["epoch", "step"] = Field("epoch", description="what unfreeze_every counts")
    decay: float = Field(1.0, gt=0, le=1, description="per-layer learning-rate decay from the top (1: none)")


class AutoStrategy(Section):
    """Choose lora or full from the model's size, the number of training examples and the task
    (lmtune/training/strategy_choice.py): a model of 1,000M parameters or more: lora; fewer than 1,000
    training examples (causal_lm: 10,000) on a model of 100M parameters or more: lora; otherwise
    full. The log says which and why; the run folder's config.yaml holds the chosen strategy,
    data.json the rule."""

    name: Literal["auto"]


Strategy = Annotated[
    Union[FullStrategy, PartialStrategy, AdaptiveStrategy, LoraStrategy, GradualStrategy, AutoStrategy],
    Field(discriminator="name"),
]
STRATEGY_CLASSES: dict[str, type[Section]] = {
    "full": FullStrategy,
    "partial": PartialStrategy,
    "adaptive": AdaptiveStrategy,
    "lora": LoraStrategy,
    "gradual": GradualStrategy,
    "auto": AutoStrategy,
}


class TrainConfig(Section):
    """The optimisation: AdamW, warmup then linear/cosine decay, evaluation and early stopping."""

    epochs: int = Field(3, ge=1, description="passes over the training data")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (instead of epochs)")
    batch_size: BatchSize = Field(32, description="examples per step and device, before accumulation (auto: 32; "
                                  "the memory decides the micro-batch, train.micro_batch_size, never the step)")
    eval_batch_size: EvalBatch = Field(
        "auto", description="examples per evaluation batch; auto: 2 x batch_size, halved until its estimated peak "
        "fits train.memory_limit (a causal LM's logits over its vocabulary are the large part)"
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="batches per optimizer step (each of train.batch_size)")
    micro_batch_size: MicroBatch = Field(
        "auto", description="examples in one forward and backward pass: a batch is split into micro-batches whose "
        "gradients add up to the batch's (the loss weighted by each part's share), so only the memory changes; "
        "auto: train.batch_size where the estimated peak of a step fits train.memory_limit, else the largest half, "
        "quarter, ... of it that does; on a GPU, an out-of-memory error in a step halves it and the step is redone"
    )
    memory_limit: MemoryLimit = Field(
        "auto", description="the memory a run plans for (micro-batch, evaluation batch, gradient checkpointing): a size "
        "(12GiB, 12 GB, 800MiB) or a share of the memory free at the start (60%); auto: 70% of the free memory, at most 10 GiB, "
        "on CPU (out of swap; larger micro-batches are no faster there), 85% of a GPU's free memory (docs/memory.md)"
    )
    lr: float | None = Field(
        None, gt=0, le=1, description="peak learning rate; null: the strategy's default (lora 2e-4, the others 5e-5)"
    )
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW decay (never on biases and norms)")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of steps with linear warmup")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="decay after warmup")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; null turns it off")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where the hardware supports it"
    )
    seed: int = Field(42, description="seed for initialisation, shuffling, dropout and splits")
    dropout: float | None = Field(None, ge=0, lt=1, description="override the model's dropout")
    group_by_length: bool = Field(True, description="batch examples of similar length (less padding)")
    attention: Literal["auto", "eager", "sdpa"] = Field(
        "auto", description="attention kernel; auto: eager for short inputs on CPU (faster there), else sdpa"
    )
    memory_guard: bool = Field(
        True, description="stop before training when the estimated peak memory of a step is more than the memory "
        "free (the estimate is within about 25% of measured peaks); false: train anyway"
    )
    gradient_checkpointing: Checkpointing = Field(
        "auto", description="recompute each layer's activations in the backward pass: far less memory, about 30% more "
        "time; auto: on only where a micro-batch of one would not fit train.memory_limit without it"
    )
    compile: bool | Literal["auto"] = Field(
        "auto", description="compile the transformer block with torch.compile, once for all blocks: causal-LM steps "
        "about 1.4x faster on CPU and less memory, a few seconds to start; auto: causal_lm and preference runs of 20 forward passes (micro-batches) or more"
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="several processes: ddp (a whole model on each) or fsdp (parameters, gradients and "
        "optimizer state sharded between them, for a model that does not fit one device)"
    )
    eval_steps: int | None = Field(None, ge=1, description="evaluate every N steps; null: each epoch")
    log_steps: int = Field(10, ge=1, description="log loss and speed every N steps")
    threads: Threads = Field(
        "auto", description="CPU threads of this run (torch.set_num_threads); auto: torch's own choice (one per "
        "core, or OMP_NUM_THREADS); fewer leave cores to other processes"
    )
    metric: str | None = Field(
        None,
        description="validation metric that picks the best checkpoint (a tie: the lower validation loss) and that "
        "early stopping watches; default: the task's (accuracy, loss, f1)",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many evaluations without improvement"
    )
    report: bool = Field(True, description="write report.html (curves, diagnosis, per-task tables) into the run folder at the end")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"], description="trackers that receive the logged scalars and the "
        "hyperparameters (accelerate's trackers); tensorboard writes event files into the run folder; []: none"
    )
    keep_checkpoints: Literal["last", "best", "none"] = Field(
        "last", description="the checkpoints kept once the run has finished (model/ always is): last (the whole "
        "training state, optimizer included), best (the best weights, which model/ holds too) or none"
    )


_Int = int  # (a field of Distribution is named int)


class Distribution(Section):
    """One dimension of a search space: exactly one of loguniform, uniform, int or choice."""

    loguniform: list[float] | None = Field(None, description="[low, high], sampled on a log scale (learning rates)")
    uniform: list[float] | None = Field(None, description="[low, high]")
    int: list[_Int] | None = Field(None, description="[low, high], both included")
    choice: list[bool | _Int | float | str | None] | None = Field(None, description="the values to choose from")

    def kind(self) -> str | None:
        given = [k for k in ("loguniform", "uniform", "int", "choice") if getattr(self, k) is not None]
        return given[0] if len(given) == 1 else None


class StopWhen(Section):
    """The target that ends a search: the first trial whose validation metric reaches it."""

    metric: str = Field(description="a validation metric of the task (e.g. accuracy, f1, loss)")
    at_least: float | None = Field(None, description="reached when the metric is at least this (scores)")
    at_most: float | None = Field(None, description="reached when the metric is at most this (losses)")

    def reached(self, value: float | None) -> bool:
        if value is None or value != value:  # missing or NaN
            return False
        return value >= self.at_least if self.at_least is not None else value <= self.at_most  # type: ignore[operator]


class SearchConfig(Section):
    """Hyperparameter search (`lmtune search`; `lmtune train` runs the config as it is): Optuna's TPE
    sampler over `space`, pruning fed by every evaluation, one run folder per trial."""

    space: dict[str, Distribution] = Field(
        description="config key -> distribution, e.g. train.lr: {loguniform: [1e-5, 1e-3]}; keys of a strategy "
        "are sampled only in trials that draw that strategy"
    )
    metric: str | None = Field(None, description="validation metric to optimise; default: train.metric (the task's)")
    direction: Literal["auto", "maximize", "minimize"] = Field(
        "auto", description="auto: minimize losses and perplexity, maximize the rest"
    )
    trials: int = Field(20, ge=1, description="trials to finish (complete, pruned or failed) before the search ends")
    timeout: float | None = Field(None, gt=0, description="wall seconds for the whole search; null: no limit")
    stop_when: StopWhen | None = Field(None, description="end the search at the first trial that reaches this target")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="stop hopeless trials after their first evaluations (set train.eval_steps for more of them)"
    )
    seed: int | None = Field(None, description="sampler seed; default: train.seed")
    storage: str | None = Field(
        None, description="an Optuna RDB URL shared by several machines (postgresql://...); default: "
        "study.db (SQLite) in the search folder"
    )
    study: str | None = Field(None, description="study name in the storage; default: the search folder's name")
    parallel: int = Field(1, ge=1, description="trials at once on this machine, each a process with its share of the CPU threads (or its own GPU)")


class RunConfig(Section):
    """One fine-tuning run: the sections every task has. A task's run config (in its module under
    lmtune/tasks/) is a subclass with the task's name and its own data and eval sections."""

    model: str = Field(description="short name (lmtune models), a Hugging Face folder, a .gguf file or an "
                       "earlier run's folder (runs/NAME)")
    task: str = Field(description="what to fine-tune for (token_classification: named entities, tags per word)")
    output_dir: str | None = Field(None, description="run folder; default runs/<config name>")
    model_chain: list[str] | None = Field(
        None, description="written by lmtune when model is an earlier run's folder: that run, the run its model "
        "came from, and so on down to the base model (a value given is replaced)")
    data: DataConfig
    strategy: Strategy = Field(default_factory=FullStrategy)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    search: SearchConfig | None = Field(None, description="read by lmtune search only")

    def to_yaml(self) -> str:
        """The resolved config: every key of this task, defaults filled."""
        raw = self.model_dump(mode="json")
        for optional in ("search", "model_chain"):
            if raw.get(optional) is None:
                raw.pop(optional, None)
        return yaml.safe_dump(raw, sort_keys=False)


# ---------------------------------------------------------------- reading and overriding


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; learning rates are written that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    lambda loader, node: _mapping_without_duplicates(loader, node),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LmtuneError(f"{path}: config file not found")
    try:
        raw = yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise LmtuneError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise LmtuneError(f"{path}:{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if raw is None:  # (comments alone read as nothing, too)
        raise LmtuneError(f"{path}: the config file is empty; it needs at least model and data.train (lmtune keys lists every key)")
    if not isinstance(raw, dict):
        raise LmtuneError(f"{path}: a config must be a mapping of keys, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (so `3`, `1e-4`, `null`, `true`)."""
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override {item!r}: expected dotted.key=value")
            continue
        try:
            parsed = yaml_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        set_key(raw, key, parsed)
    if problems:
        raise LmtuneError(*problems)
    return raw


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (`train.lr`) in a raw config mapping, making the sections on the way."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


# ---------------------------------------------------------------- validation


def _section_class(loc: tuple[Any, ...], raw: dict[str, Any], root: type[RunConfig]) -> type[BaseModel] | None:
    """The config class that owns the key at `loc` (for suggesting close matches)."""
    cls: type[BaseModel] = root
    node: Any = raw
    for part in loc:
        if part == "strategy" and cls is root:
            name = node.get("strategy", {}).get("name", "full") if isinstance(node, dict) else "full"
            cls = STRATEGY_CLASSES.get(name, FullStrategy)
            node = node.get("strategy", {})
            continue
        field = cls.model_fields.get(str(part))
        if field is None:
            return None
        sub = field.annotation
        if ParallelFiles in getattr(sub, "__args__", ()):  # a file or {source, target} files
            sub = ParallelFiles
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            cls = sub
            node = node.get(part, {}) if isinstance(node, dict) else {}
        else:
            return None
    return cls


def _keys_named(name: str, root: type[RunConfig]) -> list[str]:
    """The config keys of a run config class whose last part is `name`, in schema order."""
    keys = [row[0] for row in config_rows(root) if row[1]]
    return list(dict.fromkeys(k for k in keys if k.rsplit(".", 1)[-1] == name))


def _format_error(err: dict[str, Any], raw: dict[str, Any], root: type[RunConfig]) -> str:
    loc = list(err["loc"])
    # A discriminated union puts the tag into the path: strategy.partial.freeze_layers.
    if len(loc) >= 2 and loc[0] == "strategy" and loc[1] in STRATEGY_CLASSES:
        del loc[1]
    key = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _section_class(tuple(loc[:-1]), raw, root)
        valid = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        # a typo of a key of this section, else the same name in another section (`lr` for train.lr)
        meant = [".".join([*map(str, loc[:-1]), close[0]])] if close else \
            [k for k in _keys_named(str(loc[-1]), root) if k != key]
        hint = " (did you mean " + " or ".join(f"'{k}'" for k in meant) + "?)" if meant else ""
        if not meant and valid:
            hint = f" (valid keys here: {', '.join(valid)})"
        return f"{key}: unknown key{hint}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "union_tag_invalid":
        return f"{key}.name: unknown strategy {err['input'].get('name')!r}; expected one of {', '.join(STRATEGY_CLASSES)}"
    if kind == "union_tag_not_found":
        return f"{key}.name: required key is missing; expected one of {', '.join(STRATEGY_CLASSES)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{key}: expected a mapping of keys, got {err.get('input')!r}"
    value = err.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict) else ""
    return f"{key}: {err['msg'][:1].lower()}{err['msg'][1:]}{shown}"


def _file_or_files(errors: list[Any]) -> list[Any]:
    """The errors of a key that takes a file or {source, target} files (data.train), as of the form
    given (pydantic reports both forms' complaints): a mapping's own problems, else the file name's."""
    unions = {tuple(e["loc"][:i]) for e in errors for i, p in enumerate(e["loc"]) if p == "ParallelFiles"}
    out = []
    for err in errors:
        loc = tuple(err["loc"])
        at = next((u for u in unions if len(loc) > len(u) and loc[:len(u)] == u), None)
        if at is None or loc[len(at)] not in ("str", "ParallelFiles"):
            out.append(err)
            continue
        member = loc[len(at)]
        if member == "str" and isinstance(err["input"], dict):
            continue  # a mapping: its own problems are reported
        if member == "ParallelFiles" and len(loc) == len(at) + 1 and err["type"] == "model_type":
            continue  # not a mapping: the file name's problem is reported
        if member == "str":
            err = {**err, "msg": "Expected a file name or {source: FILE, target: FILE}"}
        out.append({**err, "loc": at + loc[len(at) + 1:]})
    return out


def schema_problems(root: type[RunConfig], raw: dict[str, Any]) -> tuple[RunConfig | None, list[str]]:
    """The raw mapping validated against a run config class: the config, or None and a line per
    problem with its key path."""
    try:
        return root.model_validate(raw), []
    except ValidationError as e:
        problems = [_format_error(err, raw, root) for err in _file_or_files(e.errors())]
    # `modle:` is reported once, as a typo for model, not also as a missing `model`.
    suggested = {p.split("did you mean '")[1].split("'")[0] for p in problems if "did you mean '" in p}
    return None, [p for p in problems if not (p.endswith("required key is missing") and p.split(":")[0] in suggested)]


def shared_problems(cfg: RunConfig, *, check_files: bool = True) -> list[str]:
    """Problems that need more than the schema, in the sections every task has: files, the model, the
    strategy's fit; then each section's own rules (Section.problems)."""
    problems = []
    if check_files:
        for key, path in data_files(cfg.data).items():
            if not Path(path).is_file():
                problems.append(f"data.{key}: file not found: {path}")
    if cfg.train.distributed == "fsdp" and cfg.strategy.name == "lora":
        problems.append("train.distributed: fsdp is not offered with strategy lora (its frozen base model is what "
                        "fits on each device); use ddp")
    if isinstance(cfg.train.micro_batch_size, int) and cfg.train.micro_batch_size > cfg.train.batch_size:
        problems.append(f"train.micro_batch_size: {cfg.train.micro_batch_size} is more than train.batch_size "
                        f"({cfg.train.batch_size}), which it splits")
    problems += cfg.data.problems(check_files) + cfg.eval.problems(check_files)
    try:
        info = models.describe(cfg.model)
    except LmtuneError as e:
        return problems + [f"model: {p}" for p in e.problems]
    if isinstance(cfg.strategy, PartialStrategy) and cfg.strategy.freeze_layers > info.num_layers:
        problems.append(
            f"strategy.freeze_layers: {cfg.strategy.freeze_layers} is more than the "
            f"{info.num_layers} layers of {cfg.model}"
        )
    if isinstance(cfg.strategy, LoraStrategy) and cfg.strategy.target_modules:
        names = models.module_names(cfg.model)
        for target in cfg.strategy.target_modules:
            if not any(n == target or n.endswith("." + target) for n in names):
                leaves = sorted({n.rsplit(".", 1)[-1] for n in names if "." in n})
                problems.append(
                    f"strategy.target_modules: {target!r} matches no module of {cfg.model}; "
                    f"linear layers are named: {', '.join(leaves)}"
                )
    return problems


def config_rows(root: type[RunConfig]) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every key of a run config class, strategies included."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, f in cls.model_fields.items():
            key = f"{prefix}{name}"
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key + ".")
                continue
            if name == "strategy" and cls is root:
                for sname, scls in STRATEGY_CLASSES.items():
                    rows.append((f"strategy.name: {sname}", "", "", (scls.__doc__ or "").strip()))
                    walk(scls, "strategy.")
                continue
            if name == "name" and cls in STRATEGY_CLASSES.values():
                continue
            kind = str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "").replace(__name__ + ".", "")
            default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
            rows.append((key, kind, default, f.description or ""))
            # an optional section (data.clean, data.augment): null by default, its own keys below it
            # (a mapping of sections, search.space: its keys are the user's, shown as KEY)
            below = key + (".KEY." if getattr(ann, "__origin__", None) is dict else ".")
            for inner in getattr(ann, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    walk(inner, below)

    walk(root, "")
    return rows
