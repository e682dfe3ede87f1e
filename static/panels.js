// bridgescope: what follows the kernel besides the graph, and how the forms feel.
//
// - the open details panel follows its element: asked again after every kernel change (and
//   every few seconds while open, for the rules' packet counters, which move without any
//   netlink event), or marked "removed";
// - the forms' selects (containers, networks) follow every structural delta;
// - a marked field loses its error as soon as it is filled in;
// - after a submit, focus lands on the result or on the next thing to press.
// app.js announces each delta as the DOM event "bridgescope:delta". No inline script or
// style anywhere (strict CSP): state is shown with classes and text only.

const session = window.bridgescopeSession;  // every request carries this tab's session
const byId = (id) => document.getElementById(id);
const COUNTERS_MS = 3000;  // only while a panel is open: one small GET per period
const SETTLE_MS = 200;  // a burst of deltas (a container being built) asks once

// ---- the open details panel ------------------------------------------------------------------

const openPanel = () => byId("details-panel");
let asking = false;
let panelTimer = null;

function markRemoved(panel) {
  if (panel.dataset.removed) return;
  panel.dataset.removed = "1";
  panel.classList.add("is-removed");
  const note = document.createElement("p");
  note.className = "panel-state panel-removed";
  note.id = "panel-removed";
  note.setAttribute("role", "status");
  note.textContent = "Removed: the kernel no longer has this. What follows is how it was.";
  panel.querySelector(".details-head").after(note);
}

// Packet counts per rule, so the ones that moved can be pointed out after a refresh.
function counters(root) {
  const out = new Map();
  root.querySelectorAll(".rule-item").forEach((li) => {
    out.set(li.dataset.ruleKey, Number.parseInt(li.querySelector(".rule-packets").textContent, 10));
  });
  return out;
}

// A form the user is busy with (focus inside, or a result on show) is kept as it is.
function busy(forms) {
  return !!forms && (forms.contains(document.activeElement) || !!forms.querySelector(".outcome-message"));
}

function stamp(panel) {
  let note = panel.querySelector("#panel-fresh");
  if (!note) {
    note = document.createElement("p");
    note.className = "panel-state muted";
    note.id = "panel-fresh";
    panel.querySelector(".details-head").after(note);
  }
  note.textContent = `live · read ${new Date().toLocaleTimeString()}`;
}

async function refreshPanel() {
  const panel = openPanel();
  if (!panel || panel.dataset.removed || asking) return;
  asking = true;
  try {
    const url = `${panel.dataset.url}?follow=1`;  // "gone" comes back as 204, not as an error
    const resp = await session.fetch(url, { headers: { "HX-Request": "true", Accept: "text/html" } });
    if (openPanel() !== panel) return;  // another element was clicked meanwhile
    if (resp.status === 204 || resp.status === 404) { markRemoved(panel); return; }
    if (!resp.ok) return;
    const holder = document.createElement("template");
    holder.innerHTML = await resp.text();
    const fresh = holder.content.querySelector("#details-panel");
    if (!fresh) return;
    const before = counters(panel);
    const oldForms = panel.querySelector(".panel-forms");
    const newForms = fresh.querySelector(".panel-forms");
    if (busy(oldForms) && newForms) newForms.replaceWith(oldForms);
    panel.replaceWith(fresh);
    for (const [key, packets] of counters(fresh)) {
      if (before.has(key) && packets > before.get(key)) {
        fresh.querySelector(`.rule-item[data-rule-key="${CSS.escape(key)}"] .rule-packets`).classList.add("counters-moved");
      }
    }
    stamp(fresh);
    if (window.htmx && !fresh.contains(oldForms)) window.htmx.process(fresh);
  } catch (err) {
    // the live badge already says when the server is unreachable; try again next time
  } finally {
    asking = false;
  }
}

function panelFollows(delta) {
  const panel = openPanel();
  if (!panel) return;
  if ((delta.removed || []).includes(panel.dataset.elementId)) { markRemoved(panel); return; }
  clearTimeout(panelTimer);
  panelTimer = setTimeout(refreshPanel, SETTLE_MS);
}

setInterval(() => { if (document.visibilityState === "visible") refreshPanel(); }, COUNTERS_MS);

// ---- the forms' choices ----------------------------------------------------------------------------

let choicesTimer = null;

function fill(select, names) {
  const chosen = select.value;
  const keep = [...select.options].filter((o) => o.value === "");  // "choose a …"
  const options = names.map((name) => new Option(name, name, false, name === chosen));
  select.replaceChildren(...keep, ...options);
  select.value = names.includes(chosen) ? chosen : "";
}

async function refreshChoices() {
  const selects = document.querySelectorAll("select[data-choices]");
  if (!selects.length) return;
  const resp = await session.fetch("/forms/choices", { headers: { Accept: "application/json" } });
  if (!resp.ok) return;
  const found = await resp.json();
  selects.forEach((select) => {
    const names = found[select.dataset.choices];
    if (Array.isArray(names)) fill(select, names);  // keeps what is chosen
  });
}

function choicesFollow(delta) {
  if (!(delta.added || []).length && !(delta.removed || []).length) return;
  clearTimeout(choicesTimer);
  choicesTimer = setTimeout(refreshChoices, SETTLE_MS);
}

document.addEventListener("bridgescope:delta", (evt) => {
  const delta = evt.detail || {};
  panelFollows(delta);
  choicesFollow(delta);
});

// ---- field errors and focus ------------------------------------------------------------------------

function clearError(evt) {
  const field = evt.target.closest && evt.target.closest(".field.has-error");
  if (!field || !String(evt.target.value || "").trim()) return;
  field.classList.remove("has-error");
  field.querySelectorAll(".field-error").forEach((p) => p.remove());
  evt.target.removeAttribute("aria-invalid");
  evt.target.removeAttribute("aria-describedby");
}
document.addEventListener("input", clearError);
document.addEventListener("change", clearError);

// The form that was just submitted, and with which button: after htmx swaps its answer in,
// focus goes to the first marked field, else the next button to press, else the result.
let submitted = null;
document.addEventListener("submit", (evt) => {
  if (evt.target.id) submitted = { id: evt.target.id, intent: evt.submitter ? evt.submitter.value : "" };
}, true);

function focusAfterSubmit() {
  if (!submitted) return;
  const form = byId(submitted.id);
  const intent = submitted.intent;
  submitted = null;
  if (!form) return;
  const target = form.querySelector("[aria-invalid='true']")
    || form.querySelector("button[value='confirm'], button[value='confirm-remove']")
    || (intent === "preview" && form.querySelector(".btn-primary"))
    || form.querySelector(".outcome-message");
  if (target) target.focus();
}
document.addEventListener("htmx:after:settle", focusAfterSubmit);
