// bridgescope workshop: doctor badges on the live graph, the walk's buttons, the packet path,
// the projector view and the attendees' follow view. Plain JS, no inline script (strict CSP).
// The graph itself is app.js's (window.cy); this file only decorates it.

const byId = (id) => document.getElementById(id);
const session = window.bridgescopeSession;  // every request carries this tab's session
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const walkSide = byId("ws-walk");
const SEVERITIES = ["error", "warning", "info"];
let lastPath = [];

function whenCy(fn) {
  if (window.cy) { fn(window.cy); return; }
  const timer = setInterval(() => { if (window.cy) { clearInterval(timer); fn(window.cy); } }, 100);
}

// ---- graph decoration ----------------------------------------------------------------------

function decorate(cy) {
  const present = document.body.classList.contains("ws-present");
  cy.style()
    .selector(".ws-sev-error").style({ "border-width": 5, "border-color": "#dc2626", "border-style": "double" })
    .selector(".ws-sev-warning").style({ "border-width": 4, "border-color": "#f59e0b", "border-style": "double" })
    .selector(".ws-sev-info").style({ "border-width": 3, "border-color": "#2563eb" })
    .selector("node.ws-path").style({ "overlay-color": "#facc15", "overlay-opacity": 0.35, "overlay-padding": 6 })
    .selector("edge.ws-path").style({ "line-color": "#eab308", width: 6, "target-arrow-color": "#eab308" })
    .selector("node").style(present ? { "font-size": 17, "font-weight": "bold" } : {})
    .update();
  window.bridgescopeBoxes.refit(); // Present's bigger labels need bigger boxes
}

async function getJSON(url) {
  const resp = await session.fetch(url, { headers: { Accept: "application/json" } });
  return resp.json();
}

// The doctor page's list follows the live host: rebuilt when the set of findings changes.
let shownFindings = null;

function renderFindings(findings) {
  const box = byId("ws-findings");
  const key = JSON.stringify(findings.map((f) => [f.id, f.objects]));
  if (!box || key === shownFindings) return;
  if (shownFindings === null) { shownFindings = key; return; } // the server rendered these
  shownFindings = key;
  if (!findings.length) { box.replaceChildren(el("p", "ws-ok", "No problems found: every check passes.")); return; }
  const list = el("ul", "ws-findings");
  for (const f of findings) {
    const li = el("li", `ws-finding sev-${f.severity}`);
    const head = el("div", "ws-finding-head");
    head.append(el("span", "ws-sev", f.severity), " ", el("code", "ws-id", f.id), " ", f.title);
    const fix = el("pre", "ws-cmd");
    fix.append(el("code", "", f.fix.join("\n")));
    li.append(head, el("p", "", f.explanation), el("div", "ws-fix-label", "Fix:"), fix);
    list.append(li);
  }
  box.replaceChildren(list);
}

async function refreshBadges() {
  const holder = document.querySelector("[data-findings]");
  if (!holder) return;
  const { findings } = await getJSON(holder.dataset.findings);
  if (holder.dataset.live) renderFindings(findings || []);
  whenCy((cy) => {
    cy.elements().removeClass(SEVERITIES.map((s) => `ws-sev-${s}`).join(" "));
    for (const f of findings || []) {
      if (f.later) continue;  // a walk step still to come: not built yet, not a problem
      for (const id of f.objects) cy.getElementById(id).addClass(`ws-sev-${f.severity}`);
    }
    window.bridgescopeFindings = findings;
  });
}

function highlightPath(ids) {
  lastPath = ids;
  whenCy((cy) => {
    cy.elements().removeClass("ws-path");
    const wanted = new Set(ids);
    // a namespace's box would light up everything it holds: only the interfaces on the path light up
    const nodes = cy.nodes().filter((n) => wanted.has(n.id()) && n.data("kind") !== "namespace");
    nodes.addClass("ws-path");
    // an edge lights up when the path names it (the MASQUERADE way out is an edge) or both its ends
    cy.edges().filter((e) => wanted.has(e.id()) || (wanted.has(e.source().id()) && wanted.has(e.target().id())))
      .addClass("ws-path");
  });
}

// ---- the walk ------------------------------------------------------------------------------

async function post(url, body) {
  return session.fetch(url, {
    method: "POST", body,
    headers: { "X-CSRF-Token": csrf, Accept: "text/html, application/json" },
  });
}

async function runAction(button) {
  // Reset and Remove undo a whole session's work: they ask first
  if (button.dataset.wsConfirm && !window.confirm(button.dataset.wsConfirm)) return;
  const panel = byId("ws-panel");
  panel.querySelectorAll("button").forEach((b) => { b.disabled = true; });
  button.classList.add("busy");
  const resp = await post(button.dataset.wsPost);
  panel.innerHTML = await resp.text();
  document.body.dataset.wsVersion = String(Number(document.body.dataset.wsVersion || 0) + 1);
  await refreshBadges();
  // a failure shows at its step; else the step now due (or the wrong turn to fix)
  const current = panel.querySelector("#ws-step-error, #ws-step-failed, .st-wrong, .ws-current, #ws-done");
  if (current) walkSide.scrollTo({ top: current.offsetTop - 80, behavior: "smooth" });
}

// Instructor's keys: n runs the step due (or fixes the wrong turn), p shows the step before
// the one in view, r resets (after asking). Never while typing in a field.
let viewed = null;

function showStep(li) {
  if (!li) return;
  viewed = li;
  walkSide.querySelectorAll(".ws-viewed").forEach((x) => x.classList.remove("ws-viewed"));
  li.classList.add("ws-viewed");
  walkSide.scrollTo({ top: li.offsetTop - 80, behavior: "smooth" });
}

function onKey(evt) {
  if (evt.ctrlKey || evt.metaKey || evt.altKey || evt.target.closest("input, select, textarea, [contenteditable]")) return;
  const panel = byId("ws-panel");
  const press = (selector) => {
    const button = panel.querySelector(selector);
    if (button && !button.disabled) runAction(button);
    return !!button;
  };
  if (evt.key === "n") {
    if (press(".st-wrong [id^='fix-']") || press(".ws-current [id^='do-']")) evt.preventDefault();
  } else if (evt.key === "r") {
    if (press("#ws-reset")) evt.preventDefault();
  } else if (evt.key === "p") {
    const steps = [...panel.querySelectorAll(".ws-step")];
    const from = viewed && viewed.isConnected ? viewed : panel.querySelector(".ws-current") || steps[steps.length - 1];
    const at = steps.indexOf(from);
    if (at > 0) { showStep(steps[at - 1]); evt.preventDefault(); }
  }
}

// The handout goes with this tab's session (a plain link would land on the boot page).
async function downloadHandout(evt) {
  evt.preventDefault();
  const link = evt.currentTarget;
  const resp = await session.fetch(link.href, { headers: { Accept: "text/markdown" } });
  if (!resp.ok) return;
  const url = URL.createObjectURL(await resp.blob());
  const a = document.createElement("a");
  a.href = url; a.download = "docker-run-p-walk.md";
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

function wireWalk() {
  if (!walkSide) return;
  walkSide.addEventListener("click", (evt) => {
    const button = evt.target.closest("[data-ws-post]");
    if (button && !button.disabled) { evt.preventDefault(); runAction(button); }
  });
  const form = byId("ws-path-form");
  if (form) form.addEventListener("submit", (evt) => { evt.preventDefault(); tracePath(form); });
  const handout = byId("ws-handout");
  if (handout) handout.addEventListener("click", downloadHandout);
  if (walkSide.dataset.follow) follow();
  else document.addEventListener("keydown", onKey);
  walkSide.dataset.ready = "1"; // the page's HTML comes before its module runs: say when keys work
}

// The attendees' view: poll the instructor's progress, re-render when it changed.
function follow() {
  let seen = null;
  setInterval(async () => {
    const state = await getJSON(walkSide.dataset.state);
    const key = JSON.stringify([state.up, state.progress, state.findings.map((f) => f.id)]);
    if (key === seen) return;
    seen = key;
    const resp = await session.fetch(walkSide.dataset.panel);
    byId("ws-panel").innerHTML = await resp.text();
    refreshBadges();
  }, 1500);
}

// ---- packet path ---------------------------------------------------------------------------

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function tracePath(form) {
  const out = byId("ws-path-result");
  out.replaceChildren(el("p", "muted", "tracing…"));
  const resp = await post(form.action, new FormData(form));
  const body = await resp.json();
  out.replaceChildren();
  if (body.error) { out.append(el("p", "ws-error", body.error)); return; }
  // The verdict shown is the real probe's when one was sent, else the path's; hops after the
  // step that failed are greyed (the packet never gets there).
  const verdict = body.probe ? { outcome: body.probe.outcome, reason: body.probe.connected ? ""
    : `probe: ${body.probe.reply}` } : body.verdict;
  const failedAt = body.steps.findIndex((s) => ["drop", "refused", "unknown"].includes(s.kind));
  const list = el("ol", "ws-path-steps");
  body.steps.forEach((step, i) => {
    const after = failedAt >= 0 && i > failedAt;
    const li = el("li", `ws-hop hop-${step.kind}${after ? " hop-after" : ""}`);
    li.append(el("span", "ws-hop-kind", step.kind), " ", el("span", "", step.text));
    list.append(li);
  });
  if (failedAt < 0 && verdict.outcome !== "reachable" && list.lastElementChild) {
    list.lastElementChild.classList.add("hop-failed");  // the probe failed where the path did not
  }
  out.append(list);
  const ok = verdict.outcome === "reachable";
  const verdictBox = el("p", `ws-verdict ${ok ? "ws-ok" : "ws-error"}`, ok
    ? `Reachable: answered in ${body.delivered_to || "the destination"} as ${body.final.src} → ${body.final.dst}:${body.final.dport}`
    : `Not reachable (${verdict.outcome}): ${verdict.reason}`);
  verdictBox.dataset.outcome = verdict.outcome;
  out.append(verdictBox);
  if (body.probe) {
    const probe = el("div", "ws-probe");
    probe.append(el("p", body.probe.connected ? "ws-ok" : "ws-error",
      body.probe.connected ? `Probe answered: "${body.probe.reply}"` : `Probe failed: ${body.probe.reply}`));
    const moved = el("ul", "ws-moved");
    for (const m of body.probe.moved) moved.append(el("li", "", `+${m.packets}  ${m.text}`));
    if (!body.probe.moved.length) moved.append(el("li", "muted", "no nat counter moved"));
    probe.append(el("p", "muted", "nat counters that moved:"), moved);
    out.append(probe);
  }
  highlightPath(body.elements);
  if (walkSide) walkSide.scrollTo({ top: out.offsetTop - 120, behavior: "smooth" });
}

// ---- presenting ----------------------------------------------------------------------------

function wirePresent() {
  const toggle = byId("ws-present-toggle");
  if (!toggle) return;
  toggle.addEventListener("click", () => {
    const on = document.body.classList.toggle("ws-present");
    toggle.setAttribute("aria-pressed", on ? "true" : "false");
    const url = new URL(window.location.href);
    if (on) url.searchParams.set("present", "1"); else url.searchParams.delete("present");
    history.replaceState(null, "", url);
    // the graph's colours follow Present's palette; the pane changed size, so fit again
    document.dispatchEvent(new CustomEvent("bridgescope:theme"));
    whenCy((cy) => { decorate(cy); requestAnimationFrame(() => { cy.resize(); cy.fit(cy.elements(":visible"), 30); }); });
  });
}

// Badges follow the live graph: new nodes arrive with deltas, so re-badge then. On the walk
// page the graph grows from nothing (each newcomer where the server put it): fit as it grows.
function keepBadged() {
  let version = null;
  let nodes = 0;
  let ticks = 0;
  setInterval(() => {
    const v = window.bridgescopeLastDelta ? window.bridgescopeLastDelta.version : null;
    ticks += 1;
    if (v === version && ticks % 5) return; // sysctls and rules change without a graph delta
    if (v === version) { refreshBadges(); return; }
    version = v;
    refreshBadges();
    if (lastPath.length) highlightPath(lastPath);
    const count = window.cy ? window.cy.nodes().length : 0;
    if (walkSide && count !== nodes && window.cy) { nodes = count; window.cy.fit(window.cy.elements(":visible"), 30); }
  }, 1000);
}

whenCy(decorate);
document.addEventListener("bridgescope:restyled", () => whenCy(decorate));
wireWalk();
wirePresent();
refreshBadges();
keepBadged();
