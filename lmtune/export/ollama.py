"""An Ollama Modelfile for an exported GGUF: the chat template in Ollama's (Go) template language,
the default system message, and the tokens that end an answer as stop words. The Jinja template is
not translated by hand: it is rendered with marker messages, and the text around each marker is
what each role's turn adds; the parts are checked to rebuild a longer conversation exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import LmtuneError

MARKS = {"system": "\u2063S1\u2063", "user": "\u2063U1\u2063", "assistant": "\u2063A1\u2063", "user2": "\u2063U2\u2063"}


@dataclass(frozen=True)
class TurnParts:
    """What a conversation is made of: each role's text before and after its content, the text that
    asks for the assistant's answer, and the system message the template adds when none is given."""

    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    default_system: str | None
    start: str = ""  # what begins every conversation (Llama 3's BOS token)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The conversation as the template renders it (what the Go template writes)."""
        text = self.start
        if messages and messages[0]["role"] != "system" and self.default_system is not None:
            messages = [{"role": "system", "content": self.default_system}, *messages]
        for m in messages:
            before, after = getattr(self, m["role"])
            text += before + m["content"] + after
        return text + (self.generation if add_generation_prompt else "")


def turn_parts(tokenizer: Any, template: str) -> TurnParts:
    """The turn parts of a Jinja chat template; LmtuneError where it does not render turn by turn."""
    def render(roles: list[str], gen: bool = False) -> str:
        messages = [{"role": r.rstrip("2"), "content": MARKS[r]} for r in roles]
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=gen)

    a = render(["system", "user"])
    b = render(["system", "user", "assistant"])
    c = render(["system", "user", "assistant", "user2"])
    g = render(["system", "user"], gen=True)
    if not (g.startswith(a) and c.startswith(b) and b.startswith(a)):
        raise LmtuneError("the chat template does not render a conversation turn by turn")
    user = _around(c[len(b):], MARKS["user2"])
    user_turn = user[0] + MARKS["user"] + user[1]
    if not a.endswith(user_turn):
        raise LmtuneError("the chat template renders the first user turn unlike the later ones")
    system = _around(a[: len(a) - len(user_turn)], MARKS["system"])
    alone = render(["user"])[: -len(user_turn)]
    start = ""
    if alone and not (alone.startswith(system[0]) and alone.endswith(system[1])) and system[0].startswith(alone):
        start, system, alone = alone, (system[0][len(alone):], system[1]), ""
    default = None
    if alone:
        if not (alone.startswith(system[0]) and alone.endswith(system[1])):
            raise LmtuneError("the chat template's default system message has a layout of its own")
        default = alone[len(system[0]) : len(alone) - len(system[1])]
    return TurnParts(system, user, _around(b[len(a):], MARKS["assistant"]), g[len(a):], default, start)


def _around(text: str, mark: str) -> tuple[str, str]:
    if text.count(mark) != 1:
        raise LmtuneError("the chat template does not put a message's content in its turn once")
    before, after = text.split(mark)
    return before, after


def go_template(parts: TurnParts) -> str:
    """Ollama's template over .Messages: each literal a quoted Go string (no whitespace trimming,
    no braces to escape); the generation prompt after a last user message."""
    q = json.dumps
    return (
        (f'{{{{ {q(parts.start)} }}}}' if parts.start else '')
        + '{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
        f'{{{{ if eq $m.Role "system" }}}}{{{{ {q(parts.system[0])} }}}}{{{{ $m.Content }}}}{{{{ {q(parts.system[1])} }}}}'
        f'{{{{ else if eq $m.Role "user" }}}}{{{{ {q(parts.user[0])} }}}}{{{{ $m.Content }}}}{{{{ {q(parts.user[1])} }}}}'
        f'{{{{ if $last }}}}{{{{ {q(parts.generation)} }}}}{{{{ end }}}}'
        f'{{{{ else if eq $m.Role "assistant" }}}}{{{{ {q(parts.assistant[0])} }}}}{{{{ $m.Content }}}}'
        f'{{{{ if not $last }}}}{{{{ {q(parts.assistant[1])} }}}}{{{{ end }}}}'
        + '{{ end }}{{ end }}'
    )


def modelfile_text(gguf_name: str, parts: TurnParts | None, stops: list[str]) -> str:
    lines = [f"FROM ./{gguf_name}"]
    if parts is not None:
        lines.append(f'TEMPLATE """{go_template(parts)}"""')
        if parts.default_system:
            lines.append(f'SYSTEM """{parts.default_system}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in dict.fromkeys(stops)]
    return "\n".join(lines) + "\n"


def write_modelfile(path: Path, gguf_name: str, tokenizer: Any, template: str, *, stops: list[str], log=print) -> None:
    """The Modelfile; where the template cannot be written in Ollama's language, one without a
    TEMPLATE (Ollama then reads the GGUF's own), said in the log."""
    try:
        parts = turn_parts(tokenizer, template)
    except LmtuneError as e:
        log(f"export: the Modelfile has no TEMPLATE ({e}); Ollama reads the chat template from the GGUF")
        parts = None
    path.write_text(modelfile_text(gguf_name, parts, stops), encoding="utf-8")
