// bridgescope dashboard, fleet mode: the host list, the host boxes' look, folded hosts that
// open on a click, the findings summed, and the port forward form that names its host.
//
// app.js draws the merged picture and re-dispatches every stream event as `bridgescope:event`;
// the server's "fleet" events carry each host's state (live, reconnecting, stale since ...)
// and its findings' counts, the "doctor" event their sum.

/* global */

const byId = (id) => document.getElementById(id);
const session = window.bridgescopeSession;
const list = byId("fleet-hosts");
const summary = byId("fleet-summary");
const form = byId("fleet-forward");
const SEVERITIES = ["error", "warning"];
let hosts = [];

// ---- the host boxes in the graph ---------------------------------------------------------------

function styleHosts() {
  const cy = window.cy;
  if (!cy) return;
  const css = getComputedStyle(document.documentElement);
  const v = (name) => css.getPropertyValue(name).trim();
  cy.style()
    .selector('node[kind = "fleethost"]').style({
      shape: "round-rectangle", "background-color": v("--surface") || "#fff", "background-opacity": 0.6,
      "border-width": 3, "border-color": v("--c-host"), "border-style": "solid",
      label: "data(label)", "text-valign": "top", "text-halign": "center", "text-wrap": "wrap",
      "font-size": 26, "font-weight": 700, color: v("--fg"), padding: 40, "text-margin-y": -8,
      "text-max-width": 2000,
    })
    .selector('node[kind = "fleethost"][?folded]').style({
      width: 240, height: 70, "text-valign": "center", "text-margin-y": 0, "font-size": 15,
      "text-max-width": 220, "background-opacity": 1, "border-style": "double", "border-width": 5,
    })
    // by data, not class: a delta changes an element's data (app.js), never its classes
    .selector('node[kind = "fleethost"][state = "stale"]').style({
      "border-color": v("--danger"), "border-style": "dashed", opacity: 0.7,
    })
    .selector('node[kind = "fleethost"][state = "reconnecting"], node[kind = "fleethost"][state = "connecting"]').style({
      "border-color": v("--warn"), "border-style": "dashed",
    })
    .update();
  window.bridgescopeBoxes.refit(); // the host boxes' padding and titles
}

function whenGraph(fn) {
  if (window.cy) { fn(window.cy); return; }
  const timer = setInterval(() => { if (window.cy) { clearInterval(timer); fn(window.cy); } }, 100);
}

whenGraph((cy) => {
  styleHosts();
  cy.on("tap", 'node[kind = "fleethost"][?folded]', (evt) => openHost(evt.target.data("host")));
});
document.addEventListener("bridgescope:restyled", styleHosts);

async function post(url, method, body) {
  const csrf = document.querySelector('meta[name="csrf-token"]');
  return session.fetch(url, {
    method, body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf ? csrf.content : "" },
  });
}

async function openHost(name) {
  await post(list.dataset.open, "POST", { host: name });
}

function zoomTo(name) {
  const cy = window.cy;
  const box = cy && cy.getElementById(`fleet:${name}`);
  if (!box || box.empty()) return;
  if (box.data("folded")) { openHost(name); return; }
  cy.elements().unselect();
  box.select();
  cy.animate({ fit: { eles: box.union(window.bridgescopeBoxes.descendants(box)), padding: 30 }, duration: 250 });
}

// ---- the host list --------------------------------------------------------------------------

function age(since) {
  return Math.max(0, Math.round(Date.now() / 1000 - since));
}

function stateText(h) {
  if (h.state === "stale" && h.stale_since) return `${h.status} (${age(h.stale_since)} s)`;
  return h.status;
}

function countsNode(counts, containers) {
  const span = document.createElement("span");
  span.className = "fleet-counts";
  const parts = SEVERITIES.filter((s) => counts[s]).map((s) => {
    const b = document.createElement("span");
    b.className = `sev-${s}`;
    b.textContent = `${counts[s]} ${s}${counts[s] === 1 ? "" : "s"}`;
    return b;
  });
  span.append(`${containers} container${containers === 1 ? "" : "s"} · `);
  if (!parts.length) span.append("no problems");
  parts.forEach((p, i) => { if (i) span.append(", "); span.append(p); });
  return span;
}

function renderHosts() {
  if (!list) return;
  const items = hosts.map((h) => {
    const li = document.createElement("li");
    li.className = "fleet-host";
    li.dataset.host = h.name;
    li.dataset.state = h.state;
    const name = document.createElement("button");
    name.type = "button";
    name.textContent = h.name;
    name.title = h.folded ? "open this host in the picture" : "zoom to this host";
    name.addEventListener("click", () => zoomTo(h.name));
    const state = document.createElement("span");
    state.className = "fleet-state";
    state.dataset.state = h.state;
    state.textContent = stateText(h);
    if (h.error) state.title = h.error;
    li.append(name, state, countsNode(h.counts || {}, h.containers || 0));
    return li;
  });
  list.replaceChildren(...items);
  const total = {};
  for (const h of hosts) for (const s of SEVERITIES) total[s] = (total[s] || 0) + ((h.counts || {})[s] || 0);
  const live = hosts.filter((h) => h.state === "live").length;
  const text = `${hosts.length} host${hosts.length === 1 ? "" : "s"}, ${live} live`
    + ` · ${total.error || 0} error${total.error === 1 ? "" : "s"}, ${total.warning || 0} warning${total.warning === 1 ? "" : "s"}`;
  if (summary) summary.textContent = text;
  statusLine().textContent = text;
}

// app.js rewrites the graph's status line on every change: the fleet's sum stands in the
// graph's toolbar instead
function statusLine() {
  let el = byId("fleet-status");
  if (!el) {
    el = document.createElement("span");
    el.id = "fleet-status";
    el.className = "chip fleet-summary-line";
    el.setAttribute("aria-live", "polite");
    const after = byId("search-count");
    if (after) after.after(el); else document.body.append(el);
  }
  return el;
}

setInterval(() => {  // the age of a stale host ticks
  if (!list) return;
  for (const h of hosts) {
    if (h.state !== "stale") continue;
    const el = list.querySelector(`li[data-host="${CSS.escape(h.name)}"] .fleet-state`);
    if (el) el.textContent = stateText(h);
  }
}, 1000);

// ---- the forward form -------------------------------------------------------------------------

function fillHostChoices() {
  const select = byId("fleet-forward-host");
  if (!select) return;
  const chosen = select.value;
  select.replaceChildren(...hosts.map((h) => {
    const o = document.createElement("option");
    o.value = h.name;
    o.textContent = `${h.name} (${h.state})`;
    return o;
  }));
  if (hosts.some((h) => h.name === chosen)) select.value = chosen;
  fillContainers();
}

function fillContainers() {
  const cy = window.cy;
  const host = byId("fleet-forward-host");
  const out = byId("fleet-forward-containers");
  if (!cy || !host || !out) return;
  const names = cy.nodes('[kind = "namespace"][?container]').filter((n) => n.data("host") === host.value)
    .map((n) => n.data("label"));
  out.replaceChildren(...[...new Set(names)].sort().map((n) => {
    const o = document.createElement("option");
    o.value = n;
    return o;
  }));
}

if (form) {
  byId("fleet-forward-host").addEventListener("change", fillContainers);
  form.addEventListener("submit", async (evt) => {
    evt.preventDefault();
    const intent = evt.submitter ? evt.submitter.value : "add";
    const data = new FormData(form);
    const body = { host: data.get("host") || "", container: (data.get("container") || "").trim(),
      spec: (data.get("spec") || "").trim() };
    const outcome = byId("fleet-forward-outcome");
    outcome.dataset.ok = "";
    outcome.textContent = `${intent === "add" ? "adding" : "removing"} on ${body.host}…`;
    let resp, answer;
    try {
      resp = await post(form.dataset.action, intent === "add" ? "POST" : "DELETE", body);
      answer = await resp.json();
    } catch (err) {
      outcome.dataset.ok = "false";
      outcome.textContent = `no answer from the dashboard: ${err}`;
      return;
    }
    outcome.dataset.ok = String(resp.ok);
    outcome.textContent = resp.ok
      ? `${intent === "add" ? "added" : "removed"} on ${body.host}: ${(answer.commands || []).length} command(s) run by its agent`
      : answer.error || `failed (${resp.status})`;
  });
}

// ---- the stream ----------------------------------------------------------------------------

document.addEventListener("bridgescope:event", (evt) => {
  const { name, data } = evt.detail;
  if (name !== "fleet") return;
  hosts = JSON.parse(data).hosts || [];
  renderHosts();
  fillHostChoices();
});
document.addEventListener("bridgescope:delta", fillContainers);
