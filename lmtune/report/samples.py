"""The sections made from the final model's validation predictions (validation_samples.jsonl, whose
rows each task writes: tasks/*.py validation_samples) and the per-class metrics. A section is drawn
from the rows' shape: {label, predicted, confidence} rows (classification), {tokens, gold,
predicted} (tagging), {question, answers, predicted} (question answering), {prompt, reference,
generated} (generation), {chosen_logps, rejected_logps, ...} (preference pairs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .read import Run, per_class_title
from .tables import Figures, Section, esc, number, table

CONFIDENT_ERRORS = 10
SENTENCES = 8
ANSWERS = 12
GENERATIONS = 10
PAIRS = 15
PAIR_TEXTS = ("line", "prompt", "chosen", "rejected")  # the columns that say which pair a row is, where present
TEXT_CHARS = 400  # a longer text is cut in the tables (the whole row is in validation_samples.jsonl)


def _cut(text: Any, limit: int = TEXT_CHARS) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rows(run: Run, *keys: str) -> list[dict[str, Any]]:
    return [r for r in run.samples if all(k in r for k in keys)]


def per_class(run: Run) -> Section | None:
    """Precision, recall, F1 and support of each class (entity type) on validation. A run written
    before the per-class F1 was named "f1" has it as "f1-score" (sklearn's name)."""
    rows = (run.metrics.get("validation") or {}).get("per_class")
    if not isinstance(rows, dict) or not rows:
        return None
    title = per_class_title(run.task)
    body = table([title.removeprefix("Per ").lower(), "precision", "recall", "F1", "support"],
                 [[name, r.get("precision"), r.get("recall"), r.get("f1", r.get("f1-score")), r.get("support")]
                  for name, r in rows.items() if isinstance(r, dict)])
    return Section(f"{title}: precision, recall, F1", body, "per_class")


def _label_order(run: Run, rows: list[dict[str, Any]]) -> list[str]:
    seen = {str(r["label"]) for r in rows} | {str(r["predicted"]) for r in rows}
    known = list((run.metrics.get("validation") or {}).get("per_class") or {}) or run.labels
    return list(known) + sorted(seen - set(known))


def confusion_counts(run: Run) -> tuple[list[str], list[list[int]]] | None:
    """The labels and the validation confusion matrix (rows gold, columns predicted) of a run whose
    samples are {label, predicted, confidence} rows; None for other runs."""
    rows = _rows(run, "label", "predicted", "confidence")
    if not rows:
        return None
    labels = _label_order(run, rows)
    index = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for r in rows:
        counts[index[str(r["label"])]][index[str(r["predicted"])]] += 1
    return labels, counts


def confusion(run: Run, figs: Figures) -> Section | None:
    found = confusion_counts(run)
    if found is None:
        return None
    from . import plots

    labels, matrix = found
    rows = _rows(run, "label", "predicted", "confidence")
    counts = np.array(matrix, dtype=int)
    image = figs.add("confusion_matrix", plots.confusion(labels, counts), "Confusion matrix (validation)")
    grid = table(["gold \\ predicted", *labels], [[label, *map(int, counts[i])] for i, label in enumerate(labels)],
                 css="confusion")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    body = (f"<p>{len(rows):,} validation examples, {number(float(accuracy))} correct; rows are the gold labels, "
            f"columns the predicted ones.</p>{image}{grid}")
    return Section("Confusion matrix", body, "confusion")


def confident_errors(run: Run) -> Section | None:
    """The wrong predictions the model was surest of: mislabelled examples often show up here."""
    rows = [r for r in _rows(run, "label", "predicted", "confidence") if str(r["label"]) != str(r["predicted"])]
    if not rows:
        return None
    rows.sort(key=lambda r: -float(r["confidence"]))
    pairs = any("text_pair" in r for r in rows)
    headers = ["text", *(["second text"] if pairs else []), "gold", "predicted", "confidence"]
    body = table(headers, [[_cut(r.get("text")), *([_cut(r.get("text_pair"))] if pairs else []), r["label"],
                            r["predicted"], float(r["confidence"])] for r in rows[:CONFIDENT_ERRORS]])
    return Section(f"Most confident errors (top {min(len(rows), CONFIDENT_ERRORS)} of {len(rows):,})", body, "errors")


def _marked(tokens: list[str], tags: list[Any], other: set[tuple[str, int, int]], ok: str, bad: str) -> str:
    """The sentence with its entities marked: class `ok` where the same entity is in `other` (the
    other side: gold or predicted), else `bad`; the type after each entity."""
    from ..tasks.token_classification import spans

    found = spans([t if isinstance(t, str) else None for t in tags])
    starts = {a: (kind, b) for kind, a, b in found}
    out, i = [], 0
    while i < len(tokens):
        if i in starts:
            kind, b = starts[i]
            css = ok if (kind, i, b) in other else bad
            words = esc(" ".join(tokens[i : b + 1]))
            out.append(f'<span class="ent {css}">{words}<sub>{esc(kind)}</sub></span>')
            i = b + 1
        else:
            out.append(esc(tokens[i]))
            i += 1
    return " ".join(out)


def sentences(run: Run) -> Section | None:
    """A few validation sentences, those with a wrong entity first, gold and predicted entities marked."""
    rows = [r for r in _rows(run, "tokens", "gold", "predicted") if isinstance(r["tokens"], list) and r["tokens"]]
    if not rows:
        return None
    from ..tasks.token_classification import spans

    wrong = [r for r in rows if list(r["gold"]) != list(r["predicted"])]
    right = [r for r in rows if list(r["gold"]) == list(r["predicted"])]
    shown = (wrong + right)[:SENTENCES]
    lines = []
    for r in shown:
        gold = set(spans([t if isinstance(t, str) else None for t in r["gold"]]))
        pred = set(spans([t if isinstance(t, str) else None for t in r["predicted"]]))
        lines.append([_marked(r["tokens"], r["gold"], pred, "ok", "missed"), _marked(r["tokens"], r["predicted"], gold, "ok", "wrong")])
    body = (f"<p>{len(wrong):,} of {len(rows):,} validation sentences have a wrong tag; {len(shown)} shown, those first. "
            '<span class="ent ok">found</span> <span class="ent missed">missed</span> '
            '<span class="ent wrong">wrong</span></p>' + table(["gold", "predicted"], lines, raw=(0, 1), css="sentences"))
    return Section("Sentences: gold vs predicted entities", body, "sentences")


def _context(context: str, answer: str) -> str:
    """The context with the predicted answer marked (its first occurrence)."""
    at = context.find(answer) if answer else -1
    if at < 0:
        return esc(context)
    return esc(context[:at]) + f"<mark>{esc(answer)}</mark>" + esc(context[at + len(answer) :])


def _answered(row: dict[str, Any]) -> bool:
    """Whether the predicted answer is one of the gold ones (the empty answer for none)."""
    if isinstance(row.get("f1"), (int, float)):
        return float(row["f1"]) >= 1.0
    return row["predicted"] in (row["answers"] or [""])


def answers(run: Run) -> Section | None:
    rows = _rows(run, "question", "answers", "predicted")
    if not rows:
        return None
    v = run.metrics.get("validation") or {}
    wrong = [r for r in rows if not _answered(r)]
    right = [r for r in rows if _answered(r)]
    shown = (wrong + right)[:ANSWERS]
    head = "".join(f"{name} <b>{esc(number(v[key]))}</b>; " for key, name in (("exact_match", "exact match"), ("f1", "F1"))
                   if isinstance(v.get(key), (int, float)))
    body = (f"<p>{head}{len(wrong):,} of {len(rows):,} validation questions not answered exactly; "
            f"{len(shown)} shown, those first. The predicted answer is marked in the context.</p>"
            + table(["question", "context", "gold", "predicted", "F1"],
                    [[esc(_cut(r["question"])), _context(str(r.get("context", "")), str(r["predicted"])),
                      esc(" | ".join(map(str, r["answers"])) or "(no answer)"), esc(r["predicted"] or "(no answer)"),
                      esc(number(r.get("f1")))] for r in shown], raw=(0, 1, 2, 3, 4), css="answers"))
    return Section("Answers vs gold", body, "answers")


def generations(run: Run) -> Section | None:
    rows = _rows(run, "prompt", "generated")
    if not rows:
        return None
    unfinished = sum(r.get("finished") is False for r in rows)
    shown = rows[:GENERATIONS]
    body = (f"<p>{len(rows):,} validation rows generated greedily, {unfinished:,} cut at eval.max_new_tokens; "
            f"{len(shown)} shown.</p>"
            + table(["prompt", "reference", "generated", "finished"],
                    [[f"<pre>{esc(_cut(r['prompt'], 1200))}</pre>", f"<pre>{esc(_cut(r.get('reference'), 1200))}</pre>",
                      f"<pre>{esc(_cut(r['generated'], 1200))}</pre>", esc(number(r.get("finished")))] for r in shown],
                    raw=(0, 1, 2, 3), css="generations"))
    return Section("Generations vs references", body, "generations")


def _pair_margin(row: dict[str, Any]) -> float:
    """How far the chosen answer is ahead of the rejected: by reward where the row has rewards, else
    by log-probability."""
    side = "reward" if "chosen_reward" in row and "rejected_reward" in row else "logps"
    a, b = row.get(f"chosen_{side}"), row.get(f"rejected_{side}")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return float(a) - float(b) if numbers else float("nan")


def pairs(run: Run) -> Section | None:
    """Validation pairs with the chosen and rejected answers' log-probabilities (and rewards): those
    the model ranks the wrong way round first, the worst first."""
    rows = _rows(run, "chosen_logps", "rejected_logps")
    if not rows:
        return None
    texts = [k for k in PAIR_TEXTS if any(k in r for r in rows)]
    numbers = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in texts
               and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)]
    ranked = sorted(rows, key=lambda r: (not _pair_margin(r) <= 0, _pair_margin(r)))  # NaN margins last
    wrong = sum(_pair_margin(r) <= 0 for r in rows)
    shown = ranked[:PAIRS]
    by = "reward" if any("chosen_reward" in r for r in rows) else "log-probability"
    body = (f"<p>{len(rows):,} validation pairs, {wrong:,} with the rejected answer's {by} at or above the chosen's; "
            f"{len(shown)} shown, those first (the smallest margin first).</p>"
            + table([*texts, *numbers, "margin"],
                    [[_cut(r.get(k)) if isinstance(r.get(k), str) else r.get(k) for k in texts]
                     + [r.get(k) for k in numbers] + [_pair_margin(r)] for r in shown], css="answers"))
    return Section("Validation pairs: chosen vs rejected", body, "pairs")


def sections(run: Run, figs: Figures) -> list[Section]:
    """Every sample section the run has data for, in the order shown."""
    found = [per_class(run), confusion(run, figs), confident_errors(run), sentences(run), answers(run), generations(run),
             pairs(run)]
    return [s for s in found if s is not None]
