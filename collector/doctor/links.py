"""Doctor checks on links, addresses, routes and sysctls (docs/doctor.md).

Each check takes the HostView and returns findings. A check stays silent where a more basic
problem already explains the symptom (a container whose eth0 is down has lost its routes, so
it gets link-down, not also no-default-route): one cause, one finding.
"""
from __future__ import annotations

from ipaddress import IPv4Interface

from bridgescope.collector.doctor.finding import Finding
from bridgescope.collector.hostview import (
    Attachment,
    HostView,
    in_ns,
    ipv4_addresses,
    is_default,
)
from bridgescope.collector.model import Interface, Namespace


def ip_forward_off(view: HostView) -> tuple[Finding, ...]:
    host = view.host
    if host is None or host.sysctl("net.ipv4.ip_forward") != "0":
        return ()
    if not view.attachments() and not any(p.netns == host.id for p in view.snap.port_forwards):
        return ()  # nothing on this host needs routing
    return (Finding(
        "ip-forward-off", "error", (host.id,),
        "IPv4 forwarding is off on the host",
        "net.ipv4.ip_forward is 0, so the host does not route packets between its bridges and "
        "its other interfaces: containers reach nothing beyond the host, and published ports "
        "time out. Docker, CNI and Podman all switch it on.",
        (in_ns(host, "sysctl", "-w", "net.ipv4.ip_forward=1"),)),)


def link_down(view: HostView) -> tuple[Finding, ...]:
    out: list[Finding] = []
    host = view.host
    for net in view.bridges:
        if not is_up(net.bridge) and (net.attachments or net.gateways):
            out.append(_down(host, net.bridge, f"bridge {net.bridge.name} is down",
                             "The bridge is administratively down: no frame crosses it, so its "
                             "containers reach neither each other nor the host."))
        for att in net.attachments:
            if not is_up(att.port):
                out.append(_down(host, att.port, f"veth {att.port.name} (port of {net.bridge.name}) is down",
                                 f"The host end of {att.namespace.name}'s veth pair is down, so "
                                 "nothing the container sends reaches the bridge."))
            if not is_up(att.inner):
                out.append(_down(att.namespace, att.inner,
                                 f"{att.inner.name} in {att.namespace.name} is down",
                                 "The container's interface is down: it has no link, and the "
                                 "kernel removed the routes through it."))
    for ns in view.containers():
        lo = next((i for i in view.interfaces_in(ns.id) if i.kind == "loopback"), None)
        if lo is not None and not is_up(lo):
            out.append(_down(ns, lo, f"lo in {ns.name} is down",
                             "The container's loopback is down: programs inside cannot talk to "
                             "127.0.0.1 (Docker sets lo up in every sandbox).", severity="warning"))
    return tuple(out)


def _down(ns: Namespace | None, iface: Interface, title: str, why: str,
          severity: str = "error") -> Finding:
    objects = (iface.id,) if ns is None else (iface.id, ns.id)
    return Finding("link-down", severity, objects, title, why,
                   (in_ns(ns, "ip", "link", "set", iface.name, "up"),))


def is_up(iface: Interface) -> bool:
    return iface.state == "up"


def offlink_addresses(view: HostView, att: Attachment) -> tuple[tuple[IPv4Interface, IPv4Interface], ...]:
    """(container address, bridge gateway) pairs where a /32 leaves the gateway off-link."""
    routes = view.routes4(att.namespace.id)
    out = []
    for addr in ipv4_addresses(att.inner):
        gateway = att_gateway(view, att, addr)
        if addr.network.prefixlen != 32 or gateway is None:
            continue
        onlink = any(r.gateway is None and not is_default(r) and r.dev == att.inner.name
                     and _contains(r.dst, gateway) for r in routes)
        if not onlink:
            out.append((addr, gateway))
    return tuple(out)


def att_gateway(view: HostView, att: Attachment, addr: IPv4Interface) -> IPv4Interface | None:
    net = next(n for n in view.bridges if n.bridge.id == att.bridge.id)
    return net.gateway_for(addr.ip)


def _contains(dst: str, gateway: IPv4Interface) -> bool:
    try:
        return gateway.ip in IPv4Interface(dst).network
    except ValueError:
        return False


def addr_no_prefix(view: HostView) -> tuple[Finding, ...]:
    out = []
    for att in view.attachments():
        if not is_up(att.inner):
            continue
        for addr, gateway in offlink_addresses(view, att):
            ns, dev = att.namespace, att.inner.name
            good = f"{addr.ip}/{gateway.network.prefixlen}"
            out.append(Finding(
                "addr-no-prefix", "error", (att.inner.id, ns.id),
                f"{dev} in {ns.name} has {addr} - no prefix length",
                f"The address was added without a prefix length, so the kernel made it a /32: "
                f"the gateway {gateway.ip} is not on any connected network, the default route "
                f"cannot be added (\"Nexthop has invalid gateway\") and the container reaches "
                f"nothing (\"Network is unreachable\"). Docker adds it as {good}.",
                (in_ns(ns, "ip", "addr", "del", str(addr), "dev", dev),
                 in_ns(ns, "ip", "addr", "add", good, "dev", dev),
                 in_ns(ns, "ip", "route", "replace", "default", "via", str(gateway.ip)))))
    return tuple(out)


def no_default_route(view: HostView) -> tuple[Finding, ...]:
    out = []
    for ns in view.containers():
        atts = view.attachment_of(ns.id)
        if any(not is_up(a.inner) or offlink_addresses(view, a) for a in atts):
            continue  # explained by link-down / addr-no-prefix
        if any(is_default(r) for r in view.routes4(ns.id)):
            continue
        gateway = next((g for a in atts for addr in ipv4_addresses(a.inner)
                        if (g := att_gateway(view, a, addr)) is not None), None)
        if gateway is None:
            continue  # no gateway on its bridge: an isolated L2 network by design
        ids = tuple(a.inner.id for a in atts) + (ns.id,)
        out.append(Finding(
            "no-default-route", "error", ids,
            f"{ns.name} has no default route",
            f"The container has an address on the bridge's network but no default route, so it "
            f"reaches only its own subnet. Docker and CNI add \"default via {gateway.ip}\".",
            (in_ns(ns, "ip", "route", "add", "default", "via", str(gateway.ip)),)))
    return tuple(out)


def mtu_mismatch(view: HostView) -> tuple[Finding, ...]:
    host = view.host
    if host is None:
        return ()
    uplink_name = view.uplink()
    uplink = next((i for i in view.interfaces_in(host.id) if i.name == uplink_name), None)
    if uplink is None:
        return ()
    out = []
    for att in view.attachments():
        if att.inner.mtu > uplink.mtu:
            out.append(Finding(
                "mtu-mismatch", "warning", (att.inner.id, att.port.id),
                f"{att.inner.name} in {att.namespace.name} has MTU {att.inner.mtu}, the uplink "
                f"{uplink.name} only {uplink.mtu}",
                "Packets the container sends at full size do not fit the host's uplink; when "
                "path-MTU discovery is blocked, TLS handshakes and large downloads stall.",
                (in_ns(att.namespace, "ip", "link", "set", att.inner.name, "mtu", str(uplink.mtu)),
                 in_ns(host, "ip", "link", "set", att.port.name, "mtu", str(uplink.mtu)))))
    return tuple(out)
