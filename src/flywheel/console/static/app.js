/* flywheel console: plain JavaScript, no build step, nothing loaded from elsewhere.
   Views: Models, Live, Monitoring, Actions, Try it (docs/console.md). */
"use strict";

const TOKEN_KEY = "flywheel-console-token";
const state = { info: null, model: null, timer: null, view: null };

// ------------------------------------------------------------------ helpers
function h(tag, attrs, ...kids) {
  const el = document.createElementNS(
    ["svg", "rect", "line", "polyline", "path", "text", "g", "title", "circle"].includes(tag)
      ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const fmt = (v, d = 3) => v === null || v === undefined ? "–"
  : typeof v === "number" ? (Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(d)) : String(v);
const pct = (v) => v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%";
const day = (t) => t ? new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ") : "–";

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || body && body.detail || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { "content-type": "application/json", ...(options.headers || {}) };
  if (token) headers.authorization = "Bearer " + token;
  const answer = await fetch(path, { ...options, headers });
  const body = await answer.json().catch(() => null);
  if (answer.status === 401 || (answer.status === 403 && !path.includes("/actions/"))) {
    askToken(body && body.error ? body.error.message : "");
  }
  if (!answer.ok) throw new ApiError(answer.status, body);
  return body;
}

function askToken(why) {
  const dialog = document.getElementById("login");
  document.getElementById("login-why").textContent = why || "This console needs the admin token or an API key.";
  if (!dialog.open) dialog.showModal();
}

function message(kind, text) { return h("div", { class: "msg " + kind, role: kind === "err" ? "alert" : "status" }, text); }
function fail(where, err) { where.replaceChildren(message("err", err.message || String(err))); }

// ------------------------------------------------------------------ charts (SVG)
function lineChart(series, { width = 560, height = 180, title = "", unit = "", band = null } = {}) {
  // series: [{name, color, points: [[x, y], ...]}]; band: {color, points: [[x, lo, hi]]}
  const pad = { l: 46, r: 10, t: 20, b: 24 };
  const all = series.flatMap((s) => s.points).concat(band ? band.points.flatMap((p) => [[p[0], p[1]], [p[0], p[2]]]) : []);
  const svg = h("svg", { width: "100%", style: `max-width:${width}px`, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  svg.append(h("text", { x: pad.l, y: 13, "font-weight": "600" }, title));
  if (!all.length) { svg.append(h("text", { x: width / 2 - 40, y: height / 2 }, "no data yet")); return svg; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]).filter((y) => y !== null && isFinite(y));
  const x0 = Math.min(...xs), x1 = Math.max(...xs) === x0 ? x0 + 1 : Math.max(...xs);
  const y0 = Math.min(0, ...ys), y1 = Math.max(...ys, y0 + 1e-9) * 1.1 || 1;
  const X = (x) => pad.l + (x - x0) / (x1 - x0) * (width - pad.l - pad.r);
  const Y = (y) => height - pad.b - (y - y0) / (y1 - y0) * (height - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const v = y0 + (y1 - y0) * i / 4;
    svg.append(h("line", { x1: pad.l, x2: width - pad.r, y1: Y(v), y2: Y(v), stroke: "#e5e7eb" }));
    svg.append(h("text", { x: 2, y: Y(v) + 4 }, fmt(v, v < 10 ? 2 : 0) + unit));
  }
  if (band && band.points.length) {
    const up = band.points.map((p) => `${X(p[0])},${Y(p[2])}`), down = band.points.slice().reverse().map((p) => `${X(p[0])},${Y(p[1])}`);
    svg.append(h("path", { d: "M" + up.concat(down).join("L") + "Z", fill: band.color, opacity: 0.25 }));
  }
  series.forEach((s, k) => {
    const pts = s.points.filter((p) => p[1] !== null && isFinite(p[1]));
    svg.append(h("polyline", { points: pts.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: s.color, "stroke-width": 2 }));
    pts.forEach((p) => svg.append(h("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: s.color }, h("title", {}, `${s.name}: ${fmt(p[1])}`))));
    svg.append(h("text", { x: width - pad.r - 150, y: 13 + 12 * k, fill: s.color }, "■ " + s.name));
  });
  return svg;
}

function barChart(labels, groups, { width = 560, height = 220, title = "" } = {}) {
  // groups: [{name, color, values}] drawn side by side per label
  const pad = { l: 40, r: 10, t: 22, b: 70 };
  const svg = h("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  svg.append(h("text", { x: pad.l, y: 13, "font-weight": "600" }, title));
  const top = Math.max(1e-9, ...groups.flatMap((g) => g.values)) * 1.1;
  const slot = (width - pad.l - pad.r) / Math.max(labels.length, 1), bw = slot * 0.8 / groups.length;
  const Y = (v) => height - pad.b - v / top * (height - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const v = top * i / 4;
    svg.append(h("line", { x1: pad.l, x2: width - pad.r, y1: Y(v), y2: Y(v), stroke: "#e5e7eb" }));
    svg.append(h("text", { x: 2, y: Y(v) + 4 }, (100 * v).toFixed(0) + "%"));
  }
  labels.forEach((label, i) => {
    groups.forEach((g, k) => {
      const v = g.values[i] || 0, x = pad.l + i * slot + slot * 0.1 + k * bw;
      svg.append(h("rect", { x, y: Y(v), width: Math.max(bw - 1, 1), height: Y(0) - Y(v), fill: g.color }, h("title", {}, `${g.name} ${label}: ${pct(v)}`)));
    });
    const tx = pad.l + i * slot + slot / 2;
    svg.append(h("text", { x: tx, y: height - pad.b + 12, transform: `rotate(40 ${tx} ${height - pad.b + 12})` }, label.length > 18 ? label.slice(0, 17) + "…" : label));
  });
  groups.forEach((g, k) => svg.append(h("text", { x: width - pad.r - 100, y: 13 + 12 * k, fill: g.color }, "■ " + g.name)));
  return svg;
}

function heatColor(ratio) {
  if (ratio === null || ratio === undefined) return "#f3f4f6";
  const t = Math.min(ratio, 3) / 3; // value / threshold, capped at 3
  const from = [239, 246, 255], mid = [251, 191, 36], to = [185, 28, 28];
  const [a, b, u] = t < 1 / 3 ? [from, mid, t * 3] : [mid, to, (t - 1 / 3) * 1.5];
  return `rgb(${a.map((c, i) => Math.round(c + (b[i] - c) * u)).join(",")})`;
}

function heatMap(features, windows, onPick) {
  const cell = 22, left = 170, top = 100;
  const width = left + windows.length * cell + 20, height = top + features.length * cell + 10;
  const svg = h("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "drift heat map", id: "heatmap" });
  windows.forEach((w, j) => {
    const x = left + j * cell + cell / 2;
    svg.append(h("text", { x, y: top - 6, transform: `rotate(-60 ${x} ${top - 6})` }, (w.alarm ? "⚠ " : "") + (w.label || w.window)));
  });
  features.forEach((f, i) => {
    svg.append(h("text", { x: left - 6, y: top + i * cell + 15, "text-anchor": "end" }, f.length > 26 ? f.slice(0, 25) + "…" : f));
    windows.forEach((w, j) => {
      const c = w.cells[f] || {};
      svg.append(h("rect", {
        x: left + j * cell, y: top + i * cell, width: cell - 2, height: cell - 2, fill: heatColor(c.ratio),
        stroke: c.drifted ? "#111827" : "none", "stroke-width": c.drifted ? 2 : 0, class: "cell",
        "data-feature": f, "data-window": w.window, style: "cursor:pointer",
        onclick: () => onPick(f, w.window),
      }, h("title", {}, `${f} · ${w.window}: ${c.stat || ""} ${fmt(c.value)} / threshold ${fmt(c.threshold)}${c.drifted ? " (drifted)" : ""}`)));
    });
  });
  return svg;
}

// ------------------------------------------------------------------ markdown (the model card)
function inline(text) {
  const out = [];
  const re = /(\*\*[^*]+\*\*|`[^`]+`)/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    out.push(text.slice(last, m.index));
    out.push(m[0].startsWith("**") ? h("strong", {}, m[0].slice(2, -2)) : h("code", {}, m[0].slice(1, -1)));
    last = re.lastIndex;
  }
  out.push(text.slice(last));
  return out;
}

function markdown(text) {
  const root = h("div", { class: "md" });
  const lines = (text || "").split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const head = /^(#{1,4})\s+(.*)/.exec(line);
    if (head) { root.append(h("h" + Math.min(head[1].length + 1, 5), {}, inline(head[2]))); continue; }
    if (line.startsWith("|")) {
      const rows = [];
      while (i < lines.length && lines[i].startsWith("|")) rows.push(lines[i++]);
      i--;
      const cells = (r) => r.replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
      const body = rows.filter((r) => !/^\|\s*-/.test(r));
      root.append(h("table", {}, h("tr", {}, cells(body[0]).map((c) => h("th", {}, inline(c)))),
        body.slice(1).map((r) => h("tr", {}, cells(r).map((c) => h("td", {}, inline(c)))))));
      continue;
    }
    if (/^\s*[-*]\s+/.test(line)) {
      const ul = h("ul");
      while (i < lines.length && /^\s*[-*]\s+/.test(lines[i])) ul.append(h("li", {}, inline(lines[i++].replace(/^\s*[-*]\s+/, ""))));
      i--;
      root.append(ul);
      continue;
    }
    if (line.trim()) root.append(h("p", {}, inline(line)));
  }
  return root;
}

// ------------------------------------------------------------------ Models
async function viewModels(el) {
  const models = await api("/ui/api/models");
  if (!models.length) { el.replaceChildren(message("err", "No registered model yet: run `flywheel train`.")); return; }
  state.model = state.model || models[0].name;
  const picker = h("select", { id: "model-pick", onchange: (e) => { state.model = e.target.value; render(); } },
    models.map((m) => h("option", { value: m.name, selected: m.name === state.model }, m.name)));
  const versions = await api(`/ui/api/models/${encodeURIComponent(state.model)}/versions`);
  const detail = h("div", { id: "version-detail" });
  const metricNames = [...new Set(versions.flatMap((v) => Object.keys(v.metrics)))]
    .filter((k) => k.startsWith("holdout_") || k.startsWith("test_")).slice(0, 4);
  const table = h("table", { id: "versions" },
    h("tr", {}, h("th", {}, "version"), h("th", {}, "aliases"), h("th", {}, "registered"), h("th", {}, "family"),
      h("th", {}, "gates"), metricNames.map((m) => h("th", {}, m.replace(/^holdout_/, "")))),
    versions.map((v) => h("tr", { class: "pick", "data-version": v.version, onclick: (e) => pick(v.version, e.currentTarget) },
      h("td", {}, "v" + v.version),
      h("td", {}, v.aliases.map((a) => h("span", { class: "badge " + a }, a))),
      h("td", {}, v.created_at.slice(0, 19).replace("T", " ")),
      h("td", {}, v.tags.family || "–"),
      h("td", {}, v.tags.gates ? h("span", { class: "badge " + (v.tags.gates === "passed" ? "ok" : "bad") }, v.tags.gates) : "–"),
      metricNames.map((m) => h("td", { class: "num" }, fmt(v.metrics[m]))))));
  async function pick(version, row) {
    table.querySelectorAll("tr").forEach((r) => r.classList.remove("sel"));
    if (row) row.classList.add("sel");
    detail.replaceChildren(h("p", { class: "muted" }, "loading v" + version + " …"));
    try { detail.replaceChildren(versionDetail(await api(`/ui/api/models/${encodeURIComponent(state.model)}/versions/${version}`))); }
    catch (err) { fail(detail, err); }
  }
  const ledger = h("div", { id: "ledger" });
  el.replaceChildren(
    h("form", { class: "row" }, h("label", {}, "model", picker),
      h("span", { class: "muted" }, models.map((m) => `${m.name}: ${Object.entries(m.aliases).map(([a, v]) => `${a} v${v}`).join(", ") || "no alias"}`).join(" · "))),
    h("div", { class: "cols" }, h("div", {}, h("h2", {}, "Versions"), h("div", { class: "scroll" }, table)), h("div", {}, detail)),
    h("h2", {}, "Audit ledger"), ledger);
  const first = versions.find((v) => v.aliases.includes("champion")) || versions[0];
  pick(first.version, table.querySelector(`tr[data-version="${first.version}"]`));
  auditLedger(ledger, state.model);
}

function versionDetail(d) {
  const metrics = Object.entries(d.metrics).filter(([k]) => !k.startsWith("onnx_")).sort();
  const gates = (d.gates && d.gates.results) || [];
  return h("div", { class: "version" },
    h("h2", {}, `${d.name} v${d.version}`),
    lineage(d.lineage),
    h("h3", {}, "Gates " , d.gates ? h("span", { class: "badge " + (d.gates.passed ? "ok" : "bad") }, d.gates.passed ? "passed" : "failed") : ""),
    gates.length ? h("table", { id: "gates" }, h("tr", {}, h("th", {}, "gate"), h("th", {}, "result"), h("th", {}, "detail")),
      gates.map((g) => h("tr", {}, h("td", {}, g.gate), h("td", {}, h("span", { class: "badge " + (g.passed ? "ok" : "bad") }, g.passed ? "pass" : "fail")), h("td", {}, g.detail || "")))) : h("p", { class: "muted" }, "no gate report"),
    h("h3", {}, "Metrics"),
    h("div", { class: "scroll" }, h("table", { id: "metrics" }, h("tr", {}, h("th", {}, "metric"), h("th", {}, "value")),
      metrics.slice(0, 40).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: "num" }, fmt(v, 4)))))),
    h("h3", {}, "Model card"), h("div", { id: "card" }, markdown(d.card)));
}

function lineage(l) {
  if (!l || l.error) return h("p", { class: "muted" }, l ? l.error : "no lineage");
  const snap = l.snapshot || {}, run = l.run || {};
  const node = (title, ...lines) => h("div", { class: "node" }, h("strong", {}, title), lines.filter(Boolean).map((x) => h("div", { class: "muted" }, x)));
  return h("div", {},
    h("h3", {}, "Lineage"),
    h("div", { class: "chain", id: "lineage" },
      node("snapshot", snap.id ? String(snap.id).slice(0, 16) : "–", snap.rows ? `${fmt(snap.rows)} rows` : null),
      h("span", { class: "arrow" }, "→"),
      node("run", run.id ? String(run.id).slice(0, 12) : (run.run_id ? String(run.run_id).slice(0, 12) : "–"), run.family || (run.params && run.params.family)),
      h("span", { class: "arrow" }, "→"),
      node("version v" + l.version, (l.aliases || []).join(", ") || null, l.sha256 ? "sha256 " + l.sha256.slice(0, 12) : null),
      (l.rollouts || []).length ? [h("span", { class: "arrow" }, "→"), node("rollouts", ...(l.rollouts.map((r) => `${r.strategy || ""} ${r.status || r.outcome || ""}`)))] : null),
    l.trigger ? h("p", { class: "muted" }, "trigger: " + (l.trigger.kind || JSON.stringify(l.trigger).slice(0, 120))) : null);
}

async function auditLedger(el, model) {
  const f = { action: "", who: "", text: "" };
  const table = h("div");
  async function load() {
    const q = new URLSearchParams({ model, ...Object.fromEntries(Object.entries(f).filter(([, v]) => v)) });
    try {
      const d = await api("/ui/api/audit?" + q);
      fillSelect(actionSel, d.actions, f.action); fillSelect(whoSel, d.users, f.who);
      table.replaceChildren(h("p", { class: "muted" }, `${d.total} entries`),
        h("table", { id: "audit" }, h("tr", {}, ["id", "at", "who", "action", "from", "to", "reason"].map((c) => h("th", {}, c))),
          d.entries.map((e) => h("tr", {}, h("td", { class: "num" }, e.id), h("td", {}, e.at.slice(0, 19).replace("T", " ")), h("td", {}, e.who),
            h("td", {}, h("span", { class: "badge" }, e.action)), h("td", {}, e.from_version || "–"), h("td", {}, e.to_version || "–"),
            h("td", {}, (e.reason || "").split("\n")[0].slice(0, 160))))));
    } catch (err) { fail(table, err); }
  }
  const fillSelect = (sel, items, chosen) => sel.replaceChildren(h("option", { value: "" }, "all"), ...items.map((a) => h("option", { value: a, selected: a === chosen }, a)));
  const actionSel = h("select", { id: "audit-action", onchange: (e) => { f.action = e.target.value; load(); } });
  const whoSel = h("select", { id: "audit-who", onchange: (e) => { f.who = e.target.value; load(); } });
  const text = h("input", { id: "audit-text", placeholder: "reason contains…", onchange: (e) => { f.text = e.target.value; load(); } });
  el.replaceChildren(h("form", { class: "row", onsubmit: (e) => e.preventDefault() }, h("label", {}, "action", actionSel), h("label", {}, "who", whoSel), h("label", {}, "reason", text)), table);
  await load();
}

// ------------------------------------------------------------------ Live
async function viewLive(el) {
  const body = h("div", { id: "live-body" }, h("p", { class: "muted" }, "reading the server …"));
  el.replaceChildren(h("h2", {}, "Live ", h("span", { class: "muted", id: "live-at" }, "")), body);
  const tick = async () => {
    if (state.view !== "live") return;
    try { drawLive(body, await api("/ui/api/live")); } catch (err) { fail(body, err); }
  };
  await tick();
  state.timer = setInterval(tick, 2000);
}

function drawLive(el, d) {
  document.getElementById("live-at").textContent = "updated " + new Date().toLocaleTimeString();
  const protos = Object.entries(d.protocols || {});
  const cards = h("div", { class: "grid", id: "protocols" }, protos.length ? protos.map(([p, s]) => h("div", { class: "card", "data-protocol": p },
    h("div", { class: "muted" }, p),
    h("div", { class: "big" }, fmt(s.rps, 1), h("span", { class: "muted" }, " req/s")),
    h("div", {}, `requests ${fmt(s.requests)} · errors `, h("span", { class: s.errors ? "badge bad" : "" }, fmt(s.errors))),
    h("div", { class: "muted" }, `p50 ${fmt(s.p50_ms, 2)} ms · p95 ${fmt(s.p95_ms, 2)} ms · p99 ${fmt(s.p99_ms, 2)} ms`),
    Object.keys(s.errors_by_kind || {}).length ? h("div", { class: "muted" }, Object.entries(s.errors_by_kind).map(([k, v]) => `${k}: ${v}`).join(", ")) : null))
    : h("p", { class: "muted" }, "No request yet."));
  const series = d.series || [];
  const t0 = series.length ? series[0].at : 0;
  const charts = h("div", { class: "grid", style: "grid-template-columns:repeat(auto-fill,minmax(560px,1fr))" },
    h("div", { class: "chart" }, lineChart([{ name: "requests/s", color: "#2563eb", points: series.map((s) => [s.at - t0, s.rps]) },
      { name: "errors/s", color: "#dc2626", points: series.map((s) => [s.at - t0, s.errors_per_s]) }], { title: "Requests per second (all protocols)" })),
    h("div", { class: "chart" }, lineChart([{ name: "p50", color: "#16a34a", points: series.map((s) => [s.at - t0, s.p50_ms]) },
      { name: "p99", color: "#d97706", points: series.map((s) => [s.at - t0, s.p99_ms]) }], { title: "Latency (ms)", unit: "" })));
  const served = h("table", { id: "served" }, h("tr", {}, h("th", {}, "model"), h("th", {}, "version"), h("th", {}, "follows"), h("th", {}, "ready")),
    (d.served || []).map((m) => h("tr", {}, h("td", {}, m.name), h("td", {}, "v" + (m.version || "–")), h("td", {}, (m.pinned ? "pinned " : "") + (m.ref || "")), h("td", {}, m.ready ? "yes" : "no"))));
  el.replaceChildren(cards, charts, h("h3", {}, "In service"), served, rolloutPanel(d.rollout),
    d.clock && d.clock.simulated ? h("p", { class: "muted" }, "data clock (simulated): " + day(d.clock.now)) : "");
}

function rolloutPanel(r) {
  if (!r || !r.rollout) return h("div", { id: "rollout" }, h("h3", {}, "Rollout"), h("p", { class: "muted" }, r && r.error ? r.error : "No rollout yet."));
  const ro = r.rollout, w = r.weights || {};
  const arms = Object.entries(r.arms || {});
  const analysis = r.analysis || {};
  const checks = analysis.checks || [];
  return h("div", { id: "rollout" },
    h("h3", {}, `Rollout ${ro.id || ""}: ${ro.strategy} of v${ro.challenger} against v${ro.champion} `, h("span", { class: "badge", id: "rollout-status" }, ro.status)),
    h("div", { class: "weights", id: "weights" },
      h("div", { style: `width:${w.champion}%;background:#16a34a` }, w.champion > 8 ? `champion ${fmt(w.champion, 0)}%` : ""),
      h("div", { style: `width:${w.challenger}%;background:#d97706` }, w.challenger > 8 ? `challenger ${fmt(w.challenger, 0)}%` : "")),
    h("p", { class: "muted" }, `step ${ro.step + 1} of ${(ro.plan && ro.plan.steps || []).length || "?"} · weight ${fmt(ro.weight, 1)}% · ${ro.reason || ""}`),
    h("table", { id: "arms" }, h("tr", {}, ["arm", "requests (step)", "errors", "p99 ms", "requests (all)"].map((c) => h("th", {}, c))),
      arms.map(([arm, c]) => {
        const all = (r.arms_total || {})[arm] || {};
        return h("tr", {}, h("td", {}, arm), h("td", { class: "num" }, fmt(c.requests)), h("td", { class: "num" }, fmt(c.errors)),
          h("td", { class: "num" }, fmt(c.latency_p99_ms, 2)), h("td", { class: "num" }, fmt(all.requests)));
      })),
    checks.length ? h("table", { id: "checks" }, h("tr", {}, h("th", {}, "check"), h("th", {}, "verdict"), h("th", {}, "detail")),
      checks.map((c) => h("tr", {}, h("td", {}, c.name), h("td", {}, h("span", { class: "badge " + (c.status === "failed" ? "bad" : c.status === "ok" ? "ok" : "") }, c.status)), h("td", {}, c.detail || "")))) : null,
    h("details", {}, h("summary", {}, "the test's evidence"), h("pre", { id: "evidence" }, JSON.stringify(analysis, null, 1))));
}

// ------------------------------------------------------------------ Monitoring
async function viewMonitoring(el) {
  const d = await api("/ui/api/monitoring" + (state.model ? "?model=" + encodeURIComponent(state.model) : ""));
  if (!d.windows.length) { el.replaceChildren(h("h2", {}, "Monitoring"), message("err", `No monitored window of ${d.model} yet: run \`flywheel monitor run\`.`)); return; }
  const dist = h("div", { id: "distribution", class: "chart" });
  const featureSel = h("select", { id: "feature-pick", onchange: () => showDist() }, d.features.map((f) => h("option", { value: f }, f)));
  const windowSel = h("select", { id: "window-pick", onchange: () => showDist() }, d.windows.slice().reverse().map((w) => h("option", { value: w.window }, w.label || w.window)));
  async function showDist() {
    dist.replaceChildren(h("p", { class: "muted" }, "loading …"));
    const q = new URLSearchParams({ model: d.model, feature: featureSel.value, window: windowSel.value });
    try {
      const x = await api("/ui/api/monitoring/distribution?" + q);
      if (x.error) { dist.replaceChildren(message("err", x.error)); return; }
      dist.replaceChildren(barChart(x.labels, [{ name: "reference", color: "#93c5fd", values: x.reference }, { name: "current", color: "#d97706", values: x.current }],
        { title: `${x.feature} in ${x.window}: ${x.stat || ""} ${fmt(x.value)}${x.drifted ? " (drifted)" : ""}`, width: 620 }),
        h("p", { class: "muted" }, `rows: reference ${fmt(x.rows[0])}, current ${fmt(x.rows[1])}`));
    } catch (err) { fail(dist, err); }
  }
  const pick = (f, w) => { featureSel.value = f; windowSel.value = w; showDist(); };
  const perfRows = d.windows.map((w) => w.performance || {});
  const metric = perfRows.map((p) => p.primary_metric).find(Boolean);
  const estMetric = perfRows.flatMap((p) => Object.keys(p.estimated || {})).find((k) => k === metric) || perfRows.flatMap((p) => Object.keys(p.estimated || {}))[0];
  const xs = d.windows.map((_, i) => i);
  const perfChart = lineChart([
    { name: `realised ${metric || ""}`, color: "#2563eb", points: d.windows.map((w, i) => [i, ((w.performance || {}).realised || {})[metric] ?? null]) },
    { name: `estimated ${estMetric || ""}`, color: "#d97706", points: d.windows.map((w, i) => [i, (((w.performance || {}).estimated || {})[estMetric] || {}).value ?? null]) },
    { name: "label completeness", color: "#6b7280", points: d.windows.map((w, i) => [i, (w.performance || {}).label_completeness ?? null]) }],
  { title: "Performance per window (estimate with its 95% interval)", width: 620,
    band: { color: "#d97706", points: d.windows.map((w, i) => { const e = (((w.performance || {}).estimated || {})[estMetric] || {}).ci95; return e ? [i, e[0], e[1]] : null; }).filter(Boolean) } });
  void xs;
  const table = h("table", { id: "windows" }, h("tr", {}, ["window", "version", "rows", "status", "decision", "drift share", "labels", `realised ${metric || ""}`, `estimated ${estMetric || ""}`, "reason"].map((c) => h("th", {}, c))),
    d.windows.slice().reverse().map((w) => {
      const p = w.performance || {}, e = ((p.estimated || {})[estMetric]) || {};
      return h("tr", {}, h("td", { title: w.window }, w.label || w.window), h("td", {}, "v" + w.version), h("td", { class: "num" }, fmt(w.rows)), h("td", {}, w.status),
        h("td", {}, w.alarm ? h("span", { class: "badge bad" }, "alarm") : w.verdict ? h("span", { class: "badge" }, "verdict") : h("span", { class: "badge ok" }, "ok")),
        h("td", { class: "num" }, pct(w.drift_share)), h("td", { class: "num" }, pct(p.label_completeness)),
        h("td", { class: "num" }, fmt((p.realised || {})[metric])),
        h("td", { class: "num" }, e.value === undefined ? "–" : `${fmt(e.value)} [${fmt(e.ci95 && e.ci95[0])}, ${fmt(e.ci95 && e.ci95[1])}]`),
        h("td", {}, w.reason || p.reason || ""));
    }));
  el.replaceChildren(
    h("h2", {}, `Monitoring ${d.model}`),
    h("p", { class: "muted" }, "Each cell: a feature's drift statistic over its threshold (darker is further; outlined: drifted). Click a cell for its distribution."),
    h("div", { class: "chart scroll" }, heatMap(d.features, d.windows, pick)),
    h("div", { class: "cols" }, h("div", { class: "chart" }, perfChart),
      h("div", {}, h("form", { class: "row" }, h("label", {}, "feature", featureSel), h("label", {}, "window", windowSel)), dist)),
    h("h3", {}, "Windows: decision and reason"), h("div", { class: "scroll" }, table));
  const worst = d.features[0];
  pick(worst, d.windows[d.windows.length - 1].window);
}

// ------------------------------------------------------------------ Actions
function viewActions(el) {
  const out = h("div", { id: "action-result" });
  const reason = () => h("input", { name: "reason", placeholder: "reason (required, audited)", required: true, size: 34 });
  const act = (path, fields, label, cls) => {
    const form = h("form", { class: "row", "data-action": path, onsubmit: async (e) => {
      e.preventDefault();
      const data = Object.fromEntries(new FormData(form).entries());
      if (!String(data.reason || "").trim()) { out.replaceChildren(message("err", "Give a reason: every change is audited.")); return; }
      if (!confirm(`${label}: ${data.reason}?`)) return;
      try {
        const done = await api("/ui/api/actions/" + path, { method: "POST", body: JSON.stringify(data) });
        const entry = done.entry || done.rollout || {};
        out.replaceChildren(message("ok", `${label} done: ${entry.action || entry.status || "ok"}${done.pending ? " (waiting for approval)" : ""}`));
      } catch (err) { out.replaceChildren(message("err", `${label} refused: ${err.message}`)); }
    } }, fields, reason(), h("button", { type: "submit", class: cls || "" }, label));
    return form;
  };
  const version = (name) => h("input", { name: name || "version", placeholder: "version", size: 6, required: true });
  el.replaceChildren(
    h("h2", {}, "Actions"),
    state.info && !state.info.actions ? message("err", "Actions are disabled on this server: start it with FLYWHEEL_ADMIN_TOKEN set.") : "",
    h("p", { class: "muted" }, "Each action runs the same code as the CLI (flywheel promote, approve, rollback, rollout …), needs the admin token and a reason, and is written to the audit ledger."),
    h("h3", {}, "Registry"),
    act("promote", [version()], "Promote"),
    act("approve", [version()], "Approve"),
    act("rollback", [], "Roll back", "danger"),
    h("h3", {}, "Rollout"),
    act("rollout/start", [version("challenger"), h("select", { name: "strategy" }, ["canary", "shadow", "ab", "bluegreen"].map((s) => h("option", { value: s }, s)))], "Start rollout"),
    act("rollout/pause", [], "Pause"),
    act("rollout/resume", [], "Resume"),
    act("rollout/promote", [], "Promote now"),
    act("rollout/switch", [], "Switch (blue-green)"),
    act("rollout/abort", [], "Abort", "danger"),
    out);
}

// ------------------------------------------------------------------ Try it
async function viewTry(el) {
  const f = await api("/ui/api/form" + (state.model ? "?model=" + encodeURIComponent(state.model) : ""));
  const out = h("div", { id: "answer" });
  const inputs = f.fields.map((x) => {
    const hint = x.kind === "numeric" ? [x.min !== null ? `≥ ${x.min}` : "", x.max !== null ? `≤ ${x.max}` : ""].filter(Boolean).join(", ") : x.choices ? `${x.choices.length} categories` : "text";
    const input = x.choices
      ? h("select", { name: x.name }, x.choices.map((c) => h("option", { value: c, selected: String(x.default) === c }, c)))
      : h("input", { name: x.name, type: x.kind === "numeric" ? "number" : "text", step: "any", min: x.min ?? null, max: x.max ?? null, value: x.default ?? "" });
    return h("label", {}, `${x.name} (${hint})`, input);
  });
  const form = h("form", { id: "try-form", onsubmit: async (e) => {
    e.preventDefault();
    const record = {};
    for (const x of f.fields) {
      const v = form.elements[x.name].value;
      record[x.name] = v === "" ? null : x.kind === "numeric" ? Number(v) : v;
    }
    try {
      const a = await api(state.info.predict_url, { method: "POST", body: JSON.stringify({ records: [record], model: f.model }) });
      const probs = (a.probabilities || [])[0] || [];
      out.replaceChildren(h("div", { class: "card" },
        h("div", { class: "muted" }, "answer"),
        h("div", { class: "big", id: "prediction" }, String(a.predictions[0])),
        h("div", {}, "answered by ", h("strong", { id: "answer-version" }, `${a.model} v${a.version}`), h("span", { class: "muted" }, ` · request ${a.request_id}`)),
        probs.length ? barChart((a.classes || []).map(String), [{ name: "probability", color: "#2563eb", values: probs }], { title: "Probabilities", width: 360, height: 180 }) : null,
        probs.length ? h("table", { id: "probabilities" }, (a.classes || []).map((c, i) => h("tr", {}, h("td", {}, String(c)), h("td", { class: "num" }, fmt(probs[i], 4))))) : null));
    } catch (err) { out.replaceChildren(message("err", err.message)); }
  } }, h("div", { class: "tryform" }, inputs), h("p", {}, h("button", { type: "submit" }, "Predict")));
  el.replaceChildren(h("h2", {}, `Try ${f.model} v${f.version}`),
    h("p", { class: "muted" }, "Fields from the model's input schema; ranges and categories from the data contract; defaults are typical values of the reference."),
    h("div", { class: "cols" }, form, out));
}

// ------------------------------------------------------------------ shell
const VIEWS = { models: viewModels, live: viewLive, monitoring: viewMonitoring, actions: viewActions, try: viewTry };

async function render() {
  clearInterval(state.timer);
  const name = (location.hash || "#models").slice(1);
  state.view = VIEWS[name] ? name : "models";
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === state.view));
  const el = document.getElementById("view");
  el.replaceChildren(h("p", { class: "muted" }, "loading …"));
  el.dataset.view = state.view;
  try { await VIEWS[state.view](el); el.dataset.ready = state.view; } catch (err) { fail(el, err); }
}

function whoami() {
  const i = state.info;
  document.getElementById("whoami").textContent = (i.mode === "serve" ? "in flywheel serve" : "flywheel console" + (i.server ? " → " + i.server : "")) +
    (i.auth ? " · token " + (sessionStorage.getItem(TOKEN_KEY) ? "set" : "needed") : "");
}

async function boot() {
  state.info = await fetch("/ui/api/info").then((r) => r.json());
  whoami();
  document.getElementById("login-form").addEventListener("submit", () => {
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("login-token").value.trim());
    whoami();
    render();
  });
  window.onhashchange = render;
  if (state.info.auth && !sessionStorage.getItem(TOKEN_KEY)) {
    askToken("");
    document.getElementById("view").replaceChildren(message("err", "A token is needed to read this console."));
    return;
  }
  render();
}
boot();
