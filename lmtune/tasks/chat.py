"""Chat templates: a conversation rendered as text with the spans of its assistant turns (what
training learns), and the text that asks a model for the next assistant turn (what generation
starts from). Without a template, a plain User/Assistant layout."""

from __future__ import annotations

from typing import Any

from ..core.errors import LmtuneError


# render_chat's plain layout as a Jinja chat template, for where a template must be written down (a
# GGUF file's metadata) for a model that has none; tests/test_export_gguf.py checks that they agree
PLAIN_CHAT_TEMPLATE = (  # (every literal an expression: chat templates drop a newline after a block tag)
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '### System:\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\\n' }}{% else %}{{ '### Assistant:\\n' }}{% endif %}"
    "{{ message['content'] }}{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)


def render_chat(messages: list[dict[str, str]], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as text, with the character spans of the assistant turns (to train on).
    With a chat template, each assistant turn is the text that its message adds after the
    generation prompt; without one, a plain User/Assistant layout is used."""
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not (full.startswith(upto) and upto.startswith(prefix)):
                raise LmtuneError("the tokenizer's chat template does not render a conversation turn by turn")
            spans.append((len(prefix), len(upto)))
        return full, spans
    eos = tokenizer.eos_token or ""
    text, spans = "", []
    for m in messages:
        head = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}[m["role"]]
        text += head
        start = len(text)
        text += m["content"] + (eos if m["role"] == "assistant" else "") + "\n\n"
        if m["role"] == "assistant":
            spans.append((start, len(text) - 2))
    return text, spans


def prompt_text(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """The text that asks the model for the next assistant turn."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text, _ = render_chat(messages, tokenizer)
    return text + "### Assistant:\n"
