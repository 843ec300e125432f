// evguard dashboard, live page: polls the JSON API and redraws; no framework, no external
// assets. Helpers (el, $, clock, num, getJSON, svg, ...) are in common.js.
"use strict";

const FEED_EVERY_MS = 1500;
const OVERVIEW_EVERY_MS = 3000;
const FEED_ROWS = 60;
let lastId = 0;
let feedLoaded = false;

// ---- live feed --------------------------------------------------------------
function explanationChips(items) {
  return (items || []).slice(0, 3).map((e) => e.rule
    ? el("span", { class: "chip rule", title: `breaks the rule: ${e.rule}` },
      `${e.feature} ${num(e.value)} `, el("i", {}, "rule"))
    : el("span", { class: "chip", title: `contribution ${num(e.contribution)}` },
      `${e.feature} ${num(e.value)} `, el("i", {}, `typ ${num(e.typical)}`)));
}

function feedRow(r, fresh) {
  return el("tr", {
      class: (r.is_anomaly ? "anomaly" : "normal") + (fresh ? " fresh" : ""),
      "data-session": r.session_id, "data-score-id": r.id,
      title: `session ${r.session_id} · model v${r.model_version}`,
    },
    el("td", {}, clock(r.scored_ts)),
    el("td", {}, r.station_id),
    el("td", {}, r.site_id),
    el("td", {}, `${num(r.score)} / ${num(r.threshold)}`),
    el("td", {}, r.kwh_delivered === null ? "–" : Number(r.kwh_delivered).toFixed(1)),
    el("td", {}, ...(r.is_anomaly ? explanationChips(r.explanation) : [])));
}

async function pollFeed() {
  try {
    const data = await getJSON(`/api/feed?after_id=${lastId}&limit=50`);
    const body = $("feed-body");
    const rows = data.scores.slice().reverse(); // oldest first, each inserted on top
    for (const r of rows) body.insertBefore(feedRow(r, feedLoaded), body.firstChild);
    while (body.children.length > FEED_ROWS) body.removeChild(body.lastChild);
    if (!body.children.length) {
      body.append(el("tr", { class: "empty-row" }, el("td", { class: "empty", colSpan: 6 },
        "no scored sessions yet: start the worker and the monitoring consumer")));
    } else {
      for (const e of body.querySelectorAll("tr.empty-row")) e.remove();
    }
    lastId = data.last_id;
    feedLoaded = true;
    setStatus(true, `live · updated ${clock(Date.now() / 1000)}`);
  } catch (err) {
    setStatus(false, "dashboard API unreachable");
  }
}

// ---- chart --------------------------------------------------------------------
// smallest of 1, 2, 2.5, 5 × 10^k that is >= v, so four grid steps read well
function niceCeil(v) {
  const mag = 10 ** Math.floor(Math.log10(v));
  for (const f of [1, 2, 2.5, 5, 10]) if (f * mag >= v - 1e-12) return f * mag;
  return 10 * mag;
}

function drawChart(series) {
  const chart = $("chart");
  chart.replaceChildren();
  const W = 960, H = 220, L = 44, R = 48, T = 10, B = 24;
  const n = series.length;
  if (!n) return;
  const peak = Math.max(1, ...series.map((p) => p.volume));
  const maxVol = peak <= 12 ? 4 * Math.ceil(peak / 4) : niceCeil(peak); // whole-number grid
  const rates = series.map((p) => p.rate).filter((r) => r !== null);
  const maxRate = Math.min(1, niceCeil(Math.max(0.05, ...rates)));
  const step = (W - L - R) / n;
  const y = (v) => T + (H - T - B) * (1 - v / maxVol);
  const yr = (v) => T + (H - T - B) * (1 - v / maxRate);
  for (let i = 0; i <= 4; i++) {
    const gy = T + ((H - T - B) * i) / 4;
    chart.append(svg("line", { x1: L, x2: W - R, y1: gy, y2: gy, stroke: "#eef1f5" }));
    const label = svg("text", { x: L - 6, y: gy + 4, "text-anchor": "end" });
    label.textContent = +(maxVol * (1 - i / 4)).toFixed(2);
    chart.append(label);
    const rlabel = svg("text", { x: W - R + 6, y: gy + 4 });
    rlabel.textContent = `${+(100 * maxRate * (1 - i / 4)).toFixed(1)}%`;
    chart.append(rlabel);
  }
  series.forEach((p, i) => {
    if (p.volume > 0) {
      const bar = svg("rect", { x: L + i * step + 1, y: y(p.volume), width: Math.max(1, step - 2),
        height: H - B - y(p.volume), fill: "#9db4e8" });
      const tip = svg("title", {});
      tip.textContent = `${clock(p.ts)}: ${p.volume} sessions, ${p.anomalies} anomalies`;
      bar.append(tip);
      chart.append(bar);
    }
    if (i % 10 === 0) {
      const t = svg("text", { x: L + i * step, y: H - 6 });
      t.textContent = clock(p.ts).slice(0, 5);
      chart.append(t);
    }
  });
  const pts = series.map((p, i) => (p.rate === null ? null : `${L + (i + 0.5) * step},${yr(p.rate)}`));
  let path = "";
  let pen = false;
  for (const pt of pts) {
    if (pt === null) { pen = false; continue; }
    path += (pen ? " L" : " M") + pt;
    pen = true;
  }
  if (path) chart.append(svg("path", { d: path, fill: "none", stroke: "#d92d20", "stroke-width": 2 }));
  series.forEach((p, i) => {
    if (p.rate !== null && p.anomalies > 0) {
      chart.append(svg("circle", { cx: L + (i + 0.5) * step, cy: yr(p.rate), r: 2.5, fill: "#d92d20" }));
    }
  });
}

// ---- cards --------------------------------------------------------------------
function drawCards(o) {
  const t = o.totals;
  $("sessions-total").textContent = int(t.sessions);
  $("sessions-hour").textContent = int(t.sessions_hour);
  $("anomalies-total").textContent = int(t.anomalies);
  $("anomaly-rate").textContent = pct(t.anomaly_rate_hour);
  $("alerts-open").textContent = `${int(t.alerts_unacknowledged)} open`;
  const a = t.alerts || {};
  const dl = Object.values(t.dead_letters || {}).reduce((x, y) => x + y, 0);
  $("alerts-states").textContent = `${a.sent || 0} emailed · ${a.suppressed || 0} de-duplicated · ` +
    `${(a.retrying || 0) + (a.pending || 0)} retrying · ${a.dead_lettered || 0} failed · ${dl} poison`;

  const w = o.worker || {};
  if (w.state === "up") {
    $("worker-throughput").textContent = w.throughput === null || w.throughput === undefined
      ? `${int(w.scored)} scored` : `${w.throughput.toFixed(1)} /s`;
    $("worker-detail").textContent = `lag ${int(w.lag)} · DLQ ${int(w.dead_lettered || 0)} · ` +
      `model v${w.model_version || "?"}` + (w.paused ? " · paused" : "");
  } else {
    $("worker-throughput").textContent = "not reachable";
    $("worker-detail").textContent = `no metrics at ${w.url || "?"}`;
  }

  const c = o.champion || {};
  const metrics = $("champion-metrics");
  metrics.replaceChildren();
  if (c.state === "ok") {
    $("champion-version").textContent = `${c.name} v${c.version}`;
    $("champion-detail").textContent = `promoted ${ago(c.promoted_ts)}` +
      (c.decision_reason ? ` · ${c.decision_reason}` : "");
    for (const [k, v] of Object.entries(c.metrics || {}).slice(0, 8)) {
      metrics.append(el("span", {}, `${k} `, el("b", {}, num(v))));
    }
    const t = c.threshold || {};
    if (t.calibrated_at) {  // re-calibrated by monitoring from recent scores
      metrics.append(el("span", {id: "champion-threshold"}, "threshold ", el("b", {}, num(t.served)),
        ` re-calibrated ${ago(Date.parse(t.calibrated_at) / 1000)} from ${t.window || "?"} ` +
        `scores (trained ${num(t.trained)})`));
    }
  } else {
    $("champion-version").textContent = c.state === "loading" ? "loading…" : "no champion";
    $("champion-detail").textContent = c.detail || "";
  }
  if (o.links) {
    $("link-prefect").href = o.links.prefect;
    $("link-mlflow").href = o.links.mlflow;
  }
}

// ---- alerts, stations, window ---------------------------------------------------------
async function acknowledge(id, button) {
  button.disabled = true;
  try {
    await act(`/api/alerts/${id}/ack`);
    $("alerts-hint").textContent = "";
    await pollOverview();
  } catch (err) {
    $("alerts-hint").textContent = `not acknowledged: ${err.message}`;
    button.disabled = false;
  }
}

function drawAlerts(alerts) {
  const body = $("alerts-body");
  body.replaceChildren();
  if (!alerts.length) body.append(el("tr", {}, el("td", { class: "empty", colSpan: 5 }, "no alerts")));
  for (const a of alerts) {
    const acked = a.acknowledged_ts !== null;
    const action = a.state === "suppressed" ? "" : acked
      ? el("span", { class: "acked-label" }, "✓ acknowledged")
      : el("button", { class: "ack", onclick: (ev) => acknowledge(a.id, ev.target) }, "Acknowledge");
    const delivery = a.state === "retrying"
      ? `retrying (${a.attempts})` : a.state === "dead_lettered" ? "failed → DLQ" : a.state.replace("_", " ");
    body.append(el("tr", {
        class: `${a.state}${acked ? " acked" : ""}`, "data-alert-id": a.id, "data-session": a.session_id,
        title: a.last_error || `score ${num(a.score)} vs threshold ${num(a.threshold)}`,
      },
      el("td", {}, clock(a.created_ts)),
      el("td", {}, `${a.station_id} `, el("span", { class: "hint" }, a.site_id)),
      el("td", {}, el("span", { class: `sev ${a.severity}` }, a.severity)),
      el("td", {}, el("span", { class: `state ${a.state}` }, delivery)),
      el("td", {}, action)));
  }
}

function drawStations(rows) {
  const body = $("stations-body");
  body.replaceChildren();
  if (!rows.length) body.append(el("tr", {}, el("td", { class: "empty", colSpan: 6 }, "no sessions in the last 24 h")));
  for (const s of rows) {
    const la = s.last_alert;
    body.append(el("tr", { "data-station": s.station_id },
      el("td", {}, s.station_id),
      el("td", {}, s.site_id),
      el("td", {}, int(s.sessions)),
      el("td", { class: s.anomalies ? "bad" : "" }, int(s.anomalies)),
      el("td", {}, pct(s.rate)),
      el("td", {}, la ? el("span", {}, el("span", { class: `sev ${la.severity}` }, la.severity), ` ${ago(la.ts)}`) : "–",
        s.suppressed ? el("span", { class: "hint" }, ` +${s.suppressed} de-duplicated`) : null)));
  }
}

function drawWindow(w) {
  const body = $("drift-body");
  body.replaceChildren();
  if (!w) return;
  const r = w.retrain || {};
  const summary = $("window-summary");
  summary.replaceChildren(
    el("b", {}, int(w.volume)), " sessions · anomaly rate ", el("b", {}, pct(w.anomaly_rate)),
    " · score p50/p99 ", el("b", {}, `${num((w.score_quantiles || {}).p50)} / ${num((w.score_quantiles || {}).p99)}`),
    " · latency p99 ", el("b", {}, `${int((w.latency_ms || {}).p99)} ms`),
    el("br", {}), "retraining: ", el("b", {}, r.state || "–"), r.reason ? ` (${r.reason})` : "");
  $("window-hint").textContent = `${clock(w.start_ts)} → ${clock(w.end_ts)}`;
  if (!w.drift) {
    body.append(el("tr", {}, el("td", { class: "empty", colSpan: 5 }, "no drift reference (no champion yet)")));
    return;
  }
  for (const c of w.drift.columns) {
    const width = Math.min(120, Math.round(120 * (c.psi || 0) / Math.max(0.5, w.drift.psi_threshold * 2)));
    body.append(el("tr", { "data-column": c.name, class: c.drifted ? "drifted" : "" },
      el("td", {}, c.name), el("td", {}, num(c.psi)),
      el("td", {}, el("span", { class: "bar" + (c.drifted ? " drifted" : ""), style: `width:${width}px` }),
        c.drifted ? el("b", { class: "drift-flag" }, " drifted") : c.ignored ? el("span", { class: "hint" }, " not judged") : ""),
      el("td", {}, num(c.ks)), el("td", {}, int(c.n_current))));
  }
}

async function pollOverview() {
  try {
    const o = await getJSON("/api/overview");
    drawCards(o);
    drawChart(o.series);
    drawAlerts(o.alerts);
    drawStations(o.stations);
    drawWindow(o.window);
  } catch (err) {
    setStatus(false, "dashboard API unreachable");
  }
}

pollFeed();
pollOverview();
setInterval(pollFeed, FEED_EVERY_MS);
setInterval(pollOverview, OVERVIEW_EVERY_MS);
