// bridgescope: the doctor everywhere. The "Doctor" link in the nav carries a live count of
// errors and warnings, and the dashboard's graph badges the objects findings concern. Pages
// with a live stream get the server's "doctor" events (app.js re-dispatches every stream event
// as a `bridgescope:event` DOM event); pages without one ask doctor.json now and then.
// The reachability verdicts of the same event are kept at window.bridgescopeVerdicts.

const link = document.getElementById("doctor-link");
const count = document.getElementById("doctor-count");
const SEVERITIES = ["error", "warning", "info"];
const POLL_MS = 1500;
let fromStream = false;

function showCounts(counts) {
  if (!link || !count) return;
  const errors = counts.error || 0;
  const warnings = counts.warning || 0;
  const total = errors + warnings;
  count.hidden = total === 0;
  count.textContent = String(total);
  count.className = `nav-count ${errors ? "nav-count-error" : "nav-count-warning"}`;
  link.dataset.errors = String(errors);
  link.dataset.warnings = String(warnings);
  link.title = total ? `${errors} error(s), ${warnings} warning(s)` : "no problems found";
}

function badge(findings) {
  const cy = window.cy;
  // the workshop pages badge the graph themselves (workshop.js)
  if (!cy || document.body.classList.contains("ws-page")) return;
  // One batch: each class change outside it restyles the element's whole compound family
  // (host box and bridge included) at once, so a finding per container grew with the square.
  cy.batch(() => {
    cy.elements().removeClass(SEVERITIES.map((s) => `bs-sev-${s}`).join(" "));
    for (const f of findings) {
      for (const id of f.objects) cy.getElementById(id).addClass(`bs-sev-${f.severity}`);
    }
  });
}

function styleBadges() {
  const cy = window.cy;
  if (!cy) return;
  cy.style()
    .selector(".bs-sev-error").style({ "border-width": 5, "border-color": "#dc2626", "border-style": "double" })
    .selector(".bs-sev-warning").style({ "border-width": 4, "border-color": "#f59e0b", "border-style": "double" })
    .update();
}

let lastFindings = [];

function apply(event) {
  showCounts(event.counts || {});
  lastFindings = event.findings || [];
  window.bridgescopeVerdicts = { verdicts: event.verdicts || {}, checkedAt: event.checked_at };
  window.bridgescopeDoctor = event;
  badge(lastFindings);
  document.dispatchEvent(new CustomEvent("bridgescope:doctor", { detail: event }));
}

document.addEventListener("bridgescope:event", (evt) => {
  const { name, data } = evt.detail;
  if (name === "doctor") { fromStream = true; apply(JSON.parse(data)); }
  else if (name === "graph") { styleBadges(); badge(lastFindings); }
  else if (name === "delta") badge(lastFindings);
});
document.addEventListener("bridgescope:theme", () => setTimeout(() => { styleBadges(); badge(lastFindings); }, 0));

async function poll() {
  if (fromStream || !link) return;
  try {
    const resp = await window.bridgescopeSession.fetch(link.dataset.counts, { headers: { Accept: "application/json" } });
    if (resp.ok) apply(await resp.json());
  } catch (e) { /* the next poll tries again */ }
}

if (link) {
  poll();
  setInterval(poll, POLL_MS);
}
