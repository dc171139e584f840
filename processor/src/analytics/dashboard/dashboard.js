// Waymark's funnel dashboard: everything it needs is served by `waymark analytics serve`
// itself (no CDN). It renders one journey's funnel from /api/journeys/{journey}/funnel and
// keeps it live from the server-sent events of /api/live (one tick per second).
"use strict";

const select = document.getElementById("journey");
const status = document.getElementById("status");
let current = null;

const fmt = (n) => (n === null || n === undefined ? "–" : n.toLocaleString("en-US"));
const pct = (x) => (x * 100).toFixed(1) + "%";
const dur = (s) => {
  if (s === null || s === undefined) return "–";
  if (s < 120) return "≤" + s + "s";
  if (s < 7200) return "≤" + Math.round(s / 60) + "m";
  if (s < 172800) return "≤" + Math.round(s / 3600) + "h";
  return "≤" + Math.round(s / 86400) + "d";
};

function cell(tr, text, attrs) {
  const td = document.createElement("td");
  td.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) td.setAttribute(k, v);
  tr.appendChild(td);
}

function renderFunnel(f) {
  document.querySelector('[data-kpi="entered"]').textContent = fmt(f.entered);
  document.querySelector('[data-kpi="active"]').textContent = fmt(f.active);
  document.querySelector('[data-kpi="completed"]').textContent = fmt(f.completed);
  document.querySelector('[data-kpi="abandoned"]').textContent = fmt(f.abandoned);
  document.querySelector('[data-kpi="conversion"]').textContent = pct(f.conversion);
  document.getElementById("version").textContent = "version " + f.version;

  const steps = document.querySelector("#steps tbody");
  steps.replaceChildren();
  for (const s of f.steps) {
    const tr = document.createElement("tr");
    cell(tr, s.step);
    cell(tr, fmt(s.completed), { "data-step": s.step, "data-field": "completed" });
    cell(tr, pct(s.conversion_from_previous), { "data-step": s.step, "data-field": "conversion" });
    cell(tr, fmt(s.at), { "data-step": s.step, "data-field": "at" });
    cell(tr, fmt(s.stalled), { "data-step": s.step, "data-field": "stalled" });
    cell(tr, fmt(s.abandoned), { "data-step": s.step, "data-field": "abandoned" });
    cell(tr, fmt(s.recovered), { "data-step": s.step, "data-field": "recovered" });
    cell(tr, dur(s.time_to_complete_p50_secs));
    cell(tr, dur(s.time_to_complete_p90_secs));
    steps.appendChild(tr);
  }
  const actions = document.querySelector("#actions tbody");
  actions.replaceChildren();
  for (const a of f.actions) {
    const tr = document.createElement("tr");
    cell(tr, a.action);
    cell(tr, fmt(a.sent), { "data-action": a.action, "data-field": "sent" });
    cell(tr, fmt(a.suppressed), { "data-action": a.action, "data-field": "suppressed" });
    cell(tr, fmt(a.deferred), { "data-action": a.action, "data-field": "deferred" });
    cell(tr, fmt(a.sent_converted) + " (" + pct(a.sent_conversion) + ")",
      { "data-action": a.action, "data-field": "sent_converted", "data-value": a.sent_converted });
    cell(tr, fmt(a.held_out), { "data-action": a.action, "data-field": "held_out" });
    cell(tr, a.held_out_conversion === null ? "–" : pct(a.held_out_conversion));
    actions.appendChild(tr);
  }
  drawChart(f);
}

function drawChart(f) {
  const svg = document.getElementById("funnel");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const width = svg.clientWidth || 900;
  const rowH = 240 / Math.max(f.steps.length, 1);
  const label = 190;
  const max = Math.max(f.entered, 1);
  f.steps.forEach((s, i) => {
    const y = i * rowH + 4;
    const w = ((width - label - 180) * s.completed) / max;
    const sw = ((width - label - 180) * s.stalled) / max;
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", 0);
    t.setAttribute("y", y + rowH / 2 + 4);
    t.textContent = s.step;
    svg.appendChild(t);
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("class", "bar");
    bar.setAttribute("x", label);
    bar.setAttribute("y", y);
    bar.setAttribute("width", Math.max(w, 1));
    bar.setAttribute("height", rowH - 6);
    svg.appendChild(bar);
    const stalled = document.createElementNS(ns, "rect");
    stalled.setAttribute("class", "stalled");
    stalled.setAttribute("x", label + w);
    stalled.setAttribute("y", y);
    stalled.setAttribute("width", sw);
    stalled.setAttribute("height", rowH - 6);
    svg.appendChild(stalled);
    const n = document.createElementNS(ns, "text");
    n.setAttribute("x", label + w + sw + 6);
    n.setAttribute("y", y + rowH / 2 + 4);
    n.textContent = fmt(s.completed) + (s.stalled ? "  (" + fmt(s.stalled) + " stalled)" : "");
    svg.appendChild(n);
  });
}

function renderExperiments(reports) {
  const section = document.getElementById("experiments-section");
  section.hidden = reports.length === 0;
  const body = document.querySelector("#experiments tbody");
  body.replaceChildren();
  for (const r of reports) {
    const head = document.createElement("tr");
    const th = document.createElement("td");
    th.colSpan = 8;
    th.textContent = r.experiment + " — " + r.journey + " / " + r.action + " (baseline " + r.baseline + ")";
    th.style.fontWeight = "bold";
    head.appendChild(th);
    body.appendChild(head);
    for (const a of r.arms) {
      const tr = document.createElement("tr");
      const at = { "data-experiment": r.experiment, "data-arm": a.arm };
      cell(tr, "  " + a.arm);
      cell(tr, fmt(a.exposed), { ...at, "data-field": "exposed" });
      cell(tr, fmt(a.converted), { ...at, "data-field": "converted" });
      cell(tr, pct(a.conversion));
      cell(tr, pct(a.ci_low) + " – " + pct(a.ci_high));
      cell(tr, a.lift === null ? "–" : (a.lift >= 0 ? "+" : "") + (a.lift * 100).toFixed(1) + " pt");
      cell(tr, a.p_value === null ? "–" : a.p_value.toFixed(4));
      cell(tr, a.verdict);
      body.appendChild(tr);
    }
  }
}

async function loadExperiments() {
  const r = await fetch("/api/experiments");
  if (r.ok) renderExperiments(await r.json());
}

async function load() {
  const journeys = await (await fetch("/api/journeys")).json();
  select.replaceChildren();
  for (const j of journeys) {
    const o = document.createElement("option");
    o.value = j.journey;
    o.textContent = j.journey;
    select.appendChild(o);
  }
  current = journeys.length ? journeys[0].journey : null;
  await loadExperiments();
  await refresh();
}

async function refresh() {
  if (!current) return;
  const r = await fetch("/api/journeys/" + encodeURIComponent(current) + "/funnel");
  if (r.ok) renderFunnel(await r.json());
  document.body.setAttribute("data-loaded", "true");
}

select.addEventListener("change", () => { current = select.value; refresh(); });

const live = new EventSource("/api/live");
live.addEventListener("tick", (e) => {
  const t = JSON.parse(e.data);
  status.textContent = "live · " + t.at;
  status.classList.remove("down");
  document.querySelector('[data-rate="journey_events"]').textContent = t.journey_events_per_sec.toFixed(1);
  document.querySelector('[data-rate="commands"]').textContent = t.commands_per_sec.toFixed(1);
  const fs = t.funnels.filter((f) => f.journey === current);
  if (fs.length) renderFunnel(fs[fs.length - 1]);
  const ticks = Number(document.body.getAttribute("data-ticks") || 0) + 1;
  document.body.setAttribute("data-ticks", String(ticks));
  if (ticks % 5 === 0) loadExperiments();
});
live.onerror = () => { status.textContent = "disconnected; retrying"; status.classList.add("down"); };

load();
