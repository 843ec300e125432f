// evguard station view: polls /api/stations and redraws the table; helpers in common.js.
"use strict";

const STATIONS_EVERY_MS = 10000;
const HEALTH_RANK = { silent: 0, failing: 1, degraded: 2, ok: 3 };
let stationData = null;
let sortBy = { key: "health", descending: false }; // the server's order: unhealthy first

function utc(ts) {
  if (ts === null || ts === undefined) return "–";
  return new Date(ts * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

function before(ts, asOf) {
  if (ts === null || ts === undefined) return "";
  const h = Math.max(0, asOf - ts) / 3600;
  return h < 48 ? `${h.toFixed(h < 10 ? 1 : 0)} h before` : `${(h / 24).toFixed(1)} d before`;
}

function ratio(s) {
  return s.expected_7d ? s.observed_7d / s.expected_7d : Infinity;
}

const SORT_KEYS = {
  station: (s) => s.station_id,
  health: (s) => [HEALTH_RANK[s.health], ratio(s)],
  last: (s) => s.last_session_ts ?? -Infinity,
  observed: (s) => ratio(s),
  power: (s) => (s.power.length ? s.power[s.power.length - 1].kw : -Infinity),
};

function compare(a, b) {
  const x = Array.isArray(a) ? a : [a];
  const y = Array.isArray(b) ? b : [b];
  for (let i = 0; i < x.length; i++) {
    if (x[i] < y[i]) return -1;
    if (x[i] > y[i]) return 1;
  }
  return 0;
}

function sparkline(points) {
  const W = 150, H = 30, P = 3;
  const chart = svg("svg", { class: "spark", viewBox: `0 0 ${W} ${H}`, width: W, height: H,
    "data-points": points.length, role: "img" });
  if (!points.length) return chart;
  const peak = Math.max(0.1, ...points.map((p) => p.kw));
  const x = (i) => (points.length === 1 ? W / 2 : P + (i * (W - 2 * P)) / (points.length - 1));
  const y = (kw) => H - P - ((H - 2 * P) * kw) / peak;
  chart.append(svg("polyline", { points: points.map((p, i) => `${x(i)},${y(p.kw)}`).join(" "),
    fill: "none", stroke: "#2563eb", "stroke-width": 1.5 }));
  points.forEach((p, i) => {
    if (p.anomaly) chart.append(svg("circle", { cx: x(i), cy: y(p.kw), r: 2.5, fill: "#d92d20" }));
  });
  const last = points[points.length - 1];
  chart.append(svg("circle", { cx: x(points.length - 1), cy: y(last.kw), r: 2, fill: "#0f1c2e" }));
  const tip = svg("title", {});
  const kws = points.map((p) => p.kw);
  tip.textContent = `avg kW of the last ${points.length} sessions: ${num(Math.min(...kws))}–` +
    `${num(peak)}, last ${num(last.kw)}`;
  chart.append(tip);
  return chart;
}

function alertItems(alerts, asOf) {
  if (!alerts.length) return [el("span", { class: "hint" }, "none")];
  return alerts.map((a) => el("div", { class: "station-alert", "data-alert-id": a.alert_id,
      "data-kind": a.kind },
    el("span", { class: `health ${a.kind}` }, a.kind), " ",
    el("span", { class: "evidence" }, a.evidence), " ",
    el("span", { class: "hint" }, `since ${utc(a.opened_ts)}` +
      (a.notice ? ` · ${a.notice === "sent" ? "emailed" : a.notice.replace("_", " ")}` : ""))));
}

function observedCell(s) {
  if (s.expected_7d === null) {
    return el("td", { class: "observed", title: `${s.history_days.toFixed(1)} days of history` },
      `${int(s.observed_7d)} / `, el("span", { class: "hint" }, "too little history"));
  }
  const low = s.observed_7d < s.expected_7d / 2;
  return el("td", { class: "observed" + (low ? " bad" : ""),
      title: `expected from ${s.history_days.toFixed(0)} days of its own history` },
    `${int(s.observed_7d)} / ${s.expected_7d.toFixed(1)}`);
}

function drawStations() {
  const d = stationData;
  if (!d) return;
  const body = $("station-rows");
  const rows = d.stations.slice();
  const key = SORT_KEYS[sortBy.key];
  rows.sort((a, b) => compare(key(a), key(b)) * (sortBy.descending ? -1 : 1));
  body.replaceChildren();
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { class: "empty", colSpan: 6 },
      "no stations yet: the monitoring consumer stores them as sessions are scored")));
  }
  for (const s of rows) {
    body.append(el("tr", { "data-station": s.station_id, "data-health": s.health,
        class: s.health === "ok" ? "healthy" : "unhealthy" },
      el("td", {}, `${s.station_id} `, el("span", { class: "hint" }, s.site_id)),
      el("td", {}, el("span", { class: `health ${s.health}` }, s.health)),
      el("td", { class: "last-session" }, utc(s.last_session_ts), el("br", {}),
        el("span", { class: "hint" }, before(s.last_session_ts, d.as_of))),
      observedCell(s),
      el("td", { class: "power" }, sparkline(s.power),
        s.power.length ? el("span", { class: "hint" }, ` ${num(s.power[s.power.length - 1].kw)} kW`) : ""),
      el("td", { class: "alerts-cell" }, ...alertItems(s.open_alerts, d.as_of))));
  }
  for (const th of document.querySelectorAll("#station-table th[data-sort]")) {
    th.classList.toggle("sorted", th.dataset.sort === sortBy.key);
    th.classList.toggle("descending", th.dataset.sort === sortBy.key && sortBy.descending);
  }
}

function drawCards(d) {
  $("stations-total").textContent = int(d.total);
  $("as-of").textContent = `as of ${utc(d.as_of)}`;
  for (const state of ["ok", "silent", "failing", "degraded"]) {
    $(`count-${state}`).textContent = int(d.health[state]);
  }
  $("stations-hint").textContent = `${d.stations.length} of ${d.total} shown · unhealthy first · ` +
    `expected = the station's own rate over the ${d.history_days} days before the last ${d.recent_days} days`;
}

async function pollStations() {
  try {
    stationData = await getJSON("/api/stations");
    drawCards(stationData);
    drawStations();
    setStatus(true, `live · updated ${clock(Date.now() / 1000)}`);
  } catch (err) {
    setStatus(false, "dashboard API unreachable");
  }
}

for (const th of document.querySelectorAll("#station-table th[data-sort]")) {
  th.addEventListener("click", () => {
    const key = th.dataset.sort;
    sortBy = { key, descending: sortBy.key === key ? !sortBy.descending : false };
    drawStations();
  });
}

pollStations();
setInterval(pollStations, STATIONS_EVERY_MS);
