"""What the studio's run form needs: the config schema of a task as JSON (from the same pydantic
classes as `lmtune keys`), validation with `lmtune train`'s own messages, the plan as `lmtune plan`
prints it, and a preview of the first examples as the task reads them."""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from ..core import models
from ..core.config import STRATEGY_CLASSES, RunConfig
from ..core.errors import LmtuneError
from ..data.table import Table
from ..tasks import DEFAULT_TASK, TASKS, get_task
from ..tasks.run_config import reference, validate

_KEY = re.compile(r"^([A-Za-z_][\w.]*)(?::| applies to )")
_SCALARS = {bool: "bool", int: "int", float: "float", str: "str"}


def _members(annotation: Any) -> list[Any]:
    """The members of a union (Optional's None left out; an Annotated type read as what it annotates)."""
    while get_origin(annotation) is not None and hasattr(annotation, "__metadata__"):
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for a in get_args(annotation) if a is not type(None) for m in _members(a)]
    return [annotation]


def field_type(annotation: Any) -> tuple[str, list[Any] | None]:
    """(type, choices) of a config field for a form: a Literal is a choice; a number or flag that
    also takes a word (auto) is that type with the words as its choices; list[Literal] a list with choices."""
    members = _members(annotation)
    words = [v for m in members if get_origin(m) is Literal for v in get_args(m)]
    plain = [m for m in members if get_origin(m) is not Literal]
    if not plain:
        return "choice", words
    first = plain[0]
    if get_origin(first) is list or first is list:
        inner = [v for m in _members(get_args(first)[0]) if get_origin(m) is Literal for v in get_args(m)] \
            if get_args(first) else []
        return "list", inner or None
    if get_origin(first) is dict or first is dict or (isinstance(first, type) and issubclass(first, BaseModel)):
        return "dict", None
    kind = next((_SCALARS[m] for m in (bool, int, float, str) if m in plain), "str")
    return kind, words or None


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value if value is None or isinstance(value, (bool, int, float, str, list, dict)) else str(value)


def _strategy_fields() -> list[dict[str, Any]]:
    out = [{"key": "strategy.name", "section": "strategy", "type": "choice", "choices": list(STRATEGY_CLASSES),
            "default": "full", "required": False, "help": "how the model is fine-tuned", "strategy": None}]
    for sname, scls in STRATEGY_CLASSES.items():
        out += [f for f in _fields_of(scls, "strategy.", sname) if f["key"] != "strategy.name"]
    return out


def _fields_of(cls: type[BaseModel], prefix: str, strategy: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, f in cls.model_fields.items():
        key = prefix + name
        if key == "strategy":
            out += _strategy_fields()
            continue
        members = _members(f.annotation)
        sections = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if sections and len(sections) == len(members) and (f.is_required() or f.get_default() is not None):
            out += _fields_of(sections[0], key + ".", strategy)  # a section that is always there (train, data)
            continue
        kind, choices = field_type(f.annotation)
        out.append({"key": key, "section": key.split(".")[0], "type": kind, "choices": choices,
                    "default": None if f.is_required() else _json_default(f.get_default(call_default_factory=True)),
                    "required": f.is_required(), "help": f.description or "", "strategy": strategy})
        for section in sections:  # an optional section (data.clean) or another form (data.train.source): its keys
            out += [{**inner, "required": False} for inner in _fields_of(section, key + ".", strategy)]
    return out


# keys a run config holds that the form does not ask for: model_chain is written by lmtune, search is
# read by `lmtune search` (the studio launches `lmtune train`)
NOT_IN_FORM = ("model_chain", "search")


def schema(task: str | None) -> dict[str, Any]:
    """GET /api/schema: the tasks, the bundled models and every key of `task`'s runs (default: the
    default task), strategy keys tagged with their strategy."""
    name = task or DEFAULT_TASK
    cls = get_task(name).config  # (an unknown task: LmtuneError naming the known ones)
    fields = [f for f in _fields_of(cls, "", None) if f["key"].split(".")[0] not in NOT_IN_FORM]
    for i, f in enumerate(fields):
        if f["key"] == "task":
            fields[i] = {**f, "type": "choice", "choices": list(TASKS), "default": name, "required": False,
                         "help": RunConfig.model_fields["task"].description or ""}
    return {"tasks": list(TASKS), "models": list(models.BUNDLED), "fields": fields}


def known_keys() -> set[str]:
    return {row[0] for row in reference()} | {"strategy.name"}


def problem_key(problem: str, keys: set[str]) -> str | None:
    """The config key a problem line names (train.lr: ...; data.x applies to ...), or None (a file's line)."""
    m = _KEY.match(problem)
    if m is None:
        return None
    key = m.group(1)
    sections = {k.split(".")[0] for k in keys}
    if key in keys or (key.split(".")[0] in sections and not Path(key).exists()):
        return key
    return None


def check(config: Any) -> tuple[RunConfig | None, list[dict[str, Any]]]:
    """The config validated as `lmtune train` validates it, or None and every problem with its key."""
    if not isinstance(config, dict):
        return None, [{"key": None, "message": "config: expected a mapping of config sections"}]
    try:
        return validate(dict(config)), []
    except LmtuneError as e:
        keys = known_keys()
        return None, [{"key": problem_key(p, keys), "message": p} for p in e.problems]


def validate_config(config: Any) -> dict[str, Any]:
    """POST /api/validate: ok, the problems and the config as YAML (resolved when it is valid)."""
    cfg, problems = check(config)
    text = cfg.to_yaml() if cfg is not None else yaml.safe_dump(config, sort_keys=False) if isinstance(config, dict) else ""
    return {"ok": cfg is not None, "problems": problems, "yaml": text}


def plan_text(config: Any, probe: int = 3) -> dict[str, Any]:
    """POST /api/plan: the lines `lmtune plan` prints (loads the model: seconds; run it in a thread)."""
    cfg, problems = check(config)
    if cfg is None:
        return {"ok": False, "text": "", "problems": problems}
    from ..training.memory_plan import memory_problem
    from ..training.plan import plan

    try:
        data = get_task(cfg.task).load_data(cfg)
        result = plan(cfg, probe_steps=probe, data=data)
    except LmtuneError as e:
        return {"ok": False, "text": "", "problems": [{"key": None, "message": p} for p in e.problems]}
    problem = memory_problem(result.memory, result.cfg.train)
    problems = [{"key": None, "message": problem}] if problem is not None else []
    return {"ok": problem is None, "text": "\n".join(result.lines()), "problems": problems}


def _row_text(row: dict[str, Any], data: Any) -> tuple[str, Any]:
    column = getattr(data, "text_column", None)
    label_column = getattr(data, "label_column", None)
    label = row.get(label_column) if label_column else None
    if column and column in row:
        return str(row[column]), label
    return yaml.safe_dump({k: v for k, v in row.items() if k != label_column}, sort_keys=False,
                          allow_unicode=True).strip(), label


def preview(config: Any, rows: int = 5) -> dict[str, Any]:
    """POST /api/preview: the first training rows as the task reads them; for a generative task the
    tokens of each example, each marked trained (in the loss) or not, as `lmtune data preview` shows."""
    cfg, problems = check(config)
    if cfg is None:
        return {"rows": [], "problems": problems}
    rows = max(1, min(int(rows), 50))
    task = get_task(cfg.task)
    try:
        data = task.load_data(cfg)
        t = data.train
        first = Table(t.path, t.columns, t.rows[:rows], t.lines[:rows])
        out = [dict(zip(("text", "label"), _row_text(r, cfg.data)), tokens=None) for r in first.rows]
        if task.GENERATIVE:
            out = _token_rows(cfg, task, data, first)
    except LmtuneError as e:
        return {"rows": [], "problems": [{"key": None, "message": p} for p in e.problems]}
    return {"rows": out, "problems": []}


def _token_rows(cfg: RunConfig, task: Any, data: Any, first: Table) -> list[dict[str, Any]]:
    from ..tasks.causal_lm import mask_spans
    from ..training.loop import resolve_defaults

    tokenizer = models.load_tokenizer(models.resolve(cfg.model))
    cfg, _, _ = resolve_defaults(cfg, task, data, tokenizer)
    unpacked = cfg.model_copy(update={"data": cfg.data.model_copy(update={"packing": False})})
    features, _ = task.prepare(first, tokenizer, unpacked, [], data.shape)
    rows = []
    for f in features:
        if "labels" not in f or "input_ids" not in f:
            return [dict(zip(("text", "label"), _row_text(r, cfg.data)), tokens=None) for r in first.rows]
        spans = mask_spans(f, tokenizer, per_token=True)
        rows.append({"text": "".join(text for text, _ in spans), "label": None,
                     "tokens": [{"text": text, "trained": trained} for text, trained in spans]})
    return rows
