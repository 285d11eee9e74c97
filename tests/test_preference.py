"""Preference tuning (DPO, IPO, ORPO, SimPO) on a tiny random Llama: the three data forms, dropped
pairs, masking, truncation, the losses' values where policy and reference agree, a short run that
learns, LoRA's reference, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lmtune.cli import main
from lmtune.core.models import load_pretrained, load_tokenizer
from lmtune.tasks import preference
from lmtune.tasks.run_config import validate
from lmtune.training.loop import train

from .test_bad_input import expect_error

PAIRS = [
    ("what does a flat fix cost ?", "twelve euro please .", "the cat sits ."),
    ("when do you open ?", "at nine on tuesday .", "no ."),
    ("do you rent bikes ?", "yes , twelve euro .", "hello hi ."),
]
ORCA = Path("/work/shared/data/orca_dpo_pairs/pairs.jsonl")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def strings(pairs=PAIRS):
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs]


def conversational(pairs=PAIRS):
    return [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in pairs]


def openai(pairs=PAIRS):
    return [{"input": {"messages": [{"role": "user", "content": p}]},
             "preferred_output": [{"role": "assistant", "content": c}],
             "non_preferred_output": [{"role": "assistant", "content": r}]} for p, c, r in pairs]


def _raw(model, tmp_path, train_file, **preference_keys):
    return {"model": str(model), "task": "preference", "output_dir": str(tmp_path / "run"),
            "data": {"train": str(train_file), "validation": str(train_file), "max_length": 64},
            "train": {"epochs": 3, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "log_steps": 1},
            "preference": preference_keys}


def _prepared(model, tmp_path, rows, name="d.jsonl", **data):
    path = _jsonl(tmp_path / name, rows)
    raw = _raw(model, tmp_path, path)
    raw["data"].update(data)
    cfg = validate(raw)
    table, _, _ = preference.read_pairs(str(path), "auto")
    tok = load_tokenizer(model)
    features, truncated = preference.prepare(table, tok, cfg, [])
    return cfg, features, truncated, tok


def test_the_three_forms_give_the_same_tokens(tiny_llama, tmp_path):
    got = {}
    for name, rows in (("strings", strings()), ("conversational", conversational()), ("openai", openai())):
        table, dropped, form = preference.read_pairs(str(_jsonl(tmp_path / f"{name}.jsonl", rows)), "auto")
        assert form == name and not dropped
        got[name] = preference.encode_pairs(table, load_tokenizer(tiny_llama))
    assert got["strings"] == got["conversational"] == got["openai"]
    # an answer may also be a plain string beside a conversational prompt
    mixed = [{**r, "chosen": c} for r, (_, c, _) in zip(conversational(), PAIRS)]
    table, _, _ = preference.read_pairs(str(_jsonl(tmp_path / "mixed.jsonl", mixed)), "auto")
    assert preference.encode_pairs(table, load_tokenizer(tiny_llama)) == got["strings"]


@pytest.mark.skipif(not ORCA.is_file(), reason="the shared orca_dpo_pairs sample is not on this machine")
def test_reads_openai_dpo_fine_tuning_file():
    table, dropped, form = preference.read_pairs(str(ORCA), "auto")
    assert form == "openai" and len(table) + len(dropped) == 284
    prompt, chosen, rejected = preference.pair_of(table.rows[0], table.where(0), form)
    assert prompt[0]["role"] == "system" and prompt[-1]["role"] == "user" and chosen != rejected


def test_pairs_with_empty_or_identical_answers_are_dropped_and_counted(tiny_llama, tmp_path):
    rows = strings() + [{"prompt": "hi", "chosen": "same .", "rejected": " same . "},
                        {"prompt": "hi", "chosen": "", "rejected": "no ."}]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    cfg = validate(_raw(tiny_llama, tmp_path, path))
    data = preference.load_data(cfg)
    assert len(data.train) == 3 and len(data.validation) == 3
    assert [(d["line"], d["reason"]) for d in data.dropped] == [(4, "identical answers"), (5, "empty answer")] * 2
    note = next(n for n in data.notes if n.startswith("dropped"))
    assert f"{path}:4" in note and "identical answers 2" in note and "empty answer 2" in note


def test_only_the_answer_tokens_are_scored(tiny_llama, tmp_path):
    cfg, features, truncated, tok = _prepared(tiny_llama, tmp_path, strings())
    assert truncated == 0
    for f, (prompt, chosen, rejected) in zip(features, PAIRS):
        for ids, labels, answer in ((f["input_ids"], f["labels"], chosen), (f["rejected_input_ids"], f["rejected_labels"], rejected)):
            scored = [i for i, lab in zip(ids, labels) if lab != -100]
            assert tok.decode(scored, skip_special_tokens=True).split() == answer.split()
            assert tok.decode(scored[-1:]) == "<|im_end|>"  # the end of the turn is learned too
            first = next(k for k, lab in enumerate(labels) if lab != -100)
            assert all(lab == -100 for lab in labels[:first]) and prompt.split()[0] in tok.decode(ids[:first])
        # the two sequences share the prompt
        start = next(k for k, lab in enumerate(f["labels"]) if lab != -100)
        assert f["input_ids"][:start] == f["rejected_input_ids"][:start]


def test_a_long_pair_loses_prompt_tokens_from_the_left_and_keeps_both_answers(tiny_llama, tmp_path):
    long_prompt = " ".join(["the cat sits"] * 20)
    rows = [{"prompt": long_prompt + " what price ?", "chosen": "twelve euro .", "rejected": "no ."}]
    _, whole, _, tok = _prepared(tiny_llama, tmp_path, rows, name="a.jsonl", max_length=256)
    _, cut, truncated, _ = _prepared(tiny_llama, tmp_path, rows, name="b.jsonl", max_length=24)
    assert truncated == 1 and truncated.prompt == 1
    f, w = cut[0], whole[0]
    assert len(f["input_ids"]) == 24 and len(f["rejected_input_ids"]) < 24
    drop = len(w["input_ids"]) - 24
    assert f["input_ids"] == w["input_ids"][drop:] and f["rejected_input_ids"] == w["rejected_input_ids"][drop:]
    assert f["labels"] == w["labels"][drop:]  # every answer token kept
    assert tok.decode(f["input_ids"]).rstrip().endswith("twelve euro . <|im_end|>") or "twelve euro" in tok.decode(f["input_ids"])


def _eval(model, features, tok, cfg):
    batch = preference.collator(tok)(features)
    model.eval()
    with torch.no_grad():
        return preference.eval_step(model, batch, cfg)


def test_dpo_loss_is_ln2_while_the_policy_is_the_reference(tiny_llama, tmp_path):
    cfg, features, _, tok = _prepared(tiny_llama, tmp_path, strings())
    assert all("ref_chosen" in f for f in features)  # full strategy: the reference scored in prepare
    out = _eval(load_pretrained("AutoModelForCausalLM", tiny_llama), features, tok, cfg)
    assert torch.allclose(out["loss"], torch.full((3,), math.log(2)), atol=1e-5)
    assert torch.allclose(out["chosen_reward"], torch.zeros(3), atol=1e-5)
    # with LoRA the reference is the same model with its adapters off (new adapters change nothing yet)
    from peft import LoraConfig, get_peft_model

    lora_cfg = validate({**_raw(tiny_llama, tmp_path, tmp_path / "d.jsonl"), "strategy": {"name": "lora"}})
    table, _, _ = preference.read_pairs(str(tmp_path / "d.jsonl"), "auto")
    lora_features, _ = preference.prepare(table, tok, lora_cfg, [])
    assert [f["ref_chosen"] for f in lora_features] == [f["ref_chosen"] for f in features]  # the base scored once
    lora_features = [{k: v for k, v in f.items() if not k.startswith("ref_")} for f in lora_features]
    model = get_peft_model(load_pretrained("AutoModelForCausalLM", tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    out = _eval(model, lora_features, tok, lora_cfg)
    assert torch.allclose(out["loss"], torch.full((3,), math.log(2)), atol=1e-5)
    # and once the adapters differ from zero, the policy leaves the reference
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert not torch.allclose(_eval(model, lora_features, tok, lora_cfg)["loss"], torch.full((3,), math.log(2)), atol=1e-3)


def test_the_reference_scores_each_pair_once_and_keeps_them_in_the_run_folder(tiny_llama, tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(preference, "_SCORED", {})  # (pairs scored by other tests in this process)
    cfg, features, _, tok = _prepared(tiny_llama, tmp_path, strings())
    kept = json.loads((tmp_path / "run" / preference.REFERENCE_FILE).read_text())
    assert len(kept["pairs"]) == 3 and kept["model"] == str(tiny_llama)
    # a run folder gets its pairs' scores even where this process had them already
    (tmp_path / "run" / preference.REFERENCE_FILE).unlink()
    preference.add_reference([{k: v for k, v in f.items() if not k.startswith("ref_")} for f in features], tok, cfg)
    assert json.loads((tmp_path / "run" / preference.REFERENCE_FILE).read_text()) == kept
    # a new process (a resumed run, lmtune eval) reads them there: the model is not loaded again
    monkeypatch.setattr(preference, "_SCORED", {})
    monkeypatch.setattr(preference, "_score", lambda *a: pytest.fail("scored again"))
    again = [{k: v for k, v in f.items() if not k.startswith("ref_")} for f in features]
    preference.add_reference(again, tok, cfg)
    assert [f["ref_rejected"] for f in again] == [f["ref_rejected"] for f in features]


def test_each_objective_has_its_loss(tiny_llama, tmp_path):
    model = load_pretrained("AutoModelForCausalLM", tiny_llama)
    path = _jsonl(tmp_path / "d.jsonl", strings())
    table, _, _ = preference.read_pairs(str(path), "auto")
    tok = load_tokenizer(tiny_llama)
    results = {}
    for objective, keys in (("ipo", {"beta": 0.5}), ("orpo", {"orpo_lambda": 0.2}), ("simpo", {"beta": 2.0, "gamma": 0.3}),
                            ("dpo", {"label_smoothing": 0.2})):
        cfg = validate(_raw(tiny_llama, tmp_path, path, objective=objective, **keys))
        features, _ = preference.prepare(table, tok, cfg, [])
        results[objective] = out = {k: v.numpy() for k, v in _eval(model, features, tok, cfg).items()}
        counts = np.array([[sum(lab != -100 for lab in f[key][1:]) for f in features] for key in ("labels", "rejected_labels")])
        pc, pr = out["chosen_logps"] / counts[0], out["rejected_logps"] / counts[1]
        if objective == "ipo":  # at the reference: (0 - 1 / (2 beta))^2
            expected = np.full(3, (1 / (2 * 0.5)) ** 2)
        elif objective == "dpo":  # label smoothing keeps ln 2 at the reference
            expected = np.full(3, math.log(2))
        elif objective == "orpo":
            log_odds = (pc - pr) - (np.log1p(-np.exp(pc)) - np.log1p(-np.exp(pr)))
            expected = -pc + 0.2 * np.log1p(np.exp(-log_odds))
        else:
            expected = np.log1p(np.exp(-(2.0 * (pc - pr) - 0.3)))
        np.testing.assert_allclose(out["loss"], expected, rtol=1e-4, atol=1e-5)
    assert not any("ref_chosen" in f for f in preference.prepare(table, tok, validate(_raw(tiny_llama, tmp_path, path, objective="simpo")), [])[0])


def test_metrics():
    outputs = {"chosen_reward": np.array([1.0, -1.0, 2.0]), "rejected_reward": np.array([0.0, 0.0, 1.0]),
               "loss": np.array([0.1, 0.2, 0.3]), "chosen_logps": np.array([-1.0, -2.0, -3.0]),
               "rejected_logps": np.array([-4.0, -5.0, -6.0])}
    m = preference.compute_metrics(outputs, [])
    assert list(m)[:5] == list(preference.METRICS)
    assert m["reward_accuracy"] == pytest.approx(2 / 3) and m["reward_margin"] == pytest.approx(1 / 3)
    assert m["chosen_logps"] == pytest.approx(-2.0) and m["loss"] == pytest.approx(0.2)


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_training_raises_the_chosen_answers_over_the_rejected(tiny_llama, tmp_path, strategy, capsys):
    path = _jsonl(tmp_path / "d.jsonl", strings() * 4)
    raw = _raw(tiny_llama, tmp_path, path)
    raw["strategy"] = {"name": strategy, **({"r": 8, "alpha": 16, "dropout": 0.0} if strategy == "lora" else {})}
    raw["train"].update({"lr": 1e-2, "epochs": 3} if strategy == "full" else {"lr": 5e-2, "epochs": 6})
    result = train(raw, progress=False)
    steps = [h for h in result.history if "loss" in h and "step" in h and "reward_accuracy" not in h]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as the reference
    val = result.metrics["validation"]
    assert val["loss"] < math.log(2) - 0.05 and val["reward_margin"] > 0 and val["reward_accuracy"] >= 2 / 3
    assert result.metrics["validation"]["chosen_logps"] > result.metrics["validation"]["rejected_logps"] - 10
    assert result.metrics["train"]["samples"] == raw["train"]["epochs"] * 12  # pairs, not sequences
    assert json.loads((result.output_dir / "data.json").read_text())
    assert (result.output_dir / "validation_samples.jsonl").read_text().count("chosen_reward") == len(strings() * 4)
    # lmtune eval on the pair file gives the run's own validation metrics (the same reference)
    capsys.readouterr()
    assert main(["eval", str(result.output_dir), str(path)]) == 0
    scored = json.loads(capsys.readouterr().out)
    for key in preference.METRICS:
        assert scored[key] == pytest.approx(val[key], abs=1e-4), key
    if strategy == "full":  # the tuned model answers a pair file's prompts, its chosen answers the references
        assert main(["predict", str(result.output_dir), str(path), "--max-new-tokens", "3"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(rows) == 12 and rows[0]["reference"] == PAIRS[0][1] and rows[0]["prompt"].endswith("assistant\n")


def test_data_preview_marks_the_chosen_answer(tiny_llama, tmp_path, capsys):
    path = _jsonl(tmp_path / "d.jsonl", strings())
    assert main(["data", "preview", _config(tmp_path, _raw(tiny_llama, tmp_path, path)), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "data shape strings" in out and "assistant[[twelve euro please . <|im_end|>]]" in out


# ---------------------------------------------------------------- bad input


def _config(tmp_path, raw) -> str:
    import yaml

    path = tmp_path / "cfg" / "p.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_missing_columns_exit_2_naming_the_file(tiny_llama, tmp_path, capsys):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "hi", "chosen": "yes ."}])
    (line,) = expect_error(capsys, tmp_path, "train", _config(tmp_path, _raw(tiny_llama, tmp_path, path)))
    assert str(path) in line and "rejected" in line


def test_message_lists_for_a_model_without_a_chat_template_exit_2(tiny_llama, tmp_path, capsys):
    import shutil

    plain = tmp_path / "plain-llama"
    shutil.copytree(tiny_llama, plain)
    (plain / "chat_template.jinja").unlink()
    path = _jsonl(tmp_path / "d.jsonl", openai())
    (line,) = expect_error(capsys, tmp_path, "train", _config(tmp_path, _raw(plain, tmp_path, path)))
    assert str(path) in line and "chat template" in line
    _jsonl(path, strings())  # plain texts take the User/Assistant layout
    assert main(["data", "preview", _config(tmp_path, _raw(plain, tmp_path, path))]) == 0


def test_a_bad_row_exits_2_naming_its_line(tiny_llama, tmp_path, capsys):
    rows = conversational() + [{"prompt": [{"role": "robot", "content": "hi"}], "chosen": "a", "rejected": "b"}]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    (line,) = expect_error(capsys, tmp_path, "train", _config(tmp_path, _raw(tiny_llama, tmp_path, path)))
    assert f"{path}:4: prompt: message 1" in line


def test_an_encoder_model_exits_2(tiny_bert, tmp_path, capsys):
    path = _jsonl(tmp_path / "d.jsonl", strings())
    (line,) = expect_error(capsys, tmp_path, "train", _config(tmp_path, _raw(tiny_bert, tmp_path, path)))
    assert line.startswith("model:") and "not a decoder" in line


def test_bad_objective_keys_exit_2(tiny_llama, tmp_path, capsys):
    path = _jsonl(tmp_path / "d.jsonl", strings())
    raw = _raw(tiny_llama, tmp_path, path, objective="kto", bta=0.2)
    problems = expect_error(capsys, tmp_path, "train", _config(tmp_path, raw))
    assert any(p.startswith("preference.objective") for p in problems)
    assert any(p.startswith("preference.bta") and "beta" in p for p in problems)


def test_log_probabilities_match_trl_dpo_trainer(tiny_llama, tmp_path):
    """Per pair, the summed log-probabilities of the chosen and rejected answers are TRL's (DPOTrainer's
    own tokenization, collation and per-token log-probabilities) on the same conversational rows."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    rows = conversational() * 2
    tok = load_tokenizer(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], per_device_eval_batch_size=len(rows),
                     use_cpu=True, max_length=None, save_strategy="no", logging_strategy="no",
                     bf16=False)  # (TRL's default autocasts to bf16, 1e-3 off on these sums)
    trainer = DPOTrainer(model=model, args=args, processing_class=tok, train_dataset=datasets.Dataset.from_list(rows),
                         eval_dataset=datasets.Dataset.from_list(rows))
    batch = next(iter(trainer.get_eval_dataloader()))
    trainer.model.eval()
    trl_chosen, trl_rejected = trainer.compute_ref_log_probs(trainer.model, batch)

    cfg, features, _, _ = _prepared(tiny_llama, tmp_path, rows)
    out = _eval(load_pretrained("AutoModelForCausalLM", tiny_llama), features, tok, cfg)
    np.testing.assert_allclose(out["chosen_logps"].numpy(), trl_chosen.float().cpu().numpy(), atol=1e-4)
    np.testing.assert_allclose(out["rejected_logps"].numpy(), trl_rejected.float().cpu().numpy(), atol=1e-4)


def test_one_optimizer_step_gives_trl_dpo_trainers_loss(tiny_llama, tmp_path):
    """Policy and reference equal: both losses are ln 2; after one AdamW step with the same settings
    (8 pairs in one batch, lr 1e-3 constant, no decay, fp32) the held loss of the two trained models
    on the same pairs agrees within 1e-3, and both fell."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    rows = (conversational() * 3)[:8]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], per_device_train_batch_size=8,
                     per_device_eval_batch_size=8, max_steps=1, learning_rate=1e-3, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.1, use_cpu=True, max_length=None,
                     save_strategy="no", logging_strategy="no", bf16=False, seed=0)
    data = datasets.Dataset.from_list(rows)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), args=args,
                         processing_class=load_tokenizer(tiny_llama), train_dataset=data, eval_dataset=data)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    trainer.train()
    trl_loss = trainer.evaluate()["eval_loss"]

    raw = _raw(tiny_llama, tmp_path, path)
    raw["train"] = {"max_steps": 1, "batch_size": 8, "lr": 1e-3, "scheduler": "constant", "warmup_ratio": 0.0,
                    "weight_decay": 0.0, "max_grad_norm": 1.0, "precision": "fp32"}
    raw["eval"] = {"train_sample": 0}
    ours = train(raw, progress=False).metrics["validation"]["loss"]
    assert ours < math.log(2) - 0.01 and trl_loss < math.log(2) - 0.01
    assert ours == pytest.approx(trl_loss, abs=1e-3)


def test_a_resumed_run_ends_with_the_weights_of_an_unbroken_one(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    from .test_resume import Killed, _kill_at

    path = _jsonl(tmp_path / "d.jsonl", strings() * 4)

    def cfg(name):
        raw = _raw(tiny_llama, tmp_path, path)
        raw["output_dir"] = str(tmp_path / name)
        raw["train"].update(eval_steps=3, dropout=0.1)  # (dropout: the restored RNG state matters too)
        return raw

    whole = train(cfg("whole"), progress=False)
    with pytest.raises(Killed):  # after the checkpoint of step 3
        train(cfg("broken"), progress=False, on_evaluate=_kill_at(6))
    resumed = train(cfg("broken"), progress=False, resume=True)
    a, b = (load_file(str(r.output_dir / "checkpoints" / "last" / "model.safetensors")) for r in (whole, resumed))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert resumed.metrics["validation"]["loss"] == pytest.approx(whole.metrics["validation"]["loss"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_two_processes_give_the_metrics_of_one(tiny_llama, tmp_path, strategy):
    """`--nproc 2` on CPU: each process scores the reference (full) or switches its adapters off
    (lora, under DDP); the gathered validation metrics are those of the final model on one process."""
    import lmtune

    from .test_distributed_tasks import _run

    path = _jsonl(tmp_path / "d.jsonl", strings() * 4)
    raw = _raw(tiny_llama, tmp_path, path)
    raw["train"].update(epochs=2)
    if strategy == "lora":
        raw["strategy"] = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
    proc = _run(raw, tmp_path, "--nproc", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training on 2 x cpu" in proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["validation"]
    alone = lmtune.load(tmp_path / "run").evaluate_file(path)
    for key in preference.METRICS:
        assert alone[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-5), key


def test_the_report_shows_reward_accuracy_and_the_chosen_beside_the_rejected(tiny_llama, tmp_path):
    from lmtune.report import write_run_report

    from .test_report import Page

    path = _jsonl(tmp_path / "d.jsonl", strings() * 4)
    result = train(_raw(tiny_llama, tmp_path, path), progress=False)
    page = Page(write_run_report(result.output_dir).read_text(encoding="utf-8"))
    assert {"Validation metrics", "Chosen vs rejected", "Validation pairs: chosen vs rejected"} <= set(page.headings)
    assert {"reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps", "margin"} <= set(page.cells)
    figures = {p.name for p in (result.output_dir / "report_files").glob("*.png")}
    assert {"validation_metrics.png", "paired_metrics.png"} <= figures
    # the final metrics' row shows the validation numbers as the report prints them
    assert f"{result.metrics['validation']['chosen_logps']:.4g}" in page.cells
    assert "likelihood_displacement" in result.metrics["diagnosis"]


def test_compare_and_search_rank_preference_runs_by_reward_accuracy(tiny_llama, tmp_path):
    """lmtune compare (full against lora) and lmtune search (two trials of train.lr) on preference
    pairs: each run is scored by the task's metric, reward accuracy, and the best is the highest."""
    import csv

    from lmtune.tune import search
    from lmtune.tune.compare import compare

    path = _jsonl(tmp_path / "d.jsonl", strings() * 4)
    raw = _raw(tiny_llama, tmp_path, path)
    raw["train"].update(epochs=1, report=False)
    raw["output_dir"] = str(tmp_path / "cmp")
    compare(_config(tmp_path, raw), strategies="full,lora", isolate=False, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "compare.csv", encoding="utf-8")))
    assert [r["strategy"] for r in rows] == ["full", "lora"]
    for row in rows:
        metrics = json.loads((tmp_path / "cmp" / row["strategy"] / "metrics.json").read_text())
        assert float(row["validation_reward_accuracy"]) == pytest.approx(metrics["validation"]["reward_accuracy"])
    raw["output_dir"] = str(tmp_path / "s")
    raw["search"] = {"space": {"train.lr": {"loguniform": [1e-3, 1e-1]}}, "trials": 2, "pruner": "none"}
    result = search.run(raw)
    values = [json.loads((tmp_path / "s" / "trials" / f"{i:04d}" / "metrics.json").read_text())["validation"]["reward_accuracy"]
              for i in range(2)]
    assert result.best_value == max(values)
