"""The forgetting check (eval.forgetting): a language model's perplexity on general-domain text.

Fine-tuning on a narrow task can cost a model what it knew before. Scored on the same general text
before tuning and at every evaluation, the perplexity shows how much: a small rise is usual, a
large one means the model has lost much of its general language. lmtune ships such a text
(resources/general_text.txt: short original passages on everyday and encyclopedic topics, one a
line); a user's own text, closer to what the model must keep knowing, can take its place.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import LmtuneError

SHIPPED = Path(__file__).parents[1] / "resources" / "general_text.txt"  # (lmtune/resources/)
KINDS = ".txt (one passage a line) or .jsonl (a \"text\" field a line)"


def text_path(setting: bool | str) -> Path | None:
    """The general text that eval.forgetting names: true, the one lmtune ships; a path, that file;
    false, none (no check)."""
    if setting is False:
        return None
    if setting is True:
        return SHIPPED
    path = Path(setting)
    if not path.is_file():
        raise LmtuneError(f"eval.forgetting: {path}: file not found (true: the general text that ships with lmtune)")
    return path


def read_passages(path: Path) -> list[str]:
    """The passages of a general text: the non-empty lines of a .txt file, the "text" fields of a
    .jsonl file."""
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise LmtuneError(f"eval.forgetting: {path}: expected {KINDS}, not a {suffix or 'file without extension'}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LmtuneError(f"eval.forgetting: {path}: file not found") from None
    except UnicodeDecodeError as e:
        raise LmtuneError(f"eval.forgetting: {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if suffix == ".txt":
        passages = [line.strip() for line in lines if line.strip()]
    else:
        passages = [p for n, line in enumerate(lines, 1) if line.strip() and (p := _jsonl_text(path, n, line))]
    if not passages:
        raise LmtuneError(f"eval.forgetting: {path}: no passages (expected {KINDS})")
    return passages


def _jsonl_text(path: Path, n: int, line: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise LmtuneError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise LmtuneError(f"{path}:{n}: expected a JSON object with a \"text\" string")
    return obj["text"].strip()


def change(base: float, now: float) -> float:
    """The relative change of the perplexity from the base model's: 0.35 is 35% higher (worse),
    negative is lower (tuning helped on general text too)."""
    if base <= 0:
        raise ValueError(f"a perplexity is positive, got base {base}")
    return now / base - 1.0
