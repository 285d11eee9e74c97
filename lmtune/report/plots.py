"""The report's figures, drawn with matplotlib's object API (a `Figure` saves through Agg: no pyplot,
no global backend state, no display needed). Each function returns a Figure, or None when the run
has nothing to draw (the report then leaves that figure out)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from .read import Run, task_metrics

CURVE_SKIP = ("loss", "perplexity")  # drawn in figures of their own
# Two sides of one measurement (preference pairs: chosen_logps and rejected_logps), drawn together in
# a figure of their own: their scale (summed log-probabilities, tens to hundreds of nats) would
# flatten the shares beside them, and what matters is how they move against each other.
PAIRED = (("chosen_", "rejected_"),)


def _figure(width: float = 9.0, height: float = 3.6, panels: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="tight")
    axes = fig.subplots(1, panels)
    for ax in np.atleast_1d(axes):
        ax.grid(True, alpha=0.3)
    return fig, axes


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100, format="png")
    return path


def series(records: list[dict[str, Any]], *keys: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(x, y) of the records whose nested value records[keys...] is a number."""
    xs, ys = [], []
    for r in records:
        v: Any = r
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(r.get(x), (int, float)):
            xs.append(r[x])
            ys.append(v)
    return xs, ys


def loss(run: Run) -> Figure | None:
    """Training loss (each logged window) and validation loss (each evaluation), by step and by epoch."""
    if not any("loss" in r for r in run.steps) and not series(run.evals, "eval", "loss")[0]:
        return None
    fig, axes = _figure(panels=2)
    for ax, x in zip(axes, ("step", "epoch")):
        for records, keys, label, style in ((run.steps, ("loss",), "training", "-"),
                                            (run.evals, ("eval", "loss"), "validation", "o-")):
            xs, ys = series(records, *keys, x=x)
            if xs:
                ax.plot(xs, ys, style, label=label, markersize=4)
        ax.set_xlabel(x)
        ax.set_ylabel("loss")
        ax.legend()
    return fig


def metric_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The (chosen_X, rejected_X) pairs among metric names (PAIRED), in the names' order."""
    pairs = []
    for name in names:
        for left, right in PAIRED:
            twin = right + name[len(left):]
            if name.startswith(left) and twin in names:
                pairs.append((name, twin))
    return pairs


def _paired_names(run: Run) -> list[tuple[str, str]]:
    return metric_pairs(list(dict.fromkeys([*task_metrics(run.task), *_eval_keys(run)])))


def validation_metrics(run: Run) -> Figure | None:
    """Every validation metric of the task (loss, perplexity and paired metrics aside, the tuned
    metric always) at each evaluation."""
    paired = {m for pair in _paired_names(run) for m in pair} - {run.metric}
    names = [m for m in task_metrics(run.task) or _eval_keys(run) if m not in CURVE_SKIP and m not in paired]
    curves = [(m, *series(run.evals, "eval", m)) for m in names]
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    fig, ax = _figure()
    for m, xs, ys in curves:
        ax.plot(xs, ys, "o-", label=m, markersize=4, linewidth=2.5 if m == run.metric else 1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("validation")
    ax.legend(fontsize="small", ncol=2)
    return fig


def paired_metrics(run: Run) -> Figure | None:
    """Each pair of metrics (chosen_logps beside rejected_logps) on a panel of its own at each
    evaluation: validation solid, the training sample dashed where it was scored."""
    pairs = [p for p in _paired_names(run) if series(run.evals, "eval", p[0])[0] or series(run.evals, "eval", p[1])[0]]
    if not pairs:
        return None
    fig, axes = _figure(width=min(4.5 * len(pairs), 13.5) if len(pairs) > 1 else 9.0, panels=len(pairs))
    for ax, pair in zip(np.atleast_1d(axes), pairs):
        for name, colour in zip(pair, ("tab:green", "tab:red")):
            for source, style, label in (("eval", "o-", name), ("train_eval", "s--", f"{name} (training sample)")):
                xs, ys = series(run.evals, source, name)
                if xs:
                    ax.plot(xs, ys, style, color=colour, label=label, markersize=4,
                            alpha=1.0 if source == "eval" else 0.5)
        ax.set_xlabel("step")
        ax.set_ylabel(" / ".join(pair))
        ax.legend(fontsize="small")
    return fig


def _eval_keys(run: Run) -> list[str]:
    return list(dict.fromkeys(k for r in run.evals for k, v in r["eval"].items() if isinstance(v, (int, float))))


def train_vs_validation(run: Run) -> Figure | None:
    """The tuned metric on the training sample and on validation, and the gap: how much better it is
    on training (positive and growing: overfitting)."""
    m = run.metric
    both = [r for r in run.evals if isinstance((r.get("train_eval") or {}).get(m), (int, float))
            and isinstance(r["eval"].get(m), (int, float))]
    if not both:
        return None
    steps = [r["step"] for r in both]
    val = np.array([r["eval"][m] for r in both], dtype=float)
    train = np.array([r["train_eval"][m] for r in both], dtype=float)
    gap = train - val if run.greater else val - train
    fig, axes = _figure(panels=2)
    axes[0].plot(steps, train, "o-", label="training sample", markersize=4)
    axes[0].plot(steps, val, "o-", label="validation", markersize=4)
    axes[0].set_ylabel(m)
    axes[0].legend()
    axes[1].plot(steps, gap, "o-", color="tab:red", markersize=4)
    axes[1].axhline(0, color="black", linewidth=0.8)
    axes[1].set_ylabel(f"gap ({m}: training better by)")
    for ax in axes:
        ax.set_xlabel("step")
    return fig


def _group_order(name: str) -> tuple[int, int, str, bool]:
    """head, then layer.0, layer.1, ... (by number), then the rest; a .no_decay twin after its group."""
    base = name.removesuffix(".no_decay")
    found = re.fullmatch(r"layer\.(\d+)", base)
    if found:
        return (1, int(found.group(1)), base, base != name)
    return (0 if base == "head" else 2, 0, base, base != name)


def lr_groups(steps: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, lr) per parameter group; a ".no_decay" twin left out where it always equals its group."""
    groups: dict[str, list[tuple[int, float]]] = {}
    for r in steps:
        for name, lr in (r.get("lrs") or {}).items():
            if isinstance(lr, (int, float)):
                groups.setdefault(str(name), []).append((r["step"], float(lr)))
    for name in [n for n in groups if n.endswith(".no_decay")]:
        twin = groups.get(name[: -len(".no_decay")])
        if twin is not None and len(twin) == len(groups[name]) and all(
                a[0] == b[0] and abs(a[1] - b[1]) <= 1e-9 * abs(a[1]) for a, b in zip(twin, groups[name])):
            del groups[name]
    return dict(sorted(groups.items(), key=lambda kv: _group_order(kv[0])))


def learning_rates(run: Run) -> Figure | None:
    """The learning rate of every optimizer group over the steps: the layers coloured bottom (dark)
    to top (light), the head and other groups in their own colours."""
    groups = lr_groups(run.steps)
    if not groups:
        xs, ys = series(run.steps, "lr")
        if not xs:
            return None
        groups = {"lr": list(zip(xs, ys))}
    fig, ax = _figure()
    layers = [n for n in groups if _group_order(n)[0] == 1 and not n.endswith(".no_decay")]
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    others = iter(["black", "tab:red", "tab:orange", "tab:gray", "tab:brown", "tab:pink"] * 4)
    for name, points in groups.items():
        xs, ys = zip(*points)
        base = name.removesuffix(".no_decay")
        if base in layers:
            colour = cmap(layers.index(base) / max(len(layers) - 1, 1) * 0.9)
        else:
            colour = next(others)
        # the head, embeddings, ...: wide and pale, so that a layer on the same rate still shows on top
        wide = base not in layers
        ax.plot(xs, ys, linestyle="--" if name.endswith(".no_decay") else "-", color=colour,
                label=name if wide or len(layers) <= 6 else None, linewidth=3.5 if wide else 1.3,
                alpha=0.45 if wide else 1.0, zorder=1 if wide else 2)
    if len(layers) > 6:  # many layers: a colour bar for them, the legend for the rest
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        bar = fig.colorbar(ScalarMappable(Normalize(0, (len(layers) - 1) / 0.9), cmap), ax=ax)
        bar.set_label("layer")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", ncol=2)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    return fig


def throughput(run: Run) -> Figure | None:
    xs, ys = series(run.steps, "samples_per_second")
    if not xs:
        return None
    fig, ax = _figure()
    ax.plot(xs, ys, "-", color="tab:blue", label="samples/s")
    ax.set_xlabel("step")
    ax.set_ylabel("samples per second")
    tx, ty = series(run.steps, "tokens_per_second")
    if tx:
        twin = ax.twinx()
        twin.plot(tx, ty, ":", color="tab:orange", label="tokens/s")
        twin.set_ylabel("tokens per second")
    return fig


def forgetting(run: Run) -> Figure | None:
    """Perplexity of general text at each evaluation, against the base model's."""
    xs, ys = series(run.evals, "forgetting", "perplexity")
    if not xs:
        return None
    fig, ax = _figure()
    ax.plot(xs, ys, "o-", label="tuned model", markersize=4)
    _, base = series(run.evals, "forgetting", "base_perplexity")
    if base:
        ax.axhline(base[-1], color="black", linestyle="--", label="base model")
    ax.set_xlabel("step")
    ax.set_ylabel("general-text perplexity")
    ax.legend()
    return fig


def perplexity(run: Run) -> Figure | None:
    xs, ys = series(run.evals, "eval", "perplexity")
    if not xs:
        return None
    fig, ax = _figure()
    ax.plot(xs, ys, "o-", label="validation", markersize=4)
    tx, ty = series(run.evals, "train_eval", "perplexity")
    if tx:
        ax.plot(tx, ty, "o-", label="training sample", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.legend()
    return fig


def confusion(labels: Sequence[str], counts: np.ndarray) -> Figure:
    """Rows: gold label; columns: predicted; colour: the share of the row; numbers: counts."""
    n = len(labels)
    size = min(3.5 + 0.45 * n, 16)
    fig = Figure(figsize=(size + 1.2, size), layout="tight")
    ax = fig.subplots()
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, label="share of the gold label")
    short = [label if len(label) <= 18 else label[:17] + "…" for label in labels]
    ax.set_xticks(range(n), short, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if shares[i, j] > 0.5 else "black")
    return fig


def overlay(runs: Sequence[Run], pick: Any, ylabel: str) -> Figure | None:
    """One curve per run against the epoch: `pick(run)` gives its (epochs, values)."""
    curves = [(r.name, *pick(r)) for r in runs]
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    import matplotlib

    fig, ax = _figure(height=4.2)
    cmap = matplotlib.colormaps["tab10" if len(curves) <= 10 else "viridis"]
    for i, (name, xs, ys) in enumerate(curves):
        colour = cmap(i) if len(curves) <= 10 else cmap(i / max(len(curves) - 1, 1))
        ax.plot(xs, ys, "o-" if len(xs) < 30 else "-", label=name, color=colour, markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if len(curves) <= 20:
        ax.legend(fontsize="small", ncol=2 if len(curves) > 6 else 1)
    return fig
