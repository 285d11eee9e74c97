"""The package's imports run one way, from the ground up, and make no circle.

Every .py file under lmtune/ is parsed (nothing is imported); every import of an lmtune module is
collected, at module level and inside functions (those under `if TYPE_CHECKING:` are left out: they
never run), with relative imports resolved and `from package import name` read as an import of the
submodule where `name` is one. The layers, lowest first, are LAYERS and then the package root
(lmtune/__init__.py, lmtune/__main__.py): a module imports from its own layer or the ones below.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lmtune"
LAYERS = ["core", "data", "tasks", "training", "infer", "export", "report", "tune", "serve", "studio", "cli"]
ROOT_MODULES = {"lmtune", "lmtune.__main__"}  # the package root: the top layer

# Third-party packages that take a noticeable time to import (or load data when imported): an import of
# an lmtune module that brings one in may wait inside the function that needs it, so that a command
# checks its input first (tests/test_fail_fast.py). Any other import of an lmtune module inside a
# function is at the top of its module, except in the entry points (ENTRY: the command line and the
# package root, ROOT_MODULES), where every module a command needs is imported when the command runs.
HEAVY = {"torch", "transformers", "accelerate", "peft", "captum", "matplotlib", "optuna", "fastapi", "uvicorn",
         "sklearn", "numpy", "seqeval", "sacrebleu", "rouge_score", "tensorboard", "ftfy", "vaderSentiment", "gguf",
         "safetensors", "tqdm", "onnx", "onnxruntime", "onnxscript"}


@dataclass(frozen=True)
class Import:
    importer: str
    line: int
    imported: str
    in_function: bool

    def where(self) -> str:
        return f"{file_of(self.importer)}:{self.line}: {self.importer} imports {self.imported}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def file_of(module: str) -> str:
    return modules()[module].relative_to(ROOT).as_posix()


def layer(module: str) -> int:
    if module in ROOT_MODULES:
        return len(LAYERS)
    return LAYERS.index(module.split(".")[1])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, package: str) -> None:
        self.module, self.package = module, package
        self.found: list[Import] = []
        self.depth = 0  # functions around the node

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # (never runs; its else branch does)
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def add(self, node: ast.stmt, imported: str) -> None:
        self.found.append(Import(self.module, node.lineno, imported, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "lmtune":
                self.add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base.split(".")[0] != "lmtune":
            return
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self.add(node, sub if sub in modules() else base)


@cache
def imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for module, path in modules().items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        collector = _Collector(module, package)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        found += collector.found
    for i in found:
        assert i.imported in modules(), f"{i.where()}, which is not a module of the package"
    return tuple(dict.fromkeys(found))  # (once for a statement that imports several names of a module)


def checked() -> list[Import]:
    """Every import between two modules (not of a module by itself)."""
    return [i for i in imports() if i.importer != i.imported]


def circles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for i in edges:
        graph[i.importer].add(i.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_package_root_holds_its_entry_points_and_one_folder_per_layer():
    files = sorted(p.name for p in PACKAGE.glob("*.py"))
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert files == ["__init__.py", "__main__.py"]
    assert folders == sorted([*LAYERS, "resources"])
    assert all((PACKAGE / name / "__init__.py").is_file() for name in LAYERS)


def shortest_loop(component: list[str], edges: list[Import]) -> list[Import]:
    """One shortest loop of imports through the modules of a circle (breadth-first from each)."""
    inside = set(component)
    out: dict[str, list[Import]] = {}
    for i in edges:
        if i.importer in inside and i.imported in inside:
            out.setdefault(i.importer, []).append(i)
    best: list[Import] = []
    for start in component:
        paths: dict[str, list[Import]] = {start: []}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for i in out.get(v, []):
                if i.imported == start:
                    loop = paths[v] + [i]
                    if not best or len(loop) < len(best):
                        best = loop
                    queue = []
                    break
                if i.imported not in paths:
                    paths[i.imported] = paths[v] + [i]
                    queue.append(i.imported)
    return best


def test_no_import_circles():
    edges = checked()
    problems = []
    for component in circles(edges):
        problems.append(f"a circle through {len(component)} modules; one loop of it:")
        problems += [f"  {i.where()}" for i in shortest_loop(component, edges)]
    assert not problems, "\n".join(problems)


def test_imports_run_from_higher_layers_to_lower_ones():
    def name(module: str) -> str:
        return "the package root" if module in ROOT_MODULES else module.split(".")[1]

    problems = [f"{i.where()}: {name(i.imported)} is above {name(i.importer)}"
                for i in checked() if layer(i.imported) > layer(i.importer)]
    assert not problems, "imports from a lower layer to a higher one:\n" + "\n".join(problems)


def third_party(module: str) -> set[str]:
    """The third-party packages a module imports when it is imported (at its top, `if TYPE_CHECKING:`
    aside), and those of the lmtune modules it imports there, and of their packages, all the way down."""
    seen: set[str] = set()
    found: set[str] = set()
    top = {}
    for i in imports():
        if not i.in_function:
            top.setdefault(i.importer, set()).add(i.imported)

    def visit(m: str) -> None:
        if m in seen:
            return
        seen.add(m)
        found.update(_third_party_at_top(m))
        parts = m.split(".")
        for k in range(1, len(parts)):  # importing a.b.c runs a and a.b first
            visit(".".join(parts[:k]))
        for imported in top.get(m, ()):
            visit(imported)

    visit(module)
    return found


@cache
def _third_party_at_top(module: str) -> frozenset[str]:
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.If) and not _is_type_checking(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(ast.parse(modules()[module].read_text(encoding="utf-8")).body)
    return frozenset(found - {"lmtune", "__future__"})


def _entry(module: str) -> bool:
    return module in ROOT_MODULES or module == "lmtune.cli" or module.startswith("lmtune.cli.")


def test_imports_inside_functions_wait_for_heavy_packages_only():
    # an import moved into a function hides a circle rather than removing it; the checks above read
    # those imports too, and here each must have a reason: a heavy package behind it
    light = [f"{i.where()} inside a function: it brings in no heavy package, so it belongs at the top"
             for i in imports() if i.in_function and i.importer != i.imported
             and not _entry(i.importer) and not third_party(i.imported) & HEAVY]
    assert not light, "\n".join(light)


def test_the_imports_are_read_as_python_runs_them():
    """A check of the reading itself, on imports known to be there (or not)."""
    top = {(i.importer, i.imported) for i in imports() if not i.in_function}
    inside = {(i.importer, i.imported) for i in imports() if i.in_function}
    assert ("lmtune.training.loop", "lmtune.core.config") in top  # from ..core.config import RunConfig, ...
    assert ("lmtune.tasks.classification", "lmtune.data.augment") in inside  # in _augment (it loads VADER's lexicon)
    assert ("lmtune.tasks.registry", "lmtune.tasks.contract") not in top | inside  # under `if TYPE_CHECKING:`
    assert ("lmtune.infer.predictor", "lmtune.training.cpu.first_token") in top  # from ..training.cpu import first_token: the submodule
    assert ("lmtune.serve.app", "lmtune.core") in top  # from ..core import __version__: the package
    assert ("lmtune.cli", "lmtune.cli.main") in top and ("lmtune.__main__", "lmtune.cli.main") in top
