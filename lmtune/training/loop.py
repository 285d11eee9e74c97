"""Training: `train(config) -> RunResult`. The loop is in `fit`, in view from batch to checkpoint.
Before it, `_run` calls the run's phases in order (open_run, prepare_data, build_model,
check_memory, build_optimizer_and_loaders, find_position, build_schedule, restore, log_start), each
filling in its part of one `RunState`, which fit and finish then work on.
The run's report.html is written by whoever ran it (lmtune.train, lmtune train, a search's trials, a
comparison's runs) with lmtune.report.report_run, once the run has finished.

The run is on `accelerate`, so the same code runs on one CPU, one GPU or many processes. What is
task-specific (data, head, metrics) comes from the task module; what is strategy-specific
(frozen parameters, learning-rate groups) comes from the strategy function.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core import collectives, memory, models, tracking
from ..core.config import STRATEGY_CLASSES, RunConfig, data_files
from ..core.errors import LmtuneError, RunStopped
from ..core.memory import PeakMemory
from ..core.rundir import RunDir, file_sha256, replace_dir_atomic, write_json_atomic, write_text_atomic
from ..core.runtime import busy_cpu_note, cpu_threads, fp32_reason, log, make_accelerator, other_cpu_load
from ..data.batching import EpochBatchSampler, examples_seen
from ..tasks import get_task
from ..tasks.run_config import as_config
from . import adapter_checkpoint, memory_plan, sharding, stopping, strategies
from .cpu import SpeedUps, speed_ups
from .diagnosis import diagnose, lines
from .evaluation import Evaluation, brief, evaluate, general_text_features, is_better
from .strategy_choice import resolve_auto

# on_evaluate(step, metrics) is called after every evaluation; returning True stops the run.
EvalCallback = Callable[[int, dict[str, Any]], "bool | None"]


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict[str, Any]
    best_step: int | None
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LoopState:
    """Everything besides tensors that a resumed run needs to continue where it stopped."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already trained on
    best_metric: float | None = None
    best_loss: float | None = None  # the best evaluation's validation loss (breaks ties of best_metric)
    best_step: int | None = None
    bad_evals: int = 0
    history_lines: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0  # evaluations and checkpoints during the loop
    train_samples: int = 0
    train_tokens: int = 0  # real (non-padding) tokens
    base_perplexity: float | None = None  # of the general text (eval.forgetting) before the first step
    processes: int = 1  # a mid-epoch position counts global batches of this many processes
    # [processes, global batches] of `epoch` trained before a resume with another number of processes
    earlier_in_epoch: list[list[int]] = field(default_factory=list)

    def next_epoch(self, epoch: int) -> None:
        self.epoch, self.batches_in_epoch, self.earlier_in_epoch = epoch + 1, 0, []


def choose_attention(setting: str, device_type: str, lengths: list[int], eager_max_length: int) -> str:
    """On CPU, the plain (eager) attention is faster than SDPA in bf16 for short inputs and slower
    for long ones. Measured: MiniLM 0.13 s vs 0.25 s a step at 13 tokens, but SDPA ahead from about
    200 tokens; SmolLM2 226 vs 192 tokens/s on SAMSum (most dialogues 100-400 tokens), SDPA ahead
    at 512. In fp32 on a CPU without fast bf16 the two are within 6% of each other, eager ahead up
    to 128 tokens and SDPA from 192 (benchmarks/attention_kernel.py). The task gives the length up
    to which eager is used (`EAGER_MAX_LENGTH`)."""
    if setting != "auto":
        return setting
    if device_type == "cpu" and lengths and float(np.percentile(lengths, 90)) <= eager_max_length:
        return "eager"
    return "sdpa"


# An evaluation's forward pass costs about a third of a training pass (forward and backward) per
# position: the ETA's guess for an evaluation before the first has been timed.
EVAL_COST_RATIO = 3


def eta_text(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


COMPILE_MIN_PASSES = 20  # train.compile: auto: below this many forward passes, compiling (seconds) would not pay


def compiles(t: Any, task: Any, total_steps: int, micro_batch: int, fsdp: bool = False) -> bool:
    """Whether the run compiles its blocks: train.compile true, or auto for a task that compiles by
    default and a run of at least COMPILE_MIN_PASSES forward passes (micro-batches: a preference
    step of 32 pairs in micro-batches of 4 is 8 passes, each saving as much as a causal step)."""
    passes = total_steps * t.gradient_accumulation_steps * math.ceil(t.batch_size / max(micro_batch, 1))
    return t.compile is True or (t.compile == "auto" and task.compile_by_default and passes >= COMPILE_MIN_PASSES and not fsdp)


def compile_blocks(model: Any) -> None:
    """torch.compile each transformer block in place ("regional" compilation: the blocks share
    their code, so it is compiled once and reused by all of them, in seconds rather than minutes
    for the whole model). Measured on SmolLM2-135M, bf16, 2-core CPU: 4.12 -> 2.87 s a step (8 rows
    of about 200 tokens), peak memory 6.7 -> 5.4 GB; the gain is in the elementwise work (norms,
    rotary embeddings, activations) that compilation fuses; none on MiniLM, whose short steps are
    mostly matrix products (bf16 on AMX; and fp32 on a 2-core AVX2 CPU: median step 338 ms plain,
    335 ms compiled, stepping alternately on 60 batches of SST-2, after 88 s of compiling), so
    train.compile: auto compiles causal LMs only (causal_lm and preference runs)."""
    import torch._dynamo

    # A block may be compiled a few times over: training and evaluation (grad mode), a batch of one
    # row (sizes 0 and 1 are specialised), a first block whose input needs no gradient (frozen
    # embeddings under LoRA). Those are a handful of variants, not the per-call recompiles that the
    # default limit of 8 guards against.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    _, blocks = strategies.find_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)


def _loader(features: list[dict[str, Any]], sampler: EpochBatchSampler, collate: Any) -> torch.utils.data.DataLoader:
    # A private generator: each new DataLoader iterator draws a seed, and from the global RNG that
    # draw would shift the dropout masks of a resumed run (which starts an iterator mid-epoch).
    generator = torch.Generator().manual_seed(sampler.seed)
    return torch.utils.data.DataLoader(features, batch_sampler=sampler, collate_fn=collate, generator=generator)


class MicroBatches:
    """Collates a batch as micro-batches of at most `size` examples, the longest first (each padded to
    its own width); a batch no larger than `size` as one, exactly as `collate` would. It keeps the
    batch it collated last, so that a step that ran out of memory can split it again, smaller."""

    def __init__(self, collate: Any, size: int) -> None:
        self.collate, self.size = collate, size
        # The train loader has no worker processes (`_loader` leaves num_workers at 0) and fetches each
        # batch only when the loop asks for it: this object is called in the loop's own process, and
        # the batch kept here is the one the loop is training on.
        self.last_features: list[dict[str, Any]] = []

    def __call__(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.last_features = features
        return self.split(features)

    def split(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(features) <= self.size:
            return [self.collate(features)]
        ordered = sorted(features, key=lambda f: -len(f["input_ids"]))
        return [self.collate(ordered[i:i + self.size]) for i in range(0, len(ordered), self.size)]


def resolve_defaults(cfg: RunConfig, task: Any, data: Any, tokenizer: Any) -> tuple[RunConfig, dict[str, Any], list[str]]:
    """A copy of the config with strategy.name: auto made a strategy, and data.max_length: auto and
    train.lr: null made numbers, what was chosen (for data.json) and the lines that say so (for the
    log). The run folder's config.yaml holds the choices, so that eval and predict read the run's own
    length; a resumed run resolves them again from the same data, so its config still matches the
    saved one (a changed training file does not). The strategy comes first: the lr default is its."""
    from ..tasks.common import length_cap

    record, notes = {}, []
    if cfg.strategy.name == "auto":
        section, choice = resolve_auto(cfg.task, str(models.resolve(cfg.model)), len(data.train))
        if choice.name == "lora" and cfg.train.distributed == "fsdp":
            raise LmtuneError(f"strategy.name: auto chose lora ({choice.rule}), which is not offered with "
                              f"train.distributed: fsdp; name a strategy or use ddp")
        cfg = cfg.model_copy(update={"strategy": STRATEGY_CLASSES[choice.name](**section)})
        record["strategy"] = {"setting": "auto", "value": choice.name, "rule": choice.rule}
        settings = ", ".join(f"{k} {v}" for k, v in section.items() if k != "name")
        notes.append(f"strategy.name: auto -> {choice.name}{f' ({settings})' if settings else ''}: {choice.rule}")
    else:
        record["strategy"] = {"setting": cfg.strategy.name, "value": cfg.strategy.name}
    d, t = cfg.data, cfg.train
    data_update, train_update = {}, {}
    if d.max_length == "auto":
        # (from the plain folder: a GGUF file's config is read from the whole file)
        cap = length_cap(models.describe(str(models.resolve(cfg.model))).max_positions, t.batch_size)
        cap = memory_plan.length_within_memory(cfg, task, cap)
        choice = task.choose_max_length(data.train, tokenizer, cfg, cap)
        data_update["max_length"] = choice.value
        record["max_length"] = {"setting": "auto", **choice.record()}
        longer = f"; longer: {choice.longer} of {choice.examples}" if choice.longer is not None else ""
        notes.append(f"data.max_length: auto -> {choice.value}: {choice.rule}{longer}")
    else:
        record["max_length"] = {"setting": d.max_length, "value": d.max_length}
    if t.lr is None:
        train_update["lr"] = strategies.DEFAULT_LR[cfg.strategy.name]
        notes.append(f"train.lr: {train_update['lr']:g} (the default for strategy {cfg.strategy.name})")
    record["lr"] = {"setting": t.lr, "value": train_update.get("lr", t.lr)}
    cfg = cfg.model_copy(update={"data": d.model_copy(update=data_update), "train": t.model_copy(update=train_update)})
    return cfg, record, notes


def _data_record(cfg: RunConfig, data: Any, truncated: dict[str, int], resolved: dict[str, Any]) -> dict[str, Any]:
    files = data_files(cfg.data)
    parts = {name: n.parts() for name, n in truncated.items() if hasattr(n, "parts")}
    return {
        "files": {k: {"path": str(Path(v).resolve()), "sha256": file_sha256(v)} for k, v in files.items()},
        "examples": {
            "train": len(data.train),
            "validation": len(data.validation),
            "test": len(data.test) if data.test is not None else 0,
        },
        "labels": data.labels,
        "truncated_to_max_length": truncated,
        **({"truncation": parts} if parts else {}),  # how they were cut, where the task tells
        "resolved": resolved,  # data.max_length: auto and train.lr: null, as chosen
        "notes": data.notes,
        "prep": data.prep,
    }


def seeded_sample(n: int, k: int, seed: int) -> list[int]:
    """At most k of the indices 0..n-1, drawn with `seed`, in order."""
    import random

    return list(range(n)) if n <= k else sorted(random.Random(seed).sample(range(n), k))


def train(
    config: RunConfig | str | dict[str, Any],
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_evaluate: EvalCallback | None = None,
    progress: bool = True,
    train_sample_rows: int = 0,
    data: Any = None,
    stoppable: bool = True,
) -> RunResult:
    """Fine-tune as the config says; write the run folder; return the final metrics.
    `train_sample_rows`: also score the final model, like validation, on a seeded sample of at most
    this many training examples (metrics["train_sample"]: the gap to validation shows overfitting).
    `data`: what the task's load_data read for this config, when the caller has read it already.
    `stoppable`: a stop.request in the run folder or SIGTERM stops the run cleanly at a checkpoint
    and raises RunStopped (lmtune/training/stopping.py); False for the runs of a search or a
    comparison, which are stopped as a whole."""
    cfg = as_config(config)
    with cpu_threads(cfg.train.threads):
        return _run(cfg, data, resume=resume, overwrite=overwrite, on_evaluate=on_evaluate, progress=progress,
                    train_sample_rows=train_sample_rows, stoppable=stoppable)


@dataclass
class RunState:
    """The run as its phases build it, one after another (see `_run`): what the loop and the final
    evaluation work on. Each phase fills in its part."""

    cfg: RunConfig
    task: Any
    run: RunDir
    data: Any
    tokenizer: Any
    model_path: Path
    accelerator: Any
    resume: bool  # the run folder's answer: a checkpoint to go on from
    new_folder: bool = False  # (the run folder was empty or made anew: a run refused for memory removes it)
    resolved: dict[str, Any] = field(default_factory=dict)  # strategy, data.max_length and train.lr as chosen
    # prepare_data: the tokenized splits, their lengths and how many inputs were truncated
    features: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    lengths: dict[str, list[int]] = field(default_factory=dict)
    truncated: dict[str, Any] = field(default_factory=dict)
    # build_model: the model, its attention kernel, the strategy's plan (groups, update), the speed-ups
    attention: str = "sdpa"
    model: Any = None
    strategy: strategies.Plan | None = None
    speed: SpeedUps | None = None
    memory: memory_plan.MemoryPlan | None = None  # check_memory
    # build_optimizer_and_loaders
    optimizer: Any = None
    clip: Callable[[float], Any] | None = None
    train_sampler: EpochBatchSampler | None = None
    train_loader: Any = None
    loaders: dict[str, Any] = field(default_factory=dict)  # the evaluation loaders by split
    evaluation: Evaluation | None = None
    # find_position, build_schedule
    loop: LoopState = field(default_factory=LoopState)
    steps_per_epoch: int = 0
    total_steps: int = 0
    checkpoint: Path | None = None  # the checkpoint a resumed run goes on from
    stop: stopping.StopWatch | None = None  # whether the run has been asked to stop (stop.request, SIGTERM)
    compiled: bool = False
    scheduler: Any = None

    @property
    def fsdp(self) -> bool:
        return self.cfg.train.distributed == "fsdp"


def _run(cfg: RunConfig, data: Any, *, resume: bool, overwrite: bool, on_evaluate: EvalCallback | None,
         progress: bool, train_sample_rows: int, stoppable: bool) -> RunResult:
    """The run itself (see train): its phases, the loop, the final evaluation; process.json in the
    folder meanwhile, failed.json if it fails (lmtune/training/stopping.py)."""
    started = time.perf_counter()
    s = open_run(cfg, data, resume=resume, overwrite=overwrite)
    with stopping.running(s.run, s.accelerator, s.cfg.train.log_steps, stoppable) as s.stop:
        prepare_data(s, train_sample_rows)
        build_model(s)
        check_memory(s)
        build_optimizer_and_loaders(s)
        find_position(s)
        build_schedule(s)
        restore(s)
        log_start(s)
        setup_seconds = time.perf_counter() - started
        with s.speed.heap():  # (no page faults for each step's large tensors)
            with PeakMemory(s.accelerator.device) as peak:
                stopped_early = fit(s, on_evaluate, progress)
            return finish(s.cfg, s.task, s.data, s.run, s.accelerator, s.model, s.tokenizer, s.loaders, s.loop,
                          stopped_early, peak.megabytes, progress=progress, evaluation=s.evaluation,
                          setup_seconds=setup_seconds, memory_record=s.memory.record())


def open_run(cfg: RunConfig, data: Any, *, resume: bool, overwrite: bool) -> RunState:
    """Read and check all data before anything is written or loaded; resolve the config's automatic
    choices; make the accelerator; start (or reopen) the run folder; seed."""
    from accelerate.utils import set_seed

    task = get_task(cfg.task)
    run = RunDir(cfg.output_dir or "runs/run")
    tracking.check_installed(cfg.train.report_to)
    data = task.load_data(cfg) if data is None else data
    model_path = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(model_path)
    cfg, resolved, resolved_notes = resolve_defaults(cfg, task, data, tokenizer)  # before config.yaml is written
    cfg.model_chain = models.chain(cfg.model) or None  # an earlier run's model: where it came from
    t = cfg.train
    accelerator = make_accelerator(t.precision, **tracking.accelerator_options(t.report_to, run.path))
    new_folder = False
    if accelerator.is_main_process:
        new_folder = overwrite or not (run.path.is_dir() and any(run.path.iterdir()))
        resume = run.start(cfg.to_yaml(), resume=resume, overwrite=overwrite)
    resume = collectives.main_decides(accelerator, resume)  # the run folder's answer, for every process
    for note in [models.source_note(cfg.model), *resolved_notes]:  # (only now: a refused run folder prints its error alone)
        if note:
            log(note)
    if t.precision == "auto" and accelerator.mixed_precision == "no":
        log(f"train.precision: auto -> fp32: {fp32_reason()}")
    if accelerator.device.type == "cpu" and accelerator.is_main_process:
        busy = busy_cpu_note(other_cpu_load(), os.cpu_count() or 1, torch.get_num_threads())
        if busy:
            log(busy)
    set_seed(t.seed)
    return RunState(cfg, task, run, data, tokenizer, model_path, accelerator, resume, new_folder, resolved)


def prepare_data(s: RunState, train_sample_rows: int) -> None:
    """Tokenize the splits (and the training sample that every evaluation scores); write data.json,
    dropped.jsonl and run.json."""
    cfg, data, task = s.cfg, s.data, s.task
    splits = {"train": data.train, "validation": data.validation}
    if data.test is not None:
        splits["test"] = data.test
    for name, table in splits.items():
        s.features[name], s.truncated[name] = task.prepare(table, s.tokenizer, cfg, data.labels)
        if s.truncated[name]:
            how = s.truncated[name].describe() if hasattr(s.truncated[name], "describe") else ""
            log(f"{name}: {s.truncated[name]} of {len(table)} inputs longer than data.max_length={cfg.data.max_length} "
                f"were truncated" + (f": {how}" if how else ""))
    # the training sample, scored at every evaluation beside validation: at most as many rows as
    # validation (the two are compared, and it must not cost more than validation does)
    sample_rows = train_sample_rows or min(cfg.eval.train_sample, len(data.validation))
    if sample_rows:  # (not in the data record: these examples are in the train split already)
        sample = data.train.subset(seeded_sample(len(data.train), sample_rows, cfg.train.seed))
        s.features["train_sample"], _ = task.prepare(sample, s.tokenizer, cfg, data.labels)
    for note in data.notes:
        log(note)
    if s.accelerator.is_main_process:
        write_run_records(s)
    s.lengths = {name: [len(f["input_ids"]) for f in feats] for name, feats in s.features.items()}


def write_run_records(s: RunState) -> None:
    """data.json (files, their hashes, what was chosen), dropped.jsonl and run.json (the versions)."""
    run, data, accelerator = s.run, s.data, s.accelerator
    write_json_atomic(run.path / "data.json", _data_record(s.cfg, data, s.truncated, s.resolved))
    if data.dropped:
        write_text_atomic(run.path / "dropped.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in data.dropped))
    write_json_atomic(run.path / "run.json", {
        "model": s.cfg.model,
        "model_path": str(s.model_path),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "accelerate": __import__("accelerate").__version__,
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    })


def build_model(s: RunState) -> None:
    """The task's model with its attention kernel, gradient checkpointing, the strategy (what trains,
    at which learning rates) and the speed-ups (lmtune/training/cpu)."""
    cfg, t = s.cfg, s.cfg.train
    s.attention = choose_attention(t.attention, s.accelerator.device.type, s.lengths["train"], s.task.EAGER_MAX_LENGTH)
    model = s.task.build_model(s.model_path, cfg, s.data.labels, attn_implementation=s.attention)
    if t.gradient_checkpointing is True:
        enable_checkpointing(model)
    s.strategy = strategies.apply(model, cfg.strategy, t.lr, t.weight_decay)
    s.model = s.strategy.model
    s.speed = speed_ups(s.model, s.accelerator)
    if models.is_adapter(s.model):
        # the saved adapter names its base as the config does (smollm2-135m), not by a folder of this
        # machine such as the GGUF cache, so that the run folder loads on another machine too
        for adapter in s.model.peft_config.values():
            adapter.base_model_name_or_path = cfg.model
    log(f"model {cfg.model}; strategy {cfg.strategy.name}: {strategies.describe(s.model, s.strategy.groups)}")


def enable_checkpointing(model: Any) -> None:
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise LmtuneError(f"train.gradient_checkpointing: {type(model).__name__} does not support it")
    # non-reentrant: also right for frozen embeddings (partial, LoRA) and under DDP
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def check_memory(s: RunState) -> None:
    """The memory plan (lmtune/training/memory_plan.py): the micro-batch, the evaluation batch and
    gradient checkpointing that fit train.memory_limit, logged with the estimate by part; a run that
    cannot fit stops here (before anything trains: nothing is lost; a run folder made for it is
    removed)."""
    t, accelerator, main = s.cfg.train, s.accelerator, s.accelerator.is_main_process
    s.memory = memory_plan.plan_memory(s.cfg, s.model, accelerator, s.attention, max(s.lengths["train"]),
                                       s.task.sequences_per_example)
    for note in s.memory.notes:
        log(note)
    problem = memory_plan.memory_problem(s.memory, t) if main else None
    refuse = problem is not None and (t.memory_guard or problem.startswith("train.memory_limit"))
    if collectives.main_decides(accelerator, refuse):
        if main and s.new_folder and not s.resume:
            shutil.rmtree(s.run.path, ignore_errors=True)
        raise LmtuneError(problem or "memory: the run does not fit this machine (the first process says why)")
    if s.memory.checkpointing and t.gradient_checkpointing == "auto":
        enable_checkpointing(accelerator.unwrap_model(s.model))
    for line in s.memory.lines():
        log(line)


def build_optimizer_and_loaders(s: RunState) -> None:
    """FSDP's shards, the optimizer, the batch samplers and loaders of every split (and the general
    text's), the evaluation, and the model and optimizer prepared by accelerate."""
    t, accelerator, model = s.cfg.train, s.accelerator, s.model
    groups = s.strategy.groups
    if s.fsdp:  # torch's FSDP shards the model itself; accelerate keeps the rest (RNG, scheduler, gathering)
        model.to(accelerator.device)
        if accelerator.num_processes > 1:
            groups = sharding.shard(model, groups)
    fused = {"fused": True} if accelerator.device.type in ("cpu", "cuda") else {}
    optimizer = torch.optim.AdamW(groups, lr=t.lr, **fused)
    s.clip = s.speed.gradient_clipping(optimizer)
    collate = s.task.collator(s.tokenizer, s.cfg, model)
    # The samplers split every (global) batch between the processes themselves: accelerate's own
    # sharding of a batch sampler assumes that only the last batch is short, and with shuffled,
    # length-grouped batches it would repeat some and drop others.
    shard = {"num_replicas": accelerator.num_processes, "rank": accelerator.process_index}
    s.train_sampler = EpochBatchSampler(s.lengths["train"], t.batch_size, seed=t.seed, group_by_length=t.group_by_length, **shard)

    def eval_loader(features: list[dict[str, Any]]) -> torch.utils.data.DataLoader:
        # (sharded: every process must run every forward, so a process without examples repeats one)
        lengths = [len(f["input_ids"]) for f in features]
        sampler = EpochBatchSampler(lengths, s.memory.eval_batch, seed=t.seed, shuffle=False,
                                    pad_empty=s.fsdp, **shard)
        return _loader(features, sampler, collate)

    s.loaders = {name: eval_loader(s.features[name]) for name in s.features if name != "train"}
    s.train_loader = _loader(s.features["train"], s.train_sampler, MicroBatches(collate, s.memory.micro_batch))
    general = general_text_features(s.task, s.tokenizer, s.cfg)
    general_loader = None if general is None else eval_loader(general)
    s.evaluation = Evaluation(s.loaders["validation"], s.loaders.get("train_sample"), general_loader)
    if not s.fsdp:
        model, optimizer = accelerator.prepare(model, optimizer)
    s.model, s.optimizer = model, optimizer
    if models.is_adapter(accelerator.unwrap_model(model)):  # checkpoints without the frozen base model
        adapter_checkpoint.leave_out_frozen_base(accelerator)


def find_position(s: RunState) -> None:
    """Where the loop starts and how many steps it takes: a new run from the start; a resumed one where
    its last checkpoint stopped (with another number of processes: the rest of the epoch batched
    afresh, without what was seen, and the steps still to come counted with the new global batch)."""
    t, processes = s.cfg.train, s.accelerator.num_processes
    s.steps_per_epoch = math.ceil(len(s.train_loader) / t.gradient_accumulation_steps)
    s.total_steps = t.max_steps or t.epochs * s.steps_per_epoch
    s.loop = LoopState(processes=processes)
    if not s.resume:
        return
    s.checkpoint = ckpt = s.run.last_checkpoint()
    state = s.loop = LoopState(**json.loads((ckpt / "loop_state.json").read_text()))
    changed = state.processes != processes
    if changed and state.batches_in_epoch:  # the rest of the epoch is batched afresh, without what was seen
        state.earlier_in_epoch.append([state.processes, state.batches_in_epoch])
        state.batches_in_epoch = 0
    if state.earlier_in_epoch:
        s.train_sampler.skip(state.epoch, examples_seen(
            s.lengths["train"], t.batch_size, seed=t.seed, group_by_length=t.group_by_length,
            epoch=state.epoch, segments=state.earlier_in_epoch))
    if changed:
        if not t.max_steps:  # the steps still to come, counted with the new global batch
            s.train_sampler.use_epoch(state.epoch)
            rest = math.ceil(len(s.train_sampler) / t.gradient_accumulation_steps)
            s.total_steps = state.step + rest + (t.epochs - state.epoch - 1) * s.steps_per_epoch
        log(f"{ckpt} was written by {state.processes} process(es), going on with {processes}: "
            f"global batch {t.batch_size * t.gradient_accumulation_steps * processes}, "
            f"{s.total_steps} steps in all")
    state.processes = processes


def build_schedule(s: RunState) -> None:
    """Compiled blocks (train.compile) and the learning-rate schedule over the run's steps."""
    from transformers import get_scheduler

    t, fsdp, total_steps = s.cfg.train, s.fsdp, s.total_steps
    s.compiled = compiles(t, s.task, total_steps, s.memory.micro_batch, fsdp)
    if s.compiled:
        compile_blocks(s.accelerator.unwrap_model(s.model))
    s.scheduler = get_scheduler(
        "constant_with_warmup" if t.scheduler == "constant" else t.scheduler,
        s.optimizer,
        num_warmup_steps=round(t.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    s.accelerator.register_for_checkpointing(s.scheduler)


def restore(s: RunState) -> None:
    """A resumed run loads its checkpoint (model, optimizer, scheduler, RNG) and cuts the history
    back to it; a new one starts its history. Then the trackers start, and eval.forgetting measures
    the base model's perplexity on the general text."""
    main, state = s.accelerator.is_main_process, s.loop
    if s.resume:
        s.accelerator.load_state(str(s.checkpoint))
        if s.fsdp:
            sharding.load_shards(s.checkpoint, s.model, s.optimizer)
        if main:
            s.run.truncate_history(state.history_lines)
        log(f"resumed from {s.checkpoint} at step {state.step} (epoch {state.epoch + 1}, batch {state.batches_in_epoch})")
    elif main:
        s.run.history.unlink(missing_ok=True)
    # (after a resume, TensorBoard forgets what the stopped run logged past its checkpoint, as the history does)
    tracking.start(s.accelerator, s.cfg, s.run.path.name, resumed_at=state.step if s.resume else None)
    if s.evaluation.general_text is not None and state.base_perplexity is None and not s.resume:
        state.base_perplexity = s.evaluation.perplexity(s.task, s.model, s.accelerator, s.cfg)
        log(f"eval.forgetting: the base model's perplexity on the general text is {state.base_perplexity:.2f}")


def log_start(s: RunState) -> None:
    """One line of what trains where: processes, precision, attention, examples, batch and steps."""
    t, accelerator = s.cfg.train, s.accelerator
    threads = torch.get_num_threads()
    cpu_threads_each = f" ({threads} thread{'s' if threads > 1 else ''} each)" if accelerator.device.type == "cpu" else ""
    log(
        f"training on {accelerator.num_processes} x {accelerator.device.type}{cpu_threads_each}"
        f"{' (FSDP: parameters, gradients and optimizer state sharded)' if s.fsdp and accelerator.num_processes > 1 else ''}, precision "
        f"{'fp32' if accelerator.mixed_precision == 'no' else accelerator.mixed_precision}, {s.attention} attention{', compiled blocks' if s.compiled else ''}: "
        f"{len(s.features['train'])} examples, global batch "
        f"{t.batch_size * t.gradient_accumulation_steps * accelerator.num_processes}, {s.total_steps} steps"
    )


def fit(s: RunState, on_evaluate: EvalCallback | None = None, progress: bool = True) -> bool:
    """The loop. Returns True when early stopping (or a callback) ended it; raises RunStopped when
    the run was asked to stop (its checkpoint written at that step)."""
    from accelerate.utils import send_to_device

    t, state, model, accelerator = s.cfg.train, s.loop, s.model, s.accelerator
    # a model that accelerate prepared autocasts itself; an FSDP one (not prepared) is autocast here
    autocast = accelerator.autocast if s.fsdp else contextlib.nullcontext
    meter = StepMeter(s, progress)
    trim_limit = max(s.memory.peak, s.memory.budget)  # the heap handed back between steps above the budget (cpu/heap.py)
    model.train()
    s.strategy.update(state.step, state.epoch)  # a resumed run: what trained at the checkpoint
    for epoch in range(state.epoch, t.epochs if not t.max_steps else 10**9):
        if state.step >= s.total_steps:
            break
        loader, n_micro = epoch_batches(s, epoch)
        meter.tick = time.perf_counter()
        for micro, parts in enumerate(loader, start=state.batches_in_epoch):
            sync = (micro + 1) % t.gradient_accumulation_steps == 0 or micro + 1 == n_micro
            while True:  # once; again in smaller micro-batches where the GPU ran out of memory
                try:
                    parts, weights, n, n_tokens = weigh_parts(s.task, [send_to_device(p, accelerator.device) for p in parts])
                    batch_loss = 0.0
                    for k, (part, weight) in enumerate(zip(parts, weights)):
                        with gradient_sync(s, sync and k == len(parts) - 1):
                            with autocast():
                                loss = s.task.training_loss(model, part, s.cfg) if s.task.training_loss else model(**part).loss
                            accelerator.backward(loss * weight / t.gradient_accumulation_steps)
                        batch_loss += loss.item() * weight
                    break
                except torch.OutOfMemoryError:
                    pass  # (handled below: out here, the exception and the failed pass's tensors it holds are gone)
                # a loss whose backward failed still holds the whole pass's activations
                loss = part = parts = None  # type: ignore[assignment]
                parts = smaller_micro_batches(s, micro)
            meter.add(batch_loss, n * accelerator.num_processes, n_tokens * accelerator.num_processes)
            if not sync:
                continue
            if t.max_grad_norm:
                s.clip(t.max_grad_norm)
            s.optimizer.step()
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
            s.speed.trim_heap(trim_limit)
            state.step += 1
            state.batches_in_epoch = micro + 1
            meter.stepped()
            position = round(epoch + (micro + 1) / n_micro, 4)  # (epochs, as the history records them)
            if state.step % t.log_steps == 0 or state.step == s.total_steps:
                meter.log_step(position)
            end_of_epoch, last = micro + 1 == n_micro, state.step >= s.total_steps
            due = state.step % t.eval_steps == 0 if t.eval_steps else end_of_epoch
            if end_of_epoch:  # (before the checkpoint: it goes on with the next epoch)
                state.next_epoch(epoch)
            stop = evaluate_and_save(s, meter, position, on_evaluate) if due or last else False
            changed = s.strategy.update(state.step, state.epoch)
            if changed:
                log(f"step {state.step}: {changed}")
            if stop or last:
                meter.close()
                return stop
            if s.stop is not None and s.stop.requested(state.step):
                meter.close()
                raise stop_here(s, position, saved=due)
        state.next_epoch(epoch)
    meter.close()
    return False


def smaller_micro_batches(s: RunState, micro: int) -> list[dict[str, Any]]:
    """After a forward or backward of batch `micro` ran out of GPU memory: the step's gradients so far
    are dropped and the batch comes back split into micro-batches of half the size, which the rest of
    the run keeps (metrics.json reports the size in use at the end). Where the step cannot be redone
    so, one line says what to set instead."""
    t, step = s.cfg.train, s.loop.step + 1
    collate: MicroBatches = s.train_loader.collate_fn
    current = min(collate.size, len(collate.last_features))
    size = -(-current // 2)
    settings = [f"train.micro_batch_size: {size}"] if current > 1 else []
    if not s.memory.checkpointing:
        settings.append("train.gradient_checkpointing: true")
    settings.append("a shorter data.max_length")
    why = None
    if s.accelerator.num_processes > 1:
        # every process would have to split its batches alike at the same step, and none knows of the others' failure
        why = f"in one of {s.accelerator.num_processes} processes"
    elif current <= 1:
        why = "with micro-batches of 1 example"
    elif micro % t.gradient_accumulation_steps:
        # the batches before it in this optimizer step have gone by: their gradients cannot be had again
        why = (f"in batch {micro % t.gradient_accumulation_steps + 1} of the {t.gradient_accumulation_steps} "
               f"accumulated for the step")
    if why is not None:
        raise LmtuneError(f"step {step}: out of memory {why}; set {', or '.join(settings)}")
    s.optimizer.zero_grad(set_to_none=True)
    if torch.cuda.is_available():  # (what the failed pass held goes back to the GPU)
        torch.cuda.empty_cache()
    collate.size = size
    s.memory.micro_batch = size
    s.memory.estimate = s.memory.estimate_for(size, s.memory.checkpointing)
    log(f"step {step}: out of memory with micro-batches of {current}; going on from the same step with "
        f"micro-batches of {size} (each batch of {t.batch_size} in {-(-t.batch_size // size)})")
    return collate.split(collate.last_features)


def epoch_batches(s: RunState, epoch: int) -> tuple[Any, int]:
    """The epoch's micro-batches (a resumed run's first epoch: those not trained on yet) and how many
    the whole epoch has."""
    s.train_sampler.use_epoch(epoch)
    s.loop.epoch = epoch
    done = s.loop.batches_in_epoch
    loader = s.accelerator.skip_first_batches(s.train_loader, done) if done else s.train_loader
    return loader, len(s.train_loader)


def gradient_sync(s: RunState, last: bool) -> contextlib.AbstractContextManager[Any]:
    """The processes reduce the gradients at the last micro-batch of a step only (DDP: no_sync before
    it; FSDP: reduce-scatter then)."""
    if sharding.is_sharded(s.model):
        s.model.set_requires_gradient_sync(last)
    return s.accelerator.no_sync(s.model) if not last else contextlib.nullcontext()


class StepMeter:
    """The side work of each step: its time, the progress bar, and the history record and log line
    of every train.log_steps-th step (the loss and throughput since the last one)."""

    def __init__(self, s: RunState, progress: bool) -> None:
        from tqdm.auto import tqdm

        self.s, self.progress = s, progress
        self.main = s.accelerator.is_main_process
        # tqdm's own "remaining" counts steps only; the postfix's ETA counts the evaluations too
        self.bar = tqdm(total=s.total_steps, initial=s.loop.step, disable=not (self.main and progress), unit="step",
                        dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        self.restart_window()
        self.tick = self.now = self.window_start
        self.first_step = s.loop.step + 1  # (its time holds compiling and warming up: not a typical step)
        self.step_time, self.steps_timed, self.step_tokens = 0.0, 0, 0
        self.eval_time, self.evals = 0.0, 0
        self.eta_logged = False

    def restart_window(self) -> None:
        self.loss, self.batches, self.samples, self.tokens = 0.0, 0, 0, 0
        self.window_start = time.perf_counter()

    def add(self, loss: float, samples: int, tokens: int) -> None:
        """A batch trained on (its examples and tokens over all processes)."""
        self.loss += loss
        self.batches += 1
        self.samples += samples
        self.tokens += tokens
        self.s.loop.train_samples += samples
        self.s.loop.train_tokens += tokens

    def stepped(self) -> None:
        """An optimizer step done: its time counts as training."""
        self.now = time.perf_counter()
        self.s.loop.train_seconds += self.now - self.tick
        if self.s.loop.step > self.first_step:
            self.step_time += self.now - self.tick
            self.steps_timed += 1
        self.tick = self.now
        eta = self.eta()
        if eta is not None:
            self.bar.set_postfix_str(f"ETA {eta_text(eta[0])} with {eta[1]} evaluation{'s' if eta[1] != 1 else ''}", refresh=False)
            if not self.eta_logged and self.steps_timed >= 2 and self.main:
                self.eta_logged = True
                step = self.step_time / self.steps_timed
                log(f"time: about {eta_text(eta[0])} to go: {self.s.total_steps - self.s.loop.step} steps of about "
                    f"{step:.1f} s and {eta[1]} evaluation{'s' if eta[1] != 1 else ''} (measured on the steps so far)")
        self.bar.update(1)

    def eta(self) -> tuple[float, int] | None:
        """Seconds to the end of the run (the steps left at the mean time of those timed, the evaluations
        left at the mean time of those done, or before the first at a third of a training pass per
        position, and the final evaluation), and the evaluations left; None before two steps are timed."""
        s, t = self.s, self.s.cfg.train
        if self.steps_timed < 1:
            return None
        step = self.step_time / self.steps_timed
        left = s.total_steps - s.loop.step
        every = t.eval_steps or s.steps_per_epoch or 1
        evals = sum(1 for k in range(s.loop.step + 1, s.total_steps + 1) if k % every == 0 or k == s.total_steps)
        if self.evals:
            one_eval = self.eval_time / self.evals
        else:
            positions = sum(s.lengths.get("validation", [])) + sum(s.lengths.get("train_sample", []))
            trained = max(1, s.loop.train_tokens)
            one_eval = s.loop.train_seconds / trained * positions / EVAL_COST_RATIO
        return left * step + (evals + 1) * one_eval, evals

    def record(self, record: dict[str, Any]) -> None:
        """A line of the history (and the trackers'), from the first process."""
        if self.main:
            self.s.run.append_history(record)
            self.s.loop.history_lines += 1
            tracking.log(self.s.accelerator, record)

    def log_step(self, epoch: float) -> None:
        s = self.s
        elapsed = max(self.now - self.window_start, 1e-9)
        record = {
            "step": s.loop.step,
            "epoch": epoch,
            "loss": round(collectives.mean(s.accelerator, self.loss / self.batches), 6),
            "lr": s.scheduler.get_last_lr()[0],
            "lrs": group_lrs(s.optimizer, s.scheduler),
            "samples_per_second": round(self.samples / elapsed, 2),
            "tokens_per_second": round(self.tokens / elapsed, 1),
        }
        self.record(record)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{record['samples_per_second']:.1f}")
        if not self.progress:  # no bar: the same numbers as a line
            eta = self.eta()
            log(step_line(record, s.total_steps) + (f", ETA {eta_text(eta[0])}" if eta and s.loop.step < s.total_steps else ""))
        self.restart_window()

    def paused(self) -> None:
        """Evaluation and saving since the step are not training time."""
        self.eval_time += time.perf_counter() - self.now
        self.evals += 1
        self.s.loop.eval_seconds += time.perf_counter() - self.now
        self.tick = time.perf_counter()
        self.window_start += self.tick - self.now  # the window's rate counts training time only

    def close(self) -> None:
        self.bar.close()


def evaluate_and_save(s: RunState, meter: StepMeter, position: float, on_evaluate: EvalCallback | None) -> bool:
    """An evaluation: the best model saved when it improved, the record and line logged, early
    stopping decided, the checkpoint written. Returns whether the run stops here."""
    state, t = s.loop, s.cfg.train
    metrics, more = s.evaluation.run(s.task, s.model, s.accelerator, s.data.labels, s.cfg, state)
    improved = keep_if_best(s, metrics)
    shown = brief(metrics)
    meter.record({"step": state.step, "epoch": position, "eval": shown, **more})
    log(eval_line(state.step, t.metric, shown, more, improved))
    stop = False
    if t.early_stopping_patience and state.bad_evals >= t.early_stopping_patience:
        log(f"early stopping: no better {t.metric} in {state.bad_evals} evaluations")
        stop = True
    if on_evaluate is not None and on_evaluate(state.step, metrics):
        stop = True
    # every process stops, or none: the first process's callback decides (a search's pruner lives there)
    stop = collectives.main_decides(s.accelerator, stop)
    save_checkpoint(s.accelerator, s.run, state, (s.model, s.optimizer) if s.fsdp else None)
    meter.paused()
    return stop


def stop_here(s: RunState, position: float, saved: bool) -> RunStopped:
    """A stop asked for after this step: the checkpoint at it (unless the step's evaluation has just
    written it), stopped.json and the line that says how to go on; the exception to raise."""
    state = s.loop
    if not saved:
        save_checkpoint(s.accelerator, s.run, state, (s.model, s.optimizer) if s.fsdp else None)
    if s.accelerator.is_main_process:
        s.run.write_stopped(state.step, s.total_steps, position)
    message = f"stopped at step {state.step} of {s.total_steps}: continue with lmtune train {s.run.path} --resume"
    log(message)
    return RunStopped(message, state.step)


def keep_if_best(s: RunState, metrics: dict[str, Any]) -> bool:
    """Whether the evaluation beat the best so far (then its model is saved as run.best); counts the
    evaluations without improvement for early stopping."""
    state, metric = s.loop, s.cfg.train.metric
    value = metrics[metric]
    improved = is_better(value, metrics.get("loss"), state.best_metric, state.best_loss, s.task.GREATER_IS_BETTER[metric])
    if improved:
        state.best_metric, state.best_loss, state.best_step = value, metrics.get("loss"), state.step
        state.bad_evals = 0
        save_model(s.accelerator, s.model, s.run.best)
    else:
        state.bad_evals += 1
    return improved


def weigh_parts(task: Any, parts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[float], int, int]:
    """The micro-batches of one batch that have something to learn, each with its share of the
    batch's loss items (their weighted losses add up to the whole batch's mean loss, and so do their
    gradients); and the batch's examples and real tokens."""
    examples = sum(int(p["input_ids"].shape[0]) for p in parts) // task.sequences_per_example
    tokens = sum(int(p.pop("num_tokens")) if "num_tokens" in p else int(p["attention_mask"].sum()) for p in parts)
    if len(parts) == 1:
        return parts, [1.0], examples, tokens
    items = [task.loss_items(p) for p in parts]
    total = sum(items)
    if not total:  # (nothing labelled at all: each part as it is)
        return parts, [1.0 / len(parts)] * len(parts), examples, tokens
    kept = [(p, i / total) for p, i in zip(parts, items) if i]
    return [p for p, _ in kept], [w for _, w in kept], examples, tokens


def eval_line(step: int, metric: str, shown: dict[str, Any], more: dict[str, Any], improved: bool) -> str:
    """An evaluation as one line: the headline metrics, the training sample's value of the run's
    metric beside them, and the general text's perplexity change."""
    headline = dict.fromkeys([metric, "accuracy", "f1_macro", "loss"])
    line = f"step {step} eval: " + ", ".join(f"{k} {shown[k]:.4f}" for k in headline if k in shown)
    on_train = more.get("train_eval", {}).get(metric)
    if isinstance(on_train, (int, float)):
        line += f" (training sample: {metric} {on_train:.4f})"
    if "forgetting" in more:
        line += f"; general text perplexity {more['forgetting']['change']:+.0%}"
    return line + (" (best)" if improved else "")


def group_lrs(optimizer: Any, scheduler: Any) -> dict[str, float]:
    """The learning rate of each parameter group by its name (the strategy's: layers, head, their
    no-decay twins), so that a report can draw adaptive and gradual strategies layer by layer."""
    return {group.get("name", f"group{i}"): lr for i, (group, lr) in enumerate(zip(optimizer.param_groups, scheduler.get_last_lr()))}


def step_line(record: dict[str, Any], total_steps: int) -> str:
    """A logged step as one line (what the progress bar shows, for runs without it)."""
    return (f"step {record['step']}/{total_steps}: loss {record['loss']:.4f}, lr {record['lr']:.2e}, "
            f"{record['samples_per_second']:.1f} samples/s, {record['tokens_per_second']:.0f} tokens/s")


def save_model(accelerator: Any, model: Any, target: Path, tokenizer: Any = None) -> None:
    """Save a loadable model folder atomically (only the main process writes)."""
    accelerator.wait_for_everyone()
    state_dict = sharding.full_state_dict(model) if sharding.is_sharded(model) else accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        # LoRA never changes the embeddings; peft's "auto" would look the base up by its name to
        # compare vocabularies, on the Hugging Face Hub for a short name such as smollm2-135m
        extra = {"save_embedding_layers": False} if models.is_adapter(unwrapped) else {}
        unwrapped.save_pretrained(tmp, state_dict=state_dict, **extra)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_dir_atomic(tmp, target)
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator: Any, run: RunDir, state: LoopState, shards: tuple[Any, Any] | None = None) -> None:
    """Full training state (model, optimizer, scheduler, RNG) plus the loop position, atomically.
    With `shards` (model, optimizer of an FSDP run), those two go to torch.distributed.checkpoint;
    of an adapter model, only what trains is saved (lmtune/training/adapter_checkpoint.py)."""
    tmp = run.last.with_name("last.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if shards is not None:
        sharding.save_shards(tmp, *shards)
    # every process has written its part (its random state, its shards) before the folder is renamed
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "loop_state.json").write_text(json.dumps(state.__dict__) + "\n")
        replace_dir_atomic(tmp, run.last)
    accelerator.wait_for_everyone()


def finish(
    cfg: RunConfig,
    task: Any,
    data: Any,
    run: RunDir,
    accelerator: Any,
    model: Any,
    tokenizer: Any,
    loaders: dict[str, Any],
    state: LoopState,
    stopped_early: bool,
    peak_megabytes: float | None = None,
    *,
    progress: bool = True,
    evaluation: Evaluation | None = None,
    setup_seconds: float | None = None,
    memory_record: dict[str, Any] | None = None,
) -> RunResult:
    """Put the best model in model/, evaluate it on validation and test (and the training sample),
    write metrics.json with the diagnosis and validation_samples.jsonl (report.html is the caller's:
    lmtune.report.report_run).
    `progress`: a progress bar for long work here (the generation pass of a causal LM)."""
    started = time.perf_counter()
    # the model in memory is the best one when the best evaluation was the latest (the usual end of a
    # run whose validation still improved): neither its weights nor its outputs need computing again
    current = evaluation is not None and state.best_step is not None and evaluation.outputs_step == state.best_step
    if run.best.is_dir() and not current:
        if sharding.is_sharded(model):
            sharding.load_folder(model, run.best)
        else:
            models.load_saved_weights(accelerator.unwrap_model(model), run.best)
    write_final_model(cfg, data, run, accelerator, model, tokenizer)
    metrics, samples = final_metrics(cfg, task, data, accelerator, model, loaders, evaluation.outputs if current else {})
    # generation runs the blocks eagerly: its growing KV cache would make compiled blocks recompile
    with accelerator.autocast(), torch.compiler.set_stance("force_eager"):
        extra = task.extra_metrics(accelerator.unwrap_model(model), tokenizer, data, cfg, log=log,
                                   progress=progress and accelerator.is_main_process)
    samples += extra.pop("samples", [])
    metrics["validation"].update(extra)
    if evaluation is not None and evaluation.general_text is not None and state.base_perplexity is not None:
        metrics["forgetting"] = (evaluation.general_result if current and evaluation.general_result is not None
                                 else evaluation.forgetting(task, model, accelerator, cfg, state.base_perplexity))
    metrics["train"] = train_record(state, model, stopped_early, peak_megabytes, memory_record, setup_seconds, started)
    history = []
    if accelerator.is_main_process:
        history = [json.loads(line) for line in run.history.read_text().splitlines() if line.strip()]
        metrics["diagnosis"] = run_diagnosis(cfg, task, history, metrics)
        write_text_atomic(run.path / "validation_samples.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in samples))
        write_json_atomic(run.metrics, metrics)
        run.prune_checkpoints(cfg.train.keep_checkpoints)  # only now: a run killed before metrics.json resumes

    tracking.end(accelerator)
    accelerator.wait_for_everyone()
    return RunResult(run.path, metrics, state.best_step, stopped_early, history)


def write_final_model(cfg: RunConfig, data: Any, run: RunDir, accelerator: Any, model: Any, tokenizer: Any) -> None:
    """model/: the weights, the tokenizer and lmtune.json (task, labels, model, attention kernel)."""
    save_model(accelerator, model, run.model, tokenizer)
    if accelerator.is_main_process:
        # the attention kernel too: eval and predict load the model with it, to give the run's own numbers
        attention = accelerator.unwrap_model(model).config._attn_implementation
        write_json_atomic(run.model / "lmtune.json", {"task": cfg.task, "labels": data.labels, "model": cfg.model,
                                                      "attention": attention,
                                                      "auto_model": get_task(cfg.task).AUTO_MODEL})


def final_metrics(cfg: RunConfig, task: Any, data: Any, accelerator: Any, model: Any, loaders: dict[str, Any],
                  reused: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The final model's metrics on every evaluation split (from the latest evaluation's outputs where
    they are its own: `reused`), and what it answered on validation, for the report."""
    metrics: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    for name, loader in loaders.items():
        outputs = reused[name] if name in reused else evaluate(task, model, loader, accelerator, cfg)
        metrics[name] = task.compute_metrics(outputs, data.labels, cfg, loader.dataset)
        if name == "validation":
            samples = task.validation_samples(outputs, data.labels, cfg, loader.dataset, data.validation)
    return metrics, samples


def train_record(state: LoopState, model: Any, stopped_early: bool, peak_megabytes: float | None,
                 memory_record: dict[str, Any] | None, setup_seconds: float | None, started: float) -> dict[str, Any]:
    """metrics.json's "train": steps, examples, tokens, throughput, best step, parameters, memory, time."""
    seconds = max(state.train_seconds, 1e-9)
    trainable, parameters = strategies.parameter_counts(model)
    return {
        "steps": state.step,
        "samples": state.train_samples,
        "tokens": state.train_tokens,
        "seconds": round(state.train_seconds, 2),
        "samples_per_second": round(state.train_samples / seconds, 2),
        "tokens_per_second": round(state.train_tokens / seconds, 1),
        "best_step": state.best_step,
        "stopped_early": stopped_early,
        # what trained by the end (gradual unfreezing: everything it unfroze), and the whole model
        "trainable_parameters": trainable,
        "parameters": parameters,
        "peak_memory_mb": peak_megabytes,  # GPU: allocated by torch; CPU: the process's resident set
        **(memory_record or {}),  # the micro-batch and the estimated peak beside the measured one
        # the time outside the training steps: reading, tokenizing and loading before the first step;
        # evaluations and checkpoints during the loop; the final model's evaluation (generation too)
        "setup_seconds": None if setup_seconds is None else round(setup_seconds, 2),
        "eval_seconds": round(state.eval_seconds, 2),
        "final_seconds": round(time.perf_counter() - started, 2),
    }


def run_diagnosis(cfg: RunConfig, task: Any, history: list[dict[str, Any]], metrics: dict[str, Any]) -> dict[str, Any]:
    """The overfitting diagnosis of the run (lmtune.training.diagnosis), logged line by line. The chance
    level of accuracy is the majority class's share of validation, where the task counts classes."""
    per_class = metrics["validation"].get("per_class") or {}
    supports = [row.get("support", 0) for row in per_class.values() if isinstance(row, dict)]
    chance = {"accuracy": max(supports) / sum(supports)} if supports and sum(supports) else {}
    metric = cfg.train.metric
    try:
        diagnosis = diagnose(history, metric, task.GREATER_IS_BETTER[metric], chance=chance,
                             config=cfg.model_dump(mode="json"))
    except Exception as exc:  # noqa: BLE001 (a diagnosis never fails a run that has succeeded)
        log(f"warning: no diagnosis: {type(exc).__name__}: {exc}")
        return {"verdict": "unknown", "error": f"{type(exc).__name__}: {exc}"}
    for line in lines(diagnosis):
        log(line)
    return diagnosis
