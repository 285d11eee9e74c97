"""The playground page that `lmtune serve` answers at GET /, driven in a real headless Chromium
(Playwright with the system's Chromium, no browser download): a classification run shows its label
bars, a causal LM streams its reply into the chat, and each equals what the API itself answers; the
API key typed into the page is what unlocks a server that asks for one. The page logs no JavaScript
error. Skipped, with the reason, only where no Chromium is installed (`make install` installs
Debian's when it runs as root)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import lmtune

from .conftest import build_tiny_llama, tiny_config

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# ---------------------------------------------------------------- the server and the browser


class Server:
    """`lmtune serve` for one model, in a thread of this process, on a free port."""

    def __init__(self, target: Path, **options: object) -> None:
        import uvicorn

        from lmtune.serve import ServeOptions, create_app
        from lmtune.serve.server import bind

        self.sock = bind("127.0.0.1", 0)  # listening before the server starts: nothing to race for
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        app = create_app(str(target), ServeOptions(port=0, **options))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60  # only a hung start hits this
        while not self._healthy():
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not come up")
            time.sleep(0.02)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def post(self, path: str, body: dict, key: str | None = None) -> dict:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(), headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def stream_pieces(self, body: dict) -> list[str]:
        """The content pieces of a streamed chat completion, read to its `data: [DONE]`."""
        request = urllib.request.Request(self.url + "/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = [line[len("data: "):] for line in response.read().decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        deltas = [json.loads(event)["choices"][0]["delta"].get("content") for event in events[:-1]]
        return [piece for piece in deltas if piece]

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def _chromium() -> str | None:
    """The system's Chromium (or Chrome), else the one `playwright install chromium` downloaded."""
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        downloaded = p.chromium.executable_path
    return downloaded if os.path.isfile(downloaded) else None


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = _chromium()
    if path is None:
        pytest.skip(f"no Chromium to drive: none of {', '.join(BROWSERS)} is on PATH "
                    "(`make install` as root installs Debian's chromium; or `playwright install chromium`)")
    with sync_playwright() as p:
        # --no-sandbox: Chromium refuses to sandbox itself when running as root (as in containers)
        browser = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page whose console errors and uncaught exceptions are collected in `page.errors`."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.errors = []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(f"uncaught: {error}"))
    yield page
    context.close()


@pytest.fixture(scope="module")
def classifier_run(tiny_bert, toy_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("playground") / "run"
    # a few steps: what the page must show is what the API answers, however well the model does
    lmtune.train(tiny_config(tiny_bert, toy_data, out, epochs=1, max_steps=3), progress=False)
    return out


@pytest.fixture(scope="module")
def classifier(classifier_run):
    server = Server(classifier_run)
    yield server
    server.close()


def untied_llama(path: Path, seed: int) -> Path:
    """conftest's tiny random Llama with its own random output layer: with the embeddings tied, a
    random model greedily repeats the last prompt token forever, a reply too uniform to show that
    the pieces arrive whole and in order. (Seed 3 answers a few different words, then stops.)"""
    import torch
    from transformers import LlamaForCausalLM

    build_tiny_llama(path)
    model = LlamaForCausalLM.from_pretrained(path)
    model.config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    server = Server(untied_llama(tmp_path_factory.mktemp("untied-llama"), seed=3))
    yield server
    server.close()


SEEN = """window.seen = [];
new MutationObserver(() => {
  const reply = document.querySelector("#messages .msg.assistant");
  if (reply && reply.textContent !== window.seen[window.seen.length - 1]) window.seen.push(reply.textContent);
}).observe(document.getElementById("messages"), {subtree: true, childList: true, characterData: true});"""


def _open(page, server: Server, task: str) -> None:
    page.goto(server.url + "/")
    page.locator("#task").filter(has_text=task).wait_for()  # /v1/models has answered


# ---------------------------------------------------------------- the tests


def test_classification_shows_the_label_probabilities_the_api_returns(page, classifier):
    from playwright.sync_api import expect

    _open(page, classifier, "classification")
    model = json.loads(urllib.request.urlopen(classifier.url + "/v1/models", timeout=10).read())["data"][0]
    assert page.locator("#model-name").text_content() == model["id"]
    assert page.locator("#chat-panel").is_hidden() and page.locator("#question").is_hidden()

    text = "a lovely superb film , really wonderful"
    page.fill("#text", text)
    with page.expect_request("**/v1/predict") as sent:
        page.click("#predict")
    assert sent.value.post_data_json == {"inputs": [text]}
    rows = page.locator("#result .label-row")
    expect(rows).to_have_count(len(model["labels"]))
    shown = {row.get_attribute("data-label"): float(row.get_attribute("data-probability")) for row in rows.all()}

    answer = classifier.post("/v1/predict", {"inputs": [text]})["predictions"][0]
    assert set(shown) == set(model["labels"]) == {"negative", "positive"}
    assert shown == answer["probabilities"]
    assert sum(shown.values()) == pytest.approx(1, abs=1e-4)
    # likeliest first, the predicted label marked, each bar's percentage written out
    assert list(shown) == sorted(shown, key=shown.get, reverse=True)
    assert page.locator("#result .label-row.top").get_attribute("data-label") == answer["label"]
    percents = [t.strip() for t in page.locator("#result .label-row .prob").all_text_contents()]
    assert percents == [f"{100 * p:.1f}%" for p in shown.values()]
    assert page.locator("#error").is_hidden() and page.locator("#truncated").count() == 0
    assert page.errors == []


def test_chat_streams_the_reply_a_greedy_request_returns(page, chat):
    from playwright.sync_api import expect

    _open(page, chat, "causal_lm")
    assert page.locator("#encoder-panel").is_hidden()
    page.click("#chat-panel summary")  # the settings fold
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "12")

    message = "what does a <b>flat</b> fix cost ?"  # markup in a message is text, never HTML
    page.fill("#chat-input", message)
    page.evaluate(SEEN)  # the reply as the user sees it after each change
    with page.expect_request("**/v1/chat/completions") as sent:
        page.click("#send")
    reply = page.locator("#messages .msg.assistant")
    expect(reply).to_have_attribute("data-state", "done")
    body = sent.value.post_data_json
    assert body["stream"] is True and body["temperature"] == 0 and body["max_tokens"] == 12
    assert body["messages"] == [{"role": "user", "content": message}]

    streamed = reply.text_content()
    greedy = chat.post("/v1/chat/completions", {
        "model": body["model"], "messages": body["messages"], "max_tokens": 12, "temperature": 0,
    })["choices"][0]["message"]["content"]
    assert streamed == greedy and streamed.strip()
    # it came piece by piece: the page showed each piece of the same stream read here as it came
    # (how many pieces one repaint shows depends on the network's timing; that each repaint shows a
    # beginning of the reply does not)
    pieces = chat.stream_pieces(body)
    assert len(pieces) > 1 and "".join(pieces) == streamed
    assert int(reply.get_attribute("data-chunks")) == len(pieces)
    seen = page.evaluate("window.seen")
    assert seen[-1] == streamed and all(streamed.startswith(text) for text in seen)
    assert page.locator("#messages .msg.user").text_content() == message
    assert page.locator("#messages b").count() == 0

    # the next turn sends the conversation so far
    page.fill("#chat-input", "thanks")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.press("#chat-input", "Enter")
    expect(page.locator("#messages .msg.assistant").nth(1)).to_have_attribute("data-state", "done")
    assert sent.value.post_data_json["messages"] == [
        {"role": "user", "content": message}, {"role": "assistant", "content": streamed},
        {"role": "user", "content": "thanks"},
    ]
    assert page.locator("#error").is_hidden() and page.errors == []

    # a request the server refuses: its message on the page, the message back in the input box
    page.fill("#max-tokens", "100000")
    page.fill("#chat-input", "hello")
    page.click("#send")
    expect(page.locator("#error")).to_be_visible()
    assert "max_tokens" in page.locator("#error").text_content()
    assert page.input_value("#chat-input") == "hello"
    expect(page.locator("#messages .msg.assistant")).to_have_count(2)  # no empty reply left behind
    assert len(page.errors) == 1 and "422" in page.errors[0]  # the browser logs the refused request


def test_the_api_key_typed_in_unlocks_the_server(page, classifier_run):
    from playwright.sync_api import expect

    server = Server(classifier_run, api_key="s3cret")
    try:
        page.goto(server.url + "/")
        expect(page.locator("#error")).to_be_visible()  # 401 from /v1/models, said on the page
        assert "API key" in page.locator("#error").text_content()
        page.fill("#api-key", "s3cret")
        page.press("#api-key", "Enter")  # a change event: the page asks again, with the key
        page.locator("#task").filter(has_text="classification").wait_for()
        expect(page.locator("#error")).to_be_hidden()
        page.fill("#text", "boring dull plot")
        with page.expect_request("**/v1/predict") as sent:
            page.click("#predict")
        assert sent.value.headers["authorization"] == "Bearer s3cret"
        expect(page.locator("#result .label-row")).to_have_count(2)
        assert page.evaluate("sessionStorage.getItem('lmtune-api-key')") == "s3cret"
        # the only console error is the refused first request
        assert len(page.errors) == 1 and "401" in page.errors[0]
    finally:
        server.close()
