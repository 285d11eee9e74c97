"""Explanations (lmtune.infer.explain) shown to a person: coloured text for a terminal (plain text with
[+]/[-] markers where colour is off) and a self-contained HTML page.

Green: the word pushes the score towards the explained prediction; red: against it. The stronger
the colour, the larger the word's share, relative to the largest share in the same explained
prediction (so colours compare words within one prediction, not across inputs)."""

from __future__ import annotations

import html
import os
from typing import IO, Any

from .explain import Explanation, Target

FAINT = 0.1  # words whose share is under this part of the largest are left uncoloured and unmarked
# 256-colour backgrounds, light to strong; the text on them in black, white on the strongest
GREENS = (194, 114, 28)
REDS = (224, 210, 160)


def color_enabled(stream: IO[str]) -> bool:
    """Colour for a terminal, unless NO_COLOR is set (https://no-color.org)."""
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def _level(value: float, largest: float) -> int:
    """0 (uncoloured) to 3 (strongest) by the value's share of the largest."""
    share = abs(value) / largest if largest > 0 else 0.0
    return 0 if share < FAINT else 1 if share < 0.4 else 2 if share < 0.7 else 3


def _largest(target: Target) -> float:
    return max((abs(a) for a in target.attributions), default=0.0)


def _head(e: Explanation, t: Target) -> str:
    what = f"predicted {t.label} (p={t.confidence:.3f})"
    if t.word is not None:
        return f"word {t.word} {e.words[t.word]!r}: {what}"
    return what


def _numbers(t: Target) -> str:
    change = t.score - t.baseline_score
    return (f"logit of {t.label} {t.score:.4f}, on the baseline {t.baseline_score:.4f}, difference {change:.4f}; "
            f"attributions sum to {change + t.delta:.4f}, delta {t.delta:+.2g}")


def _top(e: Explanation, t: Target, n: int = 5) -> str:
    order = sorted(range(len(e.words)), key=lambda i: -abs(t.attributions[i]))[:n]
    return ", ".join(f"{e.words[i]} {t.attributions[i]:+.3f}" for i in order)


def _cut(e: Explanation) -> str:
    return " [… cut: the input is longer than the model reads]" if e.truncated else ""


def text_line(e: Explanation, t: Target, *, color: bool) -> str:
    """The input's words, each coloured (or marked [+]/[-]) by its attribution to `t`."""
    largest = _largest(t)
    out = []
    for word, gap, value in zip(e.words, e.gaps, t.attributions):
        level = _level(value, largest)
        if level == 0:
            out.append(gap + word)
        elif color:
            background = (GREENS if value > 0 else REDS)[level - 1]
            foreground = 231 if level == 3 else 16
            out.append(f"{gap}\x1b[48;5;{background};38;5;{foreground}m{word}\x1b[0m")
        else:
            out.append(f"{gap}{word}[{'+' if value > 0 else '-'}]")
    return "".join(out).strip() + _cut(e)


def render_text(explanations: list[Explanation], *, color: bool = False) -> str:
    """Each input: per explained prediction its label and confidence, the words coloured, the top
    words with their attributions, and the completeness check."""
    blocks = []
    for i, e in enumerate(explanations, start=1):
        lines = [f"[{i}]" + ("" if e.targets else " no word tagged other than O (explain one with --word N)")]
        if not e.targets:
            lines.append("    " + " ".join(e.words) + _cut(e))
        for t in e.targets:
            lines += [f"    {_head(e, t)}", f"    {text_line(e, t, color=color)}",
                      f"    top: {_top(e, t)}", f"    {_numbers(t)}"]
        blocks.append("\n".join(lines))
    legend = ("green: pushes towards the prediction, red: against it; stronger colour, larger share"
              if color else "[+]: the word pushes towards the prediction, [-]: against it")
    return "\n\n".join(blocks + [legend])


# ---------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }
section { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
h2 { font-size: 1em; margin: 0.2em 0; }
.head { font-weight: 600; margin: 0.8em 0 0.2em; }
.words { font-size: 1.1em; line-height: 2em; white-space: pre-wrap; }
.words span { border-radius: 3px; padding: 0.1em 0.15em; }
.num, .top { color: #555; font-size: 0.9em; margin: 0.2em 0; }
.legend span { padding: 0.1em 0.4em; border-radius: 3px; margin-right: 0.5em; }
"""


def _background(value: float, largest: float) -> str:
    share = min(abs(value) / largest, 1.0) if largest > 0 else 0.0
    if share < FAINT:
        return ""
    rgb = "40, 160, 60" if value > 0 else "210, 45, 45"
    return f"background: rgba({rgb}, {0.15 + 0.75 * share:.2f})"


def _html_target(e: Explanation, t: Target) -> list[str]:
    largest = _largest(t)
    spans = []
    for word, gap, value in zip(e.words, e.gaps, t.attributions):
        style = _background(value, largest)
        spans.append(html.escape(gap) + f'<span style="{style}" title="{value:+.4f}">{html.escape(word)}</span>')
    return [
        f'<p class="head">{html.escape(_head(e, t))}</p>',
        f'<p class="words">{"".join(spans)}{html.escape(_cut(e))}</p>',
        f'<p class="top">top: {html.escape(_top(e, t))}</p>',
        f'<p class="num">{html.escape(_numbers(t))}</p>',
    ]


def render_html(explanations: list[Explanation], *, title: str = "lmtune explain") -> str:
    """A self-contained page (inline style, no scripts): one block per input, with a legend."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<p class="legend"><span style="background: rgba(40, 160, 60, 0.7)">towards the prediction</span>'
        '<span style="background: rgba(210, 45, 45, 0.7)">against it</span> stronger colour: larger share of the '
        "explained logit (relative to the largest word of the same prediction); hover a word for its attribution. "
        "Integrated gradients from a baseline of pad tokens; delta: sum of attributions − (logit − baseline logit).</p>",
    ]
    for i, e in enumerate(explanations, start=1):
        parts.append(f"<section><h2>Input {i}</h2>")
        if not e.targets:
            parts.append(f'<p class="head">no word tagged other than O</p><p class="words">{html.escape(" ".join(e.words))}</p>')
        for t in e.targets:
            parts += _html_target(e, t)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def summary(explanations: list[Explanation]) -> dict[str, Any]:
    """The largest completeness error relative to the explained difference, over every prediction."""
    worst = max((abs(t.delta) / max(abs(t.score - t.baseline_score), 1e-12) for e in explanations for t in e.targets),
                default=0.0)
    return {"inputs": len(explanations), "predictions": sum(len(e.targets) for e in explanations),
            "largest_relative_delta": worst}
