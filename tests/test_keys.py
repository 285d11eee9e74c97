"""`lmtune keys` lists every key of the config schema, in schema order, with its default: checked
against the schema walked another way (pydantic's JSON schema) and against hand-picked keys."""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest

from lmtune.cli import main
from lmtune.core.config import RunConfig
from lmtune.tasks import TASKS, get_task

REQUIRED = "required"
NO_DEFAULT = object()  # a default_factory: the JSON schema does not carry it
STRATEGY_HEADER = re.compile(r"^strategy\.name: (\w+)$")
KEY_LINE = re.compile(r"^([a-z_]+(?:\.(?:[a-z_]+|KEY))*)\s+(\S+)")


def _schema_keys() -> list[tuple[str | None, str, Any]]:
    """(strategy name or None, dotted key, default) for every key, from the JSON schemas of the tasks'
    run configs: the first task's keys, then the data and eval keys that each further task adds, at the
    end of their section, and the sections of a task's own."""
    first, *others = [_task_schema_keys(get_task(t).config) for t in TASKS]
    sections: dict[str, list[tuple[str | None, str, Any]]] = {}
    for row in first:
        sections.setdefault(row[1].split(".")[0], []).append(row)
    shared = set(sections) - {"data", "eval"}  # a section of a task's own (preference) comes whole
    for rows in others:
        for row in rows:
            section = row[1].split(".")[0]
            if section not in shared and row[1] not in {r[1] for r in sections.setdefault(section, [])}:
                sections[section].append(row)
    return [row for rows in sections.values() for row in rows]


def _task_schema_keys(config: type[RunConfig]) -> list[tuple[str | None, str, Any]]:
    """(strategy name or None, dotted key, default) for every key, from a run config's JSON schema:
    sections are followed through $ref, an optional section (`X | None`) is a key of its own and
    its fields are keys below it, a strategy's fields are listed under its name."""
    schema = config.model_json_schema()
    defs = schema["$defs"]

    def resolve(ref: str) -> dict[str, Any]:
        return defs[ref.rsplit("/", 1)[-1]]

    rows: list[tuple[str | None, str, Any]] = []

    def walk(section: dict[str, Any], prefix: str, strategy: str | None) -> None:
        required = set(section.get("required", []))
        for name, prop in section["properties"].items():
            key = prefix + name
            if "$ref" in prop:  # a section that is always there (data, train, eval)
                walk(resolve(prop["$ref"]), key + ".", strategy)
                continue
            if "oneOf" in prop:  # the strategies, each under its own name
                for option in prop["oneOf"]:
                    sub = resolve(option["$ref"])
                    name_value = sub["properties"]["name"]["const"]
                    rows.append((name_value, f"strategy.name: {name_value}", None))
                    walk({**sub, "properties": {k: v for k, v in sub["properties"].items() if k != "name"}},
                         key + ".", name_value)
                continue
            default = REQUIRED if name in required else prop.get("default", NO_DEFAULT)
            rows.append((strategy, key, default))
            refs = [o["$ref"] for o in prop.get("anyOf", []) if "$ref" in o]
            if refs:  # an optional section: its own fields are keys too
                walk(resolve(refs[0]), key + ".", strategy)
            if "$ref" in prop.get("additionalProperties", {}):  # a mapping of sections (search.space)
                walk(resolve(prop["additionalProperties"]["$ref"]), key + ".KEY.", strategy)

    walk(schema, "", None)
    return rows


def _listed(capsys: pytest.CaptureFixture[str]) -> list[tuple[str | None, str, str]]:
    """(strategy name or None, key, default as printed) for every key line of `lmtune keys`."""
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    rows: list[tuple[str | None, str, str]] = []
    strategy = None
    for line in out.splitlines():
        if not line.strip() or line.startswith(" "):
            continue  # blank lines and indented descriptions
        header = STRATEGY_HEADER.match(line)
        if header:
            strategy = header.group(1)
            rows.append((strategy, line, ""))
            continue
        m = KEY_LINE.match(line)
        assert m, f"not a key line: {line!r}"
        key, default = m.groups()
        if not key.startswith("strategy."):
            strategy = None
        rows.append((strategy, key, default))
    return rows


def _value(printed: str) -> Any:
    return REQUIRED if printed == REQUIRED else ast.literal_eval(printed)


def test_keys_lists_every_schema_key_in_order_with_its_default(capsys):
    listed = _listed(capsys)
    expected = _schema_keys()
    assert [(s, k) for s, k, _ in listed] == [(s, k) for s, k, _ in expected]
    for (strategy, key, printed), (_, _, default) in zip(listed, expected):
        if key.startswith("strategy.name:") or default is NO_DEFAULT:
            continue
        assert _value(printed) == default, f"{key} (strategy {strategy}): printed {printed}, schema {default!r}"


def test_keys_shows_hand_picked_defaults_and_every_strategy(capsys):
    listed = _listed(capsys)
    printed = {(s, k): _value(d) for s, k, d in listed if not k.startswith("strategy.name:")}
    assert printed[(None, "train.epochs")] == 3
    assert printed[(None, "train.batch_size")] == 32 and printed[(None, "train.seed")] == 42
    assert printed[(None, "train.scheduler")] == "linear" and printed[(None, "train.warmup_ratio")] == 0.06
    assert printed[(None, "model")] == REQUIRED and printed[(None, "data.train")] == REQUIRED
    assert printed[(None, "data.clean")] is None and printed[(None, "data.clean.dedupe")] == "exact"
    assert printed[(None, "data.augment.p_delete")] == 0.1 and printed[(None, "data.augment.protect")] == []
    assert printed[(None, "eval.generate_rows")] == 16
    assert printed[(None, "search")] is None and printed[(None, "search.trials")] == 20
    assert printed[(None, "search.space")] == REQUIRED and printed[(None, "search.space.KEY.loguniform")] is None
    assert printed[(None, "search.pruner")] == "median" and printed[(None, "search.stop_when.metric")] == REQUIRED
    headers = [s for s, k, _ in listed if k.startswith("strategy.name:")]
    assert headers == ["full", "partial", "adaptive", "lora", "gradual", "auto"]
    # the same key name, a default per strategy
    assert printed[("adaptive", "strategy.decay")] == 0.8 and printed[("gradual", "strategy.decay")] == 1.0
    assert printed[("partial", "strategy.freeze_layers")] == REQUIRED
    assert printed[("lora", "strategy.r")] == 8 and printed[("lora", "strategy.alpha")] == 16
    assert not any(s == "full" and not k.startswith("strategy.name:") for s, k, _ in listed)  # full has no keys
