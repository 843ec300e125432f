// evguard live view: polls /api/live, redraws the connectors and live alerts, and ages the
// last samples every second in between; helpers in common.js.
"use strict";

const LIVE_EVERY_MS = 2000;
const TICK_MS = 1000;
// a connector in these states should send samples every few seconds (as dashboard/queries.py)
const ACTIVE_STATES = ["Charging", "SuspendedEV", "SuspendedEVSE"];
let liveData = null;
let serverSkew = 0; // the server's clock minus this browser's, so ages use the server's time

const serverNow = () => Date.now() / 1000 + serverSkew;

function utc(ts) {
  if (ts === null || ts === undefined) return "–";
  return new Date(ts * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC";
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 0) s = 0;
  if (s < 90) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  if (s < 5400) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function isOffline(c, age) {
  if (c.state === "Offline") return true;
  const active = c.transaction_id !== null || ACTIVE_STATES.includes(c.state);
  return active && age !== null && age > liveData.offline_after_s;
}

function ageOf(c) {
  return c.last_sample_ts === null ? null : serverNow() - c.last_sample_ts;
}

const kw = (w) => (w === null || w === undefined ? "–" : (w / 1000).toFixed(w < 10000 ? 2 : 1));
const kwh = (wh) => (wh === null || wh === undefined ? "–" : (wh / 1000).toFixed(2));
const kindLabel = (kind) => kind.replace(/_/g, " ");

function stateCell(c) {
  const state = c.state || "unknown";
  return el("td", { class: "state-cell" },
    el("span", { class: `conn-state s-${state}` }, state),
    c.error_code ? el("span", { class: "hint" }, ` ${c.error_code}`) : null,
    el("span", { class: "offline-marker", title: `no sample for more than ${duration(liveData.offline_after_s)}` },
      "Offline"));
}

function alertChips(c) {
  const chips = c.open_alerts.map((a) => el("div", { class: "live-alert-chip", "data-kind": a.kind,
      "data-alert-id": a.alert_id, title: `since ${utc(a.first_sample_ts)}` },
    el("span", { class: "fault" }, kindLabel(a.kind)), " ", el("span", { class: "evidence" }, a.evidence)));
  const shown = new Set(c.open_alerts.map((a) => a.kind));
  // kinds the processor reports that the store has not seen (yet)
  for (const kind of c.reported_alerts.filter((k) => !shown.has(k))) {
    chips.push(el("div", { class: "live-alert-chip", "data-kind": kind }, el("span", { class: "fault" }, kindLabel(kind))));
  }
  return chips.length ? chips : [el("span", { class: "hint" }, "none")];
}

function rank(c) {
  const busy = c.transaction_id !== null || ACTIVE_STATES.includes(c.state);
  return [c.open_alerts.length || c.reported_alerts.length ? 0 : 1, isOffline(c, ageOf(c)) ? 0 : 1,
    busy ? 0 : 1];
}

function compareRanks(a, b) {
  const x = rank(a), y = rank(b);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i] - y[i];
  return a.charge_point_id < b.charge_point_id ? -1 : a.charge_point_id > b.charge_point_id ? 1
    : a.connector_id - b.connector_id;
}

function drawConnectors() {
  const body = $("connector-rows");
  body.replaceChildren();
  const rows = liveData.connectors.slice().sort(compareRanks);
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { class: "empty", colSpan: 7 },
      "no connectors yet: the telemetry processor publishes their status as chargers talk")));
  }
  for (const c of rows) {
    body.append(el("tr", { "data-connector": c.connector, "data-state": c.state || "unknown",
        class: c.open_alerts.length ? "alerting" : "" },
      el("td", { class: "connector-name" }, c.connector,
        c.transaction_id ? el("span", { class: "hint" }, ` tx ${c.transaction_id}`) : null),
      el("td", {}, c.site_id || "–"),
      stateCell(c),
      el("td", { class: "num power" }, kw(c.power_w)),
      el("td", { class: "num energy" }, kwh(c.energy_wh)),
      el("td", { class: "age", "data-ts": c.last_sample_ts ?? "" }, "–"),
      el("td", { class: "alerts-cell" }, ...alertChips(c))));
  }
  tick();
}

function alertRow(a) {
  const delays = [`detected ${a.detection_delay_s === null ? "–" : "+" + duration(a.detection_delay_s)}`];
  const email = a.email_state === "sent" ? `emailed +${duration(a.email_delay_s)}`
    : a.email_state ? a.email_state.replace("_", " ") : "not emailed yet";
  const closed = a.closed_ts !== null
    ? el("div", { class: "hint closed-evidence" },
      `closed ${utc(a.closed_ts)} after ${duration(a.closed_ts - a.first_sample_ts)}: ${a.closed_evidence}`)
    : null;
  return el("tr", { "data-alert-id": a.alert_id, "data-status": a.status, class: `live-${a.status}` },
    el("td", {}, el("span", { class: `alert-status ${a.status}` }, a.status)),
    el("td", { class: "fault" }, kindLabel(a.kind)),
    el("td", {}, a.connector, " ", el("span", { class: "hint" }, a.site_id)),
    el("td", { class: "since" }, utc(a.first_sample_ts)),
    el("td", { class: "evidence" }, a.evidence, closed),
    el("td", { class: "delays" }, delays[0], el("br", {}),
      el("span", { class: `email state ${a.email_state || "pending"}` }, email)));
}

function drawAlerts() {
  const body = $("live-alert-rows");
  body.replaceChildren();
  if (!liveData.alerts.length) {
    body.append(el("tr", {}, el("td", { class: "empty", colSpan: 6 }, "no live alert yet")));
  }
  for (const a of liveData.alerts) body.append(alertRow(a));
}

function drawCards(d) {
  const counts = d.counts;
  $("connectors-total").textContent = int(counts.connectors);
  $("connector-states").textContent = Object.entries(counts.states)
    .sort((a, b) => b[1] - a[1]).map(([s, n]) => `${n} ${s}`).join(" · ") || "–";
  $("in-transaction").textContent = int(counts.in_transaction);
  $("power-total").textContent = (counts.power_w / 1000).toFixed(1);
  $("open-alerts").textContent = int(counts.open_alerts);
  $("alerting-connectors").textContent =
    `on ${int(counts.alerting)} connector${counts.alerting === 1 ? "" : "s"}`;
  $("offline-rule").textContent =
    `in a transaction and no sample for ${duration(d.offline_after_s)}, or reported offline`;
  $("connectors-hint").textContent = `${d.connectors.length} of ${d.total} shown · ` +
    "alerting first, then offline, then in a transaction";
}

// ages and Offline markers move every second, between two polls
function tick() {
  if (!liveData) return;
  let offline = 0;
  const byName = new Map(liveData.connectors.map((c) => [c.connector, c]));
  for (const row of document.querySelectorAll("#connector-rows tr[data-connector]")) {
    const c = byName.get(row.dataset.connector);
    const age = ageOf(c);
    const down = isOffline(c, age);
    offline += down ? 1 : 0;
    row.classList.toggle("offline", down);
    row.dataset.offline = down ? "true" : "false";
    const cell = row.querySelector(".age");
    cell.textContent = age === null ? "–" : `${duration(age)} ago`;
    cell.title = utc(c.last_sample_ts);
  }
  // the server counts the connectors it did not send; then its count is the better one
  const allShown = liveData.total === liveData.connectors.length;
  $("offline-count").textContent = int(allShown ? offline : liveData.counts.offline);
}

async function pollLive() {
  try {
    const data = await getJSON("/api/live");
    serverSkew = data.now - Date.now() / 1000;
    liveData = data;
    drawCards(data);
    drawConnectors();
    drawAlerts();
    setStatus(true, `live · updated ${clock(Date.now() / 1000)}`);
  } catch (err) {
    setStatus(false, "dashboard API unreachable");
  }
}

pollLive();
setInterval(pollLive, LIVE_EVERY_MS);
setInterval(tick, TICK_MS);
