// evguard dashboard: helpers shared by the sessions page (app.js), the station view
// (stations.js) and the live connector view (live.js).
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);
const pad = (n) => String(n).padStart(2, "0");
function clock(ts) {
  if (!ts) return "–";
  const d = new Date(ts * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function ago(ts) {
  if (!ts) return "–";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
const num = (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toPrecision(d));
const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`);
const int = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString());

async function getJSON(url, options) {
  const resp = await fetch(url, Object.assign({ cache: "no-store" }, options));
  if (!resp.ok) throw new Error(`${url}: ${resp.status}`);
  return resp.json();
}

// An action (a POST). The page sends the dashboard token it was given, kept for this tab
// only; when the server asks for one (401 Bearer), the user is asked once. A Basic login
// is asked for by the browser itself. Throws with the server's reason when refused.
const TOKEN_KEY = "evguard-dashboard-token";
async function act(url) {
  const send = () => {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return fetch(url, { method: "POST", cache: "no-store",
                        headers: token ? { Authorization: `Bearer ${token}` } : {} });
  };
  let resp = await send();
  if (resp.status === 401 && (resp.headers.get("WWW-Authenticate") || "").startsWith("Bearer")) {
    const token = window.prompt("Dashboard token (EVGUARD_DASHBOARD_TOKEN) to act on alerts:");
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token.trim());
      resp = await send();
    }
  }
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    throw new Error(body.detail || `${url}: ${resp.status}`);
  }
  return resp.json();
}

function setStatus(ok, text) {
  const s = $("status");
  s.className = "status " + (ok ? "live" : "down");
  s.textContent = text;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}
