"""The package's shape, measured: nothing outside lmtune/tasks/ asks which task it has, and every
function fits on a screen. Files are parsed, nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

from lmtune.tasks.registry import MODULES

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lmtune"
LONGEST_FUNCTION = 80  # lines, from `def` to the last line of its body


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_task_name_outside_the_tasks_folder():
    # a task is asked what it does (its Task object), never compared or keyed by name elsewhere
    tasks_folder = PACKAGE / "tasks"
    found = []
    for path in _files():
        if tasks_folder in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in MODULES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "task names outside lmtune/tasks/ (ask the task's object instead):\n" + "\n".join(found)


def test_the_check_sees_a_task_name(tmp_path):
    # the check above is not vacuous: the same walk finds a literal where one is
    tree = ast.parse('if cfg.task == "causal_lm":\n    pass\n')
    assert [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in MODULES] == ["causal_lm"]


def test_every_function_fits_on_a_screen():
    long = []
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} is {lines} lines")
    assert not long, f"functions over {LONGEST_FUNCTION} lines:\n" + "\n".join(long)
