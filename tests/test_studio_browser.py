"""The page of `lmtune studio`, driven in a real headless Chromium (Playwright with the system's
Chromium, as tests/test_playground.py drives the playground): a new run's form shows a wrong value
beside its field, the run launched from it draws its loss curve while it trains, stops cleanly from
its Stop button and resumes to the end from Resume, its Chat compare streams the base model's and the
tuned model's answers side by side, and a second page open meanwhile shows the same runs and status.
The pages log no JavaScript error. Skipped, with the reason, only where no Chromium is installed.

With LMTUNE_SCREENSHOTS=1 it also writes the screenshots of docs/studio.md (docs/images/studio-*.png)."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import LM_WORDS, build_tiny_llama
from .test_playground import browser  # noqa: F401  (the module's Chromium, a fixture)

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
VIEWPORT = {"width": 1280, "height": 800}
RUN = "tiny-chat"
MAX_STEPS = 3000  # a tiny model trains hundreds of steps a second: long enough to stop mid-way, short enough for a test
TASK = "causal_lm"


# ---------------------------------------------------------------- the server, the data, the browser


class Studio:
    """`lmtune studio` over a runs folder, in a thread of this process, on a free port."""

    def __init__(self, runs: Path, api_key: str | None = None) -> None:
        import uvicorn

        from lmtune.serve.server import bind
        from lmtune.studio.app import StudioOptions, create_studio_app

        self.sock = bind("127.0.0.1", 0)  # listening before the server starts: nothing to race for
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        app = create_studio_app(runs, StudioOptions(api_key=api_key, poll_seconds=0.2))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60  # only a hung start hits this
        while not self._healthy():
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the studio at {self.url} did not come up")
            time.sleep(0.02)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def chat_rows(n: int) -> list[dict]:
    """Short chats in the tiny Llama's words: a question and its answer."""
    pairs = [("what does the shop do ?", "we fix bikes ."),
             ("how much does a flat tire fix cost ?", "the price is twelve euro ."),
             ("do you rent bikes ?", "yes we rent bikes ."),
             ("when is the shop closed ?", "closed on sunday .")]
    assert all(w in LM_WORDS or w in "?.," for q, a in pairs for w in f"{q} {a}".split())
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in (pairs[i % len(pairs)] for i in range(n))]


@pytest.fixture(scope="module")
def studio(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("studio")
    model = build_tiny_llama(root / "llama")
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in chat_rows(32)))
    (root / "runs").mkdir()
    server = Studio(root / "runs")
    server.model, server.data, server.runs = model, data, root / "runs"
    yield server
    server.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    """The run's child processes load nothing from the network (the model is a local folder)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield patch


@pytest.fixture
def open_page(browser):
    """Opens a page in a context of its own, its console errors and uncaught exceptions collected in
    `page.errors`; closes them all after the test (their event streams with them)."""
    contexts = []

    def open_page(url: str):
        context = browser.new_context(viewport=VIEWPORT)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.errors = []
        page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
        page.on("pageerror", lambda error: page.errors.append(f"uncaught: {error}"))
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()


def screenshot(page, name: str) -> None:
    """docs/images/studio-NAME.png, in 256 colours (a third of the size; the page has few), only when
    LMTUNE_SCREENSHOTS=1: the suite does not rewrite tracked files."""
    if os.environ.get("LMTUNE_SCREENSHOTS") != "1":
        return
    from PIL import Image

    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"studio-{name}.png"
    page.screenshot(path=str(path))
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def field(page, key: str):
    return page.locator(f'.field[data-key="{key}"]').locator("input, select, textarea")


LOSS_POINTS = """() => {
    const box = document.querySelector('#chart-loss');
    return box && box.uplot ? box.uplot.data[1].filter((v) => v !== null).length : 0;
}"""


def loss_points(page) -> int:
    """The training losses the loss chart's uPlot instance holds (0 before it is drawn)."""
    return page.evaluate(LOSS_POINTS)


def wait_for_points(page, more_than: int, timeout: float = 90_000) -> int:
    """Wait (in the page, with a deadline) until the loss chart holds more than `more_than` points."""
    page.wait_for_function(f"(n) => ({LOSS_POINTS})() > n", arg=more_than, timeout=timeout)
    return loss_points(page)


# ---------------------------------------------------------------- the scenario, step by step


def fill_the_form(page, studio: Studio) -> None:
    """The new-run form for the tiny Llama, with one wrong value shown beside its field, then fixed."""
    from playwright.sync_api import expect

    page.click("#top nav a[data-route=new]")
    page.select_option("#task", TASK)
    expect(page.locator('.field[data-key="train.lr"]')).to_be_visible()
    lora_rank = page.locator('.field[data-key="strategy.r"]')  # a strategy's keys: shown for it only
    expect(lora_rank).to_be_hidden()
    field(page, "strategy.name").select_option("lora")
    expect(lora_rank).to_be_visible()
    field(page, "strategy.name").select_option("")  # back to the default (full): not sent
    expect(lora_rank).to_be_hidden()
    values = {"model": str(studio.model), "output_dir": RUN, "data.train": str(studio.data),
              "data.validation": str(studio.data), "data.max_length": "48", "train.max_steps": str(MAX_STEPS),
              "train.batch_size": "2", "train.log_steps": "1", "train.eval_steps": "1000", "train.precision": "fp32",
              "train.compile": "false",  # (compiling takes longer than the tiny run, again on resume)
              "eval.generate_rows": "1", "eval.max_new_tokens": "4", "train.lr": "-1"}
    for key, value in values.items():
        target = field(page, key)
        if target.evaluate("el => el.tagName") == "SELECT":
            target.select_option(value)
        else:
            target.fill(value)
    problem = page.locator('.field[data-key="train.lr"] .problem')
    expect(problem).to_be_visible()  # the debounced validation answered
    assert problem.text_content().startswith("train.lr")
    assert page.locator("#problems li").count() >= 1
    expect(page.locator('.field[data-key="train.lr"]')).to_have_class("field invalid")
    page.locator('.field[data-key="train.lr"]').evaluate("el => el.scrollIntoView({block: 'center'})")
    screenshot(page, "new-run")

    field(page, "train.lr").fill("0.01")
    expect(problem).to_be_hidden()
    expect(page.locator("#problems")).to_have_class("ok")
    assert f"max_steps: {MAX_STEPS}" in page.locator("#yaml").text_content()
    assert page.locator("#download-yaml").get_attribute("href").startswith("blob:")

    page.click("#preview")  # the first rows as tokens: the answer trained, the rest masked
    rows = page.locator("#preview .preview-row")
    expect(rows).to_have_count(5)
    trained = "".join(rows.first.locator(".trained").all_text_contents()).replace(" ", "")
    masked = "".join(rows.first.locator(".masked").all_text_contents()).replace(" ", "")
    assert "wefixbikes." in trained and "whatdoestheshopdo?" in masked and "what" not in trained
    page.click("#plan")
    expect(page.locator("#plan-text")).to_contain_text("plan:", timeout=60_000)  # (it times a few steps)


def launch(page) -> None:
    """Launch: the page goes to the run's page; what it sent is only the keys the user set."""
    from playwright.sync_api import expect

    with page.expect_request("**/api/runs") as sent:
        page.click("#launch")
    config = sent.value.post_data_json["config"]
    assert config["task"] == TASK and config["train"]["lr"] == 0.01 and config["train"]["max_steps"] == MAX_STEPS
    assert "strategy" not in config and "epochs" not in config["train"]  # left at their defaults: not sent
    page.wait_for_url(f"**#/run/{RUN}")
    expect(page.locator("#run-status .badge")).to_have_text("running", timeout=60_000)


def watch_it_train_then_stop(page, other) -> int:
    """The loss curve gains points as the run trains; Stop stops it mid-way, both pages say so."""
    from playwright.sync_api import expect

    first = wait_for_points(page, 2)  # drawn...
    wait_for_points(page, first)  # ...and growing as the run logs its steps
    expect(other.locator(f'#runs tr[data-name="{RUN}"] .badge')).to_have_text("running")

    assert page.locator("#resume").is_disabled()
    page.click("#stop")
    expect(page.locator("#run-status .badge")).to_have_text("stopped", timeout=60_000)
    expect(other.locator(f'#runs tr[data-name="{RUN}"] .badge')).to_have_text("stopped")
    expect(page.locator("#resume")).to_be_enabled()
    assert page.locator("#stop").is_disabled()
    return loss_points(page)


def resume_to_the_end(page, other, studio: Studio, stopped_at: int) -> None:
    from playwright.sync_api import expect

    page.click("#resume")
    expect(page.locator("#run-status .badge")).to_have_text("finished", timeout=300_000)  # (only a hang)
    expect(other.locator(f'#runs tr[data-name="{RUN}"] .badge')).to_have_text("finished")
    run = studio.get(f"/api/runs/{RUN}")
    steps = [r["step"] for r in run["history"] if "loss" in r]
    assert stopped_at < MAX_STEPS and steps[-1] == MAX_STEPS
    page.wait_for_function(f"(n) => ({LOSS_POINTS})() === n", arg=len(steps))  # every logged step drawn
    assert page.locator("#diagnosis .verdict").text_content().strip()
    log = page.locator("#log").text_content()  # the log's tail, each progress bar at its last drawing
    assert "diagnosis:" in log and "\r" not in log
    screenshot(page, "run")


def chat_compare(page) -> None:
    from playwright.sync_api import expect

    page.click("#chat-link")
    page.wait_for_url(f"**#/chat/{RUN}")
    page.fill("#prompt", "when is the shop closed ?")
    page.fill("#max-new-tokens", "6")
    page.fill("#temperature", "0")
    with page.expect_request(f"**/api/runs/{RUN}/chat") as sent:
        page.click("#send")
    assert sent.value.post_data_json["max_new_tokens"] == 6
    for side in ("base", "tuned"):
        answer = page.locator(f"#answer-{side}")
        expect(answer).to_have_attribute("data-state", "done", timeout=60_000)
        assert answer.locator(".text").text_content().strip()
        assert "tokens in" in answer.locator(".stats").text_content()
    screenshot(page, "chat")


# ---------------------------------------------------------------- the test


def test_a_run_from_the_form_to_chat_compare(open_page, studio):
    from playwright.sync_api import expect

    page = open_page(studio.url + "/")
    other = open_page(studio.url + "/")  # a second page, on the runs list all along
    expect(page.locator("#runs")).to_contain_text("no runs")

    fill_the_form(page, studio)
    launch(page)
    expect(other.locator(f'#runs tr[data-name="{RUN}"]')).to_be_visible()
    stopped_at = watch_it_train_then_stop(page, other)
    resume_to_the_end(page, other, studio, stopped_at)
    chat_compare(page)

    page.click("#top nav a[data-route=runs]")
    row = page.locator(f'#runs tr[data-name="{RUN}"]')
    expect(row.locator(".badge")).to_have_text("finished")
    expect(page.locator("#queue")).to_contain_text("nothing queued or running", timeout=60_000)
    assert row.text_content() == other.locator(f'#runs tr[data-name="{RUN}"]').text_content()
    screenshot(page, "runs")
    assert page.errors == [] and other.errors == []


def test_the_runs_list_sorts_filters_names_unreadable_folders_and_asks_for_the_key(open_page, tmp_path):
    from playwright.sync_api import expect

    runs = tmp_path / "runs"
    for name, model in (("alpha", "model-b"), ("beta", "model-a")):  # configs only: status starting
        (runs / name).mkdir(parents=True)
        (runs / name / "config.yaml").write_text(yaml.safe_dump({"model": model, "task": TASK}))
    (runs / "broken").mkdir()
    (runs / "broken" / "config.yaml").write_text("model: [unclosed\n")
    server = Studio(runs, api_key="s3cret")
    page = None
    try:
        page = open_page(server.url + "/")
        expect(page.locator("#key-form")).to_be_visible()  # the listing was refused: the key is asked for
        page.fill("#api-key", "s3cret")
        page.press("#api-key", "Enter")
        expect(page.locator("#key-form")).to_be_hidden()
        names = page.locator("#runs tbody tr")
        expect(names).to_have_count(3)
        assert page.evaluate("sessionStorage.getItem('lmtune-studio-key')") == "s3cret"

        broken = page.locator('#runs tr[data-name="broken"]')
        assert broken.get_attribute("class") == "unreadable"
        assert broken.locator(".badge").text_content() == "unreadable" and "not YAML" in broken.text_content()

        order = lambda: [r.get_attribute("data-name") for r in names.all()]  # noqa: E731
        page.click("th[data-key=name]")
        assert order() == ["alpha", "beta", "broken"]
        page.click("th[data-key=name]")
        assert order() == ["broken", "beta", "alpha"]
        page.click("th[data-key=model]")
        assert order() == ["beta", "alpha", "broken"]  # model-a, model-b, then the folder with none
        page.fill("#filter", "MODEL-A")
        assert order() == ["beta"]
        page.fill("#filter", "")

        # the live list comes through the event stream, which carries the key in its URL
        (runs / "gamma").mkdir()
        (runs / "gamma" / "config.yaml").write_text(yaml.safe_dump({"model": "model-c", "task": TASK}))
        expect(page.locator('#runs tr[data-name="gamma"] .badge')).to_have_text("starting")
        assert page.errors and all("401" in e for e in page.errors)  # only the refused first request
    finally:
        if page is not None:
            page.context.close()  # its event stream with it: the server's shutdown waits for open streams
        server.close()


def test_a_search_draws_its_trials_as_they_come_in(open_page, tmp_path):
    """A search faked from its files (no training): the chart has a point per complete trial and the
    best so far; a trial that finishes, then trials.csv, redraw it without a reload."""
    from playwright.sync_api import expect

    search = tmp_path / "runs" / "sweep"
    config = {"model": "tiny", "task": TASK, "strategy": {"name": "full"}}
    (search / "trials").mkdir(parents=True)
    (search / "search.yaml").write_text(yaml.safe_dump({**config, "search": {"space": {}, "trials": 3}}))

    def trial(number: int, files: dict[str, str]) -> Path:
        folder = search / "trials" / f"{number:04d}"
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / "history.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")
        for name, text in files.items():
            (folder / name).write_text(text)
        return folder

    trial(0, {"metrics.json": json.dumps({"validation": {"loss": 2.5}})})
    second = trial(1, {"process.json": json.dumps({"pid": os.getpid(), "host": os.uname().nodename})})
    server = Studio(search.parent)
    page = None
    try:
        page = open_page(f"{server.url}/#/run/sweep")
        chart = page.locator("#chart-search")
        expect(chart).to_have_attribute("data-points", "1")
        expect(page.locator("#search-chart-note")).to_contain_text("trial 1 (running)")
        assert "lower is better" in chart.locator("h3").text_content()

        (second / "metrics.json").write_text(json.dumps({"validation": {"loss": 2.0}}))  # the trial finishes
        expect(chart).to_have_attribute("data-points", "2")
        (search / "trials.csv").write_text("trial,state,loss\n0,complete,2.5\n1,complete,2.0\n2,fail,\n")
        expect(page.locator("#search-chart-note")).to_have_text("Not drawn: trial 2 (fail).")
        expect(page.locator("#trials tbody tr")).to_have_count(3)
        plotted = page.evaluate("document.querySelector('#chart-search').uplot.data")
        assert plotted == [[0, 1], [2.5, 2.0], [2.5, 2.0]]  # the trials' values, the best so far (lower)
        assert page.errors == []
    finally:
        if page is not None:
            page.context.close()  # its event stream with it: the server's shutdown waits for open streams
        server.close()
