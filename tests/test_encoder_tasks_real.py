"""NER and extractive QA on the real bundled MiniLM-L6 with the small sets the repo ships: a short
run must beat the same model with an untrained task head on held-back data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lmtune
from lmtune.core import models
from lmtune.tasks.run_config import load_config
from lmtune.infer.predict import Predictor
from lmtune.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def untrained_head_scores(cfg, labels: list[str], data_file: Path, folder: Path) -> dict:
    """The bundled encoder with a freshly initialised task head (seeded), evaluated like a run."""
    import torch

    task = get_task(cfg.task)
    torch.manual_seed(cfg.train.seed)
    path = models.resolve(cfg.model)
    model = task.build_model(path, cfg, labels)
    model.save_pretrained(folder)
    models.load_tokenizer(path).save_pretrained(folder)
    (folder / "lmtune.json").write_text(json.dumps({"task": cfg.task, "labels": labels, "model": cfg.model}))
    return Predictor(folder, cfg).evaluate_file(data_file)


@pytest.mark.parametrize(
    "config, overrides, metric, margin",
    [
        ("ner.yaml", ["train.epochs=3"], "f1", 0.3),
        ("qa.yaml", ["train.epochs=3"], "f1", 0.2),
    ],
)
def test_short_run_beats_an_untrained_head(config, overrides, metric, margin, tmp_path):
    cfg = load_config(str(ROOT / "examples" / config), [
        f"output_dir={tmp_path / 'run'}",
        f"data.train={ROOT / load_config(str(ROOT / 'examples' / config), []).data.train}",
        f"data.validation={ROOT / load_config(str(ROOT / 'examples' / config), []).data.validation}",
        *overrides,
    ])
    result = lmtune.train(cfg, progress=False)
    labels = json.loads((tmp_path / "run" / "model" / "lmtune.json").read_text())["labels"]
    trained = result.metrics["validation"][metric]
    baseline = untrained_head_scores(cfg, labels, Path(cfg.data.validation), tmp_path / "untrained")[metric]
    print(f"{config}: {metric} {trained:.3f} after {result.metrics['train']['steps']} steps; untrained head {baseline:.3f}")
    assert trained > baseline + margin
    # the saved run answers as it was scored
    again = lmtune.load(tmp_path / "run").evaluate_file(cfg.data.validation)
    assert again[metric] == pytest.approx(trained, abs=0.03)
