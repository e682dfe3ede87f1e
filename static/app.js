// bridgescope dashboard: the live topology graph.
//
// One event stream per tab (read with fetch, with this tab's session: see session.js): the
// server sends the whole graph on (re)connect, then deltas.
// Every element arrives with its server-computed position (the Docker bridge diagram; see
// collector/render/graph.py), so every tab and every reload shows the same picture and the
// client never runs a layout. A bridge whose containers would make labels unreadable at fit
// is folded into one summary node: its elements then stay out of Cytoscape (kept here, still
// searchable) until it is expanded.
// The Cytoscape instance lives at window.cy for automation and tests; what each box holds at
// window.bridgescopeBoxes (boxes.js: boxes are plain nodes, not Cytoscape compounds).

/* global cytoscape, htmx */

import { Boxes, EDGE_Z, FITTED, LEAF_Z } from "./boxes.js";

const BIG_GRAPH = 1500; // elements: above this, cheaper rendering while panning/zooming
const FONT = 13; // label size in model units
const LEGIBLE_PX = 11; // smallest label size on screen at fit; bridges fold to keep it
const READ_ZOOM = 1.3; // search zooms in to here, never further
const FIT_PAD = 30;
const FOLD_GAIN = 2; // containers a fold node takes the room of
const FLASH_MS = 1600;

const byId = (id) => document.getElementById(id);
const session = window.bridgescopeSession;
const container = byId("topology"); // not id="cy": that would shadow window.cy
const liveBadge = byId("live");
const statusLine = byId("graph-status");

const state = {
  version: null,
  source: null, // the live event stream (session.eventStream)
  showLoopback: false,
  showUnrelated: !container.dataset.focusHost,
  unrelatedCount: 0,
  foldAll: false,
  folded: new Map(), // bridge id -> Map(element id -> element), kept out of Cytoscape
  away: new Map(), // unrelated namespaces' elements while they are not shown, kept out too
  tooBig: new Set(), // bridges folded because the drawn picture proved too small to read
  // ?fold=never: every container drawn whatever the size (the benchmark's "expanded" case)
  neverFold: new URLSearchParams(window.location.search).get("fold") === "never",
  expanded: new Set(), // bridges the user opened
  home: new Map(), // node id -> server position (Tidy puts nodes back there)
  query: "",
  hits: [],
  hitIndex: -1,
};

// ---- look ------------------------------------------------------------------------------------

// Colours come from the page's CSS variables as the body sees them, so the theme and
// Present mode (which sets its own on <body>) are followed.
function palette() {
  const css = getComputedStyle(document.body);
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
    // Each element gets only the properties it needs: no text ones for the unlabelled (bridge
    // ports, edges but the way out), none that repeat Cytoscape's defaults. Boxes are drawn by
    // depth under the edges, leaves over them (boxes.js sets a box's z-index and size).
    { selector: "node", style: {
      "background-color": p.physical, "border-width": 1, "border-color": p.surface, "width": 18, "height": 18,
      "z-index-compare": "manual", "z-index": LEAF_Z,
    } },
    { selector: "node[!port]", style: {
      "label": "data(display)", "font-size": FONT, "color": p.fg, "text-wrap": "wrap",
      "text-max-width": 160, "min-zoomed-font-size": 6, "text-valign": "bottom", "text-margin-y": 3,
      "font-family": "system-ui, sans-serif", "line-height": 1.15,
    } },
    { selector: "node.holds", style: {
      "shape": "round-rectangle", "background-color": p.ns,
      "border-color": p.nsBorder, "border-width": 1.5, "padding": 10,
      "text-valign": "top", "text-margin-y": -3, "font-weight": 600, "text-events": "yes",
    } },
    { selector: 'node[kind = "namespace"]', style: {
      "shape": "round-rectangle", "background-color": p.ns, "border-color": p.nsBorder, "border-width": 1.5,
    } },
    // a container's name wraps inside its grid cell rather than widen its box over its neighbours
    { selector: 'node[kind = "namespace"][?container]', style: { "text-max-width": 170, "text-overflow-wrap": "anywhere" } },
    { selector: 'node[kind = "namespace"][?is_host]', style: {
      "border-color": p.host, "border-width": 2.5, "background-color": p.bg, "padding": 24,
      "font-size": FONT + 2, "color": p.fg,
    } },
    { selector: 'node[kind = "bridge"]', style: {
      "shape": "round-rectangle", "width": 60, "height": 22, "background-color": p.bridge, "font-weight": 700,
    } },
    { selector: 'node[kind = "bridge"].holds', style: {
      "background-color": p.surface, "border-color": p.bridge, "border-width": 2.5, "padding": 12,
    } },
    { selector: 'node[kind = "veth"]', style: { "shape": "ellipse", "background-color": p.veth, "width": 16, "height": 16 } },
    { selector: "node[?port]", style: { "width": 12, "height": 12, "label": "" } },
    { selector: 'node[kind = "loopback"]', style: { "shape": "ellipse", "background-color": p.loopback, "width": 12, "height": 12 } },
    { selector: 'node[kind = "physical"], node[?uplink]', style: {
      "shape": "round-rectangle", "width": 30, "height": 22, "background-color": p.physical,
      "text-valign": "center", "text-halign": "right", "text-margin-x": 6, "text-margin-y": 0, "font-weight": 600,
    } },
    { selector: 'node[kind = "portforward"]', style: {
      "shape": "tag", "background-color": p.pf, "width": 22, "height": 16, "font-weight": 600,
    } },
    { selector: "node.fold", style: {
      "shape": "round-rectangle", "width": 150, "height": 40, "background-color": p.ns, "border-color": p.nsBorder,
      "border-width": 1.5, "text-valign": "center", "text-margin-y": 0, "font-weight": 600,
    } },
    { selector: 'node[state = "down"]', style: {
      "background-color": p.down, "border-style": "dashed", "border-color": p.down, "border-width": 2,
    } },
    { selector: "edge", style: {
      "width": 1.5, "line-color": p.edge, "curve-style": "straight", "z-index-compare": "manual", "z-index": EDGE_Z,
    } },
    { selector: 'edge[kind = "veth"]', style: { "width": 3, "line-color": p.veth } },
    { selector: 'edge[kind = "portforward"]', style: {
      "width": 2.5, "line-color": p.pf, "target-arrow-shape": "triangle", "target-arrow-color": p.pf,
    } },
    { selector: 'edge[kind = "masquerade"]', style: {
      "width": 2.5, "line-color": p.masq, "line-style": "dashed", "target-arrow-shape": "triangle",
      "target-arrow-color": p.masq, "label": "data(display)", "color": p.fg, "source-endpoint": "-50% -50%",
      "font-size": FONT - 1, "min-zoomed-font-size": 6, "text-background-color": p.bg,
      "text-background-opacity": 1, "text-background-padding": 2,
      "text-border-color": p.masq, "text-border-width": 1, "text-border-opacity": 1,
    } },
    { selector: ".hidden", style: { "display": "none" } },
    // other namespaces' names sit right of centre: the wire down the column's left stays clear
    { selector: 'node[kind = "namespace"][!is_host][!container].holds', style: { "text-margin-x": 30 } },
    { selector: "node[?side]", style: { "text-valign": "center", "text-halign": "right", "text-margin-x": 5, "text-margin-y": 0 } },
    { selector: 'node[kind = "bridge"].holds', style: { "text-max-width": 400 } },
    // a box's size and depth (boxes.js), over any size its kind has when it holds nothing
    { selector: "node.holds", style: { "width": "data(bw)", "height": "data(bh)", "z-index": "data(zd)" } },
    { selector: ".faded", style: { "opacity": 0.25 } },
    { selector: ".match", style: { "border-color": p.match, "border-width": 4, "line-color": p.match } },
    { selector: ".flash", style: {
      // No style transition: animating it would redraw the whole graph for every frame.
      "border-color": p.flash, "border-width": 5, "line-color": p.flash, "target-arrow-color": p.flash,
    } },
    // the doctor's badges (doctor.js sets the classes): here, not added once the graph is
    // drawn, since any change to the stylesheet re-matches every element against all of it
    { selector: ".bs-sev-error", style: { "border-width": 5, "border-color": "#dc2626", "border-style": "double" } },
    { selector: ".bs-sev-warning", style: { "border-width": 4, "border-color": "#f59e0b", "border-style": "double" } },
    { selector: ":selected", style: { "border-color": p.match, "border-width": 4, "line-color": p.match, "overlay-opacity": 0 } },
  ];
}

function restyle() {
  (window.cy || readyCy).style(styleSheet(palette()));
  document.dispatchEvent(new CustomEvent("bridgescope:restyled")); // pages that add styles add them again
  boxes.refit();
}

// Label text: the server's label, plus what a reader looks for (addresses).
function displayLabel(d, group) {
  if (group === "edges") return d.label || "";
  const label = d.label || d.name || d.id;
  if (d.kind === "namespace" || d.kind === "portforward") return label;
  const addrs = Array.isArray(d.addresses) ? d.addresses.filter((a) => !a.includes(":")) : [];
  if (d.kind === "bridge") return addrs.length ? `${label}  ${addrs.join(" ")}` : label;
  if (d.uplink || d.kind === "physical") return [label, ...addrs].join("\n");
  return addrs.length ? `${label}\n${addrs[0].split("/")[0]}` : label;
}

// What Cytoscape is given: the server's element with its display label, its box named `box`
// (a `parent` would make it a Cytoscape compound), and its classes.
function prepared(ele) {
  const copy = { group: ele.group, data: { ...ele.data } };
  if (copy.data.parent !== undefined) { copy.data.box = copy.data.parent; delete copy.data.parent; }
  if (ele.position) copy.position = { ...ele.position };
  copy.data.display = displayLabel(copy.data, ele.group);
  copy.classes = [ele.classes || "", copy.data.kind === "loopback" && !state.showLoopback ? "hidden" : ""].join(" ").trim();
  return copy;
}

// ---- the Cytoscape instance ---------------------------------------------------------------------

function makeCy() {
  const cy = cytoscape({
    container, elements: [], style: styleSheet(palette()), layout: { name: "preset" },
    minZoom: 0.02, maxZoom: 4, boxSelectionEnabled: false, autoungrabify: false,
  });
  cy.on("tap", "node, edge", (evt) => {
    if (evt.target.hasClass("fold")) { expand(evt.target.data("bridge")); return; }
    showDetails(evt.target.id());
  });
  // The first label Cytoscape measures pays for finding the font: done here too.
  cy.add({ group: "nodes", data: { id: "bridgescope-warm", display: "warm" } }).boundingBox();
  cy.remove("#bridgescope-warm");
  return cy;
}

function sameData(a, b) {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => JSON.stringify(a[k]) === JSON.stringify(b[k]));
}

// The server's element again, from a drawn one.
function asServer(ele) {
  const data = { ...ele.data() };
  if (data.box !== undefined) { data.parent = data.box; delete data.box; }
  for (const key of ["display", ...FITTED]) delete data[key];
  return { group: ele.group(), data, position: state.home.get(ele.id()) };
}

// A big picture pans and zooms on a snapshot of itself, edges hidden, at one pixel per pixel:
// options Cytoscape only takes when it is made, and the instance is made before the picture
// arrives, so they are set on its renderer.
function drawFast(cy) {
  const r = cy.renderer();
  r.textureOnViewport = true;
  r.hideEdgesOnViewport = true;
  r.forcedPixelRatio = 1;
  cy.resize();
}

// Made while the stream connects (asked for first, so the server builds the picture
// meanwhile): the first picture then costs only its own elements.
connect();
const readyCy = makeCy();
const boxes = window.bridgescopeBoxes = new Boxes(readyCy);

function flash(eles) {
  eles.addClass("flash");
  setTimeout(() => eles.removeClass("flash"), FLASH_MS);
}

function fitAll(cy, animate) {
  const eles = cy.elements(":visible");
  if (animate) cy.animate({ fit: { eles, padding: FIT_PAD }, duration: 250 });
  else cy.fit(eles, FIT_PAD);
}

// ---- folding: which bridge an element belongs to ------------------------------------------------

function bridgeIndex(elements) {
  const data = new Map();
  for (const e of elements) if (e.group === "nodes") data.set(e.data.id, e.data);
  const grid = new Map();
  for (const d of data.values()) {
    const p = d.parent ? data.get(d.parent) : undefined;
    if (p === undefined) continue;
    if (p.kind === "bridge") {
      if (d.kind === "namespace" || d.port) grid.set(d.id, p.id);
    } else if (p.kind === "namespace" && p.parent) {
      const up = data.get(p.parent);
      if (up !== undefined && up.kind === "bridge") grid.set(d.id, up.id);
    }
  }
  return (id) => grid.get(id) || null;
}

// The bridge whose grid an element is part of (container boxes, what is in them, its ports,
// the edges between them), or null.
function owningBridge(bridgeOf, e) {
  if (e.group === "nodes") return bridgeOf(e.data.id);
  const s = bridgeOf(e.data.source), t = bridgeOf(e.data.target);
  return s || t;
}

const NO_EXTENT = { x1: Infinity, y1: Infinity, x2: -Infinity, y2: -Infinity };
const grow = (bb, p) => ({ x1: Math.min(bb.x1, p.x), y1: Math.min(bb.y1, p.y), x2: Math.max(bb.x2, p.x), y2: Math.max(bb.y2, p.y) });
const above = (p, q) => p.y < q.y || (p.y === q.y && p.x < q.x);
const joined = (a, b) => ({ x1: Math.min(a.x1, b.x1), y1: Math.min(a.y1, b.y1), x2: Math.max(a.x2, b.x2), y2: Math.max(a.y2, b.y2) });

// Bridges to fold so that labels stay legible at fit in this viewport: the biggest first.
// (Unrelated namespaces never get here: partition keeps them apart first.)
function chooseFolds(elements, bridgeOf) {
  if (state.neverFold) return new Set();
  const w = Math.max(200, container.clientWidth), h = Math.max(200, container.clientHeight);
  const groups = new Map(); // bridge -> {count, first position, extent of all}
  let rest = NO_EXTENT;
  for (const e of elements) {
    if (e.group !== "nodes" || !e.position || e.data.kind === "loopback") continue;
    const b = bridgeOf(e.data.id);
    if (!b) { rest = grow(rest, e.position); continue; }
    const g = groups.get(b) || { count: 0, first: null, all: NO_EXTENT };
    if (!g.count) groups.set(b, g);
    g.count += 1;
    g.all = grow(g.all, e.position);
    if (e.data.kind === "namespace" && (!g.first || above(e.position, g.first))) g.first = e.position;
  }
  const zoomFor = (open) => {
    let bb = rest;
    // a folded bridge takes the room of its fold node, at its top-left container
    for (const [b, g] of groups) bb = open.has(b) || !g.first ? joined(bb, g.all) : grow(bb, g.first);
    // positions are centres: add what labels and box paddings take around them
    // (an optimistic guess: the drawn picture is checked after the fit, see applyGraph)
    return Math.min((w - 2 * FIT_PAD) / (bb.x2 - bb.x1 + 200), (h - 2 * FIT_PAD) / (bb.y2 - bb.y1 + 120));
  };
  const open = new Set(groups.keys());
  const bySize = [...groups.keys()].sort((a, b) => groups.get(b).count - groups.get(a).count);
  for (const b of bySize) {
    const must = state.foldAll || state.tooBig.has(b);
    if (!must && (state.expanded.has(b) || zoomFor(open) * FONT >= LEGIBLE_PX)) continue;
    // a fold node takes the room of two containers: folding one or two hides for nothing
    if (!must && groups.get(b).count <= FOLD_GAIN) continue;
    open.delete(b);
  }
  return new Set(bySize.filter((b) => !open.has(b)));
}

function foldNode(bridgeId, members) {
  let boxes = 0, first = null;
  for (const e of members.values()) {
    if (e.data.kind !== "namespace") continue;
    boxes += 1;
    const p = e.position;
    if (p && (!first || above(p, first))) first = p;
  }
  first = first || { x: 0, y: 0 };
  return { group: "nodes", classes: "fold", position: { x: first.x, y: first.y },
    data: { id: `fold:${bridgeId}`, kind: "fold", bridge: bridgeId, parent: bridgeId,
      display: `${boxes} containers\n(click to expand)`, label: `${boxes} containers` } };
}

// ---- adding and changing elements ------------------------------------------------------------------

// A port sits inside its bridge's box: the box is the membership, a line to it would cross
// labels, so the port -> bridge edge is never added.
const drawnEdge = (e) => e.data.kind !== "member";

function addElements(cy, incoming) {
  const nodes = incoming.filter((e) => e.group === "nodes");
  // Boxes before what they hold: a member whose box is not there is drawn outside any box.
  const ids = new Map(nodes.map((x) => [x.data.id, x]));
  const depth = (e) => { let n = 0, p = e.data.parent;
    while (p && ids.has(p) && n < 8) { n += 1; p = ids.get(p).data.parent; } return n; };
  nodes.sort((a, b) => depth(a) - depth(b));
  const adds = [];
  const have = (id) => cy.getElementById(id).nonempty() || ids.has(id);
  for (const n of nodes) {
    if (cy.getElementById(n.data.id).nonempty()) continue;
    const el = prepared(n);
    if (el.data.box && !have(el.data.box)) delete el.data.box;
    if (n.position) state.home.set(n.data.id, { ...n.position });
    adds.push(el);
  }
  for (const e of incoming.filter((x) => x.group === "edges" && drawnEdge(x))) {
    const d = e.data;
    if (cy.getElementById(d.id).nonempty() || !have(d.source) || !have(d.target)) continue;
    adds.push(prepared(e));
  }
  return adds.length ? cy.add(adds) : cy.collection();
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
  if ((existing.data("box") || null) !== (next.box || null)
      && (!next.box || cy.getElementById(next.box).nonempty())) {
    boxes.move(existing, next.box);
  }
  next.box = existing.data("box");
  if (ele.position) {
    state.home.set(ele.data.id, { ...ele.position });
    if (!existing.hasClass("holds")) existing.position(ele.position);
  }
  existing.data(next);
  boxes.touch(existing);
  return existing;
}

// Elements of namespaces unrelated to the host (hidden unless asked for).
function isAway(e) {
  if (state.showUnrelated) return false;
  const d = e.data;
  if (d.kind === "namespace") return d.related === false;
  if (e.group === "nodes") return state.away.has(d.parent) || state.away.has(d.netns);
  return state.away.has(d.source) || state.away.has(d.target);
}

// Splits elements into what Cytoscape draws and what folded bridges and hidden namespaces keep.
function partition(elements) {
  state.away = new Map();
  const isBox = (e) => e.group === "nodes" && e.data.kind === "namespace";
  // the namespaces first: whether anything else is away follows from its namespace
  for (const e of elements) if (isBox(e) && isAway(e)) state.away.set(e.data.id, e);
  if (state.away.size) for (const e of elements) if (!isBox(e) && isAway(e)) state.away.set(e.data.id, e);
  const near = state.away.size ? elements.filter((e) => !state.away.has(e.data.id)) : elements;
  const bridgeOf = bridgeIndex(near);
  const folds = chooseFolds(near, bridgeOf);
  state.folded = new Map([...folds].map((b) => [b, new Map()]));
  const shown = [], bridges = new Set();
  for (const e of near) {
    const b = owningBridge(bridgeOf, e);
    if (b) bridges.add(b);
    if (b && folds.has(b)) state.folded.get(b).set(e.data.id, e);
    else shown.push(e);
  }
  const summaries = [...state.folded].map(([b, members]) => foldNode(b, members));
  // Every bridge folded: the fold nodes stand side by side, not each at the far start of its
  // bridge's reserved grid (which would leave the picture as wide as if nothing were folded).
  // Not in a fleet: that would pull each host's folds out of its host's box.
  if (!container.dataset.fleet && summaries.length > 1 && summaries.length === bridges.size) {
    summaries.sort((a, b) => a.position.x - b.position.x);
    const [x0, y0] = [summaries[0].position.x, summaries[0].position.y];
    summaries.forEach((f, i) => { f.position = { x: x0 + i * 260, y: y0 }; });
  }
  shown.push(...summaries);
  return shown;
}

// The whole graph: first paint, or a resync after a reconnect.
function applyGraph(event) {
  const elements = event.elements || [];
  let cy = window.cy;
  const first = !cy;
  const t0 = performance.now();
  if (first) window.bridgescopeGraphAt = t0; // the benchmark tells drawing from arriving
  if (first) {
    cy = window.cy = readyCy;
    if (elements.length > BIG_GRAPH) drawFast(cy);
  }
  const shown = partition(elements);
  let touched = cy.collection();
  cy.batch(() => {
    const wanted = new Set(shown.map((e) => e.data.id));
    cy.elements().filter((e) => !wanted.has(e.id())).remove();
    const fresh = shown.filter((e) => cy.getElementById(e.data.id).empty());
    touched = addElements(cy, fresh);
    if (!first) {
      for (const e of shown) {
        const old = cy.getElementById(e.data.id);
        if (old.nonempty() && !touched.contains(old) && !sameData(asServer(old).data, e.data)) {
          touched.merge(changeElement(cy, e));
        }
      }
    }
  });
  boxes.settle();
  state.version = event.version;
  state.unrelatedCount = markUnrelated(cy);
  if (first) {
    fitAll(cy, false);
    foldWhileIllegible(cy);
    window.bridgescopeFirstRender = performance.now();
    // on screen two frames later: what the benchmark times, from here rather than from its polling
    requestAnimationFrame(() => requestAnimationFrame(() => { window.bridgescopeDrawn = performance.now(); }));
  } else {
    flash(touched);
  }
  applySearch();
  showStatus(cy, Math.round(performance.now() - t0));
  renderList();
}

function showStatus(cy, ms) {
  let namespaces = cy.nodes('[kind = "namespace"]').length;
  for (const members of state.folded.values()) for (const e of members.values()) if (e.data.kind === "namespace") namespaces += 1;
  const hidden = state.showUnrelated || !state.unrelatedCount ? "" : ` (${state.unrelatedCount} unrelated hidden)`;
  const folded = state.folded.size ? ` · ${state.folded.size} bridge${state.folded.size > 1 ? "s" : ""} folded` : "";
  statusLine.textContent = `${namespaces} namespaces${hidden}${folded}, ${cy.nodes(":visible").length} nodes, ${cy.edges(":visible").length} edges · v${state.version}${ms === undefined ? "" : ` · ${ms} ms`}`;
}

// The counts follow every delta, but a burst of deltas recounts once per frame (with the
// time the last of them took).
let statusPending = false, statusMs;
function statusSoon(cy, ms) {
  statusMs = ms;
  if (statusPending) return;
  statusPending = true;
  requestAnimationFrame(() => { statusPending = false; showStatus(cy, statusMs); });
}

// A delta either goes to Cytoscape or, for a folded bridge's members, to the fold's store.
function foldedHome(e) {
  for (const [b, members] of state.folded) {
    if (members.has(e.data.id)) return b;
    if (e.group === "nodes" && members.has(e.data.parent)) return b;
    if (e.group === "nodes" && e.data.parent === b && (e.data.kind === "namespace" || e.data.port)) return b;
    if (e.group === "edges" && (members.has(e.data.source) || members.has(e.data.target))) return b;
  }
  return null;
}

function applyDelta(delta) {
  const cy = window.cy;
  const t0 = performance.now();
  if (!cy || state.version === null || delta.version !== state.version + 1) {
    reconnect("missed an update; resynchronising");
    return;
  }
  let touched = cy.collection();
  const toCy = { added: [], changed: [] };
  for (const id of delta.removed || []) {
    state.away.delete(id);
    for (const members of state.folded.values()) members.delete(id);
  }
  let regroup = false; // a namespace became related or unrelated: what it holds moves with it
  for (const kind of ["added", "changed"]) {
    for (const e of delta[kind] || []) {
      if (e.data.kind === "namespace" && kind === "changed"
          && state.away.has(e.data.id) !== isAway(e)) regroup = true;
      const b = foldedHome(e);
      if (isAway(e)) { state.away.set(e.data.id, e); cy.getElementById(e.data.id).remove(); continue; }
      state.away.delete(e.data.id);
      if (b) state.folded.get(b).set(e.data.id, e);
      else toCy[kind].push(e);
    }
  }
  cy.batch(() => {
    for (const id of delta.removed || []) cy.getElementById(id).remove();
    touched = touched.union(addElements(cy, toCy.added));
    for (const e of toCy.changed) touched = touched.union(changeElement(cy, e));
    for (const [b, members] of state.folded) {
      const label = foldNode(b, members).data;
      const node = cy.getElementById(`fold:${b}`);
      if (node.nonempty() && node.data("label") !== label.label) node.data(label);
    }
  });
  boxes.settle();
  state.version = delta.version;
  if (regroup) redraw();
  else if ((delta.added || []).length || (delta.removed || []).length) state.unrelatedCount = markUnrelated(cy);
  flash(touched);
  applySearch();
  statusSoon(cy, Math.round(performance.now() - t0));
  window.bridgescopeLastDelta = { version: delta.version, at: performance.now() };
  // panels.js (open panel, form choices) follows the kernel from here
  document.dispatchEvent(new CustomEvent("bridgescope:delta", { detail: delta }));
}

// The guess in chooseFolds is optimistic: if the fitted picture still has labels under the
// legible size, fold the biggest open bridge and look again.
function foldWhileIllegible(cy) {
  if (state.neverFold) return;
  for (let round = 0; round < 8 && cy.zoom() * FONT < LEGIBLE_PX; round += 1) {
    const open = cy.nodes('[kind = "bridge"]').filter((b) => !state.folded.has(b.id()) && !state.expanded.has(b.id())
      && boxes.children(b).filter('[kind = "namespace"]').nonempty());
    if (open.empty()) return;
    const biggest = open.max((b) => boxes.children(b).filter('[kind = "namespace"]').length);
    if (biggest.value <= FOLD_GAIN) return;
    state.tooBig.add(biggest.ele.id());
    redraw();
  }
}

function expand(bridgeId) {
  const members = state.folded.get(bridgeId);
  const cy = window.cy;
  if (!members || !cy) return;
  state.expanded.add(bridgeId);
  state.folded.delete(bridgeId);
  cy.batch(() => {
    cy.getElementById(`fold:${bridgeId}`).remove();
    addElements(cy, [...members.values()]);
  });
  boxes.settle();
  markUnrelated(cy);
  showStatus(cy);
}

function foldAgain(on) {
  state.foldAll = on;
  state.tooBig = new Set();
  if (!on) state.expanded = new Set();
  if (!on) for (const b of state.folded.keys()) state.expanded.add(b);
  redraw();
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

// Select an element (expanding its bridge if folded), bring it to a readable zoom, open its panel.
function focusElement(id) {
  const cy = window.cy;
  if (!cy) return;
  for (const [b, members] of state.folded) if (members.has(id)) expand(b);
  const ele = cy.getElementById(id);
  if (ele.nonempty()) {
    cy.elements().unselect();
    ele.select();
    // readable, and never closer than that: clamp into [legible, READ_ZOOM]
    const zoom = Math.min(READ_ZOOM, Math.max(cy.zoom(), LEGIBLE_PX / FONT));
    cy.animate({ zoom, center: { eles: ele }, duration: 250 });
  }
  showDetails(id);
}

document.addEventListener("click", (evt) => {
  const link = evt.target.closest && evt.target.closest("#details a.element-link");
  if (!link || !window.cy) return;
  evt.preventDefault();
  focusElement(link.dataset.elementId);
});

// ---- search --------------------------------------------------------------------------------------

function haystack(d) {
  const parts = [d.id, d.label, d.ns_name, d.name, d.owner, d.mac, d.host_port, d.to_port, d.to_ip, d.host_ip];
  if (Array.isArray(d.addresses)) parts.push(...d.addresses);
  return parts.filter((x) => x !== undefined && x !== null).join(" ").toLowerCase();
}

// Matches among drawn and folded nodes: boxes and interfaces, in reading order.
function searchHits(q) {
  const words = q.split(/\s+/);
  const ok = (d) => d.kind !== "fold" && words.every((w) => haystack(d).includes(w));
  // a name that is the query first, then names or addresses holding it, then the rest (MACs, ids)
  const rank = (d) => {
    const names = [d.label, d.ns_name].filter(Boolean).map((x) => String(x).toLowerCase());
    if (names.includes(q)) return 0;
    const addrs = (d.addresses || []).map((a) => a.split("/")[0]);
    if (addrs.includes(q) || String(d.host_port) === q) return 1;
    return names.some((x) => x.includes(q)) ? 2 : 3;
  };
  const hit = (d, pos) => ({ id: d.id, rank: rank(d), pos: pos || { x: 0, y: 0 } });
  const hits = window.cy.nodes().filter((n) => n.visible() && ok(n.data())).map((n) => hit(n.data(), n.position()));
  for (const members of state.folded.values()) {
    for (const e of members.values()) if (e.group === "nodes" && ok(e.data)) hits.push(hit(e.data, e.position));
  }
  return hits.sort((a, b) => a.rank - b.rank || a.pos.y - b.pos.y || a.pos.x - b.pos.x);
}

function applySearch() {
  const cy = window.cy;
  if (!cy) return;
  const q = state.query.trim().toLowerCase();
  cy.elements(".faded, .match").removeClass("faded match");
  const count = byId("search-count");
  if (!q) { count.textContent = ""; state.hits = []; return; }
  state.hits = searchHits(q);
  const drawn = cy.collection(state.hits.map((h) => cy.getElementById(h.id)).filter((e) => e.nonempty()));
  const keep = drawn.union(boxes.ancestors(drawn)).union(boxes.descendants(drawn)).union(drawn.connectedNodes());
  cy.nodes().not(keep).addClass("faded");
  cy.edges().not(drawn.connectedEdges()).addClass("faded");
  drawn.addClass("match");
  count.textContent = `${state.hits.length} found`;
}

function nextHit() {
  if (!state.hits.length) return;
  state.hitIndex = (state.hitIndex + 1) % state.hits.length;
  focusElement(state.hits[state.hitIndex].id);
}

// ---- the list view: every node reachable with the keyboard ----------------------------------------
// The same elements as the graph (drawn and folded) as a tree of buttons; a button does what a
// click on the node does. Built only while the list is open, so it costs the first render nothing.

const LISTED = new Set(["namespace", "bridge", "physical", "portforward"]);
const listBox = byId("graph-list");
const listItems = byId("graph-list-items");

function listedNodes() {
  const cy = window.cy;
  const all = cy ? cy.nodes().not(".fold").map((n) => ({ data: asServer(n).data, position: n.position() })) : [];
  for (const members of state.folded.values()) {
    for (const e of members.values()) if (e.group === "nodes") all.push({ data: e.data, position: e.position || { x: 0, y: 0 } });
  }
  return all;
}

function renderList() {
  if (!listBox || !listBox.open) return;
  const all = listedNodes();
  const parentOf = new Map(all.map((n) => [n.data.id, n.data.parent]));
  const shown = all.filter((n) => LISTED.has(n.data.kind) || n.data.uplink);
  const ids = new Set(shown.map((n) => n.data.id));
  const listedParent = (id) => { let p = parentOf.get(id);
    while (p && !ids.has(p)) p = parentOf.get(p); return p || null; };
  const children = new Map();
  for (const n of shown.sort((a, b) => a.position.y - b.position.y || a.position.x - b.position.x)) {
    const p = listedParent(n.data.id);
    if (!children.has(p)) children.set(p, []);
    children.get(p).push(n.data);
  }
  const tree = (parent) => (children.get(parent) || []).map((d) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.elementId = d.id;
    button.textContent = displayLabel(d, "nodes").replace(/\s*\n\s*/g, " · ");
    const kind = document.createElement("span");
    kind.className = "node-kind";
    kind.textContent = d.kind === "namespace" && parentOf.get(d.id) && !d.is_host ? "container" : (d.uplink ? "uplink" : d.kind);
    button.append(kind);
    li.append(button);
    const sub = tree(d.id);
    if (sub.length) { const ul = document.createElement("ul"); ul.append(...sub); li.append(ul); }
    return li;
  });
  // the list is rebuilt on every delta: a keyboard user keeps their place in it
  const focused = listItems.contains(document.activeElement) ? document.activeElement.dataset.elementId : null;
  listItems.replaceChildren(...tree(null));
  if (focused) {
    const again = [...listItems.querySelectorAll("button[data-element-id]")].find((b) => b.dataset.elementId === focused);
    if (again) again.focus();
  }
}

if (listBox) {
  listBox.addEventListener("toggle", renderList);
  listItems.addEventListener("click", (evt) => {
    const button = evt.target.closest && evt.target.closest("button[data-element-id]");
    if (button) focusElement(button.dataset.elementId);
  });
  document.addEventListener("bridgescope:delta", () => { if (listBox.open) renderList(); });
}

// ---- namespaces unrelated to the host ---------------------------------------------------------------
// With --netns, the machine's other namespaces (the real root, other labs) have nothing to do with
// the host being shown; the server marks them (related: false) and they are hidden unless asked for.

function markUnrelated(cy) {
  if (!state.showUnrelated) return [...state.away.values()].filter((e) => e.data.kind === "namespace").length;
  return cy.nodes('[kind = "namespace"]').filter((n) => n.data("related") === false).length;
}

// Everything drawn again from what the page holds (Cytoscape and the stores): folding or
// showing unrelated namespaces changed.
function redraw() {
  const cy = window.cy;
  if (!cy) return;
  const all = cy.elements().not(".fold").map(asServer);
  for (const members of state.folded.values()) all.push(...members.values());
  all.push(...state.away.values());
  cy.elements().remove();
  addElements(cy, partition(all));
  boxes.settle();
  state.unrelatedCount = markUnrelated(cy);
  fitAll(cy, false);
  showStatus(cy);
}

// What the page holds, drawn or kept (folded, unrelated): id -> position of every node that is
// not a box (a box's place follows from what it holds). Tests compare it with the server's.
const BOX_KINDS = new Set(["namespace", "bridge", "fold"]);
window.bridgescopeHeld = () => {
  const cy = window.cy;
  const out = {};
  if (!cy) return out;
  cy.nodes().filter((n) => !BOX_KINDS.has(n.data("kind"))).forEach((n) => { out[n.id()] = n.position(); });
  const kept = [...state.away.values()];
  for (const members of state.folded.values()) kept.push(...members.values());
  for (const e of kept) if (e.group === "nodes" && !BOX_KINDS.has(e.data.kind)) out[e.data.id] = e.position || null;
  return out;
};

// Automation and tests: resynchronise as after a reconnect (the whole graph again, then deltas).
window.bridgescopeResync = () => reconnect("resynchronising");

// ---- loopback on demand ------------------------------------------------------------------------------

async function setLoopback(on) {
  state.showLoopback = on;
  const cy = window.cy;
  if (!cy) return;
  if (!on) {
    boxes.touch(cy.nodes('[kind = "loopback"]').addClass("hidden"));
    boxes.settle();
    return;
  }
  boxes.touch(cy.nodes('[kind = "loopback"]').removeClass("hidden"));
  boxes.settle();
  // The live stream may leave loopback out; fetch it once from the graph API.
  const resp = await session.fetch("/api/graph?loopback=1");
  if (!resp.ok) return;
  const all = await resp.json();
  const lo = all.filter((e) => e.data.kind === "loopback");
  cy.batch(() => addElements(cy, lo.map((e) => ({ ...e }))));
  boxes.settle();
}

// Tidy: everything back where the server put it (after dragging nodes around).
function tidy() {
  const cy = window.cy;
  if (!cy) return;
  cy.batch(() => cy.nodes().forEach((n) => {
    const home = state.home.get(n.id());
    if (home && !n.hasClass("holds")) n.position(home);
  }));
  boxes.touch(cy.nodes());
  boxes.settle();
  fitAll(cy, true);
}

// ---- toolbar -------------------------------------------------------------------------------------------

function download(href, name) {
  const a = document.createElement("a");
  a.href = href; a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
}

function wireToolbar() {
  byId("fit").addEventListener("click", () => window.cy && fitAll(window.cy, false));
  const zoomBy = (f) => {
    const cy = window.cy;
    if (cy) cy.zoom({ level: cy.zoom() * f, renderedPosition: { x: cy.width() / 2, y: cy.height() / 2 } });
  };
  byId("zoom-in").addEventListener("click", () => zoomBy(1.25));
  byId("zoom-out").addEventListener("click", () => zoomBy(0.8));
  byId("show-loopback").addEventListener("change", (e) => setLoopback(e.target.checked));
  byId("collapse-ns").addEventListener("change", (e) => foldAgain(e.target.checked));
  const unrelatedBox = byId("show-unrelated");
  unrelatedBox.checked = state.showUnrelated;
  unrelatedBox.addEventListener("change", (e) => {
    state.showUnrelated = e.target.checked;
    redraw();
  });
  byId("tidy").addEventListener("click", tidy);
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
    e.preventDefault();
    if (state.query !== e.target.value) { state.query = e.target.value; state.hitIndex = -1; applySearch(); }
    nextHit();  // Enter again: the next match
  });
  document.addEventListener("bridgescope:theme", restyle);
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", restyle);
}

wireToolbar();
