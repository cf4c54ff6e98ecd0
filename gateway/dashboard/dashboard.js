// Operator dashboard: lists campaigns, polls one campaign's live view every second,
// draws two charts on canvas, and tunes or ends the sale through the operator API.
// No library, no request to any other host.
"use strict";

const TOKEN_KEY = "flashsale.admin-token";
const POLL_MS = 1000;
const HISTORY = 300; // points kept per chart (5 minutes at 1 s)
const COLORS = ["#2458d3", "#e07b00", "#2a9d4b", "#c62b2b", "#7a3fc4", "#00838f", "#8d6e63", "#5b6470"];

const $ = (id) => document.getElementById(id);
let selected = null;
let timer = null;
let previous = null; // the last live reading, for rates
let nextCursor = null;
const series = { units: [], answers: [] };
const LATENCY_WINDOW_S = 10;
let latencyHistory = []; // cumulative latency buckets of the last LATENCY_WINDOW_S

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.style.display = message ? "block" : "none";
}

function showNotice(message) {
  const box = $("notice");
  box.textContent = message;
  box.style.display = message ? "block" : "none";
  if (message) setTimeout(() => { if (box.textContent === message) showNotice(""); }, 4000);
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: Object.assign({ Authorization: "Bearer " + token() }, body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
    cache: "no-store",
  });
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (res.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken("The admin token was refused.");
    throw new Error("unauthenticated");
  }
  if (!res.ok) {
    const e = data && data.error ? data.error : { code: String(res.status), message: res.statusText };
    const err = new Error(e.message + " (" + e.code + ")");
    err.code = e.code;
    throw err;
  }
  return data;
}

function askToken(message) {
  stopPolling();
  $("login").hidden = false;
  $("list").hidden = $("detail").hidden = $("tune").hidden = true;
  $("who").textContent = "";
  showError(message || "");
  $("token").focus();
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  start();
});

function sum(items, field) { return items.reduce((a, i) => a + i[field], 0); }
function fmt(n) { return n == null ? "–" : Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 }); }
function fmtMs(s) { return s == null ? "–" : (s * 1000 < 10 ? (s * 1000).toFixed(2) : (s * 1000).toFixed(1)) + " ms"; }
function cell(tr, text) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); return td; }

async function loadCampaigns(more) {
  const path = "/admin/v1/campaigns?limit=50" + (more && nextCursor ? "&cursor=" + encodeURIComponent(nextCursor) : "");
  const page = await api("GET", path);
  const body = $("campaigns");
  if (!more) body.textContent = "";
  for (const c of page.campaigns) {
    const tr = document.createElement("tr");
    tr.dataset.campaign = c.campaign_id;
    if (c.campaign_id === selected) tr.classList.add("selected");
    [c.campaign_id, c.name, c.restoring ? c.status + " (restoring)" : c.status, c.starts_at, c.ends_at]
      .forEach((v) => cell(tr, v));
    ["available", "reserved", "sold"].forEach((f) => cell(tr, fmt(sum(c.items, f))));
    tr.addEventListener("click", () => select(c.campaign_id));
    body.appendChild(tr);
  }
  nextCursor = page.next || null;
  $("more").hidden = !nextCursor;
}

$("more").addEventListener("click", () => loadCampaigns(true).catch((e) => showError(e.message)));

async function loadDeadLetters() {
  const page = await api("GET", "/admin/v1/dead-letters?limit=50");
  const body = $("dead-letters");
  body.textContent = "";
  for (const d of page.orders) {
    const tr = document.createElement("tr");
    [d.order_id, d.campaign_id, d.reason, d.at].forEach((v) => cell(tr, v));
    body.appendChild(tr);
  }
  $("dead-none").hidden = page.orders.length > 0;
  $("replay-all").hidden = page.orders.length === 0;
}

$("replay-all").addEventListener("click", async () => {
  try {
    const r = await api("POST", "/admin/v1/dead-letters/replay", {});
    showNotice("Sent back " + r.replayed + " dead-lettered orders to be applied.");
    await loadDeadLetters();
  } catch (e) {
    showError("Not sent back: " + e.message);
  }
});

function select(id) {
  selected = id;
  previous = null;
  series.units = [];
  series.answers = [];
  latencyHistory = [];
  history.replaceState(null, "", "#campaign=" + encodeURIComponent(id));
  for (const tr of document.querySelectorAll("tr[data-campaign]")) tr.classList.toggle("selected", tr.dataset.campaign === id);
  $("detail").hidden = $("tune").hidden = false;
  $("detail-title").textContent = id;
  showError("");
  stopPolling();
  poll(true);
  timer = setInterval(poll, POLL_MS);
  loadChanges().catch((e) => showError("Changes: " + e.message));
}

function stopPolling() { if (timer) clearInterval(timer); timer = null; }

async function loadChanges() {
  if (!selected) return;
  const h = await api("GET", "/admin/v1/campaigns/" + encodeURIComponent(selected) + "/history");
  const body = $("change-rows");
  body.textContent = "";
  for (const c of h.changes) {
    const tr = document.createElement("tr");
    [c.at, c.operator, c.action, c.before == null ? "–" : JSON.stringify(c.before), JSON.stringify(c.after)]
      .forEach((v) => cell(tr, v));
    body.appendChild(tr);
  }
  $("changes").hidden = false;
}

// The quantile of the latency observed between two cumulative bucket readings.
function quantile(q, le, now, before) {
  const counts = now.map((c, i) => c - (before ? before[i] : 0));
  const total = counts[counts.length - 1];
  if (!total) return null;
  const rank = q * total;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] >= rank) {
      const lo = i ? le[i - 1] : 0, below = i ? counts[i - 1] : 0, inBucket = counts[i] - below;
      return lo + (le[i] - lo) * (inBucket ? (rank - below) / inBucket : 1);
    }
  }
  return le[le.length - 1];
}

let fillForm = true;

let polls = 0;

async function poll(first) {
  if (!selected) return;
  if (++polls % 5 === 0) loadCampaigns(false).catch(() => {}); // the list's counters too
  let live;
  try {
    live = await api("GET", "/admin/v1/campaigns/" + encodeURIComponent(selected) + "/live");
  } catch (e) {
    if (e.message !== "unauthenticated") showError("Live view: " + e.message);
    return;
  }
  const c = live.campaign;
  const t = Date.parse(live.at) / 1000;
  $("t-status").textContent = c.status;
  $("t-backlog").textContent = fmt(live.outbox_backlog);
  $("t-behind").textContent = fmt(live.mysql_units_behind);
  $("t-recon").textContent = live.mysql_consistent ? "consistent" : "catching up";
  const g = live.gateway;
  const answers = Object.assign({}, g.reservations);
  if (previous && t > previous.t) {
    const dt = t - previous.t;
    const rate = (now, before, key) => Math.max(0, ((now[key] || 0) - (before[key] || 0)) / dt);
    $("t-orders").textContent = fmt(rate(answers, previous.answers, "reserved"));
    $("t-soldout").textContent = fmt(rate(answers, previous.answers, "sold_out"));
    $("t-429").textContent = fmt(rate(g.http_status, previous.status, "429"));
    $("t-503").textContent = fmt(rate(g.http_status, previous.status, "503"));
    // Latency over the last ~10 s: one second holds too few requests when it is quiet.
    const base = latencyHistory.find((r) => t - r.t <= LATENCY_WINDOW_S) || previous;
    $("t-p50").textContent = fmtMs(quantile(0.5, g.reserve_latency_le, g.reserve_latency_counts, base.latency));
    $("t-p99").textContent = fmtMs(quantile(0.99, g.reserve_latency_le, g.reserve_latency_counts, base.latency));
    const perOutcome = {};
    for (const k of new Set([...Object.keys(answers), ...Object.keys(previous.answers)])) perOutcome[k] = rate(answers, previous.answers, k);
    push(series.answers, { t, values: perOutcome });
  }
  previous = { t, answers, status: Object.assign({}, g.http_status), latency: g.reserve_latency_counts.slice() };
  latencyHistory.push({ t, latency: previous.latency });
  while (latencyHistory.length && t - latencyHistory[0].t > LATENCY_WINDOW_S) latencyHistory.shift();
  push(series.units, { t, values: { sold: sum(c.items, "sold"), reserved: sum(c.items, "reserved"), available: sum(c.items, "available") } });

  const body = $("skus");
  body.textContent = "";
  for (const i of c.items) {
    const tr = document.createElement("tr");
    tr.dataset.sku = i.sku_id;
    [i.sku_id, (i.price_cents / 100).toFixed(2), fmt(i.stock_total)].forEach((v) => cell(tr, v));
    cell(tr, fmt(i.available)).className = "available";
    cell(tr, fmt(i.reserved)).className = "reserved";
    cell(tr, fmt(i.sold)).className = "sold";
    body.appendChild(tr);
  }
  if (first || fillForm) {
    $("tune-max-orders").value = c.thresholds.max_orders_per_sec ?? "";
    $("tune-max-user").value = c.thresholds.max_user_requests_per_sec ?? "";
    $("tune-limit").value = c.per_user_limit;
    fillForm = false;
  }
  draw("units-chart", "units-legend", series.units);
  draw("answers-chart", "answers-legend", series.answers);
}

function push(list, point) { list.push(point); if (list.length > HISTORY) list.shift(); }

function draw(canvasId, legendId, points) {
  const canvas = $(canvasId), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 34;
  ctx.clearRect(0, 0, w, h);
  const keys = [...new Set(points.flatMap((p) => Object.keys(p.values)))].sort();
  const legend = $(legendId);
  legend.textContent = "";
  keys.forEach((k, i) => {
    const s = document.createElement("span");
    const sw = document.createElement("i");
    sw.style.background = COLORS[i % COLORS.length];
    s.appendChild(sw);
    s.appendChild(document.createTextNode(k));
    legend.appendChild(s);
  });
  if (points.length < 2) return;
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const max = Math.max(1, ...points.flatMap((p) => Object.values(p.values)));
  ctx.strokeStyle = "#d5d9de";
  ctx.fillStyle = "#5b6470";
  ctx.font = "11px system-ui";
  for (let i = 0; i <= 4; i++) {
    const y = h - pad + ((pad * 2 - h) * i) / 4 + 0;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w - 6, y); ctx.stroke();
    ctx.fillText(fmt((max * i) / 4), 2, y - 2);
  }
  keys.forEach((k, i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, j) => {
      const x = pad + ((w - pad - 6) * (p.t - t0)) / Math.max(1e-9, t1 - t0);
      const y = h - pad - ((h - 2 * pad) * (p.values[k] || 0)) / max;
      if (j) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
  });
}

function optionalCount(id, name) {
  const v = $(id).value.trim();
  if (v === "") return null;
  if (!/^[0-9]+$/.test(v)) throw new Error(name + " must be a whole number or empty");
  return Number(v);
}

$("tune-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  try {
    const limit = $("tune-limit").value.trim();
    if (!/^-?[0-9]+$/.test(limit)) throw new Error("per-user limit must be a whole number");
    const body = {
      per_user_limit: Number(limit),
      thresholds: {
        max_orders_per_sec: optionalCount("tune-max-orders", "max orders / s"),
        max_user_requests_per_sec: optionalCount("tune-max-user", "max requests / s per user"),
      },
    };
    await api("PATCH", "/admin/v1/campaigns/" + encodeURIComponent(selected), body);
    showNotice("Tuned " + selected + ".");
    loadChanges().catch(() => {});
    fillForm = true;
    poll();
  } catch (e) {
    showError("Not changed: " + e.message);
  }
});

$("end-now").addEventListener("click", async () => {
  if (!selected || !confirm("End " + selected + " now? Nobody can order after this.")) return;
  showError("");
  try {
    await api("PATCH", "/admin/v1/campaigns/" + encodeURIComponent(selected), { ends_at: new Date().toISOString() });
    showNotice("Ended " + selected + ".");
    loadChanges().catch(() => {});
    poll();
    loadCampaigns(false).catch(() => {});
  } catch (e) {
    showError("Not ended: " + e.message);
  }
});

async function start() {
  if (!token()) return askToken();
  $("login").hidden = true;
  $("list").hidden = false;
  $("who").textContent = "operator";
  showError("");
  try {
    await loadCampaigns(false);
  } catch (e) {
    if (e.message !== "unauthenticated") showError("Campaigns: " + e.message);
    return;
  }
  $("dead").hidden = false;
  loadDeadLetters().catch((e) => showError("Dead letters: " + e.message));
  const m = /campaign=([^&]+)/.exec(location.hash);
  if (m) select(decodeURIComponent(m[1]));
}

start();
