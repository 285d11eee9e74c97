"""The documentation (README.md and docs/*.md) checked against the code, so that it cannot drift:

- the README stays short, and its map names every docs page, each of which exists;
- every fenced code block is checked by its kind: shell commands are parsed by lmtune's own argument
  parser (and their configs and overrides validated), YAML is loaded and, where it is a run config or
  a section of one, validated by lmtune's config validation, Python is parsed and every lmtune name it
  uses resolves, JSON is loaded; ```text blocks (output, folder trees) are left alone;
- `lmtune ...` and `lmtune.x` in the prose name real commands, flags and attributes;
- every examples/ path named exists, and every link lands on a page and heading that exist.

Nothing is run: no training, no model loaded.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import io
import json
import re
import shlex
import textwrap
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 300
MAP_HEADING = "## Documentation"

SHELL = {"", "sh", "bash", "shell", "console"}  # console: `$ ` lines are commands, the others their output
YAML = {"yaml", "yml"}
PYTHON = {"python", "py"}
JSON = {"json"}
TEXT = {"text"}  # output samples, folder trees: not checked
KINDS = SHELL | YAML | PYTHON | JSON | TEXT
# commands other than lmtune that a shell block may hold (checked lightly below)
OTHER_COMMANDS = {"make", "curl", "python", "python3", ".venv/bin/python", "source", "pip", "accelerate",
                  "torchrun", "tensorboard"}


def doc_paths() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ---------------------------------------------------------------- reading the markdown

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # the line of the opening fence (1-based)
    info: str  # the info string's first word ("" for a bare fence)
    lines: tuple[tuple[int, str], ...]  # (line number, text without the fence's indent)
    closed: bool = True

    @property
    def name(self) -> str:
        return f"{rel(self.path)}:{self.line}"

    def where(self, line: int | None = None) -> str:
        return f"{rel(self.path)}:{line or self.line} (```{self.info} block at line {self.line})"

    @property
    def text(self) -> str:
        return "\n".join(text for _, text in self.lines)


@cache
def parse_markdown(path: Path) -> tuple[list[Block], str]:
    """The fenced blocks of a page, and its prose: the text with every block's lines blanked (so that
    line numbers still hold)."""
    blocks: list[Block] = []
    prose: list[str] = []
    opened: tuple[int, str, str, str, list[tuple[int, str]]] | None = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if opened is None:
            m = FENCE.match(line)
            if m:
                info = m["info"].strip().split()
                opened = (n, m["indent"], m["fence"], info[0] if info else "", [])
                prose.append("")
            else:
                prose.append(line)
            continue
        start, indent, fence, info, body = opened
        prose.append("")
        if line.strip().startswith(fence) and set(line.strip()) == {fence[0]}:
            blocks.append(Block(path, start, info, tuple(body)))
            opened = None
        else:
            body.append((n, line[len(indent):] if line.startswith(indent) else line.lstrip()))
    if opened is not None:
        blocks.append(Block(path, opened[0], opened[3], tuple(opened[4]), closed=False))
    return blocks, "\n".join(prose)


def all_blocks() -> list[Block]:
    return [b for path in doc_paths() for b in parse_markdown(path)[0]]


def blocks_of(kinds: set[str]) -> list[Block]:
    return [b for b in all_blocks() if b.info in kinds]


def ids(blocks: list[Block]) -> list[str]:
    return [b.name for b in blocks]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in parse_markdown(path)[1].splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m[1])
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def inline_spans(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every `inline code` span in the prose."""
    prose = parse_markdown(path)[1]
    return [(prose.count("\n", 0, m.start()) + 1, m[1]) for m in re.finditer(r"`([^`]+)`", prose)]


# ---------------------------------------------------------------- the page structure


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_the_readme_map_names_every_docs_page_once_and_each_exists():
    text = README.read_text(encoding="utf-8")
    assert MAP_HEADING in text, f"README.md has no {MAP_HEADING!r} section (the map of docs/)"
    section = text.split(MAP_HEADING, 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"^\s*[-*] .*?\(docs/([\w.-]+\.md)\)", section, flags=re.M)
    assert named, "the README's map names no docs page"
    repeated = sorted({n for n in named if named.count(n) > 1})
    assert not repeated, f"the README's map names these pages more than once: {repeated}"
    missing = sorted(n for n in named if not (DOCS / n).is_file())
    assert not missing, f"the README's map names pages that do not exist: {missing}"
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    unnamed = sorted(set(pages) - set(named))
    assert not unnamed, f"docs pages missing from the README's map ({MAP_HEADING}): {unnamed}"


def test_every_code_block_is_closed_and_of_a_known_kind():
    problems = [f"{b.where()}: the block is never closed" for b in all_blocks() if not b.closed]
    problems += [f"{b.where()}: unknown kind {b.info!r}; use one of {sorted(KINDS - {''})} "
                 f"(```text for output samples)" for b in all_blocks() if b.info not in KINDS]
    assert not problems, "\n".join(problems)


def test_every_repository_path_exists():
    """Every path under examples/, benchmarks/, tests/ or lmtune/ that the docs name."""
    pattern = re.compile(r"(?<![\w./~-])((?:examples|benchmarks|tests|lmtune)/[\w./-]*[\w/])")
    found: set[str] = set()
    missing = []
    for path in doc_paths():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name in pattern.findall(line):
                found.add(name)
                if not (ROOT / name).exists():
                    missing.append(f"{rel(path)}:{n}: {name}")
    assert "examples/data/sentiment/reviews.txt" in found
    assert not missing, "the docs name files that do not exist:\n" + "\n".join(missing)


def test_the_docs_call_lmtune_one_way():
    for path in doc_paths():
        text = path.read_text(encoding="utf-8")
        assert not re.findall(r"\.venv/bin/lmtune \w", text), f"{rel(path)}: write `lmtune ...`, not .venv/bin/lmtune"


def test_every_link_lands():
    problems = []
    for path in doc_paths():
        prose = parse_markdown(path)[1]
        for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", prose):
            target = m[1]
            line = prose.count("\n", 0, m.start()) + 1
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            page = (path.parent / file).resolve() if file else path
            if not page.exists():
                problems.append(f"{rel(path)}:{line}: {target}: no such file")
            elif anchor and page.suffix == ".md" and anchor not in anchors(page):
                problems.append(f"{rel(path)}:{line}: {target}: no heading #{anchor} in {rel(page)}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- shell blocks


@cache
def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([\w.-]+):(?!=)", text, flags=re.M))


def shell_commands(block: Block) -> tuple[list[tuple[int, str, list[str]]], list[str]]:
    """The commands of a shell block, as (line, text with continuations joined, the output shown
    after it in a console block), and the problems of the block's shape."""
    console = block.info == "console"
    commands: list[list[Any]] = []
    problems = []
    continued = False
    for n, raw in block.lines:
        line = raw.strip()
        if continued:
            commands[-1][1] = commands[-1][1][:-1].rstrip() + " " + line
            continued = line.endswith("\\")
            continue
        if console:
            if line.startswith("$ "):
                commands.append([n, line[2:].strip(), []])
            elif commands:
                commands[-1][2].append(line)
                continue
            elif line:
                problems.append(f"{block.where(n)}: a console block starts with a `$ ` command: {line}")
                continue
        else:
            if not line or line.startswith("#"):
                continue
            commands.append([n, line.removeprefix("$ ").strip(), []])
        continued = line.endswith("\\")
    return [(n, text, out) for n, text, out in commands], problems


def parse_lmtune(args: list[str]) -> tuple[Any, str | None]:
    """argv (after `lmtune`) parsed as lmtune.cli.main parses it: the namespace, or None and the
    parser's message."""
    from lmtune.cli import build_parser

    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            ns, extra = parser.parse_known_args(args)
    except SystemExit:
        return None, err.getvalue().strip() or "the parser exited"
    # as main(): key=value words after flags are overrides; a first `key=value` is not a config file
    if hasattr(ns, "overrides"):
        ns.overrides += [x for x in extra if not x.startswith("-")]
        extra = [x for x in extra if x.startswith("-")]
        if ns.config is not None and "=" in ns.config and not (ROOT / ns.config).is_file():
            ns.overrides.insert(0, ns.config)
            ns.config = None
    if extra:
        return None, f"lmtune: error: unrecognized arguments: {' '.join(extra)}"
    return ns, None


def excused(problem: str, raw: dict[str, Any]) -> bool:
    """A problem that depends on what the reader has made, not on the docs: a model folder of an
    earlier run (runs/x/model), data beside the repository (../shared/data)."""
    model = raw.get("model")
    if problem.startswith("model:") and isinstance(model, str) and "/" in model:
        return True
    return "file not found: ../" in problem


def config_problems(config: str | None, overrides: list[str]) -> list[str]:
    """What lmtune's validation says of a config (one under examples/, or the overrides alone) with
    these overrides. A config file of the reader's own (my.yaml) is not read; its overrides' form is."""
    from lmtune.core.config import apply_overrides, read_yaml
    from lmtune.tasks.run_config import output_dir_of, validate
    from lmtune.core.errors import LmtuneError

    raw: dict[str, Any] = {}
    try:
        if config is not None and not config.startswith("examples/"):
            apply_overrides({}, overrides)
            return []
        raw = apply_overrides(read_yaml(config) if config else {}, overrides)  # (in ROOT)
        raw["output_dir"] = output_dir_of(config, raw)
        validate(raw, check_files=False)
    except LmtuneError as e:
        return [p for p in e.problems if not excused(p, raw)]
    return []


def lmtune_problems(args: list[str]) -> list[str]:
    """Problems of one `lmtune ...` command: the parser's, then the config's, the flags' values."""
    from lmtune.core.errors import LmtuneError, command_line

    ns, message = parse_lmtune(args)
    if ns is None:
        return [message or ""]
    problems = []
    for word in args:
        for name in re.findall(r"(?:^|=)(examples/[\w./-]+)", word):
            if not (ROOT / name).exists():
                problems.append(f"{name}: no such file")
    preview = ns.command == "data" and ns.data_command == "preview"
    with command_line(), contextlib.chdir(ROOT):
        if ns.command == "train" and ns.config is None and not ns.overrides:
            problems.append("lmtune train needs a config file")  # cmd_train's first check
        elif (ns.command == "train" and not ns.resume) or preview:
            problems += config_problems(ns.config, ns.overrides)
        elif ns.command == "compare":
            from lmtune.tune import compare

            if ns.config.startswith("examples/"):
                try:
                    compare.plan(ns.config, ns.overrides, strategies=ns.strategies, sets=ns.set, seeds=ns.seeds,
                                 overwrite=True)
                except LmtuneError as e:
                    problems += e.problems
            else:
                names = compare._split_list(ns.strategies)
                problems += compare._strategy_problems(names)
                problems += compare._parse_sets(ns.set, [n for n in names if n in compare.COMPARABLE])[1]
                problems += compare._parse_seeds(ns.seeds)[1]
                problems += config_problems(ns.config, ns.overrides)
        elif ns.command == "search":
            if ns.config.startswith("examples/"):
                from lmtune.tune import search

                try:
                    search.prepare(search.load_raw(ns.config, ns.overrides), overwrite=True)
                except LmtuneError as e:
                    problems += e.problems
            else:
                problems += config_problems(ns.config, ns.overrides)
    return problems


def command_problems(argv: list[str]) -> list[str]:
    word = argv[0]
    if word == "lmtune":
        return lmtune_problems(argv[1:])
    if word not in OTHER_COMMANDS:
        return [f"{word!r} is not a command these docs run (output samples go in ```text blocks)"]
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "lmtune":  # torchrun / accelerate launch / python -m lmtune
        return lmtune_problems(argv[argv.index("-m") + 2:])
    if word in {"python", "python3", ".venv/bin/python"}:
        scripts = [a for a in argv[1:] if a.endswith(".py")]
        return [f"{s}: no such file" for s in scripts if not (ROOT / s).is_file()]
    if word == "make":
        return [f"make {t}: no such target in the Makefile" for t in argv[1:]
                if not t.startswith("-") and "=" not in t and t not in makefile_targets()]
    if word == "curl":
        problems = []
        for flag, body in zip(argv, argv[1:]):
            if flag in ("-d", "--data", "--data-raw"):
                try:
                    json.loads(body)
                except ValueError as e:
                    problems.append(f"the request body is not JSON: {e}")
        return problems
    return []


SHELL_BLOCKS = blocks_of(SHELL)


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=ids(SHELL_BLOCKS))
def test_shell_block(block: Block):
    commands, problems = shell_commands(block)
    for n, text, output in commands:
        try:
            argv = shlex.split(text, comments=True)
        except ValueError as e:
            problems.append(f"{block.where(n)}: {e}: {text}")
            continue
        if not argv:
            continue
        found = command_problems(argv)
        if not output:  # (a transcript of an error may show a config of the reader's own, bad.yaml)
            found += missing_config(argv)
        shown = [line.removeprefix("lmtune: error: ") for line in output if line.startswith("lmtune: error: ")]
        if shown:
            # a transcript of an error: what lmtune says of the command must be what it shows
            found = [p for p in found if not any(s.startswith(p.removeprefix("lmtune: error: ")) for s in shown)]
        problems += [f"{block.where(n)}: {p}\n    {text}" for p in found]
    assert not problems, "\n".join(problems)


def missing_config(argv: list[str]) -> list[str]:
    """A config file given to lmtune train, search or compare must be in the repository, so that
    the command runs as written (a run folder given to --resume is the reader's)."""
    if len(argv) < 3 or argv[0] != "lmtune" or argv[1] not in ("train", "search", "compare"):
        return []
    ns, _ = parse_lmtune(argv[1:])
    if ns is None or ns.config is None or getattr(ns, "resume", False) or "=" in ns.config:
        return []
    return [] if (ROOT / ns.config).is_file() else [f"{ns.config}: no such config file in the repository"]


def test_a_doc_command_with_a_config_that_does_not_exist_is_found():
    assert missing_config(["lmtune", "search", "sst2_search.yaml"]) == ["sst2_search.yaml: no such config file in the repository"]
    assert missing_config(["lmtune", "search", "examples/sentiment_search.yaml", "--resume"]) == []
    assert missing_config(["lmtune", "train", "examples/sentiment.yaml", "train.epochs=1"]) == []


def test_shell_blocks_hold_commands():
    assert sum(len(shell_commands(b)[0]) for b in SHELL_BLOCKS) >= 10


# ---------------------------------------------------------------- yaml blocks

BASE_MODEL = "minilm-l6"


def merged(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def fragment_problems(raw: dict[str, Any]) -> list[str]:
    """A section of a run config (`search:`, `train: {report_to: ...}`) checked as part of a minimal
    config: it must be valid for at least one task (its own, where it names one)."""
    from lmtune.core.config import RunConfig
    from lmtune.tasks.run_config import validate
    from lmtune.core.errors import LmtuneError
    from lmtune.tasks import TASKS

    unknown = [k for k in raw if k not in RunConfig.model_fields]
    if unknown:
        return [f"{k}: not a config key (lmtune keys lists them)" for k in unknown]
    first: list[str] | None = None
    for task in [raw["task"]] if "task" in raw else TASKS:
        base = {"model": BASE_MODEL, "task": task, "data": {"train": "train.csv"}, "output_dir": "runs/x"}
        full = merged(base, raw)
        try:
            cfg = validate(full, check_files=False)
            problems = []
            if cfg.search is not None:
                from lmtune.tune import search, search_space

                problems = search_space.space_problems(cfg.search, cfg) + search._metric_problems(cfg.search, cfg)
        except LmtuneError as e:
            problems = [p for p in e.problems if not excused(p, full)]
        if not problems:
            return []
        first = first if first is not None else problems
    return first or []


def file_mismatches(block_raw: Any, file_raw: Any, prefix: str = "") -> list[str]:
    """Keys of the block whose value is not the file's (the block may leave keys out)."""
    if isinstance(block_raw, dict) and isinstance(file_raw, dict):
        out = []
        for key, value in block_raw.items():
            if key not in file_raw:
                out.append(f"{prefix}{key}: not in the file")
            else:
                out += file_mismatches(value, file_raw[key], f"{prefix}{key}.")
        return out
    same = block_raw == file_raw or str(block_raw) == str(file_raw)
    return [] if same else [f"{prefix.rstrip('.')}: {block_raw!r} here, {file_raw!r} in the file"]


YAML_BLOCKS = blocks_of(YAML)


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=ids(YAML_BLOCKS))
def test_yaml_block(block: Block):
    from lmtune.tasks.run_config import validate
    from lmtune.core.errors import LmtuneError

    try:
        raw = yaml.safe_load(block.text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = block.lines[mark.line][0] if mark is not None and mark.line < len(block.lines) else block.line
        pytest.fail(f"{block.where(line)}: not YAML: {getattr(e, 'problem', e)}")
    assert isinstance(raw, dict), f"{block.where()}: a YAML block is a config or a section of one"
    with contextlib.chdir(ROOT):
        if {"model", "task", "data"} <= raw.keys():
            full = dict(raw)
            full.setdefault("output_dir", "runs/x")
            try:
                validate(full, check_files=False)
                problems = []
            except LmtuneError as e:
                problems = [p for p in e.problems if not excused(p, full)]
        else:
            problems = fragment_problems(raw)
    # a block headed `# examples/NAME.yaml` shows that file (or part of it), as it is
    named = re.match(r"#\s*(examples/[\w./-]+\.ya?ml)", block.lines[0][1].strip()) if block.lines else None
    if named:
        mismatches = file_mismatches(raw, yaml.safe_load((ROOT / named[1]).read_text()))
        problems += [f"{p} (the block shows {named[1]})" for p in mismatches]
    assert not problems, "\n".join(located(block, p) for p in problems)


def located(block: Block, problem: str) -> str:
    """The problem with the block line of the key it names (`data.doc_stride: ...`), where found."""
    parts = problem.split(": ", 1)[0].split(".")
    for i in range(len(parts)):
        key = ".".join(parts[i:])
        for n, text in block.lines:
            if re.match(rf"\s*{re.escape(key)}\s*:", text):
                return f"{block.where(n)}: {problem}\n    {text.strip()}"
    return f"{block.where()}: {problem}"


# ---------------------------------------------------------------- python blocks


def resolve(dotted: str) -> str | None:
    """None where `lmtune.a.b` names a module or attribute that exists, else what is missing."""
    parts = dotted.split(".")
    obj: Any = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(".".join(parts[: i + 1]))
        except ModuleNotFoundError:
            return f"{'.'.join(parts[:i])} has no {part!r}"
    return None


def has_member(cls: type, name: str) -> bool:
    return (hasattr(cls, name) or name in getattr(cls, "__dataclass_fields__", {})
            or name in getattr(cls, "model_fields", {}))


@cache
def returned_types() -> dict[str, type]:
    """What the API's functions return, so that the attributes used on their results are checked."""
    from lmtune.core.config import RunConfig
    from lmtune.infer.predictor import Generator
    from lmtune.training.loop import RunResult

    # lmtune.load gives a Predictor, or for a generative run a Generator (a Predictor with more)
    return {"lmtune.load": Generator, "lmtune.train": RunResult, "lmtune.load_config": RunConfig}


def dotted_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted_name(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def python_problems(source: str) -> list[tuple[int, str]]:
    """(line in the block, problem) for every lmtune name the code uses that does not exist."""
    tree = ast.parse(source)
    problems: list[tuple[int, str]] = []
    aliases: dict[str, str] = {}  # local name -> lmtune dotted name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "lmtune":
                    aliases[(a.asname or a.name).split(".")[0]] = a.name if a.asname else "lmtune"
                    if problem := resolve(a.name):
                        problems.append((node.lineno, f"import {a.name}: {problem}"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lmtune":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                aliases[a.asname or a.name] = full
                if problem := resolve(full):
                    problems.append((node.lineno, f"from {node.module} import {a.name}: {problem}"))
    results: dict[str, type] = {}  # local name -> the type an API call returned
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            called = dotted_name(node.value.func)
            head = called.split(".")[0] if called else None
            if head in aliases:
                real = aliases[head] + called[len(head):]
                if real in returned_types():
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            results[target.id] = returned_types()[real]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        if isinstance(base, ast.Call):  # lmtune.load(RUN).predict
            called = dotted_name(base.func)
            head = called.split(".")[0] if called else None
            real = aliases[head] + called[len(head):] if head in aliases else None
            cls = returned_types().get(real or "")
            if cls is not None and not has_member(cls, node.attr):
                problems.append((node.lineno, f"{real}(...) gives a {cls.__name__}, which has no {node.attr!r}"))
        elif isinstance(base, ast.Name) and base.id in results:
            cls = results[base.id]
            if not has_member(cls, node.attr):
                problems.append((node.lineno, f"{base.id} is a {cls.__name__}, which has no {node.attr!r}"))
        name = dotted_name(node)
        head = name.split(".")[0] if name else None
        if head in aliases and not isinstance(getattr(node, "ctx", None), ast.Store):
            if problem := resolve(aliases[head] + name[len(head):]):
                problems.append((node.lineno, problem))
    return problems


PYTHON_BLOCKS = blocks_of(PYTHON)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=ids(PYTHON_BLOCKS))
def test_python_block(block: Block):
    source = textwrap.dedent(block.text)
    try:
        found = python_problems(source)
    except SyntaxError as e:
        line = block.lines[(e.lineno or 1) - 1]
        pytest.fail(f"{block.where(line[0])}: not Python: {e.msg}\n    {line[1]}")
    problems = [f"{block.where(block.lines[n - 1][0])}: {p}\n    {block.lines[n - 1][1].strip()}" for n, p in found]
    assert not problems, "\n".join(dict.fromkeys(problems))


# ---------------------------------------------------------------- json blocks

def test_json_blocks():
    problems = []
    for block in blocks_of(JSON):
        try:
            json.loads(block.text)
        except json.JSONDecodeError as e:
            n, text = block.lines[e.lineno - 1] if e.lineno - 1 < len(block.lines) else (block.line, "")
            problems.append(f"{block.where(n)}: not JSON ({e.msg}; output samples go in ```text blocks)\n    {text}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- lmtune in the prose


@cache
def subcommands() -> dict[str, Any]:
    """{'train': parser, ..., 'data preview': parser, ...}"""
    import argparse

    from lmtune.cli import build_parser

    def children(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    out = {}
    for name, parser in children(build_parser()).items():
        out[name] = parser
        for inner, sub in children(parser).items():
            out[f"{name} {inner}"] = sub
    return out


def test_every_lmtune_command_in_the_prose_exists_with_its_flags():
    problems = []
    for path in doc_paths():
        for line, span in inline_spans(path):
            words = span.split()
            if len(words) < 2 or words[0] != "lmtune" or words[1] == "...":
                continue
            name = words[1]
            if name not in subcommands():
                problems.append(f"{rel(path)}:{line}: `{span}`: lmtune has no command {name!r}")
                continue
            nested = any(other.startswith(f"{name} ") for other in subcommands())
            if nested and len(words) > 2 and re.fullmatch(r"[a-z]+", words[2]):  # lmtune data inspect
                if f"{name} {words[2]}" not in subcommands():
                    problems.append(f"{rel(path)}:{line}: `{span}`: lmtune {name} has no command {words[2]!r}")
                    continue
                name = f"{name} {words[2]}"
            flags = subcommands()[name]._option_string_actions
            for word in words[2:]:
                flag = word.strip("[],;.()").split("=")[0]
                if re.match(r"^--?[a-zA-Z]", flag) and flag not in flags:
                    problems.append(f"{rel(path)}:{line}: `{span}`: lmtune {name} has no option {flag}")
    assert not problems, "\n".join(problems)


def test_every_lmtune_name_in_the_prose_resolves():
    problems = []
    for path in doc_paths():
        for line, span in inline_spans(path):
            for name in re.findall(r"(?<![\w/.-])lmtune(?:\.[A-Za-z_]\w*)+", span):
                if problem := resolve(name):
                    problems.append(f"{rel(path)}:{line}: `{span}`: {problem}")
    assert not problems, "\n".join(problems)
