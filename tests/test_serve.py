"""`lmtune serve`: the HTTP API over a tiny fine-tuned classifier and a tiny random Llama.

What a client gets equals what the Python API gives for the same inputs; the official `openai`
client works unchanged (streaming included); concurrent requests share model calls; a full queue
answers 503; junk gets the right 4xx and leaves the server working; a stream whose client leaves
stops generating. Tests that need real concurrency run uvicorn on a free port in a thread; the
others use FastAPI's TestClient. The worker is held with events, never with sleeps.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

import lmtune
from lmtune.cli import main
from lmtune.serve import ServeOptions, create_app
from lmtune.serve.batching import MicroBatcher, QueueFull
from lmtune.serve.server import bind
from lmtune.tasks.decoding import GenerationSettings

from .conftest import tiny_config

PREFIX = "lmtune: error: "


# ---------------------------------------------------------------- helpers


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll until `condition()` holds; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@contextmanager
def running(app: Any) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), "the server to start")
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def hold_worker(app: Any) -> threading.Event:
    """Occupy the app's model worker until the returned event is set."""
    gate = threading.Event()
    batcher = app.state.ctx.batcher
    batcher.submit(lambda items: [gate.wait(30)], [None])
    wait_for(lambda: batcher.running == 1, "the worker to hold")
    return gate


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI-shaped error of a response, checked to be one line."""
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "code"} <= set(error), error
    assert error["message"] and "\n" not in error["message"] and "Traceback" not in error["message"]
    return error


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cls_run(tiny_bert: Path, toy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "sentiment"
    lmtune.train(tiny_config(tiny_bert, toy_data, out, max_steps=2), progress=False)
    return out


@pytest.fixture(scope="module")
def predictor(cls_run: Path) -> Any:
    return lmtune.load(str(cls_run))


@pytest.fixture(scope="module")
def generator(tiny_llama: Path) -> Any:
    generator = lmtune.load(str(tiny_llama))
    # transformers' stop-string matching probes the tokenizer with the text "abcdef", which the toy
    # word-level vocabulary cannot spell (any real tokenizer can): teach it that one word
    generator.tokenizer.add_tokens(["abcdef"])
    return generator


@pytest.fixture(scope="module")
def cls_client(cls_run: Path) -> Iterator[TestClient]:
    app = create_app(str(cls_run), ServeOptions(max_inputs=4, max_body_bytes=4000))
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def llama_client(generator: Any) -> Iterator[TestClient]:
    app = create_app(generator, ServeOptions(max_inputs=4, max_body_bytes=4000, max_tokens_limit=64), name="tiny-llama")
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def llama_url(generator: Any) -> Iterator[str]:
    with running(create_app(generator, ServeOptions(max_tokens_limit=64), name="tiny-llama")) as url:
        yield url


@pytest.fixture(scope="module")
def openai_client(llama_url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{llama_url}/v1", api_key="unused", max_retries=0)


# ---------------------------------------------------------------- the basics


def test_health_models_docs_and_page(cls_client: TestClient, predictor: Any) -> None:
    assert cls_client.get("/health").json() == {"status": "ok"}
    models = cls_client.get("/v1/models").json()
    assert models["object"] == "list"
    [card] = models["data"]
    assert card["id"] == "sentiment" and card["object"] == "model" and card["owned_by"] == "lmtune"
    assert card["task"] == "classification" and card["labels"] == predictor.labels
    assert cls_client.get("/v1/models/sentiment").json()["id"] == "sentiment"
    assert cls_client.get("/v1/models/other").status_code == 404
    assert cls_client.get("/docs").status_code == 200
    assert "/v1/predict" in cls_client.get("/openapi.json").json()["paths"]
    page = cls_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_page_missing_says_so(cls_client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lmtune.serve import app as app_module

    monkeypatch.setattr(app_module, "PLAYGROUND", tmp_path / "absent.html")
    page = cls_client.get("/")
    assert page.status_code == 200 and "not installed" in page.text


def test_generative_model_card(llama_client: TestClient) -> None:
    [card] = llama_client.get("/v1/models").json()["data"]
    assert card == {**card, "id": "tiny-llama", "task": "causal_lm", "labels": []}


def test_one_access_log_line_per_request(cls_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lmtune.serve.access"):
        cls_client.get("/health")
        cls_client.post("/v1/predict", json={"inputs": []})
    lines = [r.getMessage() for r in caplog.records if r.name == "lmtune.serve.access"]
    assert len(lines) == 2
    assert " GET /health 200 " in lines[0] and lines[0].endswith("ms")
    assert " POST /v1/predict 400 " in lines[1]


# ---------------------------------------------------------------- prediction


def test_predict_over_http_equals_predict_rows(cls_client: TestClient, predictor: Any) -> None:
    long_text = " ".join(["good film but a dull plot"] * 12)  # longer than the run's max_length
    for inputs in (["a lovely film", "awful", long_text],
                   [["good movie", "bad plot"], {"text": "dull", "text_pair": "superb"}],
                   ["a lovely film", ["good acting", "dull plot"]]):
        response = cls_client.post("/v1/predict", json={"inputs": inputs, "model": "sentiment"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "sentiment" and body["task"] == "classification"
        assert body["predictions"] == predictor.predict_rows(inputs)
    rows = cls_client.post("/v1/predict", json={"inputs": ["awful", long_text]}).json()["predictions"]
    assert "truncated" not in rows[0] and rows[1]["truncated"] is True


def test_concurrent_requests_share_one_model_call(predictor: Any) -> None:
    app = create_app(predictor, ServeOptions(max_batch=16, max_wait_ms=0), name="sentiment")
    texts = ["good", "bad film", "a really dull story", "superb", "the plot was awful", "nice"]
    alone = {t: predictor.predict_rows([t])[0] for t in texts}
    batcher = app.state.ctx.batcher
    with running(app) as url, ThreadPoolExecutor(len(texts)) as pool:
        calls = batcher.calls
        gate = hold_worker(app)
        futures = [pool.submit(httpx.post, f"{url}/v1/predict", json={"inputs": [t]}, timeout=60) for t in texts]
        wait_for(lambda: batcher.waiting == len(texts), "every request to queue")
        gate.set()
        rows = [f.result().json()["predictions"][0] for f in futures]
    assert batcher.calls - calls == 2  # the held job, then all six requests in one call
    for text, row in zip(texts, rows):
        assert row["label"] == alone[text]["label"]
        assert row["score"] == pytest.approx(alone[text]["score"], abs=1e-5)


def test_full_queue_answers_503_with_retry_after(predictor: Any) -> None:
    app = create_app(predictor, ServeOptions(max_queue=1), name="sentiment")
    with TestClient(app) as client:
        gate = hold_worker(app)
        waiting = app.state.ctx.batcher.submit(lambda items: items, ["queued"])
        response = client.post("/v1/predict", json={"inputs": ["good"]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert error_of(response)["type"] == "overloaded_error"
        gate.set()
        assert waiting.future.result(30) == ["queued"]
        assert client.post("/v1/predict", json={"inputs": ["good"]}).status_code == 200


# ---------------------------------------------------------------- auth


def test_api_key_guards_v1_only(predictor: Any) -> None:
    app = create_app(predictor, ServeOptions(api_key="s3cret"), name="sentiment")
    with TestClient(app) as client:
        missing = client.get("/v1/models")
        assert missing.status_code == 401 and error_of(missing)["type"] == "authentication_error"
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/predict", json={"inputs": ["good"]}).status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        ok = client.post("/v1/predict", json={"inputs": ["good"]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
    with TestClient(create_app(predictor, ServeOptions(), name="sentiment")) as open_client:
        assert open_client.get("/v1/models").status_code == 200


# ---------------------------------------------------------------- bad input

CHAT = {"messages": [{"role": "user", "content": "hello"}]}

CLS_JUNK: list[tuple[str, str, Any, int, str | None]] = [
    # (id, path, body: dict/list/str as JSON or bytes as they are, status, field named)
    ("malformed-json", "/v1/predict", b'{"inputs": [', 400, None),
    ("not-utf8", "/v1/predict", b'{"inputs": ["\xff\xfe"]}', 400, None),
    ("deeply-nested", "/v1/predict", b"[" * 1500 + b"]" * 1500, 400, None),
    ("json-list", "/v1/predict", [1, 2], 422, "body"),
    ("json-string", "/v1/predict", "good", 422, "body"),
    ("no-inputs", "/v1/predict", {}, 422, "inputs"),
    ("inputs-not-list", "/v1/predict", {"inputs": "good"}, 422, "inputs"),
    ("input-number", "/v1/predict", {"inputs": ["good", 3]}, 422, "inputs[1]"),
    ("input-null", "/v1/predict", {"inputs": [None]}, 422, "inputs[0]"),
    ("unknown-field", "/v1/predict", {"inputs": ["good"], "temperature": 1}, 422, "temperature"),
    ("model-not-text", "/v1/predict", {"inputs": ["good"], "model": 7}, 422, "model"),
    ("empty-inputs", "/v1/predict", {"inputs": []}, 400, None),
    ("too-many-inputs", "/v1/predict", {"inputs": ["good"] * 5}, 413, None),
    ("huge-body", "/v1/predict", {"inputs": ["good " * 1000]}, 413, None),
    ("unknown-model", "/v1/predict", {"inputs": ["good"], "model": "gpt-4"}, 404, None),
    ("qa-input-to-classifier", "/v1/predict", {"inputs": [{"question": "q", "context": "c"}]}, 400, None),
    ("three-texts-as-pair", "/v1/predict", {"inputs": [["a", "b", "c"]]}, 400, None),
    ("chat-on-classifier", "/v1/chat/completions", CHAT, 400, None),
    ("completion-on-classifier", "/v1/completions", {"prompt": "hi"}, 400, None),
    ("no-such-endpoint", "/v1/embeddings", {"input": "hi"}, 404, None),
]

LLAMA_JUNK: list[tuple[str, str, Any, int, str | None]] = [
    ("no-messages", "/v1/chat/completions", {"messages": []}, 400, None),
    ("messages-text", "/v1/chat/completions", {"messages": "hi"}, 422, "messages"),
    ("bad-role", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 422, "messages[0].role"),
    ("no-content", "/v1/chat/completions", {"messages": [{"role": "user"}]}, 422, "messages[0].content"),
    ("negative-max-tokens", "/v1/chat/completions", {**CHAT, "max_tokens": -1}, 422, "max_tokens"),
    ("zero-max-tokens", "/v1/completions", {"prompt": "hi", "max_tokens": 0}, 422, "max_tokens"),
    ("max-tokens-over-limit", "/v1/chat/completions", {**CHAT, "max_tokens": 65}, 422, "max_tokens"),
    ("max-tokens-text", "/v1/completions", {"prompt": "hi", "max_tokens": "5"}, 422, "max_tokens"),
    ("negative-temperature", "/v1/completions", {"prompt": "hi", "temperature": -1}, 422, "temperature"),
    ("zero-top-p", "/v1/completions", {"prompt": "hi", "top_p": 0}, 422, "top_p"),
    ("zero-n", "/v1/completions", {"prompt": "hi", "n": 0}, 422, "n"),
    ("too-many-choices", "/v1/completions", {"prompt": "hi", "n": 5}, 413, None),
    ("too-many-prompts", "/v1/completions", {"prompt": ["hi"] * 3, "n": 2}, 413, None),
    ("empty-stop", "/v1/completions", {"prompt": "hi", "stop": [""]}, 422, "stop"),
    ("negative-seed", "/v1/completions", {"prompt": "hi", "seed": -1}, 422, "seed"),
    ("huge-seed", "/v1/completions", {"prompt": "hi", "seed": 2**70}, 422, "seed"),
    ("penalty", "/v1/completions", {"prompt": "hi", "presence_penalty": 0.5}, 422, "presence_penalty"),
    ("stream-text", "/v1/completions", {"prompt": "hi", "stream": "yes"}, 422, "stream"),
    ("empty-prompt", "/v1/completions", {"prompt": "  "}, 400, None),
    ("empty-prompt-list", "/v1/completions", {"prompt": []}, 400, None),
    ("token-id-prompt", "/v1/completions", {"prompt": [1, 2]}, 422, "prompt"),
    ("prompt-beyond-context", "/v1/completions", {"prompt": "bike " * 250}, 400, None),
    ("streamed-prompt-beyond-context", "/v1/completions", {"prompt": "bike " * 250, "stream": True}, 400, None),
    ("unknown-model", "/v1/chat/completions", {**CHAT, "model": "gpt-4"}, 404, None),
    ("predict-on-generator", "/v1/predict", {"inputs": ["hello"]}, 400, None),
]


def _post(client: TestClient, path: str, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"Content-Type": "application/json"})
    return client.post(path, json=body)


def _check_junk(client: TestClient, path: str, body: Any, status: int, field: str | None) -> None:
    response = _post(client, path, body)
    assert response.status_code == status, response.text
    error = error_of(response)
    if field is not None:
        assert error["param"] == field and error["message"].startswith(f"{field}:"), error


@pytest.mark.parametrize("path, body, status, field", [j[1:] for j in CLS_JUNK], ids=[j[0] for j in CLS_JUNK])
def test_junk_to_a_classifier_gets_the_right_4xx(cls_client: TestClient, path: str, body: Any, status: int,
                                                field: str | None) -> None:
    _check_junk(cls_client, path, body, status, field)


@pytest.mark.parametrize("path, body, status, field", [j[1:] for j in LLAMA_JUNK], ids=[j[0] for j in LLAMA_JUNK])
def test_junk_to_a_generator_gets_the_right_4xx(llama_client: TestClient, path: str, body: Any, status: int,
                                               field: str | None) -> None:
    _check_junk(llama_client, path, body, status, field)


def test_a_body_nested_too_deep_is_refused_whatever_the_parsers_limit(cls_client: TestClient) -> None:
    import sys

    # torch.compile raises Python's recursion limit, and with it the depth that the JSON parser reaches
    limit = sys.getrecursionlimit()
    try:
        for raised in (limit, 10_000):
            sys.setrecursionlimit(raised)
            response = _post(cls_client, "/v1/predict", b"[" * 1500 + b"]" * 1500)
            assert response.status_code == 400, response.text
            assert "more than 64 levels deep" in error_of(response)["message"]
    finally:
        sys.setrecursionlimit(limit)
    shallow = _post(cls_client, "/v1/predict", {"inputs": ["[[[[{{{{" * 20]})  # (brackets inside a string)
    assert shallow.status_code == 200, shallow.text


def test_a_chunked_body_over_the_limit_is_refused(cls_client: TestClient) -> None:
    response = cls_client.post("/v1/predict", content=iter([b'{"inputs": ["' + b"good " * 500, b'"]}'] * 2),
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text


def test_the_server_still_works_after_all_the_junk(cls_client: TestClient, llama_client: TestClient) -> None:
    for _, path, body, _, _ in CLS_JUNK:
        _post(cls_client, path, body)
    for _, path, body, _, _ in LLAMA_JUNK:
        _post(llama_client, path, body)
    assert cls_client.post("/v1/predict", json={"inputs": ["good"]}).status_code == 200
    response = llama_client.post("/v1/completions", json={"prompt": "the bike", "max_tokens": 3})
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 1


# ---------------------------------------------------------------- generation through the openai client


def _chat(openai_client: Any, **kw: Any) -> Any:
    return openai_client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "when does the bike shop open"}], **kw)


def test_chat_equals_the_python_generator(openai_client: Any, generator: Any) -> None:
    reply = _chat(openai_client, max_tokens=8, temperature=0)
    prompt = generator.chat_prompt([{"role": "user", "content": "when does the bike shop open"}])
    [expected] = generator.generate_batch([prompt], GenerationSettings(max_new_tokens=8, temperature=0), raw=True)
    assert reply.object == "chat.completion" and reply.model == "tiny-llama" and reply.id
    [choice] = reply.choices
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == expected.completion_tokens
    assert reply.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens


def test_streamed_chat_joins_to_the_whole_reply(openai_client: Any) -> None:
    whole = _chat(openai_client, max_tokens=12, temperature=0)
    chunks = list(_chat(openai_client, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_streamed_completions_of_two_prompts(openai_client: Any) -> None:
    prompts = ["the bike shop", "hello what"]
    whole = openai_client.completions.create(model="tiny-llama", prompt=prompts, max_tokens=6, temperature=0)
    chunks = list(openai_client.completions.create(model="tiny-llama", prompt=prompts, max_tokens=6, temperature=0,
                                                   stream=True))
    for choice in whole.choices:
        streamed = "".join(c.choices[0].text for c in chunks if c.choices[0].index == choice.index)
        assert streamed == choice.text


def test_max_tokens_and_stop_strings(openai_client: Any) -> None:
    short = openai_client.completions.create(model="tiny-llama", prompt="the bike", max_tokens=3, temperature=0)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    for seed in range(20):  # a sample long enough to cut (a random model may end a text at once)
        sample = dict(model="tiny-llama", prompt="the bike shop opens", max_tokens=12, temperature=1.0, seed=seed)
        free = openai_client.completions.create(**sample).choices[0].text
        if len(free.split()) >= 4:
            break
    stop = free.split()[3]
    cut = openai_client.completions.create(**sample, stop=[stop, "never there"]).choices[0]
    assert cut.text == free[: free.find(stop)].strip()
    assert cut.finish_reason == "stop"
    streamed = openai_client.completions.create(**sample, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.text


def test_seeded_sampling_is_reproducible_and_greedy_choices_agree(openai_client: Any) -> None:
    ask = dict(model="tiny-llama", prompt="hello what", max_tokens=8, temperature=1.0, seed=123, n=2,
               extra_body={"top_k": 20})
    first = [c.text for c in openai_client.completions.create(**ask).choices]
    second = [c.text for c in openai_client.completions.create(**ask).choices]
    assert first == second
    greedy = _chat(openai_client, max_tokens=6, temperature=0, n=3)
    assert len(greedy.choices) == 3 and len({c.message.content for c in greedy.choices}) == 1
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert greedy.usage.completion_tokens == 3 * _chat(openai_client, max_tokens=6, temperature=0).usage.completion_tokens


def test_openai_client_sees_errors_as_exceptions(openai_client: Any) -> None:
    import openai

    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        _chat(openai_client, max_tokens=10_000)


def test_completions_take_the_prompt_as_a_user_message_unless_raw(openai_client: Any, generator: Any) -> None:
    settings = GenerationSettings(max_new_tokens=6, temperature=0)
    [as_is] = generator.generate_batch(["the bike"], settings, raw=True)
    [templated] = generator.generate_batch(["the bike"], settings)  # Python: a user message, by default
    completion = openai_client.completions.create(model="tiny-llama", prompt="the bike", max_tokens=6, temperature=0)
    assert completion.choices[0].text == templated.text and completion.usage.prompt_tokens == templated.prompt_tokens
    raw = openai_client.completions.create(model="tiny-llama", prompt="the bike", max_tokens=6, temperature=0,
                                           extra_body={"raw": True})
    assert raw.choices[0].text == as_is.text and raw.usage.prompt_tokens == as_is.prompt_tokens
    reply = openai_client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "the bike"}],
                                                  max_tokens=6, temperature=0)
    assert reply.choices[0].message.content == templated.text
    assert reply.usage.prompt_tokens == templated.prompt_tokens > as_is.prompt_tokens


# ---------------------------------------------------------------- streams whose client leaves


class RecordingGenerator:
    """A Generator that keeps the Generation of each stream (to see where it stopped)."""

    def __init__(self, generator: Any) -> None:
        self._generator = generator
        self.streamed: list[Any] = []
        self.cancels: list[threading.Event | None] = []  # the cancel event of each stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._generator, name)

    def stream(self, prompt: str, settings: GenerationSettings, cancel: threading.Event | None = None, *,
               raw: bool = False) -> Iterator[str]:
        self.cancels.append(cancel)
        generation = yield from self._generator.stream(prompt, settings, cancel=cancel, raw=raw)
        self.streamed.append(generation)
        return generation


def test_a_client_leaving_mid_stream_stops_the_generation(generator: Any) -> None:
    recording = RecordingGenerator(generator)
    app = create_app(recording, ServeOptions(max_tokens_limit=200), name="tiny-llama")
    ctx = app.state.ctx
    gate, calls, cancelled = threading.Event(), [], []

    def hold_at_the_sixth_token(module: Any, args: Any, kwargs: Any) -> None:
        if not calls:
            cancelled.append(recording.cancels[-1])  # the stream's: set when the server sees the client go
        calls.append(1)
        if len(calls) == 6:
            gate.wait(30)  # the client has its first pieces and leaves meanwhile

    hook = generator.model.register_forward_pre_hook(hold_at_the_sixth_token, with_kwargs=True)
    try:
        with running(app) as url:
            with httpx.Client(base_url=url, timeout=60) as client:
                ask = {"prompt": "the bike", "max_tokens": 200, "temperature": 0, "stream": True}
                with client.stream("POST", "/v1/completions", json=ask) as response:
                    assert response.status_code == 200
                    for line in response.iter_lines():
                        if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                            break  # a first piece of text; then hang up
            wait_for(lambda: cancelled[0] is not None and cancelled[0].is_set(), "the server to see the client go")
            gate.set()
            wait_for(lambda: recording.streamed and ctx.batcher.running == 0, "the generation to stop")
            assert recording.streamed[0].completion_tokens < 20  # stopped, not run to 200 tokens
            hook.remove()
            after = httpx.post(f"{url}/v1/completions", json={"prompt": "the bike", "max_tokens": 2}, timeout=60)
            assert after.status_code == 200
    finally:
        gate.set()
        hook.remove()


# ---------------------------------------------------------------- the micro-batcher itself


def test_batcher_groups_by_key_and_isolates_a_failing_job() -> None:
    batcher = MicroBatcher(max_batch=8, max_wait_s=0, max_queue=8)
    seen: list[list[Any]] = []
    gate = threading.Event()

    def work(items: list[Any]) -> list[Any]:
        seen.append(list(items))
        if "bad" in items:
            raise ValueError("bad input")
        return [x.upper() for x in items]

    try:
        held = batcher.submit(lambda items: [gate.wait(30)], [None])
        wait_for(lambda: batcher.running == 1, "the worker to hold")
        jobs = [batcher.submit(work, ["a", "b"], key="k"), batcher.submit(work, ["c"], key="other"),
                batcher.submit(work, ["bad"], key="k"), batcher.submit(work, ["d"], key="k"),
                batcher.submit(work, ["e"], key=None)]
        overflow = []
        with pytest.raises(QueueFull):
            for _ in range(4):
                overflow.append(batcher.submit(work, ["x"], key="k"))
        for job in overflow:
            batcher.cancel(job)
        gate.set()
        assert held.future.result(30) == [True]
        assert jobs[0].future.result(30) == ["A", "B"] and jobs[3].future.result(30) == ["D"]
        with pytest.raises(ValueError):
            jobs[2].future.result(30)
        assert jobs[1].future.result(30) == ["C"] and jobs[4].future.result(30) == ["E"]
        # the "k" jobs shared a call, failed on "bad", then ran one by one; the others ran alone
        assert seen == [["a", "b", "bad", "d"], ["a", "b"], ["bad"], ["d"], ["c"], ["e"]]
    finally:
        gate.set()
        batcher.close()


def test_a_cancelled_waiting_job_frees_its_slot_and_never_runs() -> None:
    batcher = MicroBatcher(max_batch=4, max_wait_s=0, max_queue=1)
    gate, ran = threading.Event(), []
    try:
        batcher.submit(lambda items: [gate.wait(30)], [None])
        wait_for(lambda: batcher.running == 1, "the worker to hold")
        waiting = batcher.submit(lambda items: ran.extend(items) or items, ["gone"])
        batcher.cancel(waiting)
        after = batcher.submit(lambda items: ran.extend(items) or items, ["here"])  # the slot is free again
        gate.set()
        assert after.future.result(30) == ["here"] and ran == ["here"] and waiting.future.cancelled()
    finally:
        gate.set()
        batcher.close()


# ---------------------------------------------------------------- the command


def test_serve_refuses_a_missing_or_unfinished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("model: minilm-l6\ndata:\n  train: train.csv\n")
    assert main(["serve", str(unfinished), "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(PREFIX) and len(err.splitlines()) == 1 and "no model/" in err
    assert main(["serve", str(unfinished), "--max-batch", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == [PREFIX + "--max-batch: must be at least 1, got 0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lmtune", "serve", str(tmp_path / "missing")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.startswith(PREFIX) and len(proc.stderr.splitlines()) == 1
    assert "missing" in proc.stderr


# ---------------------------------------------------------------- a real bundled model


@pytest.mark.slow
def test_smollm2_chat_through_the_openai_client() -> None:
    import openai

    app = create_app("smollm2-135m", ServeOptions(max_tokens_limit=16))
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        ask = dict(model="smollm2-135m", messages=[{"role": "user", "content": "What is the capital of France?"}],
                   max_tokens=8, temperature=0)
        whole = client.chat.completions.create(**ask)
        text = whole.choices[0].message.content
        assert text and whole.usage.completion_tokens <= 8
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**ask, stream=True))
        assert streamed == text
