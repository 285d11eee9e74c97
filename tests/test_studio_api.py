"""`lmtune studio`'s server over a runs folder: a finished tiny run and fake folders in every other
state (running, stopped, failed, interrupted, unreadable), the schema and validation of the run form,
runs launched as child processes (one at a time, the next queued), the API key, the event streams and
the chat with a tiny causal LM run. TestClient for what ends; uvicorn in a thread for the streams
that do not end by themselves."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml
from fastapi.testclient import TestClient

import lmtune
from lmtune.cli import main
from lmtune.studio.app import StudioOptions, create_studio_app

from .conftest import tiny_config
from .test_serve import running

ROOT = Path(__file__).resolve().parent.parent


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
    search, compare = runs / "sweep", runs / "strategies"
    shutil.copytree(runs / "done", search / "trials" / "0000")
    shutil.copytree(runs / "broke", search / "trials" / "0001")
    (search / "search.yaml").write_text(yaml.safe_dump({**config, "search": {"space": {}, "trials": 2}}))
    (search / "trials.csv").write_text("trial,state,value\n0,complete,0.5\n1,fail,\n")
    shutil.copytree(runs / "done", compare / "full")
    (compare / "compare.json").write_text(json.dumps({"metric": "accuracy", "runs": [{"output_dir": str(compare / "full")}]}))
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
        "garbled": "unreadable", "badyaml": "unreadable", "sweep": "finished", "strategies": "finished"}
    assert {n for n, r in by_name.items() if r["resumable"]} == {"paused", "killed"}
    assert by_name["broke"]["error"] == "data.train: no such file"
    assert "metrics.json" in by_name["garbled"]["error"] and "config.yaml" in by_name["badyaml"]["error"]
    done = by_name["done"]
    assert done["kind"] == "run" and done["task"] == "classification" and done["strategy"] == "full"
    assert done["metric"]["name"] == "accuracy" and done["metric"]["greater_is_better"] is True
    assert 0 <= done["metric"]["value"] <= 1 and done["seconds"] > 0 and done["verdict"]
    assert by_name["live"]["started"] == "2026-01-01T00:00:00"
    for group, kind in (("sweep", "search"), ("strategies", "compare")):
        assert by_name[group] == {**by_name[group], "kind": kind, "task": "classification", "metric": done["metric"]}


def test_search_and_compare_details_list_their_runs(client: TestClient) -> None:
    sweep = client.get("/api/runs/sweep").json()
    assert [row["state"] for row in sweep["trials"]] == ["complete", "fail"] and sweep["comparison"] is None
    strategies = client.get("/api/runs/strategies").json()
    assert [(r["name"], r["status"]) for r in strategies["comparison"]] == [("full", "finished")]


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
    # what lmtune writes (model_chain) and what only `lmtune search` reads are not asked for
    assert not {k for k in cls_keys | lm_keys if k == "model_chain" or k.startswith("search.")}
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


def test_api_key_by_header_or_query(runs_dir: Path) -> None:
    with TestClient(create_studio_app(runs_dir, StudioOptions(api_key="s3cret"))) as c:
        assert c.get("/api/runs").status_code == 401
        assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/runs", params={"key": "wrong"}).status_code == 401
        assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/runs", params={"key": "s3cret"}).status_code == 200
        assert c.get("/health").json() == {"ok": True} and "lmtune studio" in c.get("/").text
        assert "lmtune studio" in c.get("/static/index.html").text


def test_a_runs_folder_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    cli = subprocess.run([sys.executable, "-m", "lmtune", "studio", "--runs", "missing"], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert cli.returncode == 2 and cli.stdout == ""
    assert cli.stderr.count("\n") == 1 and cli.stderr.startswith("lmtune: error: --runs: missing does not exist")


def _read_events(response: Any, wanted: int) -> list[tuple[str, Any]]:
    events, kind = [], "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: "):])))
            kind = "message"
            if len(events) >= wanted:
                break
    return events


def test_history_stream_of_a_finished_run_then_closed(runs_dir: Path) -> None:
    records = [json.loads(line) for line in (runs_dir / "done" / "history.jsonl").read_text().splitlines()]
    app = create_studio_app(runs_dir, StudioOptions(poll_seconds=0.05))
    with running(app) as url, httpx.Client(timeout=30) as http:
        with http.stream("GET", f"{url}/api/runs/done/events", params={"from": 1}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = _read_events(response, len(records))  # records 1.. then the status
        assert events == [("history", r) for r in records[1:]] + [("status", {"status": "finished"})]
        with http.stream("GET", f"{url}/api/events") as response:
            assert _read_events(response, 1) == [("message", {"type": "runs"})]
        assert http.get(f"{url}/health").json() == {"ok": True}  # the server goes on after the clients left


def _next_event(lines: Iterator[str]) -> Any:
    return next(json.loads(line[len("data: "):]) for line in lines if line.startswith("data: "))


def test_a_search_and_a_compare_as_their_trials_and_runs_come_in(runs_dir: Path, tmp_path: Path) -> None:
    done = runs_dir / "done"
    config = yaml.safe_load((done / "config.yaml").read_text())
    step = json.dumps({"step": 1, "epoch": 0.1, "loss": 0.7, "lr": 1e-3}) + "\n"
    live = {"history.jsonl": step, "process.json": json.dumps({"pid": os.getpid(), "host": os.uname().nodename})}
    runs = tmp_path / "runs"
    search = runs / "sweep"
    shutil.copytree(done, search / "trials" / "0000")
    _fake(search / "trials" / "0001", config, live)
    (search / "search.yaml").write_text(yaml.safe_dump({**config, "search": {"space": {}, "direction": "minimize"}}))
    shutil.copytree(done, runs / "strategies" / "full")  # a compare before its compare.json: its runs so far
    _fake(runs / "strategies" / "lora", {**config, "strategy": {"name": "lora"}}, live)
    _fake(runs / "loose" / "mine", config, {"history.jsonl": step})  # a folder of runs, not named as a compare's
    accuracy = json.loads((done / "metrics.json").read_text())["validation"]["accuracy"]
    app = create_studio_app(runs, StudioOptions(poll_seconds=0.05))
    with running(app) as url, httpx.Client(timeout=30) as http:
        listing = {r["name"]: r for r in http.get(f"{url}/api/runs").json()["runs"]}
        assert {n: (r["kind"], r["status"]) for n, r in listing.items()} == {
            "sweep": ("search", "running"), "strategies": ("compare", "running")}
        compare = http.get(f"{url}/api/runs/strategies").json()
        assert [(r["name"], r["status"]) for r in compare["comparison"]] == [("full", "finished"), ("lora", "running")]
        chart = http.get(f"{url}/api/runs/sweep").json()["search"]  # (no trials.csv yet: the trials' folders)
        assert chart == {"metric": "accuracy", "greater_is_better": False, "source": "trials", "points": [
            {"trial": 0, "state": "complete", "value": accuracy}, {"trial": 1, "state": "running", "value": None}]}
        with http.stream("GET", f"{url}/api/events") as response:
            lines = response.iter_lines()
            assert _next_event(lines) == {"type": "runs"}  # (the first says the stream is open)
            (search / "trials.csv").write_text("trial,state,accuracy\n0,complete,0.5\n")
            assert _next_event(lines) == {"type": "runs"}
            with open(search / "trials.csv", "a") as f:  # (in place: the folder itself does not change)
                f.write("1,pruned,0.25\n2,complete,0.75\n")
            assert _next_event(lines) == {"type": "runs"}
        details = http.get(f"{url}/api/runs/sweep").json()
        assert [r["trial"] for r in details["trials"]] == ["0", "1", "2"]
        assert details["search"]["source"] == "trials.csv" and details["search"]["points"] == [{"trial": 0, "state": "complete", "value": 0.5},
                                               {"trial": 1, "state": "pruned", "value": 0.25},
                                               {"trial": 2, "state": "complete", "value": 0.75}]


def _wait_until(client: TestClient, done: Any, what: str, timeout: float = 400) -> dict[str, Any]:
    """Poll /api/runs until `done(listing)`; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while True:
        listing = client.get("/api/runs").json()
        if done(listing):
            return listing
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {listing}"
        time.sleep(0.2)


def test_launched_runs_run_one_at_a_time_to_finished(tiny_bert: Path, toy_data: dict[str, Path],
                                                     tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    with TestClient(create_studio_app(runs)) as c:
        bad = c.post("/api/runs", json={"config": {"model": "minilm-l6", "train": {"epochs": "many"}}})
        assert bad.status_code == 422 and {p["key"] for p in bad.json()["problems"]} >= {"train.epochs"}
        first = c.post("/api/runs", json={"config": tiny_config(tiny_bert, toy_data, Path("elsewhere/one"), max_steps=2)})
        assert first.status_code == 201 and first.json() == {"name": "one", "state": "running"}
        second = c.post("/api/runs", json={"config": tiny_config(tiny_bert, toy_data, Path("two"), max_steps=2)})
        assert second.status_code == 201 and second.json() == {"name": "two", "state": "queued"}
        again = c.post("/api/runs", json={"config": tiny_config(tiny_bert, toy_data, Path("two"), max_steps=2)})
        assert again.status_code == 409
        assert [j["name"] for j in c.get("/api/runs").json()["queue"]] == ["one", "two"]
        listing = _wait_until(c, lambda l: not l["queue"] and len(l["runs"]) == 2, "both runs to end")
        assert {r["name"]: r["status"] for r in listing["runs"]} == {"one": "finished", "two": "finished"}
        assert json.loads((runs / ".studio" / "jobs.json").read_text()) == {"jobs": []}
        assert "train labels: negative" in (runs / ".studio" / "logs" / "two.log").read_text()  # the child's output
        assert c.post("/api/runs", json={"config": tiny_config(tiny_bert, toy_data, Path("one"))}).status_code == 409
        assert c.post("/api/runs/one/resume").status_code == 409  # finished: nothing to resume


def test_a_restart_forgets_dead_jobs_and_starts_queued_ones(tiny_bert: Path, toy_data: dict[str, Path],
                                                           tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / ".studio" / "configs").mkdir(parents=True)
    config = tiny_config(tiny_bert, toy_data, runs / "next", max_steps=1)
    (runs / ".studio" / "configs" / "next.yaml").write_text(yaml.safe_dump(config))
    jobs = [{"name": "gone", "action": "train", "state": "running", "pid": 2**22 + 12345},
            {"name": "next", "action": "train", "state": "queued", "pid": None}]
    (runs / ".studio" / "jobs.json").write_text(json.dumps({"jobs": jobs}))
    with TestClient(create_studio_app(runs)) as c:
        assert c.get("/api/runs").json()["queue"] == [{"name": "next", "action": "train", "state": "running"}]
        listing = _wait_until(c, lambda l: not l["queue"], "the run to end")
        assert [(r["name"], r["status"]) for r in listing["runs"]] == [("next", "finished")]


def test_stop_removes_a_queued_job_and_ends_a_running_one(tiny_bert: Path, toy_data: dict[str, Path],
                                                         tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    with TestClient(create_studio_app(runs)) as c:
        for name in ("first", "second"):
            c.post("/api/runs", json={"config": tiny_config(tiny_bert, toy_data, Path(name), epochs=50)})
        assert c.post("/api/runs/second/stop").status_code == 202
        assert c.get("/api/runs").json()["queue"] == [{"name": "first", "action": "train", "state": "running"}]
        assert c.post("/api/runs/first/stop").status_code == 202
        listing = _wait_until(c, lambda l: not l["queue"], "the stopped run to end", timeout=120)
        assert all(r["status"] != "finished" for r in listing["runs"])
        assert c.post("/api/runs/nothing/stop").status_code == 404


CHATS = [{"messages": [{"role": "user", "content": "what does a flat fix cost ?"},
                       {"role": "assistant", "content": "twelve euro please ."}]}] * 8


@pytest.fixture(scope="module")
def lm_runs(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("studio-lm")
    train = folder / "chat.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in CHATS))
    runs = folder / "runs"
    config = {"model": str(tiny_llama), "task": "causal_lm", "output_dir": str(runs / "chatty"),
              "data": {"train": str(train), "validation": str(train), "max_length": 32},
              "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "report": False},
              "eval": {"generate_rows": 0}}
    lmtune.train(config, progress=False)
    (folder / "config.json").write_text(json.dumps(config))
    return runs


def test_chat_streams_both_sides_of_a_causal_lm_run(lm_runs: Path) -> None:
    with TestClient(create_studio_app(lm_runs)) as c:
        assert c.get("/api/runs/chatty").json()["chat"] is True
        body = {"messages": [{"role": "user", "content": "what does a flat fix cost ?"}], "max_new_tokens": 4,
                "temperature": 0}
        for side in ("base", "tuned"):
            answer = c.post("/api/runs/chatty/chat", json={**body, "side": side})
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[len("data: "):]) for line in answer.text.splitlines() if line.startswith("data: ")]
            *pieces, last = events
            assert pieces and all(isinstance(p["text"], str) for p in pieces)
            assert last["done"] is True and 1 <= last["tokens"] <= 4 and last["seconds"] >= 0
        assert c.post("/api/runs/chatty/chat", json={**body, "side": "left"}).status_code == 400
        assert c.post("/api/runs/chatty/chat", json={**body, "max_new_tokens": 0}).status_code == 400


def test_preview_marks_the_trained_tokens(lm_runs: Path) -> None:
    config = json.loads((lm_runs.parent / "config.json").read_text())
    with TestClient(create_studio_app(lm_runs)) as c:
        answer = c.post("/api/preview", json={"config": config, "rows": 2}).json()
    assert answer["problems"] == [] and len(answer["rows"]) == 2
    tokens = answer["rows"][0]["tokens"]
    trained = "".join(t["text"] for t in tokens if t["trained"])
    assert "twelve" in trained and "flat" not in trained and "flat" in answer["rows"][0]["text"]


def test_preview_of_a_classifier_gives_text_and_label(client: TestClient, tiny_bert: Path,
                                                      toy_data: dict[str, Path], tmp_path: Path) -> None:
    answer = client.post("/api/preview", json={"config": tiny_config(tiny_bert, toy_data, tmp_path / "r"),
                                               "rows": 3}).json()
    first = toy_data["train"].read_text().splitlines()[1]
    assert len(answer["rows"]) == 3 and answer["rows"][0]["tokens"] is None
    assert first.startswith(answer["rows"][0]["text"]) and answer["rows"][0]["label"] in ("positive", "negative")


def test_plan_gives_the_lines_of_lmtune_plan(client: TestClient, tiny_bert: Path, toy_data: dict[str, Path],
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tiny_bert, toy_data, tmp_path / "r")
    answer = client.post("/api/plan", json={"config": config, "probe": 0}).json()
    assert answer["ok"] is True and answer["problems"] == []
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["plan", str(tmp_path / "c.yaml"), "--probe", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert answer["text"].splitlines()[:3] == printed[:3] and "GiB" in answer["text"]
    bad = client.post("/api/plan", json={"config": {**config, "train": {"lr": -1}}}).json()
    assert bad["ok"] is False and bad["problems"][0]["key"] == "train.lr"
