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

from flask import Blueprint, abort

from bridgescope.collector.firewall.readers import SAVE_TOOLS
from bridgescope.collector.hostview import in_ns, netns_name
from bridgescope.collector.model import Interface, Namespace, PortForward, Route, Rule, Snapshot
from bridgescope.collector.render.graph import portforward_id, served_masquerades
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


def host_id(snap: Snapshot) -> str | None:
    host = snap.namespace(snap.host) if snap.host else snap.host_namespace()
    return host.id if host else None


def ns_label(snap: Snapshot, ns_id: str | None) -> str:
    ns = snap.namespace(ns_id) if ns_id else None
    return ns.name if ns else (ns_id or "?")


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
    facts = [("namespace", ns_label(snap, iface.netns)), ("kind", iface.kind),
             ("state", f"{iface.state}" + (f" ({iface.operstate})" if iface.operstate else "")),
             ("MTU", str(iface.mtu)), ("MAC", iface.mac or "—"),
             ("addresses", ", ".join(iface.addresses) or "none"), ("owner", owner or "unknown")]
    if master:
        facts.append(("bridge", master.name))
    if peer:
        facts.append(("veth peer", f"{peer.name} in {ns_label(snap, peer.netns)}"))
    if iface.hairpin is not None:
        facts.append(("hairpin", "on" if iface.hairpin else "off"))
    routes = tuple(r for r in snap.routes if r.netns == iface.netns and
                   (r.dev_id == iface.id or (r.dev_id is None and r.dev == iface.name)))
    needles = [iface.name, *bare_ips(iface)] + (subnets(iface) if iface.kind == "bridge" else [])
    rule_ns = {iface.netns, host_id(snap) or iface.netns}
    rules = rules_mentioning(snap.rules, rule_ns, needles)
    ips = set(bare_ips(iface))
    forwards = unique_forwards(p for p in snap.port_forwards if p.to_interface == iface.id or p.to_ip in ips)
    commands = [in_ns(ns, "ip", "-d", "link", "show", "dev", iface.name),
                in_ns(ns, "ip", "addr", "show", "dev", iface.name),
                in_ns(ns, "ip", "route", "show", "dev", iface.name)]
    if iface.kind == "bridge":
        commands.append(in_ns(ns, "bridge", "link", "show", "master", iface.name))
    commands += _save_commands(snap, rules)
    related = tuple((i.id, f"{i.name} ({ns_label(snap, i.netns)})") for i in (peer, master) if i)
    return Details(iface.id, iface.kind, iface.name, tuple(facts), routes=routes, rules=rules,
                   forwards=forwards, commands=tuple(commands), related=related)


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
    forwards = unique_forwards(p for p in snap.port_forwards if p.container == ns.id or p.to_ip in ips
                               or (ns.is_host and p.netns == ns.id))
    rule_ns = {ns.id} if ns.is_host else {ns.id, host_id(snap) or ns.id}
    rules = rules_mentioning(snap.rules, rule_ns, ips) if ips and not ns.is_host else \
        tuple(r for r in snap.rules if r.netns == ns.id and r.table == "nat")
    commands = [in_ns(ns, "ip", "addr"), in_ns(ns, "ip", "route"), *_save_commands(snap, rules)]
    if netns_name(ns):
        commands.append(f"ip netns pids {netns_name(ns)}")
    return Details(ns.id, "namespace", ns.name, tuple(facts), interfaces=ifaces, routes=routes,
                   rules=rules, forwards=forwards, commands=tuple(commands), container=container)


def forward_details(snap: Snapshot, pf: PortForward, element_id: str) -> Details:
    facts = [("forward", forward_label(pf)), ("owner", pf.owner), ("backend", pf.backend),
             ("firewall of", ns_label(snap, pf.netns)),
             ("container", ns_label(snap, pf.container) if pf.container else "not found"),
             ("reachable from outside", "yes" if pf.reachable else "no"),
             ("reachable from the host itself", "yes" if pf.from_host else "no"),
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
    related = ((pf.container, ns_label(snap, pf.container)),) if pf.container else ()
    return Details(element_id, "portforward", forward_label(pf), tuple(facts), rules=rules,
                   forwards=(pf,), commands=tuple(commands), related=related)


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
    """containers: bridgescope-managed netns name -> container name (offers the forward form)."""
    if element_id.startswith("edge:pf:"):  # a forward's edge tells what its node tells
        element_id = element_id[len("edge:"):]
    element = next((e for e in elements if e.get("data", {}).get("id") == element_id), None)
    owner = (element or {}).get("data", {}).get("owner")
    if (iface := snap.interface(element_id)) is not None:
        inside = containers.get(netns_name(snap.namespace(iface.netns)) or "")
        return replace(interface_details(snap, iface, owner), container=inside)
    if (ns := snap.namespace(element_id)) is not None:
        return namespace_details(snap, ns, owner, containers.get(netns_name(ns) or ""))
    if (pf := forward_for_id(snap, element_id)) is not None:
        return forward_details(snap, pf, element_id)
    return generic_details(element) if element is not None else None


# ---- route ----------------------------------------------------------------------------------

@bp.get("/details/<path:element_id>")
def panel(element_id: str) -> str:
    from bridgescope.webui.forms import form_choices

    source = runtime().source
    choices = form_choices()
    managed = {c.netns: c.name for c in choices.pop("container_objects", [])}
    details = details_for(source.snapshot, source.elements, element_id, managed)
    if details is None:
        abort(404, f"no element {element_id!r} in the current topology (it may just have gone)")
    forwards = [f for f in choices["forwards"] if f.container == details.container]
    return page_or_fragment("details.html", "panel", d=details, managed_forwards=forwards, **choices)
