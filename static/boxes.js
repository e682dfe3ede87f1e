// Boxes: the host, its bridges and its containers drawn as boxes around what they hold,
// without Cytoscape's compound nodes.
//
// A compound node makes Cytoscape walk the node's whole family (everything it holds, everything
// holding it, all their edges) for every style property it applies to any member, and size
// every box again whenever anything inside is measured: the host box holds everything, so a
// big host's first drawing spent most of its time there. Here a box is a plain node whose
// place and size are set from what it holds, once, deepest boxes first; what it holds is
// named by `data.box` (the server's `parent`) and indexed here.
//
// What compound nodes did that this keeps: a box fits what it holds (labels included) plus its
// padding; it is drawn under what it holds (z-index by depth, edges above boxes, leaves on
// top); dragging a box moves what it holds; a box grows when something inside is dragged out.
// A box's size and depth are its bw, bh and zd data, which the stylesheet maps (node.holds).

export const LEAF_Z = 100; // leaves above edges above every box
export const EDGE_Z = 90;
export const FITTED = ["bw", "bh", "zd"]; // data a box is given here, not by the server

export class Boxes {
  constructor(cy) {
    this.cy = cy;
    this.members = new Map(); // box id -> Set of member ids (drawn)
    this.dirty = new Set(); // ids of boxes whose members changed since the last settle()
    this.refitting = false; // a refit() is due at the end of this task
    cy.on("add", "node", (evt) => this.enter(evt.target));
    cy.on("remove", "node", (evt) => this.leave(evt.target));
    this.wireDragging();
  }

  enter(node) {
    const box = node.data("box");
    if (!box) return;
    if (!this.members.has(box)) this.members.set(box, new Set());
    this.members.get(box).add(node.id());
    this.dirty.add(box);
  }

  leave(node) {
    const box = node.data("box");
    const set = box && this.members.get(box);
    if (set) { set.delete(node.id()); if (!set.size) this.members.delete(box); }
    if (box) this.dirty.add(box);
  }

  // Put a drawn node into another box (or none).
  move(node, box) {
    this.leave(node);
    node.data("box", box || null);
    this.enter(node);
  }

  // Something about a drawn node that its box fits around changed (place, label, shown).
  touch(nodes) {
    nodes.nodes().forEach((n) => { if (n.data("box")) this.dirty.add(n.data("box")); if (n.hasClass("holds")) this.dirty.add(n.id()); });
  }

  // After a stylesheet change, which may have resized labels: every box fitted again, once for
  // all the changes made in one task (a theme change restyles here, then again in each page
  // module that adds styles of its own).
  refit() {
    this.touch(this.cy.nodes());
    if (this.refitting) return;
    this.refitting = true;
    queueMicrotask(() => { this.refitting = false; this.settle(); });
  }

  // Fit every box something changed in, and the boxes around them.
  settle() {
    if (!this.dirty.size) return;
    const ids = [...this.dirty];
    this.dirty.clear();
    this.fit(this.cy.collection(ids.map((id) => this.cy.getElementById(id)).filter((n) => n.nonempty())));
  }

  parent(node) {
    const box = node.data("box");
    return box ? this.cy.getElementById(box) : this.cy.collection();
  }

  children(node) {
    const set = this.members.get(node.id());
    return set ? this.cy.collection([...set].map((id) => this.cy.getElementById(id))) : this.cy.collection();
  }

  // Nearest first, as Cytoscape's ancestors() ordered them.
  ancestors(nodes) {
    const out = [];
    const seen = new Set();
    nodes.nodes().forEach((n) => {
      let p = this.parent(n);
      for (let depth = 0; p.nonempty() && depth < 16 && !seen.has(p.id()); depth += 1) {
        seen.add(p.id()); out.push(p[0]); p = this.parent(p);
      }
    });
    return this.cy.collection(out);
  }

  descendants(nodes) {
    const out = [];
    const walk = (n, depth) => {
      const set = this.members.get(n.id());
      if (!set || depth > 16) return;
      for (const id of set) { const m = this.cy.getElementById(id); out.push(m[0]); walk(m, depth + 1); }
    };
    nodes.nodes().forEach((n) => walk(n, 0));
    return this.cy.collection(out);
  }

  depth(node) {
    let d = 0;
    for (let p = this.parent(node); p.nonempty() && d < 16; p = this.parent(p)) d += 1;
    return d;
  }

  // Size and place the boxes `boxes` and every box around them: deepest first, so each box fits
  // boxes already fitted.
  fit(boxes) {
    const all = new Map();
    const take = (n) => { if (!all.has(n.id())) all.set(n.id(), n); };
    boxes.nodes().forEach((n) => { take(n); this.ancestors(n).forEach(take); });
    this.fitBoxes([...all.values()]);
  }

  // Not in a batch: each box is measured with the sizes just given to the boxes it holds.
  fitBoxes(boxes) {
    const deepest = boxes.map((b) => [this.depth(b), b]).sort((a, b) => b[0] - a[0]);
    for (const [depth, box] of deepest) this.fitOne(box, depth);
  }

  // The size goes in the box's data, which the stylesheet maps (node.holds): a box's style is
  // then worked out once, with its size, when it is first measured; a style bypass would work
  // it out a second time.
  fitOne(box, depth) {
    // A changed style (a stylesheet swapped, new data) is applied when first asked for; until
    // then a member's cached bounds are its old ones: ask first, then measure.
    const members = this.children(box);
    members.forEach((n) => { n.pstyle("display"); });
    const inside = members.filter((n) => n.visible());
    if (inside.empty()) {
      if (box.hasClass("holds")) { box.removeClass("holds"); box.removeData(FITTED.join(" ")); }
      return;
    }
    const bb = inside.boundingBox({ includeLabels: true, includeOverlays: false });
    if (!box.hasClass("holds")) box.addClass("holds");
    box.data({ bw: bb.w, bh: bb.h, zd: depth });
    box.position({ x: (bb.x1 + bb.x2) / 2, y: (bb.y1 + bb.y2) / 2 });
  }

  // Dragging a box takes what it holds along; dragging anything inside resizes the boxes
  // around it, once a frame.
  wireDragging() {
    let held = null;
    let pending = null;
    this.cy.on("grab", "node", (evt) => {
      const n = evt.target;
      held = { node: n, at: { ...n.position() }, inside: this.members.has(n.id()) ? this.descendants(n) : null };
    });
    this.cy.on("drag", "node", (evt) => {
      const n = evt.target;
      if (held && held.node.same(n) && held.inside) {
        const p = n.position();
        const dx = p.x - held.at.x, dy = p.y - held.at.y;
        held.at = { ...p };
        this.cy.batch(() => held.inside.forEach((m) => { m.shift({ x: dx, y: dy }); }));
      }
      this.touch(n);
      if (!pending) pending = requestAnimationFrame(() => { pending = null; this.settle(); });
    });
    this.cy.on("free", "node", () => { held = null; });
  }
}
