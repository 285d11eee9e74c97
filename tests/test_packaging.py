"""`pip install lmtune` pulls what lmtune imports, and nothing that only the tests or benchmarks use."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# distributions that come with a declared one and are imported through it
COMES_WITH = {"pydantic-core": "pydantic"}
# declared though not imported by name: transformers imports gguf when lmtune loads a .gguf model;
# accelerate's TensorBoard tracker (train.report_to: tensorboard, the default) imports tensorboard through torch
USED_THROUGH_ANOTHER = {"gguf", "tensorboard"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules(package: Path) -> set[str]:
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"lmtune", "__future__"}


def test_runtime_dependencies_are_exactly_what_lmtune_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_canonical(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]) for req in project["dependencies"]}
    dists = packages_distributions()
    imported = set()
    for module in _imported_modules(ROOT / "lmtune"):
        assert module in dists, f"lmtune imports {module!r}, which no installed distribution provides"
        imported.update(COMES_WITH.get(_canonical(d), _canonical(d)) for d in dists[module])
    assert imported - declared == set(), "imported but not declared in pyproject.toml dependencies"
    assert declared - imported - USED_THROUGH_ANOTHER == set(), "declared but never imported by lmtune (move it to an extra)"
    extras = project["optional-dependencies"]
    assert any(r.startswith("datasets") for r in extras["bench"]) and any(r.startswith("psutil") for r in extras["dev"])
