"""`lmtune studio`'s server over a runs folder: a finished tiny run and fake folders in every other
state (running, stopped, failed, interrupted, unreadable), the schema and validation of the run form,
runs launched as child processes (one at a time, the next queued), the API key, the event streams and
the chat with a tiny causal LM run. TestClient for what ends; uvicorn in a thread for the streams
that do not end by themselves."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml
from fastapi.testclient import TestClient

import lmtune
from lmtune.serve.server import bind
from lmtune.studio.app import StudioOptions, create_studio_app

from .conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def running(app: Any) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


def _fake(folder: Path, config: dict[str, Any], files: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


@pytest.fixture(scope="module")
def runs_dir(tiny_bert: Path, toy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("studio") / "runs"
    lmtune.train(tiny_config(tiny_bert, toy_data, runs / "done", max_steps=2), progress=False)
    config = yaml.safe_load((runs / "done" / "config.yaml").read_text())
    step = json.dumps({"step": 1, "epoch": 0.1, "loss": 0.7, "lr": 1e-3}) + "\n"
    _fake(runs / "live", config, {"history.jsonl": step, "process.json": json.dumps(
        {"pid": os.getpid(), "host": os.uname().nodename, "started": "2026-01-01T00:00:00", "argv": ["lmtune"]})})
    _fake(runs / "paused", config, {"history.jsonl": step, "checkpoints/last/state": "x", "stopped.json": json.dumps(
        {"step": 1, "total_steps": 4, "epoch": 0.1, "at": "2026-01-01T00:00:00"})})
    _fake(runs / "broke", config, {"failed.json": json.dumps({"error": "data.train: no such file", "at": "2026"})})
    _fake(runs / "killed", config, {"history.jsonl": step, "checkpoints/last/state": "x", "process.json": json.dumps(
        {"pid": 2**22 + 12345, "host": os.uname().nodename})})
    _fake(runs / "garbled", config, {"metrics.json": "{not json"})
    (runs / "badyaml").mkdir()
    (runs / "badyaml" / "config.yaml").write_text("model: [unclosed\n")
    (runs / "just-a-folder").mkdir()
    return runs


@pytest.fixture(scope="module")
def client(runs_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_studio_app(runs_dir)) as c:
        yield c


def test_runs_list_every_status_and_never_crashes(client: TestClient) -> None:
    listing = client.get("/api/runs").json()
    by_name = {r["name"]: r for r in listing["runs"]}
    assert listing["queue"] == [] and "just-a-folder" not in by_name
    assert {n: r["status"] for n, r in by_name.items()} == {
        "done": "finished", "live": "running", "paused": "stopped", "broke": "failed", "killed": "interrupted",
        "garbled": "unreadable", "badyaml": "unreadable"}
    assert {n for n, r in by_name.items() if r["resumable"]} == {"paused", "killed"}
    assert by_name["broke"]["error"] == "data.train: no such file"
    assert "metrics.json" in by_name["garbled"]["error"] and "config.yaml" in by_name["badyaml"]["error"]
    done = by_name["done"]
    assert done["kind"] == "run" and done["task"] == "classification" and done["strategy"] == "full"
    assert done["metric"]["name"] == "accuracy" and done["metric"]["greater_is_better"] is True
    assert 0 <= done["metric"]["value"] <= 1 and done["seconds"] > 0 and done["verdict"]
    assert by_name["live"]["started"] == "2026-01-01T00:00:00"


def test_run_details_of_a_finished_classifier(client: TestClient, runs_dir: Path) -> None:
    d = client.get("/api/runs/done").json()
    assert d["status"] == "finished" and d["config"]["task"] == "classification"
    assert d["config_yaml"] == (runs_dir / "done" / "config.yaml").read_text()
    assert any("eval" in h for h in d["history"]) and d["metrics"]["validation"]["accuracy"] == d["metric"]["value"]
    assert d["diagnosis"]["verdict"] == d["verdict"]
    labels, matrix = d["confusion"]["labels"], d["confusion"]["matrix"]
    assert len(matrix) == len(labels) == 2 and sum(map(sum, matrix)) == 32  # the validation rows
    assert 0 < len(d["samples"]) <= 20 and d["chat"] is False and d["trials"] is None
    assert client.get("/api/runs/nope").status_code == 404
    assert client.get("/api/runs/..").status_code == 404
    assert client.get("/api/runs/badyaml").json()["status"] == "unreadable"


def test_schema_holds_only_the_keys_of_the_task(client: TestClient) -> None:
    cls = client.get("/api/schema", params={"task": "classification"}).json()
    lm = client.get("/api/schema", params={"task": "causal_lm"}).json()
    assert "causal_lm" in cls["tasks"] and "minilm-l6" in cls["models"]
    cls_keys, lm_keys = {f["key"] for f in cls["fields"]}, {f["key"] for f in lm["fields"]}
    assert "data.label_column" in cls_keys - lm_keys and "data.packing" in lm_keys - cls_keys
    fields = {f["key"]: f for f in cls["fields"]}
    assert fields["train.lr"]["type"] == "float" and fields["train.epochs"]["default"] == 3
    assert fields["train.scheduler"] == {**fields["train.scheduler"], "type": "choice",
                                         "choices": ["linear", "cosine", "constant"], "default": "linear"}
    assert fields["model"]["required"] and fields["data.train"]["required"]
    assert fields["strategy.r"]["strategy"] == "lora" and fields["train.lr"]["strategy"] is None
    assert "lora" in fields["strategy.name"]["choices"]
    assert client.get("/api/schema", params={"task": "nope"}).status_code == 400


def test_validate_lists_every_problem_with_its_key_and_the_cli_message(client: TestClient, tmp_path: Path) -> None:
    config = {"model": "minilm-l6", "data": {"train": "x.csv"}, "train": {"lr": "fast", "epochs": 0}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    cli = subprocess.run([sys.executable, "-m", "lmtune", "train", str(tmp_path / "bad.yaml")], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert cli.returncode == 2
    answer = client.post("/api/validate", json={"config": config}).json()
    assert answer["ok"] is False
    assert {p["key"] for p in answer["problems"]} == {"train.lr", "train.epochs"}
    assert ["lmtune: error: " + p["message"] for p in answer["problems"]] == cli.stderr.strip().splitlines()
    assert yaml.safe_load(answer["yaml"]) == config


def test_validate_a_good_config_gives_its_resolved_yaml(client: TestClient, tiny_bert: Path,
                                                       toy_data: dict[str, Path], tmp_path: Path) -> None:
    answer = client.post("/api/validate", json={"config": tiny_config(tiny_bert, toy_data, tmp_path / "r")}).json()
    assert answer["ok"] is True and answer["problems"] == []
    assert yaml.safe_load(answer["yaml"])["train"]["weight_decay"] == 0.01  # defaults filled
