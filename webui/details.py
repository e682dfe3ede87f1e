"""The details panel: click any element of the graph and see what the kernel says about it.

Addresses, routes, MTU, MAC, state, owner, the firewall rules that concern it with their
packet counters, and the commands that show the same thing in a terminal. Everything here is
read from the current Snapshot by pure functions; the route only picks the template.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from flask import Blueprint, Response, abort, current_app, request
from markupsafe import Markup, escape

from bridgescope.collector import shell
from bridgescope.collector.firewall import assemble_namespace
from bridgescope.collector.firewall.readers import SAVE_TOOLS, dump_namespace
from bridgescope.collector.hostview import in_ns, netns_name
from bridgescope.collector.model import (
    Interface,
    Masquerade,
    Namespace,
    PortForward,
    Route,
    Rule,
    Snapshot,
    masquerade_id,
    portforward_id,
)
from bridgescope.collector.packetpath import namespace_paths
from bridgescope.collector.render.graph import served_masquerades
from bridgescope.webui import verdicts
from bridgescope.webui.app import runtime
from bridgescope.webui.pages import page_or_fragment
from bridgescope.webui.tables import container_side, host_side

bp = Blueprint("details", __name__)

NFT_LISTING = ("nft", "list", "ruleset")


@dataclass(frozen=True)
class Details:
    """Everything the panel shows for one element."""
    id: str
    kind: str
    title: str
    facts: tuple[tuple[str, str], ...] = ()
    interfaces: tuple[Interface, ...] = ()
    routes: tuple[Route, ...] = ()
    rules: tuple[Rule, ...] = ()
    forwards: tuple[PortForward, ...] = ()
    commands: tuple[str, ...] = ()
    container: str | None = None  # a bridgescope container name: the panel offers its forms
    related: tuple[tuple[str, str], ...] = ()  # (element id, label) to click through to
    warnings: tuple[str, ...] = field(default=())
    ports: tuple[tuple[Interface, Interface | None], ...] = ()  # a bridge's ports and their peers


# ---- pure: which rules concern an object -------------------------------------------------------

def _word(needle: str) -> re.Pattern:
    # "172.17.0.2" must not match "172.17.0.20", nor "eth0" match "veth0a".
    return re.compile(rf"(?<![\w.\-]){re.escape(needle)}(?![\w.\-]|\.\d)")


def rules_mentioning(rules: Iterable[Rule], netns: Iterable[str], needles: Iterable[str]) -> tuple[Rule, ...]:
    patterns = [_word(n) for n in needles if n]
    where = set(netns)
    return tuple(r for r in rules if r.netns in where and any(p.search(r.text) for p in patterns))


def bare_ips(iface: Interface) -> list[str]:
    return [a.split("/")[0] for a in iface.addresses]


def subnets(iface: Interface) -> list[str]:
    out = []
    for a in iface.addresses:
        try:
            out.append(str(ipaddress.ip_interface(a).network))
        except ValueError:
            continue
    return out


def unique_forwards(forwards: Iterable[PortForward]) -> tuple[PortForward, ...]:
    """One entry per forward as a user sees it (the firewall may hold it per path/family)."""
    seen: dict[tuple, PortForward] = {}
    for pf in forwards:
        seen.setdefault((pf.netns, pf.proto, pf.host_ip, pf.host_port, pf.to_ip, pf.to_port), pf)
    return tuple(seen.values())


# ---- pure: what belongs to an object, by identity ----------------------------------------------
# Labs and containers on one machine reuse the same private addresses (every lab has a
# 172.17.0.2), so an address alone proves nothing: a forward belongs to the namespace whose
# rule made it and to the interface (and so the namespace) the collector resolved it to,
# through the veth pairs.

def peers_of(snap: Snapshot, ifaces: Iterable[Interface]) -> tuple[Interface, ...]:
    by_id = {i.id: i for i in snap.interfaces}
    return tuple(by_id[i.peer] for i in ifaces if i.peer and i.peer in by_id)


def upstream(snap: Snapshot, ns_id: str) -> set[str]:
    """ns_id and the namespaces its veths lead to (a container's host, whose rules NAT it)."""
    return {ns_id, *(p.netns for p in peers_of(snap, snap.interfaces_in(ns_id)))}


def bridge_ports(snap: Snapshot, bridge: Interface) -> tuple[tuple[Interface, Interface | None], ...]:
    """Each port of the bridge with the far end of its veth (None: not a veth, or unseen)."""
    by_id = {i.id: i for i in snap.interfaces}
    return tuple((i, by_id.get(i.peer or "")) for i in snap.interfaces if i.master == bridge.id)


def forwards_to(snap: Snapshot, iface_ids: Iterable[str]) -> tuple[PortForward, ...]:
    wanted = set(iface_ids)
    return unique_forwards(p for p in snap.port_forwards if p.to_interface in wanted)


def forwards_of_namespace(snap: Snapshot, ns_id: str) -> tuple[PortForward, ...]:
    """The forwards its own firewall holds and the ones that land in it."""
    return unique_forwards(p for p in snap.port_forwards if ns_id in (p.netns, p.container))


def host_id(snap: Snapshot) -> str | None:
    host = snap.host_namespace()
    return host.id if host else None


def forward_label(pf: PortForward) -> str:
    return f"{pf.proto} {host_side(pf)} → {container_side(pf)}"


def _save_commands(snap: Snapshot, rules: Iterable[Rule]) -> list[str]:
    """One listing command per (namespace, backend, family) the rules live in."""
    def listing(backend: str, family: int) -> tuple[str, ...] | None:
        if backend == "nftables":
            return NFT_LISTING
        tool = SAVE_TOOLS.get((backend, family))
        return (tool,) if tool else None

    where = sorted({(r.netns, r.backend, r.family) for r in rules if listing(r.backend, r.family)})
    return list(dict.fromkeys(in_ns(snap.namespace(ns_id), *listing(backend, family))
                              for ns_id, backend, family in where))


# ---- pure: one Details per element kind --------------------------------------------------------

def interface_details(snap: Snapshot, iface: Interface, owner: str | None) -> Details:
    ns = snap.namespace(iface.netns)
    by_id = {i.id: i for i in snap.interfaces}
    peer, master = by_id.get(iface.peer or ""), by_id.get(iface.master or "")
    facts = [("namespace", snap.ns_name(iface.netns)), ("kind", iface.kind),
             ("state", f"{iface.state}" + (f" ({iface.operstate})" if iface.operstate else "")),
             ("MTU", str(iface.mtu)), ("MAC", iface.mac or "—"),
             ("addresses", ", ".join(iface.addresses) or "none"), ("owner", owner or "unknown")]
    if master:
        facts.append(("bridge", master.name))
    if peer:
        facts.append(("veth peer", f"{peer.name} in {snap.ns_name(peer.netns)}"))
    if iface.hairpin is not None:
        facts.append(("hairpin", "on" if iface.hairpin else "off"))
    routes = tuple(r for r in snap.routes if r.netns == iface.netns and
                   (r.dev_id == iface.id or (r.dev_id is None and r.dev == iface.name)))
    needles = [iface.name, *bare_ips(iface)] + (subnets(iface) if iface.kind == "bridge" else [])
    rules = rules_mentioning(snap.rules, upstream(snap, iface.netns), needles)
    ports = bridge_ports(snap, iface) if iface.kind == "bridge" else ()
    # a container's eth0, the host end of its veth, or a bridge: whatever lands behind it
    behind = [iface.id, *(peer.id for peer in [peer] if peer), *(far.id for _, far in ports if far)]
    forwards = forwards_to(snap, behind)
    commands = [in_ns(ns, "ip", "-d", "link", "show", "dev", iface.name),
                in_ns(ns, "ip", "addr", "show", "dev", iface.name),
                in_ns(ns, "ip", "route", "show", "dev", iface.name)]
    if iface.kind == "bridge":
        commands.append(in_ns(ns, "bridge", "link", "show", "master", iface.name))
    commands += _save_commands(snap, rules)
    related = tuple((i.id, f"{i.name} ({snap.ns_name(i.netns)})") for i in (peer, master) if i)
    return Details(iface.id, iface.kind, iface.name, tuple(facts), routes=routes, rules=rules,
                   forwards=forwards, commands=tuple(commands), related=related, ports=ports)


def namespace_details(snap: Snapshot, ns: Namespace, owner: str | None, container: str | None) -> Details:
    ifaces = snap.interfaces_in(ns.id)
    ips = [ip for i in ifaces if i.kind != "loopback" for ip in bare_ips(i)]
    facts = [("name", ns.name), ("id", ns.id), ("inode", str(ns.inode)),
             ("paths", ", ".join(ns.paths) or "—"),
             ("processes", ", ".join(map(str, ns.pids[:8])) + (" …" if len(ns.pids) > 8 else "") or "none"),
             ("owner", owner or "unknown"), ("addresses", ", ".join(ips) or "none")]
    if ns.is_host:
        facts.append(("role", "the host"))
    if ns.sysctl("net.ipv4.ip_forward") is not None:
        facts.append(("ip_forward", ns.sysctl("net.ipv4.ip_forward")))
    routes = tuple(r for r in snap.routes if r.netns == ns.id)
    forwards = forwards_of_namespace(snap, ns.id)
    rules = rules_mentioning(snap.rules, upstream(snap, ns.id), ips) if ips and not ns.is_host else \
        tuple(r for r in snap.rules if r.netns == ns.id and r.table == "nat")
    commands = [in_ns(ns, "ip", "addr"), in_ns(ns, "ip", "route"), *_save_commands(snap, rules)]
    if netns_name(ns):
        commands.append(shell.line(("ip", "netns", "pids", netns_name(ns))))
    return Details(ns.id, "namespace", ns.name, tuple(facts), interfaces=ifaces, routes=routes,
                   rules=rules, forwards=forwards, commands=tuple(commands), container=container)


def forward_details(snap: Snapshot, pf: PortForward, element_id: str) -> Details:
    facts = [("forward", forward_label(pf)), ("owner", pf.owner), ("backend", pf.backend),
             ("firewall of", snap.ns_name(pf.netns)),
             ("container", snap.ns_name(pf.container) if pf.container else "not found"),
             ("FORWARD accepts it", {True: "yes", False: "no", None: "cannot tell"}[pf.forward_accept]),
             ("via", pf.via)]
    if pf.chain:
        facts.append(("chain", pf.chain))
    # the hairpin and localhost MASQUERADE rules exist for this forward: shown here, not on the graph
    served = {m.rule_text for m in served_masquerades(snap, pf) if m.rule_text}
    rules = tuple(r for r in snap.rules if r.netns == pf.netns and
                  (r.text == pf.rule_text or r.text in served or _word(f"{pf.to_ip}:{pf.to_port}").search(r.text)))
    ns = snap.namespace(pf.netns)
    commands = [*_save_commands(snap, rules or [Rule(pf.netns, pf.backend, 4, "nat", "", "")]),
                in_ns(ns, "conntrack", "-L", "-p", pf.proto, "--dport", str(pf.host_port))]
    related = ((pf.container, snap.ns_name(pf.container)),) if pf.container else ()
    return Details(element_id, "portforward", forward_label(pf), tuple(facts), rules=rules,
                   forwards=(pf,), commands=tuple(commands), related=related)


def _listing_with_counters(snap: Snapshot, rule: Rule) -> str | None:
    """`iptables -t nat -L CHAIN -v -n`: the chain with its packet counters, as the backend's tool."""
    save = SAVE_TOOLS.get((rule.backend, rule.family))
    if rule.backend == "nftables" or not save or not rule.chain:
        return None
    return in_ns(snap.namespace(rule.netns), save.removesuffix("-save"), "-t", rule.table,
                 "-L", rule.chain, "-v", "-n", "--line-numbers")


def masquerade_details(snap: Snapshot, masq: Masquerade, element_id: str,
                       bridge: Interface | None) -> Details:
    """A MASQUERADE (or SNAT) rule read like a forward: what it rewrites, whose it is, its counters."""
    target = f"SNAT to {masq.to_source}" if masq.to_source else "MASQUERADE (the outgoing interface's address)"
    leaves = f"any interface but {masq.out_not}" if masq.out_not else (masq.out or "any interface")
    facts = [("rewrites", target), ("source", masq.source or "any"), ("leaving by", leaves),
             ("owner", masq.owner), ("backend", masq.backend), ("firewall of", snap.ns_name(masq.netns))]
    if masq.destination:
        facts.append(("destination", ("not " if masq.dest_not else "") + masq.destination))
    if masq.chain:
        facts.append(("chain", masq.chain))
    if bridge is not None:
        facts.append(("bridge", bridge.name))
    rules = tuple(r for r in snap.rules if r.netns == masq.netns and masq.rule_text and r.text == masq.rule_text)
    listing = [c for c in map(lambda r: _listing_with_counters(snap, r), rules) if c]
    commands = [*_save_commands(snap, rules or [Rule(masq.netns, masq.backend, 4, "nat", "", "")]),
                *dict.fromkeys(listing)]
    related = ((bridge.id, f"{bridge.name} ({snap.ns_name(bridge.netns)})"),) if bridge else ()
    title = f"MASQUERADE {masq.source or 'any'}" + (f" ! -o {masq.out_not}" if masq.out_not else "")
    return Details(element_id, "masquerade", title, tuple(facts), rules=rules,
                   commands=tuple(commands), related=related)


def masquerade_for_id(snap: Snapshot, element_id: str) -> Masquerade | None:
    return next((m for m in snap.masquerades if masquerade_id(m) == element_id), None)


def forward_for_id(snap: Snapshot, element_id: str) -> PortForward | None:
    return next((pf for pf in snap.port_forwards if portforward_id(pf) == element_id), None)


def generic_details(element: dict) -> Details:
    data = element.get("data", {})
    facts = tuple((k, _text(v)) for k, v in sorted(data.items())
                  if k not in ("id", "parent", "source", "target") and v not in (None, "", [], {}))
    related = tuple((data[k], data[k]) for k in ("source", "target", "parent") if data.get(k))
    return Details(data.get("id", "?"), data.get("kind", "element"), data.get("label") or data.get("id", "?"),
                   facts, related=related)


def _text(v) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def details_for(snap: Snapshot, elements: list[dict], element_id: str,
                containers: dict[str, str]) -> Details | None:
    """containers: netns name -> container name, for every container the forward form can
    target (bridgescope's own and any other on a bridge of the served host)."""
    if element_id.startswith(("edge:pf:", "edge:masq:")):  # an edge tells what its NAT node tells
        element_id = element_id[len("edge:"):]
    element = next((e for e in elements if e.get("data", {}).get("id") == element_id), None)
    owner = (element or {}).get("data", {}).get("owner")
    if (iface := snap.interface(element_id)) is not None:
        inside_ns = snap.namespace(iface.netns)
        inside = containers.get(netns_name(inside_ns) or (inside_ns.name if inside_ns else ""))
        return replace(interface_details(snap, iface, owner), container=inside)
    if (ns := snap.namespace(element_id)) is not None:
        return namespace_details(snap, ns, owner, containers.get(netns_name(ns) or ns.name))
    if (pf := forward_for_id(snap, element_id)) is not None:
        return forward_details(snap, pf, element_id)
    if (masq := masquerade_for_id(snap, element_id)) is not None:
        # the graph drew its way out from one bridge: the panel names the same one
        edge = next((e["data"] for e in elements if "source" in e.get("data", {})
                     and e["data"]["id"] in (element_id, f"edge:{element_id}")), {})
        return masquerade_details(snap, masq, element_id, snap.interface(edge.get("source", "")))
    return generic_details(element) if element is not None else None


# ---- counters: read again for the open panel only ----------------------------------------------

def _rule_key(r: Rule) -> tuple:
    return (r.netns, r.backend, r.family, r.table, r.chain, r.text)


def with_fresh_counters(snap: Snapshot, details: Details) -> Details:
    """Packet counters move with every packet and no event announces it, so the snapshot's
    are as old as the last rule change: the rules an open panel shows are read again (the
    namespaces they live in only, a few short processes each)."""
    if not details.rules:
        return details
    paths = namespace_paths(snap)
    fresh: dict[tuple, Rule] = {}
    for ns_id in sorted({r.netns for r in details.rules} & paths.keys()):
        fresh.update((_rule_key(r), r) for r in assemble_namespace(dump_namespace(ns_id, paths[ns_id])).rules)
    rules = tuple(replace(r, packets=now.packets, bytes=now.bytes) if (now := fresh.get(_rule_key(r))) else r
                  for r in details.rules)
    return replace(details, rules=rules)


# ---- route ----------------------------------------------------------------------------------

@bp.get("/details/<path:element_id>")
def panel(element_id: str) -> str | Response:
    from bridgescope.webui.forms import form_choices

    if current_app.config.get("FLEET"):  # an element of the merged picture: what its agent sent
        from bridgescope.webui.fleet.routes import details_panel

        html = details_panel(element_id)
        return html if html is not None else Response(status=204 if request.args.get("follow") == "1" else 404)
    source = runtime().source
    choices = form_choices()
    # every container on a bridge of the served host gets "Add port forward" (adopt)
    managed = {**choices.pop("adoptable", {}),
               **{c.netns: c.name for c in choices.pop("container_objects", [])}}
    details = details_for(source.snapshot, source.elements, element_id, managed)
    following = request.args.get("follow") == "1"
    if details is None:
        if following:  # an open panel asking again: gone is an answer
            return Response(status=204)
        abort(404, f"no element {element_id!r} in the current topology (it may just have gone)")
    details = verdicts.annotate(details, source)  # reachability: the one verdict (rules/reach.py)
    if following:  # the click shows the snapshot at once; the open panel's polls read the counters
        details = with_fresh_counters(source.snapshot, details)
    forwards = [f for f in choices["forwards"] if f.container == details.container]
    names = {n.id: n.name for n in source.snapshot.namespaces}
    deaf = verdicts.deaf_forwards(verdicts.for_source(source).latest(), details.id) \
        if lab_container(source.snapshot, details.id) else []
    listen_ports = sorted({pf.to_port for pf in deaf if pf.proto == "tcp"})
    return page_or_fragment("details.html", "panel", d=details, managed_forwards=forwards,
                            ns_names=names, listen_ports=listen_ports, **choices)


# ---- a lab's container: start its echo server on a published port nothing answers -------------

def lab_container(snap: Snapshot, ns_id: str) -> str | None:
    """The namespace's name when it is a container of a lab (the sandbox lab's saved state, or
    the walk lab's container) that is up; None for anything else - the button only ever
    starts a program in a lab."""
    from bridgescope.plumbing import api, netns
    from bridgescope.plumbing.lab import sandbox
    from bridgescope.plumbing.lab.walk import WalkNames

    ns = snap.namespace(ns_id)
    if ns is None or not ns.name.isascii():
        return None
    host = ns.name.rsplit("-", 1)[0]
    if host.endswith("-host") and all(netns.exists(n) for n in sandbox.names(host[:-len("-host")])) \
            and ns.name in {c.netns for c in api.load_state(host).containers}:
        return ns.name
    walk = WalkNames(ns.name[:-len("-web")]) if ns.name.endswith("-web") else None
    if walk is not None and walk.container == ns.name and all(netns.exists(n) for n in walk.all()):
        return ns.name
    return None


@bp.post("/details/<path:element_id>/listen")
def listen(element_id: str) -> str | Response:
    """Start the lab's echo server on a published tcp port of a lab's container nothing
    listens on, then show the panel again (its verdicts read the sockets once more)."""
    from bridgescope.plumbing import netns
    from bridgescope.plumbing.errors import BridgescopeError
    from bridgescope.plumbing.lab import sandbox

    rt, source = runtime(), runtime().source
    info = {"method": request.method, "path": request.path, "port": request.form.get("port", "")[:12]}
    client = request.remote_addr or "?"
    text = request.form.get("port", "")
    name = lab_container(source.snapshot, element_id)
    published = {pf.to_port for pf in source.snapshot.port_forwards
                 if pf.container == element_id and pf.proto == "tcp"}
    port = int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else None
    why = ("not a container of a lab: the echo server is only started in a lab" if name is None else
           f"{text[:12]!r} is not a published tcp port of {name}" if port not in published else None)
    if why:
        rt.audit.refused(client, info, why, kind="listen")
        return Response(f"Nothing was started: {why}\n", status=409 if name is None else 422,
                        mimetype="text/plain")
    with rt.change_lock:
        try:
            started = sandbox.start_listening(str(netns.NETNS_DIR / name), sandbox.echo_server(name, port),
                                              port, f"start the lab's echo server in {name}")
        except BridgescopeError as err:
            rt.audit.record(client, info, (), f"error: {err}", ok=False)
            return Response(f"{err}\n", status=409, mimetype="text/plain")
    rt.audit.record(client, info, (started,) if started else (),
                    f"ok: the echo server listens on tcp/{port} in {name}"
                    + ("" if started else " (it already did)"))
    _await_listener(source, element_id, port)
    return panel(element_id)


def _await_listener(source, ns_id: str, port: int) -> None:
    """Let the verdicts see the new socket, so the panel shown next no longer lists the port."""
    import time

    worker = verdicts.for_source(source)
    worker.poke()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
            pf.to_port == port for pf in verdicts.deaf_forwards(worker.latest(), ns_id)):
        time.sleep(0.05)
        worker.poke()


@bp.app_template_filter("wrap_points")
def wrap_points(text: str) -> Markup:
    """Commands wrap between words only; a long token (a path, a list) may also wrap after
    '/' or ',' - never in the middle of a name or an address."""
    return Markup(str(escape(text)).replace("/", "/<wbr>").replace(",", ",<wbr>"))
