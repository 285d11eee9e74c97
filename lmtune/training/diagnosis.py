"""Did a finished run overfit, underfit, or neither? A reading of its history (history.jsonl), and
what to change in the config next, in lmtune's own keys.

The verdict, by the first rule that applies:

1. too_few_evaluations: fewer than two evaluations carry the metric; nothing can have changed.
2. underfitting: the best validation score is at chance (the majority class's share, plus
   CHANCE_MARGIN): the model learned nothing the labels' counts did not already say.
3. overfitting: after the best evaluation, validation got worse (the metric by more than its
   tolerance, or the metric held while the validation loss rose) AND the train-validation gap
   grew, or the validation loss rose while the training loss kept falling.
4. underfitting: the training and validation losses were both still falling steeply over the last
   evaluations (validation alone where no training loss was logged): more training would still
   have paid.
5. healthy.

Beside the verdict, two findings where the history measured what they need: forgetting (general-text
perplexity against the base model's) and, where the evaluations report the chosen and rejected
answers' log-probabilities (chosen_logps, rejected_logps), likelihood displacement: the chosen
answers became less likely over the run, so that the margin grew only because the rejected answers
fell faster (a known failure of DPO and its relatives).

The gap is the train-sample metric (train_eval, written when eval.train_sample > 0) minus the
validation metric, signed so that positive means better on training; where no train_eval was
written, the validation loss minus the training loss, that from train_eval or else the mean loss of
the step records since the evaluation before (a stand-in: it was measured in training mode, with
dropout, on the batches as they went by).

A diagnosis is advice about a run that has already finished: it never raises. Records that are
not dicts, missing keys, strings and NaN where numbers belong are read as "not measured".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..tasks.run_config import key_tasks

VERDICTS = ("overfitting", "underfitting", "healthy", "too_few_evaluations")

# Every metric with greater-is-better in lmtune is a share in [0, 1] (accuracy, F1, exact match,
# ROUGE, BLEU and chrF as shares). One point of it is about the noise between two evaluations of a
# validation split of a few hundred examples, so a drop of one point or less is not "worse".
SCORE_TOLERANCE = 0.01
# Losses and perplexities have no fixed scale: a rise counts when it is more than 3% of the value
# it rose from (validation losses wobble by a percent or two from one evaluation to the next).
LOSS_TOLERANCE = 0.03
# "Still falling" means more than noise at every one of the last STILL_FALLING_INTERVALS steps from
# one evaluation to the next: a loss down by more than 5% of itself, a score (where the validation
# loss is missing) up by more than two points. A run whose last step was smaller than that has
# reached a plateau, which is where a run of the right length ends.
STILL_FALLING_LOSS = 0.05
STILL_FALLING_SCORE = 0.02
STILL_FALLING_INTERVALS = 2
# A best validation score within two points of chance is chance: a model that learned something
# real beats always answering the majority class by more than that.
CHANCE_MARGIN = 0.02
# Perplexity of general text up by more than 20% of the base model's: the tuning has cost the model
# a noticeable part of what it knew (below that, a change of domain alone moves it).
FORGETTING_LIMIT = 0.20
# The chosen answers' mean summed log-probability lower than at the first evaluation by more than
# both: 1 nat (the chosen answers less than e^-1, 37%, as likely as they were) and 2% of its size (a
# long answer's sum moves by a nat on a change of a few thousandths of a nat per token). The
# validation pairs and the model's evaluation are fixed, so a change between evaluations is the
# training's, not sampling noise.
CHOSEN_FALL_NATS = 1.0
CHOSEN_FALL_SHARE = 0.02
CHOSEN, REJECTED = "chosen_logps", "rejected_logps"

# Strategies that leave part of the model frozen (for the whole run, or, gradual, for its start).
FROZEN_STRATEGIES = ("partial", "lora", "gradual")
# Strategies that train fewer weights than full, or move the lower layers less.
GENTLER_STRATEGIES = ("lora", "partial", "adaptive", "gradual")


@dataclass
class Evaluation:
    """One evaluation record, as numbers (None: not measured or not a finite number)."""

    step: int | None
    epoch: float | None
    value: float | None  # the validation metric
    loss: float | None  # the validation loss
    train_value: float | None  # the metric on the training sample (train_eval)
    train_loss: float | None  # train_eval's loss, else the mean loss of the step records since the last evaluation
    train_loss_from: str | None  # "train_sample" or "steps"
    forgetting: dict[str, float] | None
    scores: dict[str, float]  # every finite number of the validation record, by name

    def gap(self, greater: bool) -> float | None:
        """How much better on the training sample than on validation (positive: better on training)."""
        if self.value is None or self.train_value is None:
            return None
        return self.train_value - self.value if greater else self.value - self.train_value

    def loss_gap(self) -> float | None:
        """Validation loss minus training loss (positive: lower on training)."""
        if self.loss is None or self.train_loss is None:
            return None
        return self.loss - self.train_loss

    def as_dict(self, metric: str, greater: bool) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "metric": metric,
            "validation": self.value,
            "validation_loss": self.loss,
            "train": self.train_value,
            "train_loss": self.train_loss,
            "train_loss_from": self.train_loss_from,
            "gap": _round(self.gap(greater)),
            "loss_gap": _round(self.loss_gap()),
        }


def diagnose(
    history: list[dict],
    metric: str,
    greater: bool,
    *,
    chance: dict[str, float] | None = None,
    config: dict | None = None,
) -> dict:
    """The diagnosis of a finished run (JSON-serialisable, no NaN): verdict, reasons, advice, the
    best and the last evaluation, the epoch where validation stopped improving, whether the
    train-validation gap grew after the best evaluation, and forgetting where it was measured.

    `history`: history.jsonl's records; `metric`/`greater`: train.metric and its direction;
    `chance`: metric -> chance level (classification: {"accuracy": the majority class's share of
    validation}); `config`: the run's config.yaml as a dict, so that advice names current values."""
    metric = str(metric)
    greater = bool(greater)
    config = config if isinstance(config, dict) else {}
    reasons: list[str] = []
    metric, greater, evals, scored = _read_by(history, metric, greater, reasons)
    best = _best(scored, greater)
    last = scored[-1] if scored else None
    after = scored[scored.index(best) + 1:] if best is not None else []
    result: dict[str, Any] = {
        "verdict": "healthy",
        "metric": metric,
        "greater_is_better": greater,
        "evaluations": len(scored),
        "best": best.as_dict(metric, greater) if best else None,
        "last": last.as_dict(metric, greater) if last else None,
        "stopped_improving_epoch": best.epoch if best is not None and after else None,
        "gap_grew": None,
        "reasons": reasons,
        "advice": [],
    }
    forgetting = _forgetting(evals)
    if forgetting is not None:
        result["forgetting"] = forgetting

    at_chance = _at_chance(best, chance, metric, greater)
    if best is None or last is None or len(scored) < 2:
        _too_few_evaluations(result, len(scored), metric, at_chance, config)
    else:
        _judge(result, scored, best, last, bool(after), at_chance, config)
    _forgetting_advice(result, scored, greater, config)
    _displacement_finding(result, evals, best, config)
    return result


def _read_by(history: list[dict], metric: str, greater: bool, reasons: list[str]) -> tuple[str, bool, list[Evaluation], list[Evaluation]]:
    """(the metric the run is read by, its direction, the evaluations, those that report it): the
    run's metric, or the validation loss where no evaluation reported the metric (a reason says so)."""
    evals = _evaluations(history, metric)
    scored = [e for e in evals if e.value is not None]
    if not scored and metric != "loss" and any(e.loss is not None for e in evals):
        reasons.append(f"no evaluation reported {metric}; read by the validation loss instead")
        metric, greater = "loss", False
        evals = _evaluations(history, metric)
        scored = [e for e in evals if e.value is not None]
    return metric, greater, evals, scored


def _too_few_evaluations(result: dict[str, Any], n: int, metric: str, at_chance: str | None, config: dict) -> None:
    """The verdict of a run with fewer than two evaluations: no trend to read."""
    reasons, advice = result["reasons"], result["advice"]
    result["verdict"] = "too_few_evaluations"
    reasons.append(f"{n} evaluation{'s' if n != 1 else ''} with validation {metric}; a trend needs at least 2")
    advice.append("evaluate more often: set train.eval_steps (an evaluation every N steps), or train for more train.epochs")
    if at_chance:
        reasons.append(at_chance)
        advice.append(_labels_advice(config))


def _judge(result: dict[str, Any], scored: list[Evaluation], best: Evaluation, last: Evaluation, improved_before_end: bool,
           at_chance: str | None, config: dict) -> None:
    """The verdict from two or more evaluations: underfitting (at chance, or still improving),
    overfitting (worse at the end, with a growing gap or a rising loss while training's fell), or
    healthy; with its reasons and advice."""
    metric, greater = result["metric"], result["greater_is_better"]
    reasons, advice = result["reasons"], result["advice"]
    gap_grew, gap_fact = _gap_grew(best, last, greater)
    result["gap_grew"] = gap_grew
    worse_fact = _got_worse(best, last, metric, greater)
    falling_fact = _train_kept_falling(best, last)
    loss_rose = worse_fact is not None and last.loss is not None and best.loss is not None and \
        _rose(best.loss, last.loss)

    if at_chance:
        result["verdict"] = "underfitting"
        reasons.append(at_chance)
        advice.append(_labels_advice(config))
        advice.extend(_underfitting_advice(config, still_falling=False))
    elif worse_fact and (gap_grew or (loss_rose and falling_fact)):
        result["verdict"] = "overfitting"
        reasons.append(worse_fact)
        reasons.append(gap_fact if gap_grew else f"validation loss rose while {falling_fact}")
        advice.extend(_overfitting_advice(config, best))
    else:
        still = _still_falling(scored, metric, greater)
        if still:
            result["verdict"] = "underfitting"
            reasons.extend(still)
            advice.extend(_underfitting_advice(config, still_falling=True))
        elif worse_fact:
            reasons.append(worse_fact)
            reasons.append(gap_fact or "the train-validation gap was not measured at both evaluations")
            advice.append(_unstable_advice(config))
        elif improved_before_end:
            reasons.append(f"validation {metric} held within {_tolerance_text(greater)} of its best "
                           f"(epoch {_epoch(best.epoch)}) to the end")
        else:
            reasons.append(f"validation {metric} was best at the last evaluation (epoch {_epoch(last.epoch)}), "
                           "with no steep fall of both losses at the end")


def lines(diagnosis: dict) -> list[str]:
    """A few lines for the terminal: the verdict and why, best against last (train and validation),
    then each piece of advice."""
    if not isinstance(diagnosis, dict):
        return []
    metric = diagnosis.get("metric", "metric")
    reasons = [str(r) for r in diagnosis.get("reasons") or []]
    out = [f"diagnosis: {str(diagnosis.get('verdict', 'unknown')).replace('_', ' ')}"
           + (f" ({'; '.join(reasons)})" if reasons else "")]
    for name in ("best", "last"):
        e = diagnosis.get(name)
        if isinstance(e, dict):
            out.append(f"  {name}: {_evaluation_text(e, metric)}")
    f = diagnosis.get("forgetting")
    if isinstance(f, dict) and _num(f.get("change")) is not None:
        out.append(f"  forgetting: general text perplexity {_fmt(_num(f.get('base_perplexity')))} -> "
                   f"{_fmt(_num(f.get('perplexity')))} ({_num(f.get('change')):+.0%})")
    d = diagnosis.get("likelihood_displacement")
    if isinstance(d, dict) and _num(d.get("chosen_first")) is not None:
        out.append(f"  chosen answers' log-probability: {_fmt(_num(d.get('chosen_first')))} -> "
                   f"{_fmt(_num(d.get('chosen_then')))} (step {d.get('first_step', '?')} -> {d.get('step', '?')}), rejected "
                   f"{_fmt(_num(d.get('rejected_first')))} -> {_fmt(_num(d.get('rejected_then')))}")
    out.extend(f"  advice: {a}" for a in diagnosis.get("advice") or [])
    return out


# ---- reading the history ----

def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _int(x: Any) -> int | None:
    n = _num(x)
    return int(n) if n is not None else None


def _round(x: float | None) -> float | None:
    return round(x, 6) if x is not None else None


def _records(history: Any) -> tuple[list[dict], list[dict]]:
    """(evaluation records, step records), each in step order, one per step: a resumed run that
    logged a step twice keeps the later line."""
    evals: dict[Any, dict] = {}
    steps: dict[Any, dict] = {}
    for i, r in enumerate(history if isinstance(history, (list, tuple)) else []):
        if not isinstance(r, dict):
            continue
        step = _int(r.get("step"))
        key = step if step is not None else ("line", i)  # no step: keep it, in file order
        if isinstance(r.get("eval"), dict):
            evals.pop(key, None)
            evals[key] = r
        elif _num(r.get("loss")) is not None:
            steps.pop(key, None)
            steps[key] = r

    def order(d: dict[Any, dict]) -> list[dict]:
        numbered = [r for k, r in d.items() if isinstance(k, int)]
        if len(numbered) == len(d):
            return sorted(numbered, key=lambda r: _int(r.get("step")))
        return list(d.values())

    return order(evals), order(steps)


def _evaluations(history: Any, metric: str) -> list[Evaluation]:
    eval_records, step_records = _records(history)
    out: list[Evaluation] = []
    previous: int | None = None
    for r in eval_records:
        step = _int(r.get("step"))
        val = r["eval"]
        train = r.get("train_eval") if isinstance(r.get("train_eval"), dict) else {}
        train_loss, source = _num(train.get("loss")), "train_sample"
        if train_loss is None:
            train_loss, source = _step_loss(step_records, previous, step), "steps"
        f = r.get("forgetting")
        forgetting = None
        if isinstance(f, dict):
            forgetting = {k: _num(f.get(k)) for k in ("perplexity", "base_perplexity", "change")}
            if forgetting["change"] is None and forgetting["perplexity"] and forgetting["base_perplexity"]:
                forgetting["change"] = forgetting["perplexity"] / forgetting["base_perplexity"] - 1
        out.append(Evaluation(
            step=step, epoch=_num(r.get("epoch")), value=_num(val.get(metric)), loss=_num(val.get("loss")),
            train_value=_num(train.get(metric)), train_loss=train_loss,
            train_loss_from=source if train_loss is not None else None, forgetting=forgetting,
            scores={k: v for k, v in ((k, _num(v)) for k, v in val.items()) if v is not None},
        ))
        if step is not None:
            previous = step
    return out


def _step_loss(step_records: list[dict], after: int | None, upto: int | None) -> float | None:
    """The mean training loss of the step records in (after, upto]; where none fall there (logging
    sparser than evaluation), the last one at or before `upto`."""
    if upto is None:
        return None
    window = [(_int(r.get("step")), _num(r.get("loss"))) for r in step_records]
    window = [(s, v) for s, v in window if s is not None and v is not None and s <= upto]
    near = [v for s, v in window if after is None or s > after]
    if near:
        return sum(near) / len(near)
    return window[-1][1] if window else None


def _better(a: Evaluation, b: Evaluation, greater: bool) -> bool:
    """Whether `a` beats `b` the way training picks its best checkpoint: a better metric, or the same
    metric with a lower validation loss."""
    if a.value != b.value:
        return a.value > b.value if greater else a.value < b.value
    return a.loss is not None and b.loss is not None and a.loss < b.loss


def _best(scored: list[Evaluation], greater: bool) -> Evaluation | None:
    best = None
    for e in scored:
        if best is None or _better(e, best, greater):
            best = e
    return best


# ---- the rules ----

def _rose(before: float, after: float) -> bool:
    """A loss (or perplexity) higher by more than LOSS_TOLERANCE of itself."""
    return after - before > LOSS_TOLERANCE * abs(before)


def _worse(best: float, last: float, greater: bool) -> bool:
    return best - last > SCORE_TOLERANCE if greater else _rose(best, last)


def _tolerance_text(greater: bool) -> str:
    return f"{SCORE_TOLERANCE:g}" if greater else f"{LOSS_TOLERANCE:.0%}"


def _got_worse(best: Evaluation, last: Evaluation, metric: str, greater: bool) -> str | None:
    """The fact that validation got worse after the best evaluation, or None: the metric worse by more
    than its tolerance, or the metric held (the last is not better) while the validation loss rose."""
    if last is best:
        return None
    where = f"from epoch {_epoch(best.epoch)} to epoch {_epoch(last.epoch)}"
    if _worse(best.value, last.value, greater):
        verb = "fell" if greater else "rose"
        return f"validation {metric} {verb} {_fmt(best.value)} -> {_fmt(last.value)} {where}"
    if metric != "loss" and best.loss is not None and last.loss is not None and _rose(best.loss, last.loss):
        return (f"validation {metric} stopped improving at epoch {_epoch(best.epoch)} and validation loss rose "
                f"{_fmt(best.loss)} -> {_fmt(last.loss)} {where}")
    return None


def _gap_grew(best: Evaluation, last: Evaluation, greater: bool) -> tuple[bool | None, str | None]:
    """Whether the train-validation gap grew from the best evaluation to the last (None: no later
    evaluation, or not measured at both), and the fact that says so. The metric's gap where the
    training sample was scored at both, else the loss gap."""
    if last is best:
        return None, None
    g0, g1 = best.gap(greater), last.gap(greater)
    if g0 is not None and g1 is not None:
        grew = g1 - g0 > SCORE_TOLERANCE if greater else g1 - g0 > LOSS_TOLERANCE * abs(best.value)
        return grew, f"the train-validation {_gap_word(greater)} gap went {g0:+.4f} -> {g1:+.4f}"
    l0, l1 = best.loss_gap(), last.loss_gap()
    if l0 is not None and l1 is not None:
        grew = l1 - l0 > LOSS_TOLERANCE * abs(best.loss)
        source = "training sample" if last.train_loss_from == "train_sample" else "training steps"
        return grew, f"the validation-training loss gap ({source}) went {l0:+.4f} -> {l1:+.4f}"
    return None, None


def _gap_word(greater: bool) -> str:
    return "score" if greater else "loss"


def _train_kept_falling(best: Evaluation, last: Evaluation) -> str | None:
    if last is best or best.train_loss is None or last.train_loss is None:
        return None
    if best.train_loss - last.train_loss > LOSS_TOLERANCE * abs(best.train_loss):
        return f"training loss kept falling {_fmt(best.train_loss)} -> {_fmt(last.train_loss)}"
    return None


def _still_falling(scored: list[Evaluation], metric: str, greater: bool) -> list[str]:
    """The facts that training and validation were both still improving steeply at the end, or []:
    every one of the last STILL_FALLING_INTERVALS steps between evaluations took more than
    STILL_FALLING_LOSS off the validation loss (or, where it is missing, added more than
    STILL_FALLING_SCORE to the score) and off the training loss. A history with no training loss at
    any of those evaluations (evaluation records only) is read by validation alone."""
    tail = scored[-(STILL_FALLING_INTERVALS + 1):]
    if len(tail) < 2:
        return []
    if greater and tail[-1].value is not None and tail[-1].value >= 1 - SCORE_TOLERANCE:
        return []  # a score at its ceiling has nothing left to gain: a falling loss is only confidence
    pairs = list(zip(tail, tail[1:]))

    def loss_fell(a: float | None, b: float | None) -> bool:
        return a is not None and b is not None and a - b > STILL_FALLING_LOSS * abs(a)

    if all(e.loss is not None for e in tail):
        validation_fell = all(loss_fell(a.loss, b.loss) for a, b in pairs)
        val_text = f"validation loss {' -> '.join(_fmt(e.loss) for e in tail)}"
    else:
        validation_fell = all((b.value - a.value if greater else a.value - b.value) > STILL_FALLING_SCORE for a, b in pairs)
        val_text = f"validation {metric} {' -> '.join(_fmt(e.value) for e in tail)}"
    if all(e.train_loss is None for e in tail):
        training_fell, train_text = True, "training loss not logged"
    else:
        training_fell = all(loss_fell(a.train_loss, b.train_loss) for a, b in pairs)
        train_text = f"training loss {' -> '.join(_fmt(e.train_loss) for e in tail)}"
    if not (validation_fell and training_fell):
        return []
    return [f"still improving steeply at the end: {val_text}, {train_text}"]


def _at_chance(best: Evaluation | None, chance: dict | None, metric: str, greater: bool) -> str | None:
    """The fact that even the best evaluation scored at chance, or None. A chance level names a
    score (greater is better): `metric` itself, or another score of the same record (accuracy when
    the run picks by f1_macro)."""
    if best is None or not isinstance(chance, dict):
        return None
    for name, level in chance.items():
        level = _num(level)
        if level is None or (name == metric and not greater):
            continue
        value = best.value if name == metric else best.scores.get(name)
        if value is None:
            continue
        if value <= level + CHANCE_MARGIN:
            return (f"best validation {name} {_fmt(value)} is at chance ({_fmt(level)}, the majority class's share, "
                    f"+ {CHANCE_MARGIN:g})")
    return None


# ---- advice, in config keys ----

def _setting(config: dict, section: str, key: str) -> Any:
    part = config.get(section)
    return part.get(key) if isinstance(part, dict) else None


def _strategy(config: dict) -> str | None:
    s = config.get("strategy")
    name = s.get("name") if isinstance(s, dict) else s
    return name if isinstance(name, str) else None


def _overfitting_advice(config: dict, best: Evaluation) -> list[str]:
    advice = []
    wd = _num(_setting(config, "train", "weight_decay"))
    target = 0.1 if wd is None or wd < 0.1 else min(round(wd * 2, 3), 1.0)
    if wd is None:
        advice.append(f"raise train.weight_decay, e.g. to {target:g}")
    elif wd < 1.0:
        advice.append(f"raise train.weight_decay from {wd:g}, e.g. to {target:g}")
    if _setting(config, "train", "early_stopping_patience") is None:
        advice.append("set train.early_stopping_patience (e.g. 2): stop once validation has not improved for that "
                      "many evaluations (the best checkpoint is kept either way)")
    max_steps = _int(_setting(config, "train", "max_steps"))
    epochs = _int(_setting(config, "train", "epochs"))
    if max_steps and best.step:
        advice.append(f"lower train.max_steps from {max_steps} to about {best.step}, where validation stopped improving")
    elif best.epoch is not None:
        fewer = max(1, math.ceil(round(best.epoch, 2)))
        now = f" from {epochs}" if epochs else ""
        advice.append(f"fewer train.epochs{now}, e.g. {fewer}: validation stopped improving at epoch {_epoch(best.epoch)}")
    else:
        advice.append("fewer train.epochs: validation stopped improving before the end")
    current = _strategy(config)
    others = [s for s in GENTLER_STRATEGIES if s != current]
    if current == "lora":
        r = _int(_setting(config, "strategy", "r"))
        advice.append(f"a smaller LoRA rank strategy.r{f' (now {r})' if r else ''}, or strategy.name: partial "
                      "to move fewer weights")
    else:
        advice.append(f"move fewer weights, or the lower layers less: strategy.name: {', '.join(others[:-1])} or {others[-1]}"
                      + (f" (now {current})" if current else ""))
    task, augmenting = config.get("task"), key_tasks("data", "augment")  # (the tasks with data.augment)
    if task in augmenting or task is None:
        scope = "" if task in augmenting else f" ({', '.join(augmenting)})"
        have = isinstance(_setting(config, "data", "augment"), dict)
        advice.append(f"more augmented copies: data.augment.n_per_example{scope}" if have
                      else f"augment the training split: data.augment{scope}")
    advice.append("more training data")
    return advice


def _underfitting_advice(config: dict, *, still_falling: bool) -> list[str]:
    advice = []
    epochs = _int(_setting(config, "train", "epochs"))
    max_steps = _int(_setting(config, "train", "max_steps"))
    why = ": validation was still improving steeply at the end" if still_falling else ""
    if max_steps:
        advice.append(f"more training: raise train.max_steps from {max_steps}, e.g. to {max_steps * 2}{why}")
    else:
        advice.append("more train.epochs" + (f" than {epochs}, e.g. {epochs * 2}" if epochs else "") + why)
    lr = _num(_setting(config, "train", "lr"))
    advice.append(f"a higher train.lr than {lr:g}, e.g. {lr * 3:.1e}" if lr is not None
                  else "a higher train.lr than the strategy's default (lora 2e-4, the others 5e-5)")
    current = _strategy(config)
    if current in FROZEN_STRATEGIES:
        advice.append(f"strategy.name: full (now {current}): train every weight, not a part of them")
    return advice


def _labels_advice(config: dict) -> str:
    label = _setting(config, "data", "label_column") if config.get("task") in key_tasks("data", "label_column") else None
    return ("check the labels and the data: the model does no better than always answering the most common label"
            + (f" (is data.label_column {label!r} the right column?)" if isinstance(label, str) else ""))


def _unstable_advice(config: dict) -> str:
    lr = _num(_setting(config, "train", "lr"))
    patience = "" if _setting(config, "train", "early_stopping_patience") else " or set train.early_stopping_patience"
    return ("validation got worse without a growing train-validation gap: try a lower train.lr"
            + (f" than {lr:g}" if lr is not None else "") + patience)


def _forgetting(evals: list[Evaluation]) -> dict[str, Any] | None:
    last = next((e for e in reversed(evals) if e.forgetting and e.forgetting.get("change") is not None), None)
    if last is None:
        return None
    f = last.forgetting
    return {
        "base_perplexity": f.get("base_perplexity"),
        "perplexity": f.get("perplexity"),
        "change": _round(f["change"]),
        "step": last.step,
        "epoch": last.epoch,
        "limit": FORGETTING_LIMIT,
        "forgot": f["change"] > FORGETTING_LIMIT,
    }


def _forgetting_advice(result: dict, scored: list[Evaluation], greater: bool, config: dict) -> None:
    f = result.get("forgetting")
    if not f or not f["forgot"]:
        return
    change = f["change"]
    numbers = (f" ({_fmt(f['base_perplexity'])} -> {_fmt(f['perplexity'])})"
               if f["base_perplexity"] is not None and f["perplexity"] is not None else "")
    improved = len(scored) >= 2 and scored[0] is not _best(scored, greater)
    lead = f"validation {result['metric']} improved, but " if improved else ""
    fixes = ("fewer train.epochs, a lower train.lr or a smaller strategy.r" if _strategy(config) == "lora"
             else "strategy.name: lora, fewer train.epochs or a lower train.lr")
    result["reasons"].append(f"general text perplexity rose {change:.0%}{numbers}, more than {FORGETTING_LIMIT:.0%}")
    result["advice"].append(f"{lead}general text perplexity rose {change:.0%}{numbers}: consider {fixes}")


def _chosen_fell(first: Evaluation, then: Evaluation) -> bool:
    a, b = first.scores[CHOSEN], then.scores[CHOSEN]
    return a - b > max(CHOSEN_FALL_NATS, CHOSEN_FALL_SHARE * abs(a))


def _displacement(evals: list[Evaluation], best: Evaluation | None) -> dict[str, Any] | None:
    """The chosen (and rejected) answers' log-probabilities at the first evaluation and at the last,
    or at the best where only it fell (the model the run keeps); None where fewer than two
    evaluations report chosen_logps."""
    have = [e for e in evals if e.scores.get(CHOSEN) is not None]
    if len(have) < 2:
        return None
    first = have[0]
    later = [have[-1]] + [e for e in have[1:-1] if e is best]
    then = next((e for e in later if _chosen_fell(first, e)), have[-1])
    return {
        "chosen_first": first.scores[CHOSEN],
        "chosen_then": then.scores[CHOSEN],
        "rejected_first": first.scores.get(REJECTED),
        "rejected_then": then.scores.get(REJECTED),
        "first_step": first.step,
        "step": then.step,
        "epoch": then.epoch,
        "tolerance_nats": _round(max(CHOSEN_FALL_NATS, CHOSEN_FALL_SHARE * abs(first.scores[CHOSEN]))),
        "fell": _chosen_fell(first, then),
    }


def _displacement_finding(result: dict, evals: list[Evaluation], best: Evaluation | None, config: dict) -> None:
    """result["likelihood_displacement"] where measured; where the chosen answers fell, a reason
    that says what was seen, with the numbers, and advice in config keys."""
    d = _displacement(evals, best)
    if d is None:
        return
    result["likelihood_displacement"] = d
    if not d["fell"]:
        return
    r0, r1 = d["rejected_first"], d["rejected_then"]
    seen = f"chosen answers' log-probability fell from {_fmt(d['chosen_first'])} to {_fmt(d['chosen_then'])}"
    if r0 is None or r1 is None:
        result["reasons"].append(f"{seen}: the chosen answers became less likely")
    elif r1 < r0:
        faster = "; the margin grew only because the rejected fell faster" if r0 - r1 > d["chosen_first"] - d["chosen_then"] else ""
        result["reasons"].append(f"{seen} while the rejected fell from {_fmt(r0)} to {_fmt(r1)}: both answers became "
                                 f"less likely (a known DPO failure{faster})")
    else:
        result["reasons"].append(f"{seen} while the rejected went from {_fmt(r0)} to {_fmt(r1)}: the chosen answers "
                                 "became less likely")
    result["advice"].append(_displacement_advice(config))


def _displacement_advice(config: dict) -> str:
    """Lower the learning rate; raise the objective's beta (the pull towards the reference) where the
    run's config has one, naming its section and current value; IPO where the objective is DPO."""
    lr = _num(_setting(config, "train", "lr"))
    fixes = ["lower train.lr" + (f" (now {lr:g})" if lr is not None else "")]
    section = next((name for name, part in config.items() if isinstance(part, dict) and "beta" in part), None)
    if section is not None:
        beta = _num(config[section].get("beta"))
        fixes.append(f"raise {section}.beta" + (f" (now {beta:g})" if beta is not None else ""))
        if config[section].get("objective") == "dpo":
            fixes.append(f"try {section}.objective: ipo")
    listed = ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]
    return f"the chosen answers lost probability as training went on: {listed}"


# ---- formatting ----

def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if abs(x) < 100 else f"{x:,.1f}"


def _epoch(e: float | None) -> str:
    return "?" if e is None else f"{e:g}"


def _evaluation_text(e: dict, metric: str) -> str:
    def num(key: str) -> float | None:
        return _num(e.get(key))

    where = f"step {e.get('step', '?')}, epoch {_epoch(num('epoch'))}"
    parts = [f"validation {metric} {_fmt(num('validation'))}"]
    if metric != "loss" and num("validation_loss") is not None:
        parts.append(f"loss {_fmt(num('validation_loss'))}")
    text = f"{where}: " + ", ".join(parts)
    train = []
    if num("train") is not None:
        train.append(f"train {metric} {_fmt(num('train'))}")
    if num("train_loss") is not None and not (metric == "loss" and num("train") is not None):
        steps = " (mean of the training steps)" if e.get("train_loss_from") == "steps" else ""
        train.append(f"{'loss' if train else 'training loss'} {_fmt(num('train_loss'))}{steps}")
    if train:
        text += "; " + ", ".join(train)
    if num("gap") is not None:
        text += f"; gap {num('gap'):+.4f}"
    elif num("loss_gap") is not None:
        text += f"; loss gap {num('loss_gap'):+.4f}"
    return text
