// KeelMQ dashboard: a single page on the HTTP API (/api/v5), no build step, no libraries.
// Every value from the broker is inserted as text (never as HTML).
"use strict";

const API = "/api/v5";
const main = document.getElementById("main");
let token = sessionStorage.getItem("keelmq-token");
let refresh = null;

// h("tag", {attr: value, onclick: fn}, child, ...): an element; strings become text nodes.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(API + path, opts);
  if (r.status === 401) { logout(); throw new Error("logged out"); }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (!r.ok) throw new Error((data && data.message) || r.statusText);
  return data;
}

function table(columns, rows, onclick) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map(c => h("th", {}, c[0])))),
    h("tbody", {}, rows.map(row => h("tr", onclick ? { class: "clickable", onclick: () => onclick(row) } : {},
      columns.map(c => h("td", {}, c[1](row)))))));
}

function page(title, ...content) {
  main.replaceChildren(h("h1", {}, title), ...content);
}

function errorBox(e) { return h("p", { class: "error" }, String(e.message || e)); }

// A line chart of series [{name, color, points: [[time, value], ...]}] as SVG.
function lineChart(id, title, series) {
  const W = 600, H = 180, P = 30;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("id", id);
  const all = series.flatMap(s => s.points);
  const t0 = Math.min(...all.map(p => p[0])), t1 = Math.max(...all.map(p => p[0]));
  const vmax = Math.max(1, ...all.map(p => p[1]));
  const x = t => P + (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5) * (W - 2 * P);
  const y = v => H - P - (v / vmax) * (H - 2 * P);
  let points = 0;
  for (const s of series) {
    const line = document.createElementNS(svg.namespaceURI, "polyline");
    line.setAttribute("points", s.points.map(p => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
    line.setAttribute("stroke", s.color);
    svg.append(line);
    points += s.points.length;
  }
  svg.setAttribute("data-points", String(points));
  const label = document.createElementNS(svg.namespaceURI, "text");
  label.setAttribute("x", 4); label.setAttribute("y", 12);
  label.textContent = "max " + vmax;
  svg.append(label);
  return h("div", { class: "card" }, h("h2", {}, title),
    h("div", { class: "legend" }, series.map(s => h("span", { style: "color:" + s.color }, "● " + s.name))), svg);
}

// A bar chart of histogram buckets [{le, count}] (cumulative) as SVG.
function histogram(id, title, hist, unit) {
  const W = 600, H = 180, P = 30;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("id", id);
  const counts = hist.buckets.map((b, i) => b.count - (i ? hist.buckets[i - 1].count : 0));
  const max = Math.max(1, ...counts);
  const bw = (W - 2 * P) / counts.length;
  counts.forEach((c, i) => {
    const r = document.createElementNS(svg.namespaceURI, "rect");
    const bh = (c / max) * (H - 2 * P);
    r.setAttribute("x", P + i * bw + 2); r.setAttribute("width", bw - 4);
    r.setAttribute("y", H - P - bh); r.setAttribute("height", bh);
    r.setAttribute("fill", "#1f6fd1");
    svg.append(r);
    const t = document.createElementNS(svg.namespaceURI, "text");
    t.setAttribute("x", P + i * bw + 2); t.setAttribute("y", H - 10);
    t.textContent = "≤" + hist.buckets[i].le;
    svg.append(t);
  });
  svg.setAttribute("data-points", String(hist.count));
  return h("div", { class: "card" }, h("h2", {}, `${title} (${hist.count} observations, ${unit})`), svg);
}

function stat(label, value) {
  return h("div", { class: "stat" }, h("div", { class: "value" }, String(value)), h("div", { class: "label" }, label));
}

async function overview() {
  const [stats, current, samples] = await Promise.all([
    api("GET", "/stats?aggregate=true"), api("GET", "/monitor_current"), api("GET", "/monitor?latest=3600")]);
  const series = (key, name, color) => ({ name, color, points: samples.map(s => [s.time_stamp, s[key]]) });
  page("Overview",
    h("div", { class: "stats" },
      stat("Live connections", stats["live_connections.count"]),
      stat("Sessions", stats["sessions.count"]),
      stat("Subscriptions", stats["subscriptions.count"]),
      stat("Retained", stats["retained.count"]),
      stat("Received / s", current.received_msg_rate.toFixed(1)),
      stat("Sent / s", current.sent_msg_rate.toFixed(1)),
      stat("Dropped / s", current.dropped_msg_rate.toFixed(1))),
    h("div", { class: "charts" },
      lineChart("chart-messages", "Messages per sample",
        [series("received", "received", "#1f6fd1"), series("sent", "sent", "#1e8449"), series("dropped", "dropped", "#c0392b")]),
      lineChart("chart-connections", "Connections and subscriptions",
        [series("live_connections", "connected", "#1f6fd1"), series("subscriptions", "subscriptions", "#8e44ad")]),
      lineChart("chart-fsyncs", "WAL fdatasyncs and records per sample",
        [series("fsyncs", "fdatasyncs", "#d35400"), series("wal_records", "records", "#16a085")])));
}

async function clients() {
  const filter = h("input", { id: "client-filter", placeholder: "client id contains…" });
  const list = h("div", { id: "client-list" });
  const detail = h("div", { id: "client-detail" });
  const load = async () => {
    const q = filter.value ? "&like_clientid=" + encodeURIComponent(filter.value) : "";
    const data = await api("GET", "/clients?limit=1000" + q);
    list.replaceChildren(h("p", {}, `${data.meta.count} clients`), table([
      ["Client id", c => c.clientid], ["Username", c => c.username || ""], ["Address", c => c.ip_address ? `${c.ip_address}:${c.port}` : ""],
      ["Connected", c => c.connected ? "yes" : "no"], ["Protocol", c => c.proto_ver], ["Subscriptions", c => c.subscriptions_cnt],
      ["Queued", c => c.mqueue_len], ["In flight", c => c.inflight_cnt]], data.data, c => showClient(c.clientid, detail, load)));
  };
  filter.addEventListener("input", load);
  page("Clients", h("div", { class: "row" }, filter), h("div", { class: "card" }, list), detail);
  await load();
}

async function showClient(id, detail, reload) {
  const path = "/clients/" + encodeURIComponent(id);
  const [c, subs, queue] = await Promise.all([api("GET", path), api("GET", path + "/subscriptions"), api("GET", path + "/mqueue_messages?limit=100")]);
  const kick = h("button", { id: "kick", class: "danger", onclick: async () => {
    await api("DELETE", path); detail.replaceChildren(h("p", { id: "kicked", class: "ok" }, `${id} kicked`)); await reload();
  } }, "Kick");
  detail.replaceChildren(h("div", { class: "card", id: "client-card" },
    h("h2", {}, "Client " + id), kick,
    table([["Field", r => r[0]], ["Value", r => String(r[1])]], Object.entries(c)),
    h("h2", {}, "Subscriptions"), table([["Filter", s => s.topic], ["QoS", s => s.qos]], subs),
    h("h2", {}, `Queue (${queue.meta.count})`), table([["Topic", m => m.topic], ["QoS", m => m.qos], ["Payload (base64)", m => m.payload]], queue.data)));
}

async function subscriptions() {
  const [subs, topics] = await Promise.all([api("GET", "/subscriptions?limit=1000"), api("GET", "/topics?limit=1000")]);
  page("Subscriptions and topics",
    h("div", { class: "card" }, h("h2", {}, `Subscriptions (${subs.meta.count})`),
      table([["Client", s => s.clientid], ["Filter", s => s.topic], ["QoS", s => s.qos], ["No local", s => s.nl], ["Retain handling", s => s.rh]], subs.data)),
    h("div", { class: "card" }, h("h2", {}, `Topics (${topics.meta.count})`), table([["Filter", t => t.topic], ["Node", t => t.node]], topics.data)));
}

async function retained() {
  const data = await api("GET", "/mqtt/retainer/messages?limit=1000");
  page("Retained messages", h("div", { class: "card" }, table([
    ["Topic", m => m.topic], ["QoS", m => m.qos], ["Bytes", m => m.payload_size], ["From", m => m.from_clientid || ""],
    ["", m => h("button", { class: "danger", onclick: async () => {
      await api("DELETE", "/mqtt/retainer/message/" + encodeURIComponent(m.topic)); await retained(); } }, "Delete")]], data.data)));
}

async function rules() {
  const data = await api("GET", "/rules");
  const sql = h("textarea", { id: "rule-sql", rows: 3 }, 'SELECT payload.temp AS t, clientid FROM "sensors/#" WHERE payload.temp > 30');
  const context = h("textarea", { id: "rule-context", rows: 3 }, '{"topic": "sensors/1", "clientid": "dev1", "payload": "{\\"temp\\": 35}"}');
  const result = h("pre", { id: "rule-result" });
  const ruleId = h("input", { id: "rule-id", placeholder: "rule id" });
  const test = async () => {
    try { result.textContent = JSON.stringify(await api("POST", "/rule_test", { sql: sql.value, context: JSON.parse(context.value) }), null, 2); }
    catch (e) { result.textContent = "Error: " + e.message; }
  };
  const create = async () => {
    try { await api("POST", "/rules", { id: ruleId.value, sql: sql.value, actions: [{ kind: "console" }] }); await rules(); }
    catch (e) { result.textContent = "Error: " + e.message; }
  };
  page("Rules",
    h("div", { class: "card" }, table([
      ["Id", r => r.id], ["SQL", r => r.sql], ["Enabled", r => r.enable ? "yes" : "no"], ["Matched", r => r.metrics.matched],
      ["Passed", r => r.metrics.passed], ["Failed", r => r.metrics.failed],
      ["", r => h("button", { class: "plain", onclick: async () => { await api("PUT", "/rules/" + encodeURIComponent(r.id), { ...r, enabled: !r.enable, enable: undefined, metrics: undefined }); await rules(); } }, r.enable ? "Disable" : "Enable")],
      ["", r => h("button", { class: "danger", onclick: async () => { await api("DELETE", "/rules/" + encodeURIComponent(r.id)); await rules(); } }, "Delete")]],
      data.data)),
    h("div", { class: "card" }, h("h2", {}, "SQL editor"), h("label", {}, "SQL", sql), h("label", {}, "Test input (JSON)", context),
      h("div", { class: "row" }, h("button", { id: "rule-test", type: "button", onclick: test }, "Test"), ruleId,
        h("button", { id: "rule-create", type: "button", onclick: create }, "Create rule (console action)")), result));
}

function bridgeTable(kind, list) {
  return table([
    ["Name", b => b.name], ["Type", b => b.type], ["Status", b => h("span", { class: "status-" + b.status }, b.status)],
    ["Last error", b => b.status_reason || ""], ["Matched", b => b.metrics.matched], ["Success", b => b.metrics.success],
    ["Failed", b => b.metrics.failed], ["Queuing", b => b.metrics.queuing], ["In flight", b => b.metrics.inflight],
    ["Retried", b => b.metrics.retried], ["Dropped", b => b.metrics.dropped],
    ["", b => kind !== "sinks" ? "" : h("span", {},
      h("button", { class: "plain", onclick: async () => { await api("PUT", `/sinks/${encodeURIComponent(b.name)}/enable/false`); await bridges(); } }, "Disable"), " ",
      h("button", { class: "plain", onclick: async () => { await api("PUT", `/sinks/${encodeURIComponent(b.name)}/enable/true`); await bridges(); } }, "Enable"), " ",
      h("button", { onclick: async () => { await api("POST", `/sinks/${encodeURIComponent(b.name)}/restart`); await bridges(); } }, "Restart"))]], list);
}

async function bridges() {
  const [sinks, sources] = await Promise.all([api("GET", "/sinks"), api("GET", "/sources")]);
  page("Bridges", h("div", { class: "card" }, h("h2", {}, "Sinks"), bridgeTable("sinks", sinks)),
    h("div", { class: "card" }, h("h2", {}, "Sources"), bridgeTable("sources", sources)));
}

async function access() {
  const usersPath = "/authentication/password_based:password_file/users";
  const users = h("div", {}), acl = h("div", {});
  try {
    const list = await api("GET", usersPath);
    const name = h("input", { placeholder: "user" }), pw = h("input", { type: "password", placeholder: "password" });
    users.replaceChildren(table([["User", u => u.user_id],
      ["", u => h("button", { class: "danger", onclick: async () => { await api("DELETE", usersPath + "/" + encodeURIComponent(u.user_id)); await access(); } }, "Delete")]], list.data),
      h("div", { class: "row" }, name, pw, h("button", { onclick: async () => { await api("POST", usersPath, { user_id: name.value, password: pw.value }); await access(); } }, "Add user")));
  } catch (e) { users.replaceChildren(errorBox(e)); }
  try {
    const file = await api("GET", "/authorization/sources/file");
    const text = h("textarea", { rows: 12 }, file.rules);
    const said = h("p", {});
    acl.replaceChildren(text, h("button", { onclick: async () => {
      try { await api("PUT", "/authorization/sources/file", { rules: text.value }); said.className = "ok"; said.textContent = "Saved"; }
      catch (e) { said.className = "error"; said.textContent = e.message; } } }, "Save ACL"), said);
  } catch (e) { acl.replaceChildren(errorBox(e)); }
  page("Access", h("div", { class: "card" }, h("h2", {}, "Password file users"), users),
    h("div", { class: "card" }, h("h2", {}, "ACL"), acl));
}

async function durability() {
  const [d, sinks] = await Promise.all([api("GET", "/durability"), api("GET", "/sinks")]);
  const c = d.checkpoint, w = d.wal;
  page("Durability",
    h("p", {}, `Acknowledgements wait for fdatasync (sync = ${d.sync}). Records not yet durable: ${w.records_not_durable}.`),
    h("div", { class: "stats" }, stat("fdatasyncs", w.fsyncs), stat("Records", w.records),
      stat("Records per fdatasync", w.fsyncs ? (w.records / w.fsyncs).toFixed(1) : "–"),
      stat("Checkpoints", c.written), stat("Last checkpoint", c.last_at || "none"), stat("Last checkpoint ms", c.last_ms)),
    h("div", { class: "charts" },
      histogram("hist-fsync", "fdatasync latency", w.fsync_latency_us, "µs"),
      histogram("hist-group", "Records per fdatasync (group commit)", w.records_per_fsync, "records")),
    h("div", { class: "card" }, h("h2", {}, "Recovery at the last start"),
      table([["Field", r => r[0]], ["Value", r => String(r[1])]], Object.entries(d.recovery || {}))),
    h("div", { class: "card" }, h("h2", {}, "Sinks' backlogs"),
      table([["Sink", s => s.name], ["Queued", s => s.metrics.queuing], ["In flight", s => s.metrics.inflight], ["Status", s => s.status]], sinks)));
}

const pages = { overview, clients, subscriptions, retained, rules, bridges, access, durability };

async function route() {
  if (refresh) { clearInterval(refresh); refresh = null; }
  if (!token) return showLogin();
  document.getElementById("nav").hidden = false;
  const name = (location.hash || "#overview").slice(1);
  document.querySelectorAll("nav a").forEach(a => a.classList.toggle("active", a.getAttribute("href") === "#" + name));
  const show = pages[name] || overview;
  try { await show(); } catch (e) { main.append(errorBox(e)); }
  if (show === overview) refresh = setInterval(() => { if (location.hash === "" || location.hash === "#overview") overview().catch(() => {}); }, 10000);
}

function showLogin() {
  document.getElementById("nav").hidden = true;
  const form = h("form", { id: "login", class: "card narrow" },
    h("h1", {}, "Log in"),
    h("label", {}, "User ", h("input", { id: "username", value: "admin", autocomplete: "username" })),
    h("label", {}, "Password ", h("input", { id: "password", type: "password", autocomplete: "current-password" })),
    h("button", { id: "login-button", type: "submit" }, "Log in"),
    h("p", { id: "login-error", class: "error" }));
  form.addEventListener("submit", login);
  main.replaceChildren(form);
}

async function login(ev) {
  ev.preventDefault();
  const r = await fetch(API + "/login", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: document.getElementById("username").value, password: document.getElementById("password").value }) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) { document.getElementById("login-error").textContent = data.message || "login failed"; return; }
  token = data.token;
  sessionStorage.setItem("keelmq-token", token);
  route();
}

function logout() {
  if (token) fetch(API + "/logout", { method: "POST", headers: { Authorization: "Bearer " + token } }).catch(() => {});
  token = null;
  sessionStorage.removeItem("keelmq-token");
  route();
}

document.getElementById("logout").addEventListener("click", logout);
window.addEventListener("hashchange", route);
route();
