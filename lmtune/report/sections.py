"""The sections of one run's report that every task has: what was run, the diagnosis, the final
metrics and the curves of the history. A section whose data the run lacks is left out (None)."""

from __future__ import annotations

from typing import Any

from .read import Run, task_metrics
from .tables import Figures, Section, bullets, esc, key_values, number, scalars, table

SPLITS = ("validation", "test", "train_sample")  # metrics.json's evaluated splits, in the order shown
NOT_SPLITS = ("train", "diagnosis", "forgetting")


def _strategy(config: dict[str, Any]) -> str:
    s = config.get("strategy")
    if not isinstance(s, dict):
        return str(s or "")
    details = ", ".join(f"{k}={v}" for k, v in s.items() if k != "name" and v is not None and not isinstance(v, (dict, list)))
    return f"{s.get('name', '')} ({details})" if details else str(s.get("name", ""))


def summary(run: Run) -> Section:
    """The config in brief and the run's numbers (from metrics.json, or the history of an unfinished run)."""
    c, t = run.config, run.config.get("train") or {}
    budget = f"{t['max_steps']} steps" if t.get("max_steps") else t.get("epochs")
    config = key_values([
        ("model", c.get("model")), ("task", run.task), ("strategy", _strategy(c)),
        ("learning rate", t.get("lr") if t.get("lr") is not None else "the strategy's default"),
        ("epochs" if not t.get("max_steps") else "budget", budget), ("batch size", t.get("batch_size")),
        ("seed", t.get("seed")), ("metric", run.metric), ("training data", (c.get("data") or {}).get("train")),
    ])
    stats = run.metrics.get("train") if isinstance(run.metrics.get("train"), dict) else {}
    if stats:
        trainable, total = stats.get("trainable_parameters"), stats.get("parameters")
        share = f" ({100 * trainable / total:.2f}%)" if isinstance(trainable, int) and total else ""
        numbers = key_values([
            ("steps", stats.get("steps")), ("samples", stats.get("samples")), ("seconds", stats.get("seconds")),
            ("samples per second", stats.get("samples_per_second")), ("tokens per second", stats.get("tokens_per_second")),
            ("best step", stats.get("best_step")), ("stopped early", stats.get("stopped_early")),
            ("trainable parameters", f"{number(trainable)}{share}" if trainable is not None else None),
            ("parameters", total), ("peak memory (MB)", stats.get("peak_memory_mb")),
        ])
    else:
        last = run.steps[-1] if run.steps else (run.evals[-1] if run.evals else {})
        numbers = key_values([("state", "unfinished (no metrics.json yet)"), ("last step", last.get("step")),
                              ("last epoch", last.get("epoch"))])
    state = f"<p>search trial state: {esc(run.state)}</p>" if run.state else ""
    body = (f'<p class="path">{esc(run.path)}</p>{state}<div class="pair"><div><h3>Config</h3>{config}</div>'
            f"<div><h3>Run</h3>{numbers}</div></div>")
    return Section("Run", body, "run")


def diagnosis(run: Run) -> Section | None:
    """metrics.json's diagnosis: the verdict, why, what to try, and its other findings (best vs last)."""
    d = run.metrics.get("diagnosis")
    if not isinstance(d, dict) or not d:
        return None
    parts = [f'<p class="verdict">{esc(d.get("verdict", ""))}</p>'] if d.get("verdict") else []
    for key, title in (("reasons", "Why"), ("advice", "What to try")):
        items = d.get(key)
        if items:
            parts.append(f"<h3>{title}</h3>" + bullets(items if isinstance(items, list) else [items]))
    rest = {k: v for k, v in d.items() if k not in ("verdict", "reasons", "advice")}
    best, last = rest.pop("best", None), rest.pop("last", None)
    if isinstance(best, dict) and isinstance(last, dict):
        keys = list(dict.fromkeys([*best, *last]))
        parts.append("<h3>Best vs last evaluation</h3>" + table(["", "best", "last"], [[k, best.get(k), last.get(k)] for k in keys]))
    elif best is not None or last is not None:
        rest.update({k: v for k, v in (("best", best), ("last", last)) if v is not None})
    plain = [(k.replace("_", " "), v) for k, v in rest.items() if not isinstance(v, (dict, list))]
    if any(v is not None for _, v in plain):
        parts.append("<h3>Details</h3>" + key_values(plain))
    for key, value in rest.items():
        if isinstance(value, dict):
            parts.append(f"<h3>{esc(key.replace('_', ' ').capitalize())}</h3>"
                         + key_values([(k.replace("_", " "), _plain(v)) for k, v in value.items()]))
        elif isinstance(value, list) and value:
            parts.append(f"<h3>{esc(key.replace('_', ' ').capitalize())}</h3>" + bullets([_plain(v) for v in value]))
    return Section("Diagnosis", "".join(parts), "diagnosis")


def _plain(value: Any) -> Any:
    """A value for one cell: nested structures as compact JSON."""
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, ensure_ascii=False)
    return value


def metric_columns(task: str, rows: list[dict[str, Any]]) -> list[str]:
    """The numeric metric names of the rows: the task's own first, in its order."""
    present = list(dict.fromkeys(k for r in rows for k in scalars(r)))
    own = [m for m in task_metrics(task) if m in present]
    return own + [k for k in present if k not in own]


def final_metrics(run: Run) -> Section | None:
    m = run.metrics
    splits = [s for s in SPLITS if isinstance(m.get(s), dict)]
    splits += [s for s, v in m.items() if isinstance(v, dict) and s not in SPLITS and s not in NOT_SPLITS]
    if not splits:
        return None
    columns = metric_columns(run.task, [m[s] for s in splits])
    body = table(["split", *columns], [[s.replace("_", " "), *(scalars(m[s]).get(c) for c in columns)] for s in splits])
    if isinstance(m.get("forgetting"), dict):
        body += "<h3>Forgetting (general-text perplexity)</h3>" + key_values(list(m["forgetting"].items()))
    return Section("Final metrics", body, "metrics")


def curves(run: Run, figs: Figures) -> list[Section]:
    """The history's figures: loss, validation metrics, chosen vs rejected, training sample vs
    validation, learning rates, throughput, forgetting, perplexity; each only where the history has
    its numbers."""
    from . import plots

    out = []
    for name, draw, title, note in (
        ("loss", plots.loss, "Loss", "training loss (mean of each logged window) and validation loss, by step and by epoch"),
        ("validation_metrics", plots.validation_metrics, "Validation metrics", "each evaluation; the tuned metric drawn thicker"),
        ("paired_metrics", plots.paired_metrics, "Chosen vs rejected",
         "each chosen_ metric beside its rejected_ twin at each evaluation (the training sample dashed): the chosen "
         "should rise above the rejected; both falling means both answers became less likely"),
        ("train_vs_validation", plots.train_vs_validation, "Training sample vs validation",
         f"{run.metric} on a seeded sample of the training split and on validation; the gap grows when the model overfits"),
        ("learning_rates", plots.learning_rates, "Learning rate per parameter group",
         "one line per optimizer group (a .no_decay twin only where it differs from its group)"),
        ("throughput", plots.throughput, "Throughput", "training samples (and tokens) per second of each logged window"),
        ("forgetting", plots.forgetting, "Forgetting", "perplexity of general text: above the base model's line, the tuned model has lost some of what it knew"),
        ("perplexity", plots.perplexity, "Perplexity", "validation perplexity at each evaluation"),
    ):
        html = figs.add(name, draw(run), title)
        if html:
            out.append(Section(title, f"<p>{esc(note)}</p>{html}", name))
    return out
