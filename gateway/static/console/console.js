// tickplant console: the gateway's own API (/v1/sql, /v1/tables, /v1/health,
// /v1/subscribe/{source}) with the key the user typed, sent as X-API-Key.
"use strict";

const KEY = "tickplant.apiKey";          // sessionStorage: gone when the tab closes
const HISTORY = "tickplant.history";     // localStorage: statements run, newest first
const HISTORY_MAX = 100;
const GRID_ROWS = 2000;                  // rows drawn in a grid (the count says how many came)
const LIVE_UPDATES = 200;                // update rows kept on screen
const COLORS = ["#1f6feb", "#e8590c", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#c2255c", "#5c7cfa",
                "#66a80f", "#862e9c"];

const $ = (id) => document.getElementById(id);
const state = { tables: [], lastResult: null, chart: null, live: null, healthTimer: null };

// -- the gateway's API ------------------------------------------------------

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY);
  if (key) h["X-API-Key"] = key;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const resp = await fetch(path, opts);
  const text = await resp.text();
  let body;
  try { body = parseExact(text); } catch (_) { body = { error: text }; }
  if (!resp.ok) {
    const err = new Error(`${resp.status}: ${(body && body.error) || resp.statusText}`);
    err.status = resp.status;
    throw err;
  }
  return body;
}

function sql(query) {
  return api("/v1/sql", { method: "POST", headers: { "Content-Type": "application/json" },
                          body: JSON.stringify({ query }) });
}

function setStatus(el, text, isError) {
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

// -- values -----------------------------------------------------------------

const NUMERIC = /^(u?int|int|float|double|decimal)/i;
const TIME_TYPE = /^(timestamp|date)/i;

// seconds since the epoch of an ISO time ("2026-11-22T09:30:00.123456789Z": the gateway's
// JSON keeps nanoseconds, which Date.parse does not take), a date, or int nanoseconds
function toSeconds(v) {
  if (typeof v === "string" && /^-?\d+$/.test(v)) v = Number(v);
  if (typeof v === "number") return v > 1e14 ? v / 1e9 : v;
  const m = /^(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d):(\d\d)(\.\d+)?)?/.exec(String(v));
  if (!m) return NaN;
  const whole = Date.UTC(+m[1], +m[2] - 1, +m[3], +(m[4] || 0), +(m[5] || 0), +(m[6] || 0)) / 1000;
  return whole + (m[7] ? parseFloat("0" + m[7]) : 0);
}

function isoOfNs(ns) {
  const b = BigInt(ns);
  const frac = (b % 1000000000n).toString().padStart(9, "0");
  return new Date(Number(b / 1000000n)).toISOString().slice(0, 19) + "." + frac + "Z";
}

function looksLikeNsTime(key, v) {
  const big = (typeof v === "number" && v > 1e17 && v < 1e19) || (typeof v === "string" && /^\d{18,19}$/.test(v));
  return big && /time|start|end|^ts$/i.test(key);
}

// JSON whose integers past 2^53 (ns times, large sums) stay exact: outside strings, an
// integer of 16 or more digits is read as a string of its digits
function parseExact(text) {
  let out = "";
  let from = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
    } else if ((c >= "0" && c <= "9") || c === "-") {
      let j = i + 1;
      while (j < text.length && text[j] >= "0" && text[j] <= "9") j++;
      const isInteger = !".eE".includes(text[j] || " ");
      if (isInteger && j - i - (c === "-" ? 1 : 0) >= 16) {
        out += text.slice(from, i) + '"' + text.slice(i, j) + '"';
        from = j;
      }
      i = j - 1;
    }
  }
  return JSON.parse(out + text.slice(from));
}

// -- a grid -----------------------------------------------------------------

function renderGrid(container, columns, rows, total) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c.name;
    if (c.type) th.title = c.type;
    head.appendChild(th);
  }
  const body = table.createTBody();
  for (const row of rows.slice(0, GRID_ROWS)) {
    const tr = body.insertRow();
    for (const c of columns) {
      const td = tr.insertCell();
      let v = row[c.name];
      if (v === null || v === undefined) { td.className = "null"; td.textContent = "null"; continue; }
      if (looksLikeNsTime(c.name, v)) v = isoOfNs(v);
      if (typeof v === "number") td.className = "num";
      td.textContent = typeof v === "object" ? JSON.stringify(v) : String(v);
    }
  }
  container.replaceChildren(table);
  const count = total === undefined ? rows.length : total;
  if (count > GRID_ROWS) {
    const more = document.createElement("div");
    more.className = "more";
    more.textContent = `first ${GRID_ROWS.toLocaleString()} of ${count.toLocaleString()} rows shown`;
    container.appendChild(more);
  }
}

function columnsOf(rows) {
  const names = [];
  for (const r of rows) for (const k of Object.keys(r)) if (!names.includes(k)) names.push(k);
  return names.map((name) => ({ name }));
}

// -- the editor, completion, history ----------------------------------------

const editor = CodeMirror.fromTextArea($("editor"), {
  mode: "text/x-sql", lineNumbers: true, lineWrapping: true, matchBrackets: true, indentWithTabs: false,
  extraKeys: { "Ctrl-Enter": () => runQuery(), "Cmd-Enter": () => runQuery(), "Ctrl-Space": "autocomplete" },
  hintOptions: { tables: {}, completeSingle: false },
});

// the table after FROM/JOIN is the one whose columns complete without a "table." prefix
function refreshHintTables() {
  const tables = {};
  for (const t of state.tables) tables[t.table] = t.columns.map((c) => c.name);
  const from = /\b(?:from|join)\s+`?(\w+)/i.exec(editor.getValue());
  editor.setOption("hintOptions", { tables, completeSingle: false,
                                    defaultTable: from && tables[from[1]] ? from[1] : undefined });
}

editor.on("inputRead", (cm, change) => {
  if (change.origin !== "+input" || cm.state.completionActive) return;
  if (/^[A-Za-z_.]$/.test(change.text[0])) {
    refreshHintTables();
    cm.showHint({ completeSingle: false });
  }
});
editor.on("keydown", (_cm, e) => { if (e.ctrlKey && e.key === " ") refreshHintTables(); });

function history() {
  try { return JSON.parse(localStorage.getItem(HISTORY) || "[]"); } catch (_) { return []; }
}

function remember(query) {
  const list = [query, ...history().filter((q) => q !== query)].slice(0, HISTORY_MAX);
  localStorage.setItem(HISTORY, JSON.stringify(list));
  showHistory();
}

function showHistory() {
  const select = $("history");
  select.replaceChildren(new Option("History", ""));
  for (const q of history()) {
    const text = q.replace(/\s+/g, " ");
    select.appendChild(new Option(text.length > 90 ? text.slice(0, 87) + "..." : text, q));
  }
}

$("history").addEventListener("change", (e) => {
  if (e.target.value) editor.setValue(e.target.value);
  e.target.value = "";
  editor.focus();
});

async function runQuery() {
  const query = editor.getValue().trim();
  if (!query) return;
  remember(query);
  const status = $("query-status");
  setStatus(status, "running...");
  try {
    const answer = await sql(query);
    state.lastResult = answer;
    renderGrid($("grid"), answer.columns, answer.rows, answer.count);
    const notes = answer.notes ? "; " + answer.notes.join("; ") : "";
    setStatus(status, `${answer.count.toLocaleString()} rows in ${answer.elapsed_ms} ms${notes}`);
    chartControls(answer);
    drawChart();
  } catch (e) {
    setStatus(status, e.message, true);
  }
}

$("run").addEventListener("click", runQuery);

// -- the chart: lines of a numeric column over time, candles for OHLC bars ---

function timeColumn(columns) {
  return columns.find((c) => TIME_TYPE.test(c.type || "")) ||
         columns.find((c) => /^(time|ts|bar|minute|date)$/i.test(c.name));
}

function ohlc(columns) {
  const names = {};
  for (const c of columns) names[c.name.toLowerCase()] = c.name;
  const want = ["open", "high", "low", "close"];
  return want.every((k) => names[k]) ? Object.fromEntries(want.map((k) => [k, names[k]])) : null;
}

function chartControls(answer) {
  const cols = answer.columns;
  const time = timeColumn(cols);
  const y = $("chart-y");
  y.replaceChildren();
  for (const c of cols) if (NUMERIC.test(c.type || "") && c !== time) y.appendChild(new Option(c.name, c.name));
  const symSelect = $("chart-sym");
  symSelect.replaceChildren(new Option("all", ""));
  if (cols.some((c) => c.name === "sym")) {
    const syms = [...new Set(answer.rows.map((r) => r.sym))].sort();
    for (const s of syms) symSelect.appendChild(new Option(s, s));
  }
}

function drawChart() {
  const el = $("chart");
  const note = $("chart-note");
  if (state.chart) { state.chart.remove(); state.chart = null; }
  el.replaceChildren();
  const answer = state.lastResult;
  if (!answer) return;
  const cols = answer.columns;
  const time = timeColumn(cols);
  const bars = ohlc(cols);
  let kind = $("chart-kind").value;
  if (kind === "auto") kind = bars ? "candles" : "line";
  const yName = $("chart-y").value;
  if (kind === "none" || !time || (kind === "line" && !yName) || (kind === "candles" && !bars)) {
    el.hidden = true;
    setStatus(note, kind === "none" ? "" : !time ? "no time column to chart" :
                    kind === "candles" ? "no open/high/low/close columns" : "no numeric column to chart");
    return;
  }
  el.hidden = false;
  const hasSym = cols.some((c) => c.name === "sym");
  let sym = $("chart-sym").value;
  if (kind === "candles" && hasSym && !sym && $("chart-sym").options.length > 1) {
    sym = $("chart-sym").options[1].value;  // candles of one sym: the first
    $("chart-sym").value = sym;
  }
  const groups = new Map();
  for (const r of answer.rows) {
    if (hasSym && sym && r.sym !== sym) continue;
    const g = hasSym ? r.sym : "";
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(r);
  }
  const chart = LightweightCharts.createChart(el, {
    autoSize: true, layout: { background: { color: "#ffffff" }, textColor: "#1d2330" },
    timeScale: { timeVisible: true, secondsVisible: true }, rightPriceScale: { borderVisible: false },
  });
  state.chart = chart;
  let series = 0;
  let points = 0;
  for (const [g, rows] of groups) {
    if (series >= COLORS.length) break;
    const pointsOf = (r) => kind === "candles"
      ? { time: toSeconds(r[time.name]), open: Number(r[bars.open]), high: Number(r[bars.high]),
          low: Number(r[bars.low]), close: Number(r[bars.close]) }
      : { time: toSeconds(r[time.name]), value: r[yName] === null ? null : Number(r[yName]) };
    const data = [];
    for (const p of rows.map(pointsOf).filter((p) => Number.isFinite(p.time)).sort((a, b) => a.time - b.time)) {
      if (kind === "line" && (p.value === null || p.value === undefined)) continue;
      // equal times: the last row's value stands (the chart needs one point per time)
      if (data.length && data[data.length - 1].time === p.time) data[data.length - 1] = p;
      else data.push(p);
    }
    const s = kind === "candles"
      ? chart.addSeries(LightweightCharts.CandlestickSeries, {})
      : chart.addSeries(LightweightCharts.LineSeries, { color: COLORS[series], lineWidth: 2, title: g });
    s.setData(data);
    series += 1;
    points += data.length;
  }
  chart.timeScale().fitContent();
  const shown = groups.size > series ? ` (first ${series} of ${groups.size} syms)` : "";
  setStatus(note, `${kind === "candles" ? "candles" : yName}${sym ? " of " + sym : ""}: ${points} points${shown}`);
}

for (const id of ["chart-kind", "chart-y", "chart-sym"]) $(id).addEventListener("change", drawChart);

// -- live view: snapshot, then updates, over Server-Sent Events -------------
// fetch, not EventSource: EventSource cannot send the key's header

function liveSources() {
  const select = $("live-source");
  const current = select.value;
  select.replaceChildren();
  for (const t of state.tables) if (t.table !== "query_log") select.appendChild(new Option(t.table, t.table));
  for (const s of ["bars", "analytics"]) select.appendChild(new Option(`${s} (engine)`, s));
  select.value = current || (state.tables.some((t) => t.table === "trade") ? "trade" : select.value);
}

function stopLive() {
  if (state.live) state.live.abort.abort();
  state.live = null;
  $("live-start").disabled = false;
  $("live-stop").disabled = true;
}

function showLive() {
  const live = state.live;
  if (!live) return;
  const latest = [...live.latest.values()].sort((a, b) => String(a.sym).localeCompare(String(b.sym)));
  renderGrid($("live-latest"), columnsOf(latest), latest);
  renderGrid($("live-updates"), columnsOf(live.updates), live.updates);
  $("live-count").textContent = `${live.received.toLocaleString()} rows received since the snapshot`;
  live.drawn = true;
}

function onLiveEvent(live, block) {
  const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
  if (!data) return;  // a keepalive comment
  const msg = parseExact(data);
  const rowKey = (r) => (r.sym === undefined ? "" : r.sym);
  if (msg.type === "snapshot") {
    for (const r of msg.rows) live.latest.set(rowKey(r), r);
    setStatus($("live-status"), `live: snapshot of ${msg.rows.length} syms, then updates`);
  } else if (msg.type === "update") {
    for (const r of msg.rows) live.latest.set(rowKey(r), r);
    live.updates = [...msg.rows.slice().reverse(), ...live.updates].slice(0, LIVE_UPDATES);
    live.received += msg.rows.length;
  } else if (msg.type === "error" || msg.type === "warning") {
    setStatus($("live-status"), `${msg.type}: ${msg.reason}`, msg.type === "error");
  }
  if (live.drawn) { live.drawn = false; requestAnimationFrame(showLive); }
}

async function startLive() {
  stopLive();
  const source = $("live-source").value;
  const syms = $("live-syms").value.replace(/\s+/g, "");
  const live = { abort: new AbortController(), latest: new Map(), updates: [], received: 0, drawn: true };
  state.live = live;
  $("live-start").disabled = true;
  $("live-stop").disabled = false;
  setStatus($("live-status"), `subscribing to ${source}...`);
  try {
    const resp = await fetch(`/v1/subscribe/${encodeURIComponent(source)}?syms=${encodeURIComponent(syms)}`,
                             { headers: headers({ Accept: "text/event-stream" }), signal: live.abort.signal });
    if (!resp.ok) {
      let reason = resp.statusText;
      try { reason = (await resp.json()).error; } catch (_) { /* not JSON */ }
      throw new Error(`${resp.status}: ${reason}`);
    }
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        onLiveEvent(live, buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
    if (state.live === live) setStatus($("live-status"), "the gateway ended the stream", true);
  } catch (e) {
    if (e.name !== "AbortError") setStatus($("live-status"), e.message, true);
    else setStatus($("live-status"), "stopped");
  } finally {
    if (state.live === live) stopLive();
  }
}

$("live-start").addEventListener("click", startLive);
$("live-stop").addEventListener("click", stopLive);

// -- the plant: /v1/health ---------------------------------------------------

function section(title, node) {
  const wrap = document.createElement("div");
  const h = document.createElement("h2");
  h.textContent = title;
  wrap.append(h, node);
  return wrap;
}

function list(items, cls) {
  const ul = document.createElement("ul");
  ul.className = cls;
  for (const i of items) { const li = document.createElement("li"); li.textContent = i; ul.appendChild(li); }
  return ul;
}

function gridOf(rows) {
  const div = document.createElement("div");
  div.className = "grid";
  if (rows.length) renderGrid(div, columnsOf(rows), rows);
  else div.textContent = "none";
  return div;
}

async function refreshHealth() {
  const out = $("health");
  try {
    const h = await api("/v1/health");
    const badge = document.createElement("span");
    badge.className = `badge ${h.status}`;
    badge.textContent = h.status;
    const parts = [section("Status", badge)];
    if (h.roles === undefined) {
      setStatus($("health-status"), "enter a key to see the nodes and why");
    } else {
      setStatus($("health-status"), `open day ${h.open_date}; gateway up ${h.uptime_s} s; history in ${h.hdb_root}`);
      if (h.problems.length) parts.push(section("Problems", list(h.problems, "problems")));
      if (h.warnings.length) parts.push(section("Warnings", list(h.warnings, "warnings")));
      parts.push(section("Roles announced", gridOf(Object.entries(h.roles).map(([role, n]) => ({ role, n })))));
      parts.push(section("RDB nodes", gridOf(h.rdb_nodes)));
      parts.push(section("CEP nodes", gridOf(h.cep_nodes)));
      parts.push(section("ClickHouse endpoints", gridOf(h.clickhouse)));
    }
    out.replaceChildren(...parts);
  } catch (e) {
    setStatus($("health-status"), e.message, true);
  }
}

$("health-refresh").addEventListener("click", refreshHealth);

// -- the query log (admins, or users granted query_log) ----------------------

async function refreshLog() {
  const status = $("log-status");
  if (!state.tables.some((t) => t.table === "query_log")) {
    $("log-grid").replaceChildren();
    setStatus(status, "the query log is for admins (or users granted query_log); this key may not read it", true);
    return;
  }
  const where = [];
  const user = $("log-user").value.trim();
  if (user) where.push(`user = '${user.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`);
  if ($("log-refused").checked) where.push("outcome != 'ok'");
  const query = "SELECT ts, user, endpoint, outcome, status, duration_ms, rows, statement, error FROM query_log" +
                (where.length ? " WHERE " + where.join(" AND ") : "") + " ORDER BY ts DESC LIMIT 500";
  try {
    const answer = await sql(query);
    renderGrid($("log-grid"), answer.columns, answer.rows, answer.count);
    setStatus(status, `latest ${answer.count} entries`);
  } catch (e) {
    setStatus(status, e.message, true);
  }
}

$("log-refresh").addEventListener("click", refreshLog);
$("log-refused").addEventListener("change", refreshLog);

// -- tabs, the key, start ----------------------------------------------------

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== `tab-${name}`;
  clearInterval(state.healthTimer);
  if (name === "plant") { refreshHealth(); state.healthTimer = setInterval(refreshHealth, 5000); }
  if (name === "log") refreshLog();
  if (name === "query") editor.refresh();
}

for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));

// /v1/health answers everyone (200); only an accepted key (or a gateway without users)
// gets its details: so a key is checked without a refused request
async function signIn() {
  const status = $("key-status");
  try {
    const h = await api("/v1/health");
    if (h.roles === undefined) {
      state.tables = [];
      setStatus(status, sessionStorage.getItem(KEY) ? "key not accepted" : "enter your API key", true);
      return false;
    }
    state.tables = (await api("/v1/tables")).tables;
    setStatus(status, sessionStorage.getItem(KEY) ? "key accepted" : "no key needed");
    liveSources();
    refreshHintTables();
    return true;
  } catch (e) {
    setStatus(status, e.message, true);
    return false;
  }
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key").value.trim();
  if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
  $("key").value = "";
  signIn();
});
$("key-forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); stopLive(); signIn(); });

showHistory();
signIn();
