"""Strategies freeze what they should and give each group its learning rate; training trains."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import lmtune
from lmtune.core.config import AdaptiveStrategy, FullStrategy, GradualStrategy, LoraStrategy, PartialStrategy
from lmtune.core.errors import LmtuneError
from lmtune.tasks import classification
from lmtune.training import strategies

from .conftest import WORDS, tiny_config


def _model(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)


def test_layout_finds_embeddings_layers_and_head(tiny_bert):
    lay = strategies.layout(_model(tiny_bert))
    assert len(lay.layers) == 2
    assert all(n.startswith("bert.embeddings.") for n, _ in lay.embeddings)
    assert all(n.startswith("bert.encoder.layer.1.") for n, _ in lay.layers[1])
    assert {n.split(".")[0] for n, _ in lay.head} == {"bert", "classifier"}  # pooler + classifier
    assert any(n.startswith("bert.pooler") for n, _ in lay.head)


def test_adaptive_learning_rates_decay_from_the_top(tiny_bert):
    model = _model(tiny_bert)
    groups = strategies.apply(model, AdaptiveStrategy(name="adaptive", decay=0.5, head_lr_multiplier=4), 1e-3, 0.01).groups
    lr = {g["name"].removesuffix(".no_decay"): g["lr"] for g in groups}
    assert lr["head"] == pytest.approx(4e-3)
    assert lr["layer.1"] == pytest.approx(1e-3)
    assert lr["layer.0"] == pytest.approx(5e-4)
    assert lr["embeddings"] == pytest.approx(2.5e-4)
    # every parameter is in exactly one group
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_no_weight_decay_on_biases_and_norms(tiny_bert):
    model = _model(tiny_bert)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in strategies.apply(model, FullStrategy(), 1e-3, 0.1).groups:
        for p in g["params"]:
            is_1d = "bias" in names[id(p)] or "LayerNorm" in names[id(p)]
            assert g["weight_decay"] == (0.0 if is_1d else 0.1), names[id(p)]


def test_partial_freezes_embeddings_and_bottom_layers(tiny_bert):
    model = _model(tiny_bert)
    groups = strategies.apply(model, PartialStrategy(name="partial", freeze_layers=1), 1e-3, 0.0).groups
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for n in trainable)
    assert any(n.startswith("bert.encoder.layer.1.") for n in trainable)
    assert "classifier.weight" in trainable
    counts = _hand_count()
    top = counts["layer"] + counts["pooler"] + counts["classifier"]  # layer 1, pooler, classifier
    assert sum(p.numel() for g in groups for p in g["params"]) == top
    pct = f"{100 * top / counts['total']:.1f}"
    assert strategies.describe(model, groups) == f"{top:,} of {counts['total']:,} parameters trainable ({pct}%), lr 0.001"


def _hand_count(hidden: int = 32, intermediate: int = 64, layers: int = 2, positions: int = 64, labels: int = 2) -> dict[str, int]:
    """The parameters of the tiny BERT classifier (conftest.build_tiny_bert), counted from its
    dimensions: a linear layer is in * out weights + out biases, a LayerNorm 2 x width."""
    vocab = 5 + len({w for ws in WORDS.values() for w in ws})  # [PAD] [UNK] [CLS] [SEP] [MASK] + words
    h = hidden
    counts = {
        "embeddings": vocab * h + positions * h + 2 * h + 2 * h,  # words, positions, 2 token types, LayerNorm
        # query, key, value, attention output; LayerNorm; intermediate; output; LayerNorm
        "layer": 4 * (h * h + h) + 2 * h + (h * intermediate + intermediate) + (intermediate * h + h) + 2 * h,
        "pooler": h * h + h,
        "classifier": h * labels + labels,
    }
    counts["total"] = counts["embeddings"] + layers * counts["layer"] + counts["pooler"] + counts["classifier"]
    return counts


def test_describe_counts_trainable_and_total_parameters_by_hand(tiny_bert):
    counts = _hand_count()
    # 3,424 embeddings + 2 x 8,544 layers + 1,056 pooler + 66 classifier, worked out once on paper
    assert counts["total"] == 21_634
    model = _model(tiny_bert)
    full = strategies.apply(model, FullStrategy(), 1e-3, 0.0)
    assert strategies.describe(model, full.groups) == "21,634 of 21,634 parameters trainable (100.0%), lr 0.001"
    model = _model(tiny_bert)
    adaptive = strategies.apply(model, AdaptiveStrategy(name="adaptive", decay=0.5, head_lr_multiplier=4), 1e-3, 0.0)
    # head 4e-3, layer 1 1e-3, layer 0 5e-4, embeddings 2.5e-4
    assert strategies.describe(model, adaptive.groups) == (
        "21,634 of 21,634 parameters trainable (100.0%), lr 0.00025 .. 0.004 in 4 groups")
    model = _model(tiny_bert)
    gradual = strategies.apply(model, GradualStrategy(name="gradual", unfreeze_every=1), 1e-3, 0.0)
    head = counts["pooler"] + counts["classifier"]  # only the head trains at first: 1,122
    assert strategies.describe(model, gradual.groups) == "1,122 of 21,634 parameters trainable (5.2%), lr 0.001"
    # LoRA r=4 on the six linear layers of each block: r x (in + out) each; query, key, value and
    # the attention output are 32 -> 32, the intermediate 32 -> 64, the output 64 -> 32
    adapters = 2 * (4 * 4 * (32 + 32) + 2 * 4 * (32 + 64))
    assert adapters == 3_584
    model = _model(tiny_bert)
    lora = strategies.apply(model, LoraStrategy(name="lora", r=4), 1e-3, 0.0)
    # the head (pooler, classifier) trains as a copy beside the frozen original
    trainable, total = adapters + head, counts["total"] + adapters + head
    assert strategies.describe(lora.model, lora.groups) == (
        f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.1f}%), lr 0.001")
    assert (trainable, total) == (4_706, 26_340)


def test_partial_more_layers_than_model_is_an_error(tiny_bert):
    with pytest.raises(LmtuneError, match="more than the 2 layers"):
        strategies.apply(_model(tiny_bert), PartialStrategy(name="partial", freeze_layers=3), 1e-3, 0.0)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize(
    "strategy, frozen_prefixes",
    [
        ({"name": "full"}, ()),
        ({"name": "partial", "freeze_layers": 1}, ("bert.embeddings.", "bert.encoder.layer.0.")),
        ({"name": "adaptive", "decay": 0.5}, ()),
        # stages every 2 steps: head, then layer 1 (after step 2), then layer 0 (after step 4)
        ({"name": "gradual", "unit": "step", "unfreeze_every": 2}, ("bert.embeddings.", "bert.encoder.layer.0.")),
    ],
)
def test_training_changes_trainable_and_keeps_frozen(tiny_bert, toy_data, tmp_path, strategy, frozen_prefixes):
    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", max_steps=4, epochs=1, warmup_ratio=0.0)
    cfg["strategy"] = strategy
    result = lmtune.train(cfg, progress=False)
    before = _weights(tiny_bert)
    after = _weights(result.output_dir / "model")
    checked = 0
    for name, old in before.items():
        new = after["bert." + name]
        if name.startswith(tuple(p.removeprefix("bert.") for p in frozen_prefixes)):
            assert torch.equal(old, new), f"{name} is frozen but changed"
        else:
            assert not torch.equal(old, new), f"{name} is trainable but did not change"
        checked += 1
    assert checked == len(before)


def test_gradual_unfreezes_one_layer_group_at_a_time(tiny_bert):
    model = _model(tiny_bert)
    plan = strategies.apply(model, GradualStrategy(name="gradual", unfreeze_every=1), 1e-3, 0.0)
    trainable = lambda: {n.split(".")[0] if not n.startswith("bert.encoder") else ".".join(n.split(".")[:4])  # noqa: E731
                         for n, p in model.named_parameters() if p.requires_grad}
    assert trainable() == {"bert", "classifier"} and not any(
        p.requires_grad for n, p in model.named_parameters() if "encoder" in n or "embeddings" in n
    )
    assert plan.update(step=5, epoch=0) is None
    assert "layer 1" in plan.update(step=12, epoch=1)
    assert "bert.encoder.layer.1" in trainable() and "bert.encoder.layer.0" not in trainable()
    assert "embeddings" in plan.update(step=40, epoch=9)
    assert all(p.requires_grad for p in model.parameters())
    # every parameter was in the optimizer from the start
    assert sum(len(g["params"]) for g in plan.groups) == len(list(model.parameters()))


def test_lora_trains_only_adapters_and_the_new_head(tiny_bert):
    model = _model(tiny_bert)
    plan = strategies.apply(model, LoraStrategy(name="lora", r=4), 1e-3, 0.0)
    trainable = [n for n, p in plan.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("classifier" in n for n in trainable)
    assert {n.split("lora_")[0].rsplit(".", 2)[-2] for n in trainable if "lora_" in n} >= {"query", "key", "value", "dense"}


def test_lora_target_that_matches_nothing_is_a_config_error(tiny_bert, toy_data, tmp_path):
    from lmtune.tasks.run_config import validate

    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run")
    cfg["strategy"] = {"name": "lora", "target_modules": ["query", "q_proj"]}
    with pytest.raises(LmtuneError, match="'q_proj' matches no module"):
        validate(cfg)


def test_lora_run_saves_an_adapter_that_predicts_and_merges(tiny_bert, toy_data, tmp_path):
    import numpy as np

    from lmtune.export.run import export
    from lmtune.infer.predict import Predictor

    cfg = tiny_config(tiny_bert, toy_data, tmp_path / "run", epochs=2, lr=1e-2)
    cfg["strategy"] = {"name": "lora", "r": 4}
    result = lmtune.train(cfg, progress=False)
    model_dir = result.output_dir / "model"
    assert (model_dir / "adapter_config.json").is_file() and not (model_dir / "model.safetensors").exists()
    before = _weights(tiny_bert)
    predictor = Predictor.from_run(result.output_dir)
    texts = ["good great superb", "awful terrible bad", "the movie was quite dull"]
    adapter_logits, _ = classification.logits(predictor, texts, None)
    merged = export(result.output_dir, tmp_path / "merged", merge=True)
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(merged)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    plain.eval()
    with torch.no_grad():
        merged_logits = plain(**predictor.tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(adapter_logits, merged_logits, atol=1e-4)
    # the base model's own weights were not touched by training
    after = _weights(tiny_bert)
    assert all(torch.equal(before[k], after[k]) for k in before)
