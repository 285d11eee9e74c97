"""The overfitting/underfitting diagnosis on synthetic histories: each verdict from a run built to
show it, advice in config keys naming current values, the tolerances at their edges, forgetting,
and odd histories (resumed, evaluation records only, NaN, junk) read without raising."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from lmtune.training import diagnosis
from lmtune.training.diagnosis import diagnose, lines

STEPS_PER_EPOCH = 10


def history(
    val: list[float],
    val_loss: list[float] | None = None,
    train_loss: list[float] | None = None,
    *,
    metric: str = "accuracy",
    train: list[float] | None = None,
    train_eval_loss: list[float] | None = None,
    forgetting: list[float] | None = None,
    base_perplexity: float = 20.0,
) -> list[dict]:
    """One evaluation a epoch (step 10, 20, ...), each after two step records whose mean loss is
    train_loss[i]; train/train_eval_loss give a train_eval record, forgetting the relative change
    of general-text perplexity."""
    records: list[dict] = []
    for i, value in enumerate(val):
        step = (i + 1) * STEPS_PER_EPOCH
        if train_loss is not None:
            for k, offset in ((step - 5, 0.01), (step, -0.01)):
                records.append({"step": k, "epoch": round(k / STEPS_PER_EPOCH, 4), "loss": train_loss[i] + offset,
                                "lr": 5e-5, "lrs": {"head": 5e-5}, "samples_per_second": 100.0, "tokens_per_second": 900.0})
        record: dict = {"step": step, "epoch": float(i + 1), "eval": {metric: value}}
        if val_loss is not None and metric != "loss":
            record["eval"]["loss"] = val_loss[i]
        if train is not None or train_eval_loss is not None:
            record["train_eval"] = {}
            if train is not None:
                record["train_eval"][metric] = train[i]
            if train_eval_loss is not None:
                record["train_eval"]["loss"] = train_eval_loss[i]
        if forgetting is not None:
            record["forgetting"] = {"perplexity": base_perplexity * (1 + forgetting[i]),
                                    "base_perplexity": base_perplexity, "change": forgetting[i]}
        records.append(record)
    return records


def config(**train: object) -> dict:
    """A resolved config.yaml as a dict, train.* overridden by keyword."""
    t = {"epochs": 5, "lr": 5e-5, "weight_decay": 0.01, "early_stopping_patience": None, "max_steps": None}
    t.update(train)
    return {"task": "classification", "strategy": {"name": "full"},
            "data": {"label_column": "label", "augment": None}, "train": t}


def overfitting_history() -> list[dict]:
    # validation peaks at epoch 2; the training sample goes to 1.0; validation loss rises from epoch 2
    return history(
        val=[0.80, 0.86, 0.84, 0.81, 0.78],
        val_loss=[0.50, 0.38, 0.45, 0.60, 0.75],
        train_loss=[0.60, 0.35, 0.18, 0.08, 0.03],
        train=[0.82, 0.90, 0.97, 0.99, 1.00],
        train_eval_loss=[0.48, 0.30, 0.12, 0.05, 0.02],
    )


def assert_json(d: dict) -> None:
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def advice_text(d: dict) -> str:
    return "\n".join(d["advice"])


def test_overfitting_run_names_weight_decay_patience_and_the_epoch():
    d = diagnose(overfitting_history(), "accuracy", True, chance={"accuracy": 0.5}, config=config())
    assert_json(d)
    assert d["verdict"] == "overfitting"
    assert d["stopped_improving_epoch"] == 2.0
    assert d["gap_grew"] is True
    assert d["best"]["step"] == 20 and d["best"]["validation"] == 0.86 and d["best"]["train"] == 0.90
    assert d["last"]["validation"] == 0.78 and d["last"]["train"] == 1.0
    assert math.isclose(d["best"]["gap"], 0.04) and math.isclose(d["last"]["gap"], 0.22)
    text = advice_text(d)
    assert "train.weight_decay from 0.01" in text
    assert "train.early_stopping_patience" in text
    assert "train.epochs from 5, e.g. 2" in text and "epoch 2" in text
    assert "strategy.name: lora" in text and "data.augment" in text
    assert not any("train.lr" in a for a in d["advice"])
    assert any("0.8600 -> 0.7800" in r for r in d["reasons"])


def test_overfitting_advice_follows_the_config():
    cfg = config(early_stopping_patience=3, weight_decay=0.2, max_steps=50)
    cfg["strategy"] = {"name": "lora", "r": 16}
    cfg["task"] = "causal_lm"
    d = diagnose(overfitting_history(), "accuracy", True, config=cfg)
    text = advice_text(d)
    assert "early_stopping_patience" not in text  # already set
    assert "from 0.2, e.g. to 0.4" in text
    assert "train.max_steps from 50 to about 20" in text
    assert "strategy.r (now 16)" in text
    assert "data.augment" not in text  # no augmentation for causal_lm


def test_overfitting_without_train_eval_reads_the_step_losses():
    # no train_eval: the mean step loss stands in for the training side of the loss gap
    h = history(val=[0.80, 0.86, 0.84, 0.80], val_loss=[0.50, 0.38, 0.45, 0.62], train_loss=[0.6, 0.35, 0.15, 0.05])
    d = diagnose(h, "accuracy", True)
    assert d["verdict"] == "overfitting"
    assert d["gap_grew"] is True
    assert d["best"]["train"] is None and d["best"]["train_loss_from"] == "steps"
    assert math.isclose(d["best"]["train_loss"], 0.35)
    assert "early_stopping_patience" in advice_text(d)  # no config: not known to be set


def test_worse_validation_without_a_growing_gap_is_not_overfitting():
    # training got worse with validation (a diverging run): no overfitting advice, a lower lr instead
    h = history(val=[0.80, 0.86, 0.78, 0.70], val_loss=[0.5, 0.38, 0.55, 0.70], train=[0.81, 0.88, 0.80, 0.72],
                train_loss=[0.5, 0.36, 0.55, 0.72])
    d = diagnose(h, "accuracy", True, config=config(lr=1e-3))
    assert d["verdict"] == "healthy"
    assert d["gap_grew"] is False
    assert "weight_decay" not in advice_text(d)
    assert "lower train.lr than 0.001" in advice_text(d)


def test_underfitting_when_both_losses_still_fall_steeply():
    h = history(val=[0.55, 0.62, 0.68, 0.74], val_loss=[1.0, 0.8, 0.62, 0.48], train_loss=[1.1, 0.85, 0.65, 0.5])
    d = diagnose(h, "accuracy", True, chance={"accuracy": 0.5}, config=config(epochs=4, lr=2e-5))
    assert_json(d)
    assert d["verdict"] == "underfitting"
    assert d["stopped_improving_epoch"] is None and d["gap_grew"] is None
    text = advice_text(d)
    assert "more train.epochs than 4, e.g. 8" in text
    assert "higher train.lr than 2e-05, e.g. 6.0e-05" in text
    assert "strategy.name: full" not in text  # it was full already
    frozen = config(epochs=4)
    frozen["strategy"] = {"name": "partial", "freeze_layers": 1}
    assert "strategy.name: full (now partial)" in advice_text(diagnose(h, "accuracy", True, config=frozen))


def test_a_plateau_at_the_end_is_not_underfitting():
    # the last step took less than STILL_FALLING_LOSS off the validation loss
    h = history(val=[0.55, 0.70, 0.78, 0.79], val_loss=[1.0, 0.7, 0.5, 0.5 * (1 - diagnosis.STILL_FALLING_LOSS / 2)],
                train_loss=[1.1, 0.7, 0.45, 0.40])
    assert diagnose(h, "accuracy", True)["verdict"] == "healthy"


def test_accuracy_at_chance_is_underfitting_with_a_labels_hint():
    h = history(val=[0.60, 0.61, 0.60], val_loss=[0.69, 0.69, 0.69], train_loss=[0.70, 0.69, 0.69],
                metric="f1_macro")
    for rec in h:  # the run picks by f1_macro; chance names accuracy, read from the same records
        if "eval" in rec:
            rec["eval"]["accuracy"] = 0.51
    d = diagnose(h, "f1_macro", True, chance={"accuracy": 0.5}, config=config())
    assert d["verdict"] == "underfitting"
    assert any("at chance" in r for r in d["reasons"])
    assert "check the labels" in advice_text(d) and "data.label_column 'label'" in advice_text(d)
    # CHANCE_MARGIN above chance is already something learned
    above = 0.5 + diagnosis.CHANCE_MARGIN + 0.01
    for rec in h:
        if "eval" in rec:
            rec["eval"]["accuracy"] = above
    assert diagnose(h, "f1_macro", True, chance={"accuracy": 0.5})["verdict"] == "healthy"


def healthy_history() -> list[dict]:
    return history(val=[0.70, 0.80, 0.84, 0.845], val_loss=[0.6, 0.45, 0.40, 0.39],
                   train_loss=[0.7, 0.45, 0.38, 0.36], train=[0.72, 0.83, 0.87, 0.88])


def test_healthy_run_gets_no_overfitting_advice():
    d = diagnose(healthy_history(), "accuracy", True, chance={"accuracy": 0.5}, config=config())
    assert_json(d)
    assert d["verdict"] == "healthy"
    assert d["advice"] == []
    assert d["stopped_improving_epoch"] is None


def test_a_drop_within_the_tolerance_is_not_overfitting():
    # best at epoch 3, then down by less than SCORE_TOLERANCE while the gap grew a little
    small = diagnosis.SCORE_TOLERANCE / 2
    h = history(val=[0.70, 0.80, 0.85, 0.85 - small], val_loss=[0.6, 0.45, 0.40, 0.40],
                train_loss=[0.7, 0.45, 0.38, 0.36], train=[0.72, 0.83, 0.88, 0.90])
    d = diagnose(h, "accuracy", True)
    assert d["verdict"] == "healthy"
    assert d["stopped_improving_epoch"] == 3.0
    # the same drop just over the tolerance, with the gap growing: overfitting
    h[-1]["eval"]["accuracy"] = 0.85 - 2 * diagnosis.SCORE_TOLERANCE
    h[-1]["train_eval"]["accuracy"] = 0.95
    assert diagnose(h, "accuracy", True)["verdict"] == "overfitting"


def test_metric_held_while_validation_loss_rose_and_training_loss_fell_is_overfitting():
    # the same accuracy from epoch 2 on, with a higher loss each time: the tie goes to epoch 2
    h = history(val=[0.80, 0.86, 0.86, 0.86], val_loss=[0.5, 0.38, 0.48, 0.60], train_loss=[0.6, 0.35, 0.15, 0.05])
    d = diagnose(h, "accuracy", True)
    assert d["verdict"] == "overfitting"
    assert d["stopped_improving_epoch"] == 2.0
    assert any("validation loss rose 0.3800 -> 0.6000" in r for r in d["reasons"])


def test_one_evaluation_is_too_few_and_still_reported():
    d = diagnose(history(val=[0.8], val_loss=[0.5], train_loss=[0.6], train=[0.85]), "accuracy", True)
    assert_json(d)
    assert d["verdict"] == "too_few_evaluations"
    assert d["best"]["validation"] == 0.8 and d["last"]["validation"] == 0.8
    assert d["gap_grew"] is None and d["stopped_improving_epoch"] is None
    assert "train.eval_steps" in advice_text(d)


def test_forgetting_over_the_limit_names_the_percentage():
    h = history(val=[3.0, 2.6, 2.4], metric="loss", train_loss=[3.2, 2.7, 2.45], forgetting=[0.05, 0.2, 0.35])
    d = diagnose(h, "loss", False, config={"task": "causal_lm", "strategy": {"name": "full"}, "train": {}})
    assert_json(d)
    assert d["forgetting"]["base_perplexity"] == 20.0
    assert math.isclose(d["forgetting"]["perplexity"], 27.0)
    assert d["forgetting"]["change"] == 0.35 and d["forgetting"]["forgot"] is True
    line = next(a for a in d["advice"] if "perplexity" in a)
    assert line.startswith("validation loss improved, but general text perplexity rose 35% (20.0000 -> 27.0000)")
    assert "strategy.name: lora" in line
    assert any("35%" in s for s in lines(d))


def test_forgetting_under_the_limit_is_reported_without_advice():
    h = history(val=[3.0, 2.6, 2.5], metric="loss", train_loss=[3.2, 2.7, 2.6], forgetting=[0.05, 0.1, 0.15])
    d = diagnose(h, "loss", False)
    assert d["forgetting"]["change"] == 0.15 and d["forgetting"]["forgot"] is False
    assert not any("perplexity" in a for a in d["advice"])


def test_loss_as_the_metric():
    # validation loss lowest at epoch 3, then up; the step losses keep falling (no train_eval)
    h = history(val=[2.0, 1.6, 1.5, 1.7, 1.9], metric="loss", train_loss=[2.1, 1.5, 1.2, 0.9, 0.7])
    d = diagnose(h, "loss", False, config=config())
    assert d["verdict"] == "overfitting"
    assert d["best"]["validation"] == 1.5 and d["best"]["validation_loss"] == 1.5
    assert d["stopped_improving_epoch"] == 3.0
    assert d["gap_grew"] is True
    assert "e.g. 3" in advice_text(d)
    assert "  best: step 30, epoch 3: validation loss 1.5000; training loss 1.2000 (mean of the training steps); " \
           "loss gap +0.3000" in lines(d)
    # the same run, validation loss still falling steeply: underfitting
    down = history(val=[2.0, 1.6, 1.3, 1.1], metric="loss", train_loss=[2.1, 1.7, 1.4, 1.15])
    assert diagnose(down, "loss", False)["verdict"] == "underfitting"


def test_lines_say_the_verdict_best_last_and_advice():
    d = diagnose(overfitting_history(), "accuracy", True, config=config())
    out = lines(d)
    assert out[0].startswith("diagnosis: overfitting (")
    assert any(s.strip().startswith("best: step 20, epoch 2: validation accuracy 0.8600") and "train accuracy 0.9000" in s
               for s in out)
    assert any(s.strip().startswith("last: step 50") and "gap +0.2200" in s for s in out)
    assert sum(s.strip().startswith("advice: ") for s in out) == len(d["advice"])
    assert lines(diagnose([], "accuracy", True))[0].startswith("diagnosis: too few evaluations")


def test_resumed_history_keeps_the_later_line_of_a_repeated_step():
    h = overfitting_history()
    # a first attempt logged epochs 3 and 4 with other numbers, then crashed; the resumed run wrote
    # them again further down: the later line of a step counts
    lost = [dict(r, eval=dict(r["eval"], accuracy=0.99)) for r in h if "eval" in r and r["step"] in (30, 40)]
    a = diagnose(h, "accuracy", True)
    b = diagnose(lost + h, "accuracy", True)
    assert b["evaluations"] == 5 and b["verdict"] == "overfitting"
    assert [a["best"], a["last"], a["reasons"]] == [b["best"], b["last"], b["reasons"]]
    assert diagnose(h + lost, "accuracy", True)["best"]["validation"] == 0.99  # had they come later
    # lines out of order are read in step order
    assert diagnose(list(reversed(h)), "accuracy", True) == a


def test_evaluation_records_only():
    h = [r for r in overfitting_history() if "eval" in r]
    for r in h:
        del r["train_eval"]
    d = diagnose(h, "accuracy", True)
    assert d["best"]["train_loss"] is None and d["gap_grew"] is None
    assert d["verdict"] == "healthy"  # worse, but with no training side nothing says the gap grew
    assert any("not measured" in r for r in d["reasons"])
    # validation alone still improving steeply, no training loss anywhere: underfitting
    rising = [{"step": 10 * i, "epoch": float(i), "eval": {"accuracy": a}} for i, a in enumerate([0.6, 0.68, 0.75], 1)]
    d = diagnose(rising, "accuracy", True)
    assert d["verdict"] == "underfitting"
    assert any("training loss not logged" in r for r in d["reasons"])


def test_odd_records_never_raise():
    nan = float("nan")
    h = [
        "not a record", None, 3, {"step": "x", "loss": "high"},
        {"step": 10, "epoch": None, "eval": {"accuracy": nan, "loss": nan}, "train_eval": "broken"},
        {"step": 20, "eval": {"accuracy": 0.7}, "forgetting": {"change": nan}},
        {"eval": {"accuracy": 0.75}},
        {"step": 30, "epoch": 3.0, "eval": {"accuracy": True}},
    ]
    d = diagnose(h, "accuracy", True, chance={"accuracy": "half"}, config={"train": "none", "strategy": 3})
    assert_json(d)
    assert d["verdict"] in diagnosis.VERDICTS
    assert lines(d)
    assert lines("nonsense") == [] and lines({})[0] == "diagnosis: unknown"


def test_a_missing_metric_falls_back_to_the_validation_loss():
    h = history(val=[0.5, 0.4, 0.45, 0.6], val_loss=[0.5, 0.4, 0.45, 0.6], train_loss=[0.6, 0.35, 0.2, 0.1])
    for r in h:
        if "eval" in r:
            del r["eval"]["accuracy"]
    d = diagnose(h, "accuracy", True)
    assert d["metric"] == "loss" and d["verdict"] == "overfitting"
    assert "read by the validation loss" in d["reasons"][0]


finite = st.floats(allow_nan=True, allow_infinity=True, width=32)
record = st.one_of(
    st.fixed_dictionaries({"step": st.integers(0, 50), "loss": finite}, optional={"epoch": finite}),
    st.fixed_dictionaries(
        {"step": st.one_of(st.integers(0, 50), st.none()), "eval": st.dictionaries(st.sampled_from(["accuracy", "loss"]), finite)},
        optional={"epoch": finite, "train_eval": st.dictionaries(st.sampled_from(["accuracy", "loss"]), finite),
                  "forgetting": st.dictionaries(st.sampled_from(["perplexity", "base_perplexity", "change"]), finite)},
    ),
)


@given(st.lists(record, max_size=12), st.sampled_from([("accuracy", True), ("loss", False)]))
def test_any_history_gives_a_json_diagnosis(h, metric):
    d = diagnose(h, *metric, chance={"accuracy": 0.5}, config=config())
    json.dumps(d, allow_nan=False)
    assert d["verdict"] in diagnosis.VERDICTS
    assert all(isinstance(s, str) for s in lines(d))


def pair_history(chosen: list[float], rejected: list[float], accuracy: list[float] | None = None) -> list[dict]:
    """A preference run's evaluations (one an epoch): the chosen and rejected answers' mean summed
    log-probabilities, the margin growing, reward accuracy by default rising."""
    accuracy = accuracy or [0.6 + 0.1 * i for i in range(len(chosen))]
    h = history(val=accuracy, val_loss=[0.69 - 0.1 * i for i in range(len(chosen))], metric="reward_accuracy",
                train_loss=[0.69 - 0.12 * i for i in range(len(chosen))])
    for record in (r for r in h if "eval" in r):
        i = int(record["epoch"]) - 1
        record["eval"].update(reward_margin=0.2 * (i + 1), chosen_logps=chosen[i], rejected_logps=rejected[i])
    return h


def pair_config(**preference: object) -> dict:
    return {"task": "preference", "strategy": {"name": "full"}, "train": {"lr": 5e-6, "epochs": 3},
            "preference": {"objective": "dpo", "beta": 0.1, **preference}}


def test_chosen_answers_falling_with_the_rejected_is_named_with_its_numbers():
    d = diagnose(pair_history(chosen=[-120.3, -150.0, -180.2], rejected=[-125.0, -190.0, -260.4]),
                 "reward_accuracy", True, config=pair_config())
    assert_json(d)
    found = d["likelihood_displacement"]
    assert found["fell"] is True and found["chosen_first"] == -120.3 and found["chosen_then"] == -180.2
    assert found["first_step"] == 10 and found["step"] == 30
    reason = next(r for r in d["reasons"] if "log-probability" in r)
    assert reason == ("chosen answers' log-probability fell from -120.3 to -180.2 while the rejected fell from -125.0 "
                      "to -260.4: both answers became less likely (a known DPO failure; the margin grew only because "
                      "the rejected fell faster)")
    advice = next(a for a in d["advice"] if "chosen answers" in a)
    assert "lower train.lr (now 5e-06)" in advice and "raise preference.beta (now 0.1)" in advice
    assert "preference.objective: ipo" in advice
    assert "try preference.objective" not in next(a for a in diagnose(
        pair_history([-120.3, -180.2], [-125.0, -260.4]), "reward_accuracy", True,
        config=pair_config(objective="ipo"))["advice"] if "chosen answers" in a)
    assert any("chosen answers' log-probability: -120.3 -> -180.2" in s for s in lines(d))


def test_chosen_answers_rising_or_barely_moving_is_not_a_finding():
    for chosen in ([-120.3, -110.0, -100.5], [-120.3, -121.0, -122.0]):  # rose; fell by less than 2% of 120
        d = diagnose(pair_history(chosen=chosen, rejected=[-125.0, -140.0, -160.0]), "reward_accuracy", True,
                     config=pair_config())
        assert d["likelihood_displacement"]["fell"] is False
        assert not any("log-probability" in r for r in d["reasons"])
        assert not any("chosen answers" in a for a in d["advice"])
    # short answers: a fall of more than 1 nat counts even though it is under 2% of nothing much
    d = diagnose(pair_history(chosen=[-20.0, -21.5], rejected=[-20.0, -25.0]), "reward_accuracy", True)
    assert d["likelihood_displacement"]["fell"] is True
    assert next(a for a in d["advice"] if "chosen answers" in a).endswith(": lower train.lr")


def test_the_best_evaluation_counts_where_only_it_fell():
    # the chosen answers dipped at the best evaluation (the model kept) and came back by the end
    h = pair_history(chosen=[-50.0, -60.0, -50.5], rejected=[-52.0, -70.0, -55.0], accuracy=[0.6, 0.9, 0.7])
    d = diagnose(h, "reward_accuracy", True)
    assert d["likelihood_displacement"]["fell"] is True and d["likelihood_displacement"]["step"] == 20


def test_a_history_without_chosen_logps_has_no_displacement_finding():
    assert "likelihood_displacement" not in diagnose(overfitting_history(), "accuracy", True, config=config())
    assert "likelihood_displacement" not in diagnose(pair_history([-20.0], [-21.0]), "reward_accuracy", True)
