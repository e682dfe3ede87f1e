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
  const wanted = new Map();
  for (const f of findings) for (const id of f.objects) if (!wanted.has(id)) wanted.set(id, `bs-sev-${f.severity}`);
  // Only elements whose badge changes are touched, in one batch: a class change restyles the
  // element, and doctor events come every few seconds with the same findings.
  cy.batch(() => {
    cy.elements(SEVERITIES.map((s) => `.bs-sev-${s}`).join(", ")).forEach((ele) => {
      for (const s of SEVERITIES) if (ele.hasClass(`bs-sev-${s}`) && wanted.get(ele.id()) !== `bs-sev-${s}`) ele.removeClass(`bs-sev-${s}`);
    });
    for (const [id, cls] of wanted) {
      const ele = cy.getElementById(id);
      if (ele.nonempty() && !ele.hasClass(cls)) ele.addClass(cls);
    }
  });
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
  else if (name === "graph") badge(lastFindings);
  else if (name === "delta") badge(lastFindings);
});

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
