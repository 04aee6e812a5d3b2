// geodns status page: polls /v1/status and redraws. No framework, no CDN.
"use strict";

const POLL_MS = 1500;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function stateOf(region) {
  if (region.drained !== null && region.drained !== undefined) return "drained";
  return region.up ? "up" : "down";
}

// The verdict's own state where it says more than up or down: "unknown" (no observer has
// decided yet), "fallback" (an earlier verdict stands in), "forced" (an operator's mark).
function stateLabel(state, verdict) {
  return verdict && !["up", "down", "drained"].includes(verdict) ? `${state} (${verdict})` : state;
}

function ago(now, at) {
  const s = Math.max(0, Math.round(now - at));
  if (s < 120) return s + "s ago";
  if (s < 7200) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
}

function pct(x) { return (100 * (x || 0)).toFixed(0) + "%"; }

function drawMap(doc) {
  const g = document.getElementById("markers");
  g.replaceChildren();
  for (const r of Object.values(doc.regions)) {
    const x = r.longitude + 180, y = 90 - r.latitude;
    const state = stateOf(r);
    const radius = 2.5 + 7 * Math.sqrt(r.share || 0);
    const circle = svgEl("circle", { cx: x, cy: y, r: radius, "data-region": r.name, "data-state": state, class: "region " + state });
    const title = svgEl("title", {});
    title.textContent = `${r.name}: ${stateLabel(state, r.state)} · ${pct(r.share)} of answers · ${r.drained ? "drained: " + r.drained : r.cause}`;
    circle.append(title);
    const label = svgEl("text", { x: x + radius + 1, y: y + 1.5 });
    label.textContent = `${r.name} ${pct(r.share)}`;
    g.append(circle, label);
  }
}

function drawRegions(doc) {
  const body = document.querySelector("#regions tbody");
  body.replaceChildren();
  for (const r of Object.values(doc.regions).sort((a, b) => a.name.localeCompare(b.name))) {
    const state = stateOf(r);
    const bar = el("span", { class: "bar" }, el("span"));
    bar.firstChild.style.width = pct(r.share);
    const why = el("td", {}, r.drained ? "drained: " + r.drained : r.cause);
    for (const e of r.endpoints) {
      if (!e.up) why.append(el("div", { class: "muted" }, `${e.address}: ${e.drained ? "drained" : stateLabel("down", e.state)} ${e.cause || ""}`));
      else if (e.state === "unknown" || e.state === "fallback") why.append(el("div", { class: "muted" }, `${e.address}: up (${e.state}) ${e.cause || ""}`));
    }
    if (r.balancer) why.append(el("div", { class: "muted" }, `balancer ${stateLabel(r.balancer.up ? "up" : "down", r.balancer.state)}: ${r.balancer.cause}`));
    if (r.capacity && r.capacity.detail) why.append(el("div", { class: "muted" }, `load: ${r.capacity.detail}`));
    body.append(el("tr", { "data-region": r.name, "data-state": state },
      el("td", {}, r.name),
      el("td", {}, el("span", { class: "state state-" + state }, stateLabel(state, r.state))),
      el("td", {}, bar, " ", pct(r.share)),
      why));
  }
  const w = doc.shares.window_seconds;
  document.getElementById("window").textContent = w ? Math.round(w) + " s" : "(collecting)";
}

function drawZones(doc) {
  // Each zone's content hash; a peer that has served another version too long is named.
  const zones = document.getElementById("zones");
  zones.replaceChildren();
  for (const z of doc.zones) {
    const stale = z.stale_peers || [];
    zones.append(el("li", { "data-zone": z.zone, "data-stale": stale.length ? "yes" : "no" },
      el("b", {}, z.zone), " ", el("code", { title: z.hash || "" }, (z.hash || "-").slice(0, 19)),
      stale.length ? el("span", { class: "state state-down" }, " differs on " + stale.join(", ")) : ""));
  }
}

function drawLists(doc) {
  drawZones(doc);
  const drains = document.getElementById("drains");
  drains.replaceChildren();
  const entries = Object.entries(doc.drains);
  if (!entries.length) drains.append(el("li", { class: "muted" }, "none"));
  for (const [target, reason] of entries) drains.append(el("li", {}, el("b", {}, target), ": ", reason));

  // Over NATS: who drained or undrained each target, newest first (the bucket keeps 16 per target).
  const history = document.getElementById("drain-history");
  history.replaceChildren();
  const past = Object.entries(doc.drain_history || {}).flatMap(([target, h]) => h.map((e) => ({ target, ...e })));
  document.getElementById("drain-history-box").hidden = !past.length;
  past.sort((a, b) => (b.at || 0) - (a.at || 0));
  for (const e of past.slice(0, 20)) {
    history.append(el("li", { "data-target": e.target }, el("span", { class: "muted" }, ago(doc.now, e.at || doc.now)), " ",
      el("b", {}, e.target), ` ${e.active ? "drained" : "undrained"} by ${e.by || "?"}`, e.reason ? `: ${e.reason}` : ""));
  }

  const changes = document.getElementById("changes");
  changes.replaceChildren();
  if (!doc.changes.length) changes.append(el("li", { class: "muted" }, "none since this node started"));
  for (const c of doc.changes.slice(0, 15)) {
    changes.append(el("li", {}, el("span", { class: "muted" }, ago(doc.now, c.at)), " ",
      el("b", {}, c.region), " ", el("span", { class: "state state-" + (c.up ? "up" : "down") }, c.up ? "up" : "down"),
      " ", c.cause));
  }

  const errors = doc.reload.last_error || [];
  document.getElementById("reload-error").hidden = !errors.length;
  document.getElementById("reload-errors").replaceChildren(...errors.map((e) => el("li", {}, e)));

  const obs = document.querySelector("#observers tbody");
  obs.replaceChildren();
  const targets = Object.entries(doc.observers || {});
  document.getElementById("no-observers").hidden = targets.length > 0;
  for (const [target, t] of targets) {
    const views = Object.entries(t.observers || {});
    if (!views.length) obs.append(el("tr", {}, el("td", {}, target), el("td", { class: "muted" }, "-"), el("td", {}, "no view yet"), el("td", {}, "")));
    for (const [observer, v] of views) {
      obs.append(el("tr", {}, el("td", {}, target), el("td", {}, observer),
        el("td", {}, `${v.state}${v.stale ? " (stale)" : ""} ${v.detail || ""}`), el("td", {}, `${v.age}s ago`)));
    }
  }
}

let failures = 0;

async function poll() {
  const banner = document.getElementById("banner");
  try {
    const response = await fetch("/v1/status", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const doc = await response.json();
    failures = 0;
    banner.hidden = true;
    document.getElementById("node").textContent = doc.node ? "node " + doc.node : "";
    document.getElementById("generation").textContent = "generation " + doc.generation;
    document.getElementById("updated").textContent = "updated " + new Date(doc.now * 1000).toLocaleTimeString();
    const name = document.getElementById("explain-name");
    if (!name.value && doc.zones.length) name.value = "www." + doc.zones[0].zone;
    drawMap(doc);
    drawRegions(doc);
    drawLists(doc);
  } catch (err) {
    failures += 1;
    banner.hidden = false;
    banner.textContent = `status unavailable (${err.message}); retrying`;
  } finally {
    setTimeout(poll, failures ? Math.min(10000, POLL_MS * 2 ** failures) : POLL_MS);
  }
}

async function explainSubmit(event) {
  event.preventDefault();
  const out = document.getElementById("explanation");
  const params = new URLSearchParams(new FormData(event.target));
  try {
    const response = await fetch("/v1/explain?" + params, { cache: "no-store" });
    const doc = await response.json();
    if (!response.ok) { out.textContent = "error: " + doc.error; return; }
    const lines = [`${doc.name} ${doc.type} for client ${doc.client}`, `  client placed: ${doc.placed}`];
    if (doc.network) lines.push(`  GeoIP network: ${doc.network}`);
    doc.steps.forEach((s, i) => {
      const after = s.after.map((b) => b.join(", ") || "(none)").join(" | ");
      lines.push(`  ${i + 1}. ${s.step}: ${s.before.join(", ") || "-"} -> ${after}`, `       ${s.note}`);
    });
    if (doc.failopen) lines.push("  every candidate was down: failing open");
    lines.push(`  answer (${doc.rcode}):`, ...(doc.answer.length ? doc.answer : ["(no records)"]).map((r) => "    " + r));
    out.textContent = lines.join("\n");
    out.classList.remove("muted");
  } catch (err) {
    out.textContent = "error: " + err.message;
  }
}

document.getElementById("explain").addEventListener("submit", explainSubmit);
poll();
