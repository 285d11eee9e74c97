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
# extras that lmtune imports inside the functions that need them, never at a module's top: a missing
# one is a one-line error when the feature is used (onnx: lmtune export --format onnx, --backend onnx)
OPTIONAL_EXTRAS = ("onnx",)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"lmtune", "__future__"}


def _imported_modules(package: Path, *, top_level: bool = False) -> set[str]:
    """What lmtune imports anywhere (top_level: outside functions, where every command pays for it)."""
    names = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        if not top_level:
            names |= _imports(tree)
            continue
        functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                     for n in ast.walk(f)}
        names |= {m for node in ast.walk(tree) if id(node) not in functions and isinstance(node, (ast.Import, ast.ImportFrom))
                  for m in _imports(node)}
    return names


def _optional(extras: dict[str, list[str]]) -> set[str]:
    """The distributions of the extras that lmtune itself imports (when a feature needs them)."""
    return {_canonical(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]) for name in OPTIONAL_EXTRAS for req in extras[name]}


def test_runtime_dependencies_are_exactly_what_lmtune_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_canonical(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]) for req in project["dependencies"]}
    dists = packages_distributions()
    extras = project["optional-dependencies"]
    optional = _optional(extras)
    imported = set()
    for module in _imported_modules(ROOT / "lmtune"):
        assert module in dists, f"lmtune imports {module!r}, which no installed distribution provides"
        imported.update(COMES_WITH.get(_canonical(d), _canonical(d)) for d in dists[module])
    assert imported - declared - optional == set(), "imported but not declared in pyproject.toml dependencies"
    assert declared - imported - USED_THROUGH_ANOTHER == set(), "declared but never imported by lmtune (move it to an extra)"
    assert optional <= imported, "an optional extra that lmtune never imports"
    assert any(r.startswith("datasets") for r in extras["bench"]) and any(r.startswith("psutil") for r in extras["dev"])


def test_optional_extras_are_imported_only_where_needed_and_installed_for_the_tests():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    optional = _optional(extras)
    dists = packages_distributions()
    top = {_canonical(d) for m in _imported_modules(ROOT / "lmtune", top_level=True) for d in dists.get(m, [])}
    assert top & optional == set(), "an optional extra imported at a module's top: every command would need it"
    dev = {_canonical(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in extras["dev"]}
    assert optional <= dev, "the tests (make test installs dev) need the optional extras too"


def test_every_file_of_the_package_that_is_not_python_is_package_data():
    """The served pages (lmtune/serve/playground.html, lmtune/studio/static/) and the resources are
    installed with the package: each is matched by a [tool.setuptools.package-data] pattern."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path for package, patterns in data.items() for pattern in patterns
               for path in (ROOT / package.replace(".", "/")).glob(pattern) if path.is_file()}
    files = {p for p in (ROOT / "lmtune").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
             and "__pycache__" not in p.parts}
    assert (ROOT / "lmtune" / "studio" / "static" / "index.html") in files
    assert sorted(map(str, files - shipped)) == []
