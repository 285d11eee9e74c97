/* lmtune studio: the page. One module, no build step, no framework.

   Reading order:
   1. helpers: building elements, formatting numbers and durations;
   2. the API: every request goes through `request()`, which asks for the API key on a 401 and sends
      it from then on (EventSource cannot send headers: `withKey()` puts it in the URL instead);
   3. routing: the hash names a view (#/, #/new, #/run/NAME, #/chat/NAME); a view is a function that
      fills #view and registers with `view.onLeave()` what to close when the user goes elsewhere;
   4. the four views, each in its own section below. */

// ================================================================ 1. helpers

/** An element: h("td", {class: "num", text: "3"}, child, ...). Text is always text, never HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") el.textContent = value;
    else if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") {
      for (const [key, v] of Object.entries(value)) if (v !== undefined && v !== null) el.dataset[key] = v;
    }
    else el.setAttribute(name, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

const $ = (selector, root = document) => root.querySelector(selector);

/** A number as people read it: 4 significant digits, no exponent for everyday sizes. */
function fmt(value) {
  if (value === null || value === undefined) return "";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  if (Math.abs(value) >= 1000) return value.toFixed(0);
  return String(parseFloat(value.toPrecision(4)));
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

function badge(status) {
  return h("span", {class: `badge ${status}`, text: status, dataset: {status}});
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

/** A table from rows of objects: the columns are the keys, in the order first seen. */
function objectTable(rows, id) {
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
  const cell = (v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : fmt(v));
  return h("table", {id},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {text: c})))),
    h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) =>
      h("td", {class: typeof row[c] === "number" ? "num" : null, text: cell(row[c])}))))));
}

// ================================================================ 2. the API

const KEY_STORE = "lmtune-studio-key";
let keyWanted = null; // while the key input is shown: the promise that the next key resolves

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? {Authorization: `Bearer ${key}`} : {};
}

/** The URL with the key as ?key= (for EventSource, which cannot set headers). */
function withKey(path) {
  const key = sessionStorage.getItem(KEY_STORE);
  if (!key) return path;
  return `${path}${path.includes("?") ? "&" : "?"}key=${encodeURIComponent(key)}`;
}

/** Show the key input (once, however many requests were refused) and wait for a key. */
function askForKey() {
  if (keyWanted) return keyWanted;
  const form = $("#key-form");
  form.hidden = false;
  $("#api-key").focus();
  keyWanted = new Promise((resolve) => {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY_STORE, $("#api-key").value.trim());
      form.hidden = true;
      keyWanted = null;
      resolve();
    }, {once: true});
  });
  return keyWanted;
}

/** fetch() with the key: on a 401, ask for the key and try again with it. */
async function request(method, path, body, signal) {
  for (;;) {
    const options = {method, signal, headers: {...authHeaders()}};
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    if (response.status !== 401) return response;
    await askForKey();
  }
}

/** A JSON request: {status, data}. */
async function api(method, path, body) {
  const response = await request(method, path, body);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return {status: response.status, ok: response.ok, data};
}

/** The message of a refused request, whatever shape the server gave it. */
function refusal(result) {
  const data = result.data ?? {}; // the studio's errors: {"error": {"message"}}
  const detail = data.error?.message ?? data.error ?? data.detail ?? data.message;
  const text = typeof detail === "string" ? detail : detail ? JSON.stringify(detail) : "";
  return `the studio answered ${result.status}${text ? `: ${text}` : ""}`;
}

const runPath = (name, rest = "") => `/api/runs/${encodeURIComponent(name)}${rest}`;

// ================================================================ 3. routing

let view = null; // the view on screen: {alive, onLeave(fn)}

function route() {
  if (view) view.leave();
  const leaving = [];
  view = {
    alive: true,
    onLeave: (fn) => leaving.push(fn),
    leave() {
      this.alive = false;
      leaving.forEach((fn) => fn());
    },
  };
  showError("");
  const [page, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const name = decodeURIComponent(rest.join("/"));
  const views = {"": showRuns, new: showNewRun, run: showRun, chat: showChat};
  document.querySelectorAll("#top nav a").forEach((a) =>
    a.classList.toggle("active", a.dataset.route === (page || "runs")));
  const root = $("#view");
  root.replaceChildren();
  const show = views[page] ?? showRuns;
  show(root, view, name).catch((error) => {
    console.warn(error);
    showError(String(error.message || error));
  });
}

/** An EventSource closed when the view is left. */
function listen(current, path, handlers) {
  const source = new EventSource(withKey(path));
  for (const [event, handler] of Object.entries(handlers)) {
    source.addEventListener(event, (e) => handler(e.data ? JSON.parse(e.data) : null));
  }
  current.onLeave(() => source.close());
  return source;
}

// ================================================================ 4a. #/ the runs

const RUN_COLUMNS = [
  {key: "name", label: "Name", value: (r) => r.name},
  {key: "task", label: "Task", value: (r) => r.task},
  {key: "model", label: "Model", value: (r) => r.model},
  {key: "strategy", label: "Strategy", value: (r) => r.strategy},
  {key: "status", label: "Status", value: (r) => r.status},
  {key: "metric", label: "Best metric", value: (r) => (r.metric ? r.metric.value : null)},
  {key: "verdict", label: "Diagnosis", value: (r) => r.verdict},
  {key: "seconds", label: "Duration", value: (r) => r.seconds},
];

async function showRuns(root, current) {
  const state = {runs: [], queue: [], sort: {key: "started", descending: true}, filter: ""};
  const filter = h("input", {id: "filter", type: "search", placeholder: "filter runs (name, task, model, status...)"});
  filter.addEventListener("input", () => { state.filter = filter.value.toLowerCase(); draw(); });
  const table = h("div", {id: "runs"});
  const queue = h("div", {id: "queue"});
  root.append(
    h("h1", {text: "Runs"}),
    h("div", {class: "toolbar"}, filter, h("a", {class: "button primary", href: "#/new", text: "New run"})),
    table, h("h2", {text: "Queue"}), queue);

  const draw = () => {
    table.replaceChildren(runsTable(visibleRuns(state), state.sort, (key) => {
      state.sort = {key, descending: state.sort.key === key ? !state.sort.descending : false};
      draw();
    }));
    queue.replaceChildren(queueList(state.queue));
  };

  let loading = false; // one refresh at a time; a change during it asks for one more
  let again = false;
  const refresh = async () => {
    if (loading) { again = true; return; }
    loading = true;
    try {
      const result = await api("GET", "/api/runs");
      if (!current.alive) return;
      if (!result.ok) showError(refusal(result));
      else ({runs: state.runs, queue: state.queue} = result.data);
      draw();
    } finally {
      loading = false;
    }
    if (again) { again = false; refresh(); }
  };
  await refresh(); // before the stream: a refused key is asked for by a request that can see the 401
  if (current.alive) listen(current, "/api/events", {message: refresh, runs: refresh});
}

/** The runs that pass the filter, in the chosen order; queued jobs without a folder yet as rows too. */
function visibleRuns(state) {
  const names = new Set(state.runs.map((r) => r.name));
  const queued = state.queue.filter((job) => !names.has(job.name)).map((job) => ({name: job.name, status: job.state}));
  const rows = [...state.runs, ...queued].filter((run) => !state.filter ||
    [run.name, run.task, run.model, run.strategy, run.status, run.verdict]
      .some((v) => v && String(v).toLowerCase().includes(state.filter)));
  const column = RUN_COLUMNS.find((c) => c.key === state.sort.key);
  const value = column ? column.value : (r) => r[state.sort.key];
  const sign = state.sort.descending ? -1 : 1;
  return rows.sort((a, b) => {
    const x = value(a), y = value(b);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1; // the unknown last, either way
    if (y === null || y === undefined) return -1;
    return sign * (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y)));
  });
}

function runsTable(rows, sort, onSort) {
  const head = RUN_COLUMNS.map((c) => h("th", {
    class: "sortable", text: c.label, dataset: {key: c.key}, onclick: () => onSort(c.key),
    "aria-sort": sort.key === c.key ? (sort.descending ? "descending" : "ascending") : null,
  }));
  const body = rows.map((run) => {
    const link = h("a", {href: `#/run/${encodeURIComponent(run.name)}`, text: run.name});
    const cells = [h("td", {}, link), h("td", {text: run.task}), h("td", {text: run.model}),
      h("td", {text: run.strategy}), h("td", {class: "status"}, badge(run.status))];
    if (run.status === "unreadable") {
      cells.push(h("td", {colspan: 3, class: "error", text: run.error}));
    } else {
      cells.push(
        h("td", {class: "num", text: run.metric ? `${run.metric.name} ${fmt(run.metric.value)}` : ""}),
        h("td", {text: run.verdict ? run.verdict.replaceAll("_", " ") : ""}),
        h("td", {class: "num", text: fmtDuration(run.seconds)}));
    }
    return h("tr", {class: run.status === "unreadable" ? "unreadable" : null, dataset: {name: run.name}}, cells);
  });
  if (!rows.length) body.push(h("tr", {}, h("td", {colspan: RUN_COLUMNS.length, class: "muted", text: "no runs"})));
  return h("table", {}, h("thead", {}, h("tr", {}, head)), h("tbody", {}, body));
}

function queueList(queue) {
  if (!queue.length) return h("p", {class: "muted", text: "nothing queued or running"});
  return h("table", {},
    h("thead", {}, h("tr", {}, h("th", {text: "Run"}), h("th", {text: "Action"}), h("th", {text: "State"}))),
    h("tbody", {}, queue.map((job) => h("tr", {dataset: {name: job.name}},
      h("td", {}, h("a", {href: `#/run/${encodeURIComponent(job.name)}`, text: job.name})),
      h("td", {text: job.action}), h("td", {}, badge(job.state))))));
}

// ================================================================ 4b. #/new a new run

async function showNewRun(root, current) {
  const first = await api("GET", "/api/schema");
  if (!current.alive) return;
  if (!first.ok) throw new Error(refusal(first));
  const form = new RunForm(current, first.data.tasks, first.data.models);
  root.append(form.element);
  await form.chooseTask(first.data.tasks[0]);
}

/** The new-run form: the fields of one task's schema, validated as they change. */
class RunForm {
  constructor(current, tasks, models) {
    this.current = current;
    this.models = models;
    this.fields = []; // the schema's fields for the chosen task
    this.inputs = new Map(); // key -> its input element
    this.values = new Map(); // key -> what the user typed (kept when the task changes)
    this.everyField = false; // problems beside the fields the user changed; beside all once asked to validate
    this.checks = 0; // validation requests sent: only the latest answer is shown
    this.timer = null;
    current.onLeave(() => clearTimeout(this.timer));

    this.taskSelect = h("select", {id: "task", onchange: () => this.chooseTask(this.taskSelect.value)},
      tasks.map((t) => h("option", {value: t, text: t})));
    this.sections = h("div", {id: "fields"});
    this.problems = h("ul", {id: "problems"});
    this.yaml = h("pre", {id: "yaml"});
    this.download = h("a", {id: "download-yaml", class: "button", download: "run.yaml", text: "Download YAML"});
    this.output = h("div", {id: "output"});
    const button = (id, text, action, primary) =>
      h("button", {id, type: "button", class: primary ? "primary" : null, text, onclick: action});
    this.element = h("div", {},
      h("h1", {text: "New run"}),
      h("div", {class: "form-layout"},
        h("div", {},
          h("fieldset", {}, h("legend", {text: "task"}),
            h("div", {class: "field"}, h("label", {for: "task", text: "task"}), this.taskSelect)),
          this.sections),
        h("div", {class: "side"},
          h("div", {class: "actions"},
            button("validate", "Validate", () => { this.everyField = true; this.validate(); }),
            button("plan", "Plan", () => this.plan()),
            button("preview", "Preview", () => this.preview()),
            button("launch", "Launch", () => this.launch(), true)),
          h("div", {class: "card"}, h("h2", {text: "Problems"}), this.problems),
          this.output,
          h("div", {class: "card"}, h("h2", {text: "YAML"}), this.yaml, this.download))));
  }

  async chooseTask(task) {
    const asked = (this.asked = task); // a task chosen while another's schema loads wins
    const result = await api("GET", `/api/schema?task=${encodeURIComponent(task)}`);
    if (!this.current.alive || asked !== this.asked) return;
    if (!result.ok) { showError(refusal(result)); return; }
    this.taskSelect.value = task;
    this.fields = result.data.fields.filter((f) => f.key !== "task");
    this.models = result.data.models ?? this.models;
    this.buildFields();
    this.validate();
  }

  buildFields() {
    this.inputs.clear();
    const sections = new Map();
    for (const field of this.fields) {
      const section = field.key.includes(".") ? field.section : "run"; // model, output_dir...: one section
      if (!sections.has(section)) sections.set(section, h("fieldset", {dataset: {section}}, h("legend", {text: section})));
      sections.get(section).append(this.fieldRow(field));
    }
    this.sections.replaceChildren(...sections.values(),
      h("datalist", {id: "model-names"}, this.models.map((m) => h("option", {value: m}))));
    this.showStrategyFields();
  }

  fieldRow(field) {
    const input = fieldInput(field, this.values.get(field.key) ?? "");
    input.id = `field-${field.key}`;
    if (field.key === "model") input.setAttribute("list", "model-names");
    const changed = () => {
      this.values.set(field.key, input.value);
      if (field.key === this.strategyKey()) this.showStrategyFields();
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.validate(), 400); // debounced: one request when typing pauses
    };
    input.addEventListener("input", changed);
    input.addEventListener("change", changed);
    this.inputs.set(field.key, input);
    return h("div", {class: "field", dataset: {key: field.key, strategy: field.strategy}},
      h("label", {for: input.id}, field.key, field.required ? h("span", {class: "required", text: " *"}) : null),
      input,
      field.help ? h("div", {class: "help", text: field.help}) : null,
      h("div", {class: "problem", hidden: true}));
  }

  /** The key that names the strategy ("strategy.name"), whose value decides which strategy fields show. */
  strategyKey() {
    return this.fields.some((f) => f.key === "strategy.name") ? "strategy.name" : "strategy";
  }

  chosenStrategy() {
    const key = this.strategyKey();
    const field = this.fields.find((f) => f.key === key);
    const typed = this.values.get(key);
    return typed || (field ? field.default : null);
  }

  showStrategyFields() {
    const strategy = this.chosenStrategy();
    for (const row of this.sections.querySelectorAll(".field[data-strategy]")) {
      row.hidden = row.dataset.strategy !== strategy;
    }
  }

  /** The config to send: the keys the user set (strategy fields of the chosen strategy only), and the task. */
  config() {
    const config = {task: this.taskSelect.value};
    const strategy = this.chosenStrategy();
    for (const field of this.fields) {
      const raw = this.values.get(field.key);
      if (raw === undefined || raw.trim() === "") continue;
      if (field.strategy && field.strategy !== strategy) continue;
      setPath(config, field.key, parseValue(field, raw.trim()));
    }
    return config;
  }

  async validate() {
    clearTimeout(this.timer);
    const check = ++this.checks;
    const result = await api("POST", "/api/validate", {config: this.config()});
    if (!this.current.alive || check !== this.checks) return; // a newer check is on its way
    if (!result.ok) { showError(refusal(result)); return; }
    showError("");
    this.showProblems(result.data.problems);
    this.showYaml(result.data.yaml ?? "");
  }

  showProblems(problems) {
    for (const row of this.sections.querySelectorAll(".field")) {
      row.classList.remove("invalid");
      const slot = $(".problem", row);
      slot.hidden = true;
      slot.textContent = "";
    }
    this.problems.className = problems.length ? "" : "ok";
    this.problems.replaceChildren(...(problems.length ? problems.map((p) => h("li", {text: p.message, dataset: {key: p.key ?? ""}}))
      : [h("li", {text: "no problems: the config is valid"})]));
    for (const problem of problems) {
      const row = problem.key && this.sections.querySelector(`.field[data-key="${CSS.escape(problem.key)}"]`);
      if (!row) continue; // a problem of no single field: in the list only
      if (!this.everyField && !this.values.has(problem.key)) continue; // not touched yet: in the list only
      row.classList.add("invalid");
      const slot = $(".problem", row);
      slot.hidden = false;
      slot.textContent = slot.textContent ? `${slot.textContent}\n${problem.message}` : problem.message;
    }
  }

  showYaml(text) {
    this.yaml.textContent = text;
    if (this.download.href) URL.revokeObjectURL(this.download.href);
    this.download.href = URL.createObjectURL(new Blob([text], {type: "application/yaml"}));
    const out = this.values.get("output_dir");
    this.download.download = `${out ? out.split("/").filter(Boolean).pop() : "run"}.yaml`;
  }

  async plan() {
    this.output.replaceChildren(h("p", {class: "muted", text: "planning: loading the model and timing a few steps..."}));
    const result = await api("POST", "/api/plan", {config: this.config()});
    if (!this.current.alive) return;
    if (!result.ok) { showError(refusal(result)); return; }
    this.showProblems(result.data.problems ?? []);
    this.output.replaceChildren(h("div", {class: "card"}, h("h2", {text: "Plan"}),
      h("pre", {id: "plan-text", text: result.data.text || "no plan: the config has problems (listed above)"})));
  }

  async preview() {
    this.output.replaceChildren(h("p", {class: "muted", text: "reading the first rows..."}));
    const result = await api("POST", "/api/preview", {config: this.config(), rows: 5});
    if (!this.current.alive) return;
    if (!result.ok) { showError(refusal(result)); return; }
    this.showProblems(result.data.problems ?? []);
    this.output.replaceChildren(previewCard(result.data.rows ?? []));
  }

  async launch() {
    this.everyField = true;
    const result = await api("POST", "/api/runs", {config: this.config()});
    if (!this.current.alive) return;
    if (result.status === 422) {
      this.showProblems(result.data.problems ?? []);
      showError("the run was not launched: fix the problems listed");
    } else if (!result.ok) {
      showError(refusal(result));
    } else {
      location.hash = `#/run/${encodeURIComponent(result.data.name)}`;
    }
  }
}

/** The input for one schema field: a select for choices and booleans, a text box otherwise
    (numbers typed as text, so that a mistyped one reaches validation and is named there). */
function fieldInput(field, value) {
  const shown = (v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : v === null ? "" : String(v));
  if (field.type === "choice" || field.type === "bool") {
    const choices = field.type === "bool" ? [true, false] : field.choices ?? [];
    const input = h("select", {},
      h("option", {value: "", text: `default${field.default !== null ? `: ${shown(field.default)}` : ""}`}),
      choices.map((c) => h("option", {value: shown(c), text: shown(c)})));
    input.value = value;
    return input;
  }
  const multiline = field.type === "list" || field.type === "dict";
  const input = h(multiline ? "textarea" : "input", {rows: multiline ? 2 : null, placeholder: shown(field.default)});
  input.value = value;
  return input;
}

/** What the user typed, as the field's type: a number, a boolean, a list, or else the text as typed. */
function parseValue(field, raw) {
  if (field.type === "int" || field.type === "float") {
    const number = Number(raw);
    return Number.isNaN(number) ? raw : number;
  }
  if (field.type === "bool") return raw === "true";
  if (field.type === "choice") return (field.choices ?? []).find((c) => String(c) === raw) ?? raw;
  if (field.type === "list" || field.type === "dict") {
    try {
      return JSON.parse(raw);
    } catch {
      return field.type === "list" ? raw.split(",").map((s) => s.trim()).filter(Boolean) : raw;
    }
  }
  return raw;
}

/** config["a"]["b"] = value for the key "a.b". */
function setPath(config, key, value) {
  const parts = key.split(".");
  let node = config;
  for (const part of parts.slice(0, -1)) {
    if (typeof node[part] !== "object" || node[part] === null) node[part] = {};
    node = node[part];
  }
  node[parts[parts.length - 1]] = value;
}

function previewCard(rows) {
  const hasTokens = rows.some((row) => row.tokens);
  return h("div", {class: "card", id: "preview"},
    h("h2", {text: "Preview"}),
    rows.length ? null : h("p", {class: "muted", text: "no rows: the config has problems (listed above)"}),
    hasTokens ? h("div", {class: "legend tokens"},
      h("span", {class: "trained", text: "trained (in the loss)"}),
      h("span", {class: "masked", text: "masked (not in the loss)"})) : null,
    rows.map((row) => h("div", {class: "preview-row"},
      row.tokens
        ? h("div", {class: "tokens"}, row.tokens.map((t) => h("span", {class: t.trained ? "trained" : "masked", text: t.text})))
        : h("div", {text: row.text}),
      row.label !== null && row.label !== undefined ? h("div", {class: "muted", text: `label: ${fmt(row.label)}`}) : null)));
}

// ================================================================ 4c. #/run/NAME a run

async function showRun(root, current, name) {
  // A run just launched may wait in the queue before its folder exists: the listing says so (asking
  // for the run itself would be a 404), and its next change shows the run.
  const listing = await api("GET", "/api/runs");
  if (!current.alive) return;
  if (!listing.ok) throw new Error(refusal(listing));
  if (!listing.data.runs.some((run) => run.name === name)) {
    const job = listing.data.queue.find((j) => j.name === name);
    root.append(h("h1", {}, h("span", {text: name}), job ? badge(job.state) : null),
      h("p", {class: "muted", text: job ? "waiting for the run to start" : "no such run"}));
    let first = true; // (the stream's first event only says it is open)
    if (job) listen(current, "/api/events", {message: () => { if (!first && current.alive) route(); first = false; }});
    return;
  }
  const result = await api("GET", runPath(name));
  if (!current.alive) return;
  if (!result.ok) throw new Error(refusal(result));
  const run = result.data;
  const page = new RunPage(current, run, listing.data.queue.find((j) => j.name === name));
  root.append(page.element);
  page.follow(run.history.length);
  page.followQueue();
}

/** A run's page: what GET /api/runs/NAME said, then kept current by the run's event stream. */
class RunPage {
  constructor(current, run, job) {
    this.current = current;
    this.run = run;
    this.job = job ?? null; // the run's entry in the studio's queue (train or resume), while it has one
    this.charts = new RunCharts(current);
    this.logText = run.log_tail ?? ""; // as written: progress bars redraw their line with \r
    this.log = h("pre", {id: "log", text: screenText(this.logText)});
    this.stopButton = h("button", {id: "stop", type: "button", text: "Stop", onclick: () => this.act("stop")});
    this.resumeButton = h("button", {id: "resume", type: "button", text: "Resume", onclick: () => this.act("resume")});
    this.status = h("span", {id: "run-status"});
    this.element = h("div", {dataset: {run: run.name}},
      h("h1", {}, h("span", {text: run.name}), this.status, this.stopButton, this.resumeButton,
        run.chat ? h("a", {id: "chat-link", class: "button", href: `#/chat/${encodeURIComponent(run.name)}`, text: "Chat compare"}) : null),
      this.summary = runSummary(run),
      this.charts.element,
      runDiagnosis(run.diagnosis),
      run.confusion ? h("div", {}, h("h2", {text: "Confusion matrix"}), confusionTable(run.confusion)) : null,
      run.samples && run.samples.length ? h("div", {}, h("h2", {text: "Samples"}), objectTable(run.samples, "samples")) : null,
      this.group = h("div", {id: "group"}),
      h("h2", {text: "Log"}), this.log,
      run.config_yaml ? h("details", {}, h("summary", {}, h("h2", {text: "Config"})),
        h("pre", {id: "config-yaml", text: run.config_yaml})) : null);
    run.history.forEach((record) => this.charts.add(record));
    this.showStatus();
    this.showGroup();
    current.onLeave(() => this.searchChart && this.searchChart.destroy());
  }

  /** A search's chart and trials, a compare's comparison (empty for a run). */
  showGroup() {
    const {trials, comparison, search} = this.run;
    if (this.searchChart) this.searchChart.destroy();
    this.searchChart = search ? new SearchChart(search) : null;
    this.group.replaceChildren(...[
      this.searchChart ? this.searchChart.element : null,
      trials && trials.length ? h("div", {}, h("h2", {text: "Trials"}), objectTable(trials, "trials")) : null,
      comparison && comparison.length ? h("div", {}, h("h2", {text: "Comparison"}), objectTable(comparison, "comparison")) : null,
    ].filter(Boolean));
    const chart = this.searchChart; // drawn once on the page (its width is the page's)
    if (chart) requestAnimationFrame(() => { if (chart === this.searchChart && this.current.alive) chart.draw(); });
  }

  /** The badge and the buttons: Stop while the run runs or waits in the queue, Resume once it can
      resume and the queue holds nothing of it (a job ends a moment after its run's folder says so). */
  showStatus() {
    const {status, resumable} = this.run;
    const waiting = this.job && this.job.state === "queued" ? badge(`${this.job.action} queued`) : null;
    this.status.replaceChildren(badge(status), ...(waiting ? [" ", waiting] : []));
    // (a job whose run says finished is a process writing its report: nothing left to stop)
    this.stopButton.disabled = !(["running", "starting"].includes(status) || (this.job && status !== "finished"));
    this.resumeButton.disabled = !resumable || status === "running" || Boolean(this.job);
  }

  /** The studio's queue, as it changes: the run's job enables and disables the buttons. */
  followQueue() {
    listen(this.current, "/api/events", {message: async () => {
      const listing = await api("GET", "/api/runs");
      if (!listing.ok || !this.current.alive) return;
      this.job = listing.data.queue.find((j) => j.name === this.run.name) ?? null;
      this.showStatus();
    }});
  }

  /** The run's events from history record `from` on; a new status redraws the page from the server. */
  follow(from) {
    if (this.run.kind && this.run.kind !== "run") return this.followGroup();
    let seen = from;
    const source = listen(this.current, runPath(this.run.name, `/events?from=${from}`), {
      history: (record) => { seen += 1; this.charts.add(record); },
      log: ({text}) => this.appendLog(text),
      status: ({status}) => { if (status !== this.run.status) this.reload(); },
    });
    source.onerror = () => { // the stream broke (the server restarted...): reopen it where it stopped
      source.close();
      if (this.current.alive) setTimeout(() => this.current.alive && this.follow(seen), 1000);
    };
  }

  /** A search or compare still running: its details again whenever the runs folder's change feed
      (which sees new trials, rows of trials.csv and its runs' statuses) says something changed. */
  followGroup() {
    // (a search writes trials.csv after its last trial: till then its status is its trials' so far)
    const search = this.run.search;
    if (FINAL.has(this.run.status) && !(search && search.source !== "trials.csv")) return;
    listen(this.current, "/api/events", {message: async () => { // (the first: what changed before it opened)
      const result = await api("GET", runPath(this.run.name));
      if (!result.ok || !this.current.alive) return;
      const shown = ({status, trials, comparison, search}) => JSON.stringify([status, trials, comparison, search]);
      const changed = shown(result.data) !== shown(this.run);
      this.run = result.data;
      if (changed) {
        this.summary.replaceWith(this.summary = runSummary(this.run));
        this.showStatus();
        this.showGroup();
      }
    }});
  }

  appendLog(text) {
    const atBottom = this.log.scrollTop + this.log.clientHeight >= this.log.scrollHeight - 4;
    this.logText = (this.logText + text).slice(-200_000);
    this.log.textContent = screenText(this.logText);
    if (atBottom) this.log.scrollTop = this.log.scrollHeight;
  }

  async act(action) {
    this.stopButton.disabled = this.resumeButton.disabled = true;
    const result = await api("POST", runPath(this.run.name, `/${action}`));
    if (!result.ok) { showError(refusal(result)); this.showStatus(); }
  }

  reload() {
    if (this.current.alive) route(); // the view again: the summary, metrics and diagnosis of the new status
  }
}

/** Text as a terminal shows it: of a line redrawn with carriage returns, its last drawing. */
function screenText(text) {
  return text.split("\n").map((line) => line.split("\r").filter((part) => part.trim()).pop() ?? "").join("\n");
}

function runSummary(run) {
  const item = (label, value, id) => (value === null || value === undefined || value === "" ? null
    : h("div", {id}, h("span", {text: label}), value));
  const metric = run.metric ? `${run.metric.name} ${fmt(run.metric.value)} (${run.metric.greater_is_better ? "higher" : "lower"} is better)` : null;
  return h("div", {class: "card summary", id: "summary"},
    item("kind", run.kind), item("task", run.task), item("model", run.model), item("strategy", run.strategy),
    item("best metric", metric, "summary-metric"), item("diagnosis", run.verdict ? run.verdict.replaceAll("_", " ") : null),
    item("duration", fmtDuration(run.seconds)), item("started", run.started ? new Date(run.started).toLocaleString() : null),
    item("error", run.error, "summary-error"));
}

function runDiagnosis(diagnosis) {
  if (!diagnosis) return null;
  const list = (items) => (items && items.length ? h("ul", {}, items.map((text) => h("li", {text}))) : null);
  return h("div", {class: "card diagnosis", id: "diagnosis"},
    h("h2", {text: "Diagnosis"}),
    h("div", {class: "verdict", text: String(diagnosis.verdict ?? "unknown").replaceAll("_", " ")}),
    list(diagnosis.reasons), diagnosis.advice && diagnosis.advice.length ? h("h3", {text: "What to try"}) : null,
    list(diagnosis.advice));
}

function confusionTable({labels, matrix}) {
  return h("table", {id: "confusion"},
    h("thead", {}, h("tr", {}, h("th", {text: "true \\ predicted"}), labels.map((l) => h("th", {text: l})))),
    h("tbody", {}, matrix.map((row, i) => h("tr", {}, h("th", {text: labels[i]}),
      row.map((n) => h("td", {class: "num", text: fmt(n)}))))));
}

// ---------------------------------------------------------------- the curves (uPlot)

const COLORS = ["#2c5fd4", "#d9480f", "#1f8a4c", "#9c36b5", "#b7791f", "#0c8599", "#c0362c"];
// numbers of an evaluation that are counts, not measures of quality: not drawn
const NOT_METRICS = new Set(["loss", "tokens", "samples", "seconds", "runtime"]);

/** The run's charts: loss (train and validation), the task's metrics, learning rate, throughput. */
class RunCharts {
  constructor(current) {
    this.element = h("div", {class: "charts", id: "charts"});
    this.charts = {
      loss: new Chart(this.element, "loss", "Loss", {log: true}),
      metrics: new Chart(this.element, "metrics", "Validation metrics"),
      lr: new Chart(this.element, "lr", "Learning rate"),
      throughput: new Chart(this.element, "throughput", "Throughput (per second)"),
    };
    this.pending = false;
    const resize = () => Object.values(this.charts).forEach((c) => c.resize());
    window.addEventListener("resize", resize);
    current.onLeave(() => {
      window.removeEventListener("resize", resize);
      Object.values(this.charts).forEach((c) => c.destroy());
    });
  }

  /** One history record: a logged training step, or an evaluation (its numbers under "eval"). */
  add(record) {
    const step = record.step;
    if (typeof step !== "number") return;
    const {loss, metrics, lr, throughput} = this.charts;
    if (typeof record.loss === "number") loss.add(step, {"train loss": record.loss});
    if (typeof record.lr === "number") lr.add(step, {"learning rate": record.lr});
    const speeds = {};
    if (typeof record.samples_per_second === "number") speeds["samples/s"] = record.samples_per_second;
    if (typeof record.tokens_per_second === "number") speeds["tokens/s"] = record.tokens_per_second;
    if (Object.keys(speeds).length) throughput.add(step, speeds);
    if (record.eval && typeof record.eval === "object") {
      if (typeof record.eval.loss === "number") loss.add(step, {"validation loss": record.eval.loss});
      const numbers = Object.entries(record.eval).filter(([k, v]) => typeof v === "number" && !NOT_METRICS.has(k));
      if (numbers.length) metrics.add(step, Object.fromEntries(numbers));
    }
    if (!this.pending) { // one redraw per frame, however many records came
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; Object.values(this.charts).forEach((c) => c.draw()); });
    }
  }
}

/** One uPlot chart over steps, its series added as records name them. Drawn once it has a point.
    A log chart (losses: they fall by orders of magnitude) turns linear if a value is not above 0. */
class Chart {
  constructor(parent, id, title, {log = false} = {}) {
    this.box = h("div", {class: "chart hidden", id: `chart-${id}`}, h("h3", {text: title}));
    parent.append(this.box);
    this.log = log;
    this.names = []; // the series, in the order first seen
    this.data = [[]]; // uPlot's columns: steps, then one array per series (null where a step lacks it)
    this.plot = null;
    this.dirty = false;
  }

  add(step, values) {
    const steps = this.data[0];
    let row = steps.length - 1;
    if (row < 0 || steps[row] !== step) { // a new step (a train record and an eval at one step share a row)
      steps.push(step);
      this.data.slice(1).forEach((column) => column.push(null));
      row += 1;
    }
    for (const [name, value] of Object.entries(values)) {
      if (this.log && !(value > 0)) { // (0 has no logarithm)
        this.log = false;
        this.rebuild();
      }
      let index = this.names.indexOf(name);
      if (index < 0) index = this.addSeries(name);
      this.data[index + 1][row] = value;
    }
    this.dirty = true;
  }

  addSeries(name) {
    this.names.push(name);
    this.data.push(new Array(this.data[0].length).fill(null));
    this.rebuild(); // a series the chart did not have yet: built again with it
    return this.names.length - 1;
  }

  rebuild() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }

  width() {
    return Math.max(300, this.box.clientWidth - 16);
  }

  draw() {
    if (!this.dirty) return;
    this.dirty = false;
    if (!this.plot) {
      this.box.classList.remove("hidden");
      this.plot = new uPlot(this.options(), this.data, this.box);
      this.box.uplot = this.plot; // for whoever inspects the page
    } else {
      this.plot.setData(this.data);
    }
    this.box.dataset.points = String(this.data[0].length);
  }

  options() {
    const rate = this.names.includes("tokens/s"); // tokens/s on an axis of its own, at the right
    const series = this.names.map((label, i) => ({
      label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
      scale: rate && label === "tokens/s" ? "tokens" : "y",
      points: {show: label.startsWith("validation") || this.box.id === "chart-metrics"},
      value: (u, v) => fmt(v),
    }));
    const axes = [{label: "step"}, {scale: "y", size: 60, values: this.log ? undefined : tickLabels}];
    if (rate) axes.push({scale: "tokens", side: 1, size: 60, grid: {show: false}, values: tickLabels});
    const scales = {x: {time: false}, ...(this.log ? {y: {distr: 3}} : {})};
    return {width: this.width(), height: 220, series: [{label: "step"}, ...series], axes, scales};
  }

  resize() {
    if (this.plot) this.plot.setSize({width: this.width(), height: 220});
  }

  destroy() {
    if (this.plot) this.plot.destroy();
  }
}

const FINAL = new Set(["finished", "failed", "stopped", "interrupted", "unreadable"]);

/** A search's trials: each complete trial's value of the search's metric by trial number, and the best
    so far (greater or lower is better, as the search's direction says). Failed, pruned and running
    trials are not drawn; a note under the chart names them. */
class SearchChart {
  constructor({metric, greater_is_better: greater, points}) {
    const complete = points.filter((p) => p.state === "complete" && typeof p.value === "number");
    const left = points.filter((p) => !complete.includes(p));
    let best = null;
    const bests = complete.map((p) => (best = best === null || (greater ? p.value > best : p.value < best) ? p.value : best));
    this.data = [complete.map((p) => p.trial), complete.map((p) => p.value), bests];
    this.metric = metric;
    this.box = h("div", {class: "chart", id: "chart-search", dataset: {points: String(complete.length)}},
      h("h3", {text: `Trials: validation ${metric} (${greater ? "higher" : "lower"} is better)`}));
    const note = left.length ? `Not drawn: ${left.map((p) => `trial ${p.trial} (${p.state || "unknown"})`).join(", ")}.` : "";
    this.element = h("div", {class: "charts", id: "search-chart"}, this.box,
      complete.length ? null : h("p", {class: "muted", text: "No complete trial yet."}),
      note ? h("p", {class: "muted", id: "search-chart-note", text: note}) : null);
    this.plot = null;
    this.resize = () => this.plot && this.plot.setSize({width: this.width(), height: 220});
    window.addEventListener("resize", this.resize);
  }

  width() {
    return Math.max(300, this.box.clientWidth - 16);
  }

  draw() {
    if (!this.data[0].length) return this.box.classList.add("hidden");
    const series = [{label: "trial"},
      {label: `validation ${this.metric}`, stroke: COLORS[0], width: 0, points: {show: true, size: 7, fill: COLORS[0]},
        value: (u, v) => fmt(v)},
      {label: "best so far", stroke: COLORS[1], width: 1.5, paths: uPlot.paths.stepped({align: 1}), points: {show: false},
        value: (u, v) => fmt(v)}];
    const axes = [{label: "trial", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]}, {size: 60, values: tickLabels}];
    this.plot = new uPlot({width: this.width(), height: 220, series, axes, scales: {x: {time: false}}}, this.data, this.box);
    this.box.uplot = this.plot; // for whoever inspects the page
  }

  destroy() {
    window.removeEventListener("resize", this.resize);
    if (this.plot) this.plot.destroy();
  }
}

/** A linear axis's tick labels with as many decimals as the step between ticks needs (uPlot's own
    stop at three: perplexities near 1 would all read "1"). */
function tickLabels(u, ticks, axis, space, step) {
  const decimals = Math.max(0, Math.min(12, -Math.floor(Math.log10(step))));
  return ticks.map((v) => v.toFixed(decimals));
}

// ================================================================ 4d. #/chat/NAME chat compare

async function showChat(root, current, name) {
  const result = await api("GET", runPath(name));
  if (!current.alive) return;
  const run = result.ok ? result.data : {name};
  const base = run.config && run.config.model ? String(run.config.model) : "the base model";
  const prompt = h("textarea", {id: "prompt", placeholder: "a prompt for both models"});
  const setting = (id, label, value, step) =>
    h("label", {}, label, h("input", {id, type: "number", value, step}));
  const send = h("button", {id: "send", class: "primary", type: "button", text: "Send"});
  const columns = {base: answerColumn("base", base), tuned: answerColumn("tuned", name)};
  root.append(
    h("h1", {}, h("span", {text: "Chat compare"}), h("a", {href: `#/run/${encodeURIComponent(name)}`, text: name})),
    h("div", {class: "card"}, prompt,
      h("div", {class: "chat-settings"},
        setting("max-new-tokens", "max new tokens", 64, 1), setting("temperature", "temperature", 0.7, 0.1),
        setting("top-p", "top_p", 0.95, 0.05), send)),
    h("div", {class: "answers"}, columns.base.element, columns.tuned.element));

  const controller = new AbortController(); // leaving the view ends the streams
  current.onLeave(() => controller.abort());
  const submit = async () => {
    if (!prompt.value.trim()) return;
    send.disabled = true;
    const body = {
      messages: [{role: "user", content: prompt.value}],
      max_new_tokens: Number($("#max-new-tokens").value),
      temperature: Number($("#temperature").value),
      top_p: Number($("#top-p").value),
    };
    await Promise.all(Object.entries(columns).map(([side, column]) =>
      streamAnswer(name, {side, ...body}, column, controller.signal)));
    send.disabled = false;
  };
  send.addEventListener("click", submit);
  prompt.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) submit(); });
}

function answerColumn(side, model) {
  const text = h("div", {class: "text"});
  const stats = h("div", {class: "stats"});
  const element = h("div", {class: "answer", id: `answer-${side}`, dataset: {side, state: "idle"}},
    h("h2", {}, side, h("span", {class: "muted", text: ` ${model}`})), text, stats);
  return {element, text, stats};
}

/** POST /api/runs/NAME/chat for one side, its `data:` lines shown as they come. */
async function streamAnswer(name, body, column, signal) {
  column.text.textContent = "";
  column.stats.textContent = "";
  column.element.dataset.state = "streaming";
  try {
    const response = await request("POST", runPath(name, "/chat"), body, signal);
    if (!response.ok) throw new Error(refusal({status: response.status, data: await response.json().catch(() => null)}));
    for await (const event of dataLines(response.body)) {
      if (event.text) column.text.textContent += event.text;
      if (event.error) throw new Error(event.error);
      if (event.done) column.stats.textContent = `${event.tokens} tokens in ${fmt(event.seconds)} s`;
    }
    column.element.dataset.state = "done";
  } catch (error) {
    if (signal.aborted) return;
    column.element.dataset.state = "error";
    column.stats.textContent = String(error.message || error);
  }
}

/** The JSON of each `data:` line of a server-sent event stream, as the lines arrive. */
async function* dataLines(stream) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    buffer += decoder.decode(value ?? new Uint8Array(), {stream: !done});
    const lines = buffer.split("\n");
    buffer = done ? "" : lines.pop();
    for (const line of lines) {
      if (line.startsWith("data:")) yield JSON.parse(line.slice(5).trim());
    }
    if (done) return;
  }
}

// ================================================================ start

window.addEventListener("hashchange", route);
route();
