"""lmtune models and lmtune keys: the bundled models and every config key."""

from __future__ import annotations

import argparse

from ..tasks.registry import TASK_ALIASES, task_aliases_text
from ..tasks.run_config import reference
from ..core.models import listing
from ..tasks import TASKS
from .common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list the bundled models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)
    k = sub.add_parser("keys", help="every config key with its default and meaning")
    k.add_argument("--task", choices=[*TASKS, *TASK_ALIASES], default=None, metavar="TASK",
                   help=f"only the keys that apply to this task: {', '.join(TASKS)} (also read: {task_aliases_text()})")
    k.set_defaults(func=cmd_keys)


def cmd_models(args: argparse.Namespace) -> int:
    rows = listing()
    if args.json:
        print_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['description']}\n{'':<{width}}  {r['source']}")
        if r["note"]:
            print(f"{'':<{width}}  {r['note']}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    task = TASK_ALIASES.get(args.task, args.task) if args.task is not None else None
    if task != args.task:
        print(f"task {args.task} is read as {task}")
    for key, kind, default, description in reference(task):
        if not kind:
            print(f"\n{key}\n    {description}")
            continue
        print(f"{key:<34} {default:<12} {description}  [{kind}]")
    return 0
