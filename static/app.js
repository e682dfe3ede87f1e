// bridgescope dashboard: the live topology graph.
//
// One event stream per tab (read with fetch, with this tab's session: see session.js): the
// server sends the whole graph on (re)connect, then deltas.
// Elements arrive with server-computed positions (preset layout), so updates never re-run a
// global layout: existing nodes stay where the user saw them, newcomers land where the server
// put them (next to their bridge) or, after a client-side "Tidy", next to a neighbour.
// The Cytoscape instance lives at window.cy for automation and tests.

/* global cytoscape, cytoscapeFcose, htmx */

const BIG_GRAPH = 1500; // elements: above this, cheaper rendering while panning/zooming
const COLLAPSE_AT = 120;
const SMALL_GRAPH = 400; // visible elements: up to this, the first picture is laid out by fcose // namespaces: above this, start collapsed
const FLASH_MS = 1600;

const byId = (id) => document.getElementById(id);
const session = window.bridgescopeSession;
const container = byId("topology"); // not id="cy": that would shadow window.cy
const liveBadge = byId("live");
const statusLine = byId("graph-status");

const state = {
  version: null,
  source: null, // the live event stream (session.eventStream)
  relaidOut: false, // after fcose, server positions no longer match the picture
  showLoopback: false,
  showUnrelated: !container.dataset.focusHost,
  unrelatedCount: 0,
  collapsed: false,
  query: "",
};

cytoscape.use(cytoscapeFcose);

// ---- look ------------------------------------------------------------------------------------

function palette() {
  const css = getComputedStyle(document.documentElement);
  const v = (name) => css.getPropertyValue(name).trim();
  return {
    bg: v("--bg"), fg: v("--fg"), muted: v("--muted"), surface: v("--surface"),
    host: v("--c-host"), ns: v("--c-ns"), nsBorder: v("--c-ns-border"),
    bridge: v("--c-bridge"), veth: v("--c-veth"), physical: v("--c-physical"),
    loopback: v("--c-loopback"), pf: v("--c-pf"), masq: v("--c-masq"),
    edge: v("--c-edge"), flash: v("--c-flash"), match: v("--c-match"), down: v("--c-down"),
  };
}

function styleSheet(p) {
  return [
    { selector: "node", style: {
      "label": "data(display)", "font-size": 11, "color": p.fg, "text-wrap": "wrap",
      "text-max-width": 140, "min-zoomed-font-size": 7, "text-valign": "bottom", "text-margin-y": 4,
      "background-color": p.physical, "border-width": 1, "border-color": p.surface,
      "width": 26, "height": 26, "font-family": "system-ui, sans-serif",
    } },
    { selector: "node:parent", style: {
      "shape": "round-rectangle", "background-color": p.ns, "background-opacity": 0.55,
      "border-color": p.nsBorder, "border-width": 1.5, "padding": 14,
      "text-valign": "top", "text-halign": "center", "text-margin-y": -4, "font-weight": 600,
      "color": p.muted, "font-size": 12, "text-events": "yes",
    } },
    { selector: 'node[kind = "namespace"]', style: {
      "shape": "round-rectangle", "background-color": p.ns, "border-color": p.nsBorder,
      "border-width": 1.5, "color": p.muted,
    } },
    { selector: 'node[kind = "namespace"][?is_host]', style: {
      "border-color": p.host, "border-width": 2.5, "background-opacity": 0.25, "color": p.host,
      "font-size": 13,
    } },
    { selector: 'node[kind = "bridge"]', style: {
      "shape": "round-rectangle", "width": 54, "height": 26, "background-color": p.bridge,
      "font-weight": 600,
    } },
    { selector: 'node[kind = "veth"]', style: { "shape": "ellipse", "background-color": p.veth, "width": 18, "height": 18 } },
    { selector: 'node[kind = "loopback"]', style: { "shape": "ellipse", "background-color": p.loopback, "width": 12, "height": 12 } },
    { selector: 'node[kind = "physical"]', style: { "shape": "round-tag", "background-color": p.physical, "width": 30, "height": 30 } },
    { selector: 'node[kind = "portforward"]', style: {
      "shape": "tag", "background-color": p.pf, "width": 30, "height": 22, "color": p.fg,
      "font-weight": 600,
    } },
    { selector: 'node[kind = "masquerade"]', style: {
      "shape": "hexagon", "background-color": p.masq, "width": 26, "height": 24,
    } },
    { selector: 'node[state = "down"]', style: {
      "background-color": p.down, "border-style": "dashed", "border-color": p.down, "border-width": 2,
    } },
    { selector: "edge", style: {
      "width": 1.5, "line-color": p.edge, "curve-style": "bezier", "target-arrow-shape": "none",
      "font-size": 10, "color": p.fg, "min-zoomed-font-size": 8, "text-background-color": p.bg,
      "text-background-opacity": 0.85, "text-background-padding": 2,
    } },
    { selector: 'edge[kind = "veth"]', style: { "width": 3, "line-color": p.veth } },
    { selector: 'edge[kind = "port"], edge[kind = "member"], edge[kind = "bridge"], edge[kind = "master"]',
      style: { "width": 1.5, "line-color": p.bridge, "line-style": "solid" } },
    { selector: 'edge[kind = "portforward"], edge[kind = "forward"], edge[kind = "dnat"]', style: {
      "width": 2.5, "line-color": p.pf, "target-arrow-shape": "triangle", "target-arrow-color": p.pf,
      "label": "data(display)", "line-style": "solid",
    } },
    { selector: 'edge[kind = "masquerade"], edge[kind = "snat"]', style: {
      "width": 2, "line-color": p.masq, "line-style": "dashed", "target-arrow-shape": "triangle",
      "target-arrow-color": p.masq,
    } },
    { selector: ".collapsed-edge", style: { "width": 2, "line-color": p.edge, "line-style": "dotted" } },
    { selector: ".collapsed", style: { "shape": "round-rectangle", "width": 46, "height": 26, "background-opacity": 0.9 } },
    { selector: ".hidden, .collapse-hidden, .unrelated", style: { "display": "none" } },
    { selector: ".faded", style: { "opacity": 0.18 } },
    { selector: ".match", style: { "border-color": p.match, "border-width": 4, "line-color": p.match } },
    { selector: ".flash", style: {
      // No style transition: animating it would redraw the whole graph for every frame.
      "border-color": p.flash, "border-width": 5, "line-color": p.flash, "target-arrow-color": p.flash,
    } },
    { selector: ":selected", style: { "border-color": p.match, "border-width": 4, "line-color": p.match, "overlay-opacity": 0 } },
  ];
}

// Label text: the server's label, plus what a reader looks for (first address, owner, ports).
function displayLabel(d, group) {
  if (group === "edges") return d.label || "";
  const label = d.label || d.name || d.id;
  if (d.kind === "namespace") {
    return d.owner && d.owner !== "unknown" && !d.is_host ? `${label} · ${d.owner}` : label;
  }
  const addrs = Array.isArray(d.addresses) ? d.addresses.filter((a) => !a.includes(":")) : [];
  return addrs.length ? `${label}\n${addrs[0]}` : label;
}

function prepared(ele) {
  const copy = { group: ele.group, data: { ...ele.data } };
  if (ele.position) copy.position = { ...ele.position };
  copy.data.display = displayLabel(copy.data, ele.group);
  const classes = [];
  if (copy.data.kind === "loopback" && !state.showLoopback) classes.push("hidden");
  copy.classes = classes.join(" ");
  return copy;
}

// ---- the Cytoscape instance ---------------------------------------------------------------------

function makeCy(count) {
  const big = count > BIG_GRAPH;
  const cy = cytoscape({
    container, elements: [], style: styleSheet(palette()), layout: { name: "preset" },
    minZoom: 0.02, maxZoom: 4, boxSelectionEnabled: false,
    textureOnViewport: big, hideEdgesOnViewport: big, pixelRatio: big ? 1 : "auto",
  });
  cy.on("tap", "node, edge", (evt) => showDetails(evt.target.id()));
  cy.on("dbltap", "node:parent, node.collapsed", (evt) => toggleOne(evt.target));
  window.cy = cy;
  return cy;
}

function flash(eles) {
  eles.addClass("flash");
  setTimeout(() => eles.removeClass("flash"), FLASH_MS);
}

// Where to put an element the picture has never seen.
function placeNear(cy, ele, incoming) {
  if (ele.position && !state.relaidOut) return ele.position;
  const d = ele.data;
  const jitter = () => (Math.random() - 0.5) * 50;
  const anchorOf = (id) => {
    const n = cy.getElementById(id);
    return n.nonempty() ? n.position() : null;
  };
  const neighbour = incoming.find((e) => e.group === "edges" && (e.data.source === d.id || e.data.target === d.id));
  const other = neighbour && (neighbour.data.source === d.id ? neighbour.data.target : neighbour.data.source);
  const anchor = (other && anchorOf(other)) || (d.parent && anchorOf(d.parent)) || ele.position;
  if (!anchor) return { x: jitter(), y: jitter() };
  return { x: anchor.x + 60 + jitter(), y: anchor.y + 40 + jitter() };
}

function addElements(cy, incoming) {
  const nodes = incoming.filter((e) => e.group === "nodes");
  // Parents before children, so Cytoscape can attach each child on the spot.
  const depth = (e) => { let n = 0, p = e.data.parent; const ids = new Map(nodes.map((x) => [x.data.id, x]));
    while (p && ids.has(p) && n < 8) { n += 1; p = ids.get(p).data.parent; } return n; };
  nodes.sort((a, b) => depth(a) - depth(b));
  const added = cy.collection();
  for (const n of nodes) {
    if (cy.getElementById(n.data.id).nonempty()) continue;
    const el = prepared(n);
    if (el.data.parent && cy.getElementById(el.data.parent).empty()) delete el.data.parent;
    el.position = placeNear(cy, n, incoming);
    added.merge(cy.add(el));
  }
  for (const e of incoming.filter((x) => x.group === "edges")) {
    const d = e.data;
    if (cy.getElementById(d.id).nonempty()) continue;
    if (cy.getElementById(d.source).empty() || cy.getElementById(d.target).empty()) continue;
    added.merge(cy.add(prepared(e)));
  }
  return added;
}

function changeElement(cy, ele) {
  const existing = cy.getElementById(ele.data.id);
  if (existing.empty()) return addElements(cy, [ele]);
  const next = prepared(ele).data;
  if (existing.isEdge()) {
    // Cytoscape cannot re-point an edge through data(): replace it.
    if (existing.data("source") !== next.source || existing.data("target") !== next.target) {
      existing.remove();
      return addElements(cy, [ele]);
    }
    existing.data(next);
    return existing;
  }
  if (existing.isNode() && (existing.data("parent") || null) !== (next.parent || null)
      && (!next.parent || cy.getElementById(next.parent).nonempty())) {
    existing.move({ parent: next.parent || null });
  }
  existing.data(next);
  return existing;
}

// The whole graph: first paint, or a resync after a reconnect (diffed, positions kept).
function applyGraph(event) {
  const elements = event.elements || [];
  let cy = window.cy;
  const first = !cy;
  if (first) cy = makeCy(elements.length);
  const t0 = performance.now();
  let touched = cy.collection();
  cy.batch(() => {
    const wanted = new Set(elements.map((e) => e.data.id));
    cy.elements().filter((e) => !e.hasClass("collapsed-edge") && !wanted.has(e.id())
      && !(e.data("kind") === "loopback" && state.showLoopback)).remove();
    const fresh = elements.filter((e) => cy.getElementById(e.data.id).empty());
    touched = addElements(cy, fresh);
    if (!first) {
      for (const e of elements) {
        const old = cy.getElementById(e.data.id);
        if (old.nonempty() && !touched.contains(old) && JSON.stringify(old.data()) !== JSON.stringify(prepared(e).data)) {
          touched.merge(changeElement(cy, e));
        }
      }
    }
  });
  state.version = event.version;
  state.unrelatedCount = markUnrelated(cy);
  const namespaces = cy.nodes('[kind = "namespace"]').not(".unrelated").length;
  if (first) {
    if (namespaces > COLLAPSE_AT) setCollapsed(true);
    if (cy.elements(":visible").length <= SMALL_GRAPH) tidy(false);
    cy.fit(cy.elements(":visible"), 30);
    window.bridgescopeFirstRender = performance.now();
  } else {
    if (state.collapsed) rebuildCollapse(cy);
    flash(touched);
  }
  applySearch();
  const hidden = state.showUnrelated || !state.unrelatedCount ? "" : ` (${state.unrelatedCount} unrelated hidden)`;
  statusLine.textContent = `${namespaces} namespaces${hidden}, ${cy.nodes(":visible").length} nodes, ${cy.edges(":visible").length} edges · v${event.version} · ${Math.round(performance.now() - t0)} ms`;
}

function applyDelta(delta) {
  const cy = window.cy;
  if (!cy || state.version === null || delta.version !== state.version + 1) {
    reconnect("missed an update; resynchronising");
    return;
  }
  let touched = cy.collection();
  const refold = state.collapsed && touchesFolded(cy, delta);
  cy.batch(() => {
    for (const id of delta.removed || []) cy.getElementById(id).remove();
    touched = touched.union(addElements(cy, delta.added || []));
    for (const e of delta.changed || []) touched = touched.union(changeElement(cy, e));
  });
  state.version = delta.version;
  const structural = (delta.added || []).length || (delta.removed || []).length;
  if (structural) {  // data-only changes cannot change what is related or folded
    state.unrelatedCount = markUnrelated(cy);
    if (refold || (state.collapsed && touchesFolded(cy, delta))) rebuildCollapse(cy);
  }
  flash(touched);
  applySearch();
  window.bridgescopeLastDelta = { version: delta.version, at: performance.now() };
  // panels.js (open panel, status line, form choices) follows the kernel from here
  document.dispatchEvent(new CustomEvent("bridgescope:delta", { detail: delta }));
}

// ---- the live stream -----------------------------------------------------------------------------

function setLive(mode) {
  liveBadge.dataset.state = mode;
  liveBadge.textContent = mode;
}

function connect() {
  state.source = session.eventStream(container.dataset.events, {
    open: () => setLive("live"),
    down: () => setLive("reconnecting"),
    event: (name, data) => {
      if (name === "graph") applyGraph(JSON.parse(data));
      else if (name === "delta") applyDelta(JSON.parse(data));
      // other modules (doctor.js) follow the same stream
      document.dispatchEvent(new CustomEvent("bridgescope:event", { detail: { name, data } }));
    },
  });
}

function reconnect(why) {
  state.version = null;
  setLive("reconnecting");
  statusLine.textContent = why;
  state.source.restart();
}

// ---- details panel -------------------------------------------------------------------------------

function showDetails(id) {
  const url = container.dataset.details + encodeURIComponent(id);
  htmx.ajax("GET", url, { target: "#details", swap: "innerHTML" });
}

document.addEventListener("click", (evt) => {
  const link = evt.target.closest && evt.target.closest("#details a.element-link");
  if (!link || !window.cy) return;
  evt.preventDefault();
  const ele = window.cy.getElementById(link.dataset.elementId);
  if (ele.nonempty()) {
    window.cy.elements().unselect();
    ele.select();
    window.cy.animate({ center: { eles: ele }, duration: 250 });
  }
  showDetails(link.dataset.elementId);
});

// ---- search --------------------------------------------------------------------------------------

function haystack(ele) {
  const d = ele.data();
  const parts = [d.id, d.label, d.name, d.display, d.owner, d.mac, d.host_port, d.to_port, d.to_ip, d.host_ip];
  if (Array.isArray(d.addresses)) parts.push(...d.addresses);
  return parts.filter((x) => x !== undefined && x !== null).join(" ").toLowerCase();
}

function applySearch() {
  const cy = window.cy;
  if (!cy) return;
  const q = state.query.trim().toLowerCase();
  cy.elements(".faded, .match").removeClass("faded match");
  const count = byId("search-count");
  if (!q) { count.textContent = ""; return; }
  const words = q.split(/\s+/);
  const hits = cy.elements().filter((e) => e.visible() && words.every((w) => haystack(e).includes(w)));
  const keep = hits.union(hits.ancestors()).union(hits.connectedNodes());
  cy.elements().not(keep).not(hits.connectedEdges()).addClass("faded");
  hits.addClass("match");
  count.textContent = `${hits.length} found`;
}

// ---- namespaces unrelated to the host ---------------------------------------------------------------
// With --netns, the machine's other namespaces (the real root, other labs) have nothing to do with
// the host being shown; they are hidden unless asked for. Related = reachable from the host box
// through links and bridge ports.

function markUnrelated(cy) {
  const host = cy.nodes('[kind = "namespace"][?is_host]');
  if (host.empty()) return 0;
  // Walk namespace to namespace over veth/bridge-port wires; each namespace is expanded once,
  // so this stays linear in nodes + edges (it runs after every delta).
  const seen = new Set([host.id()]);
  const todo = [host[0]];
  while (todo.length) {
    todo.pop().children().forEach((child) => {
      child.connectedEdges().forEach((e) => {
        const kind = e.data("kind");  // plain test: a selector here would be parsed per child
        if (kind !== "veth" && kind !== "member") return;
        const other = e.source().id() === child.id() ? e.target() : e.source();
        const ns = other.parent();
        if (ns.nonempty() && !seen.has(ns.id())) {
          seen.add(ns.id());
          todo.push(ns[0]);
        }
      });
    });
  }
  const unrelated = cy.nodes('[kind = "namespace"]').filter((n) => !seen.has(n.id()));
  // Touch only elements whose status changes: a class change restyles and redraws.
  const want = state.showUnrelated ? cy.collection() : unrelated.union(unrelated.descendants());
  const have = cy.elements(".unrelated");
  cy.batch(() => {
    have.difference(want).removeClass("unrelated");
    want.difference(have).addClass("unrelated");
  });
  return unrelated.length;
}

// ---- collapse namespaces (skydive#617: one box per container at scale) ------------------------------

function collapsible(cy) {
  return cy.nodes('[kind = "namespace"]').filter((n) => !n.data("is_host"));
}

function rebuildCollapse(cy) {
  cy.batch(() => {
    cy.edges(".collapsed-edge").remove();
    cy.elements(".collapse-hidden").removeClass("collapse-hidden");
    cy.nodes(".collapsed").removeClass("collapsed");
    if (state.collapsed) collapseNow(cy);
  });
}

function collapseNow(cy) {
    const rep = new Map();
    for (const ns of collapsible(cy).filter((n) => !n.hasClass("expanded") && !n.hasClass("unrelated"))) {
      ns.addClass("collapsed");
      ns.descendants().forEach((c) => { rep.set(c.id(), ns.id()); c.addClass("collapse-hidden"); });
    }
    // A host-side veth whose peer is hidden goes too: the bridge then links straight to the box.
    cy.edges('[kind = "veth"]').forEach((e) => {
      const [s, t] = [e.data("source"), e.data("target")];
      const inner = rep.has(s) ? s : rep.has(t) ? t : null;
      const outer = inner === s ? t : s;
      if (inner && !rep.has(outer)) {
        rep.set(outer, rep.get(inner));
        cy.getElementById(outer).addClass("collapse-hidden");
      }
    });
    const seen = new Set();
    cy.edges().not(".collapsed-edge").forEach((e) => {
      const s = rep.get(e.data("source")) || e.data("source");
      const t = rep.get(e.data("target")) || e.data("target");
      const key = [s, t].sort().join("|");
      if (s === t || seen.has(key) || (!rep.has(e.data("source")) && !rep.has(e.data("target")))) return;
      seen.add(key);
      cy.add({ group: "edges", data: { id: `collapsed:${key}`, source: s, target: t, kind: e.data("kind"), display: e.data("display") || "" }, classes: "collapsed-edge" });
    });
}

// Does a delta add or remove anything inside (or wired to) a folded namespace? Only then do the
// proxy edges need rebuilding; a new bridge on the host, say, leaves them as they are.
function touchesFolded(cy, delta) {
  const folded = (id) => {
    const e = cy.getElementById(id);
    return e.nonempty() && (e.hasClass("collapse-hidden") || e.hasClass("collapsed"));
  };
  const parentFolded = (d) => d.parent && (folded(d.parent) || cy.getElementById(d.parent).empty());
  return (delta.removed || []).some(folded) || (delta.added || []).some((e) =>
    e.group === "nodes" ? (e.data.kind === "namespace" || parentFolded(e.data))
      : folded(e.data.source) || folded(e.data.target));
}

function setCollapsed(on) {
  state.collapsed = on;
  byId("collapse-ns").checked = on;
  if (window.cy) rebuildCollapse(window.cy);
}

function toggleOne(node) {
  if (!state.collapsed) return;
  node.toggleClass("expanded", node.hasClass("collapsed"));
  rebuildCollapse(window.cy);
}

// ---- loopback on demand ------------------------------------------------------------------------------

async function setLoopback(on) {
  state.showLoopback = on;
  const cy = window.cy;
  if (!cy) return;
  if (!on) {
    cy.nodes('[kind = "loopback"]').addClass("hidden");
    return;
  }
  cy.nodes('[kind = "loopback"]').removeClass("hidden");
  // The live stream may leave loopback out; fetch it once from the graph API.
  const resp = await session.fetch("/api/graph?loopback=1");
  if (!resp.ok) return;
  const all = await resp.json();
  const lo = all.filter((e) => e.data.kind === "loopback");
  cy.batch(() => addElements(cy, lo.map((e) => ({ ...e }))));
}

// fcose over what is visible: the first picture of a small graph, or on demand. Positions from the
// server stop matching after this, so newcomers are then placed next to a neighbour instead.
function tidy(animate) {
  const cy = window.cy;
  if (!cy) return;
  const eles = cy.elements(":visible");
  state.relaidOut = true;
  eles.layout({ name: "fcose", quality: eles.length > BIG_GRAPH ? "draft" : "default",
    randomize: true, animate: animate && eles.length < 400, fit: true, padding: 30,
    nodeDimensionsIncludeLabels: true, packComponents: true, idealEdgeLength: 70,
    nodeRepulsion: 6000, nestingFactor: 0.2 }).run();
}

// ---- toolbar -------------------------------------------------------------------------------------------

function download(href, name) {
  const a = document.createElement("a");
  a.href = href; a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
}

function wireToolbar() {
  byId("fit").addEventListener("click", () => window.cy && window.cy.fit(window.cy.elements(":visible"), 30));
  const zoomBy = (f) => {
    const cy = window.cy;
    if (cy) cy.zoom({ level: cy.zoom() * f, renderedPosition: { x: cy.width() / 2, y: cy.height() / 2 } });
  };
  byId("zoom-in").addEventListener("click", () => zoomBy(1.25));
  byId("zoom-out").addEventListener("click", () => zoomBy(0.8));
  byId("show-loopback").addEventListener("change", (e) => setLoopback(e.target.checked));
  byId("collapse-ns").addEventListener("change", (e) => setCollapsed(e.target.checked));
  const unrelatedBox = byId("show-unrelated");
  unrelatedBox.checked = state.showUnrelated;
  unrelatedBox.addEventListener("change", (e) => {
    state.showUnrelated = e.target.checked;
    if (!window.cy) return;
    markUnrelated(window.cy);
    if (state.collapsed) rebuildCollapse(window.cy);
    window.cy.fit(window.cy.elements(":visible"), 30);
  });
  byId("tidy").addEventListener("click", () => tidy(true));
  const json = byId("export-json");  // a plain link would go without the session header
  if (json) json.addEventListener("click", async (evt) => {
    evt.preventDefault();
    const resp = await session.fetch(json.href, { headers: { Accept: "application/json" } });
    if (!resp.ok) return;
    const url = URL.createObjectURL(await resp.blob());
    download(url, "bridgescope-topology.json");
    setTimeout(() => URL.revokeObjectURL(url), 5000);
  });
  byId("export-png").addEventListener("click", async () => {
    const cy = window.cy;
    if (!cy) return;
    const blob = await cy.png({ output: "blob-promise", full: true, maxWidth: 4000, maxHeight: 4000, bg: palette().bg });
    const url = URL.createObjectURL(blob);
    download(url, "bridgescope-topology.png");
    setTimeout(() => URL.revokeObjectURL(url), 5000);
  });
  let timer = null;
  byId("graph-search").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.query = e.target.value; applySearch(); }, 120);
  });
  byId("graph-search").addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || !window.cy) return;
    state.query = e.target.value; applySearch();
    const hits = window.cy.elements(".match");
    if (hits.nonempty()) window.cy.animate({ fit: { eles: hits, padding: 60 }, duration: 300 });
  });
  document.addEventListener("bridgescope:theme", () => window.cy && window.cy.style(styleSheet(palette())));
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change",
    () => window.cy && window.cy.style(styleSheet(palette())));
}

wireToolbar();
connect();
