"""Can a client reach a port forward? One verdict per forward and source, from the snapshot.

Sources: a client outside the host (arrives on its uplink), the host itself (to its own
address), 127.0.0.1 on the host, and a container on the forward's bridge connecting to the
host's port (hairpin). For each, the first packet goes where the kernel sends it: the nat
hook it meets first (prerouting or output, every backend, rules/evaluator.py) must rewrite it
to the forward's container; a forwarded packet needs ip_forward and every forward-hook base
chain's accept; the links on the way must be up; the container needs a route back; and a
program must listen on the destination port in the container's namespace (a read of its
sockets, kernel/listeners.py) - else the connection is refused.

Outcomes: reachable, refused (an RST: nothing listens, or no DNAT and nothing on the host
port), timeout (a drop on the way: which table, rule or policy, ip_forward off, a link down, no
route back), unknown (the rules or the snapshot cannot tell; why). The panel, the tables,
the packet path and the doctor all read these, so they cannot disagree. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network

from bridgescope.collector.hostview import HostView, host_view, ipv4_addresses, is_default
from bridgescope.collector.kernel.listeners import ANY_ADDRESS, ListenerRead
from bridgescope.collector.model import Interface, PortForward, Snapshot, portforward_id
from bridgescope.collector.rules.evaluator import ACCEPT, DROP, HookRun, describe, run_hook
from bridgescope.collector.rules.matcher import Packet
from bridgescope.collector.rules.nat import forward_packet

REACHABLE, REFUSED, TIMEOUT, UNKNOWN = "reachable", "refused", "timeout", "unknown"
OUTSIDE, HOST, LOOPBACK, CONTAINER = "outside", "host", "loopback", "container"
SOURCES = (OUTSIDE, HOST, LOOPBACK, CONTAINER)
SOURCE_LABELS = {OUTSIDE: "outside", HOST: "the host", LOOPBACK: "127.0.0.1", CONTAINER: "a container"}
_OUTSIDE_CLIENT = "192.0.2.200"  # a documentation address: some client beyond the uplink


@dataclass(frozen=True)
class Verdict:
    source: str  # one of SOURCES
    outcome: str  # reachable / refused / timeout / unknown
    reason: str  # plain words; empty when reachable
    cause: str = ""  # a stable tag: nat-unreached, ip-forward-off, forward-drop, link-down,
    #                  no-route, no-listener, no-container, listener-unknown, ...

    @property
    def ok(self) -> bool:
        return self.outcome == REACHABLE


@dataclass(frozen=True)
class ForwardReach:
    forward: PortForward
    id: str  # the forward's graph element id
    verdicts: tuple[Verdict, ...]
    listening: bool | None  # a program listens on the destination (None: not read)
    checked_at: float = 0.0  # when the listeners were read (0: never)

    def verdict(self, source: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.source == source), None)

    def meant(self) -> tuple[Verdict, ...]:
        """The verdicts of the sources the forward is published for (meant_sources)."""
        sources = meant_sources(self.forward.host_ip)
        return tuple(v for v in self.verdicts if v.source in sources)


def meant_sources(host_ip: str | None) -> tuple[str, ...]:
    """Who a forward is published for: everyone when it is bound to no address; only the
    host's 127.0.0.1 when bound there (`-p 127.0.0.1:8080:80`); everyone but 127.0.0.1 when
    bound to another address. Refusing the rest is what the binding asks for, not a fault."""
    if not host_ip or host_ip in ANY_ADDRESS:
        return SOURCES
    if host_ip.startswith("127."):
        return (LOOPBACK,)
    return tuple(s for s in SOURCES if s != LOOPBACK)


# ---- listeners ------------------------------------------------------------------------------

def listens(listeners: ListenerRead | None, ns_id: str | None, proto: str, addr: str | None,
            port: int) -> bool | None:
    """Does a socket in ns_id take proto connections to addr:port? None: not known."""
    if listeners is None or ns_id is None or not listeners.known(ns_id):
        return None
    return any(s.holds(proto, addr, port) for s in listeners.by_ns[ns_id])


def namespaces_to_poll(snap: Snapshot) -> frozenset[str]:
    """The namespaces whose sockets the verdicts need: every forward's container, and the
    host (its own programs answer where no DNAT catches the port)."""
    host = host_view(snap).host
    return frozenset({pf.container for pf in _forwards(snap) if pf.container}
                     | ({host.id} if host else set()))


# ---- the verdicts ---------------------------------------------------------------------------

def reach(snap: Snapshot, listeners: ListenerRead | None = None) -> tuple[ForwardReach, ...]:
    view = host_view(snap)
    return tuple(forward_reach(view, pf, listeners) for pf in _forwards(snap))


def _forwards(snap: Snapshot) -> tuple[PortForward, ...]:
    """The host's DNAT forwards, one per published port (a rule per path is one forward)."""
    host = host_view(snap).host
    seen: dict[str, PortForward] = {}
    for pf in snap.port_forwards:
        if host is not None and pf.netns == host.id and pf.via == "dnat":
            seen.setdefault(portforward_id(pf), pf)
    return tuple(seen.values())


def forward_reach(view: HostView, pf: PortForward, listeners: ListenerRead | None) -> ForwardReach:
    ctx = _Context(view, pf, listeners)
    verdicts = tuple(ctx.verdict(source) for source in SOURCES)
    listening = listens(listeners, pf.container, pf.proto, pf.to_ip, pf.to_port)
    return ForwardReach(pf, portforward_id(pf), verdicts, listening,
                        listeners.read_at if listeners else 0.0)


def _timeout(source: str, cause: str, reason: str) -> Verdict:
    return Verdict(source, TIMEOUT, reason, cause)


class _Context:
    """One forward's facts, asked once per source."""

    def __init__(self, view: HostView, pf: PortForward, listeners: ListenerRead | None):
        self.view, self.pf, self.listeners = view, pf, listeners
        self.host = view.host
        self.snap = view.snap
        self.target = self.snap.interface(pf.to_interface) if pf.to_interface else None
        self.ns = self.snap.namespace(pf.container) if pf.container else None
        self.att = view.attachment_with(IPv4Address(pf.to_ip)) if _v4(pf.to_ip) else None
        self.bridges = frozenset(n.bridge.name for n in view.bridges)

    # -- each source ----------------------------------------------------------------------

    def verdict(self, source: str) -> Verdict:
        if self.host is None:
            return Verdict(source, UNKNOWN, "the snapshot has no host namespace", "no-host")
        if not _v4(self.pf.to_ip):
            return Verdict(source, UNKNOWN, f"{self.pf.to_ip} is not an IPv4 address; only IPv4 is "
                           "worked out", "not-ipv4")
        if source == LOOPBACK and self.pf.host_ip and self.pf.host_ip != "127.0.0.1" \
                and not self.pf.host_ip.startswith("127."):
            return Verdict(source, REFUSED, f"the forward is bound to {self.pf.host_ip}, not to 127.0.0.1",
                           "other-address")
        dst = self._host_address(source)
        if dst is None:
            return Verdict(source, UNKNOWN, "the host has no address to connect to", "no-address")
        src, iif = self._client(source)
        if src is None:
            return Verdict(source, UNKNOWN, "no container on the bridge to connect from", "no-client")
        packet = Packet(4, self.pf.proto, dst, self.pf.host_port, src=src, iif=iif,
                        oif="" if iif else None, local=self._local(), bridges=self.bridges,
                        src_remote=source == OUTSIDE,
                        not_iif=self.bridges if source == OUTSIDE else frozenset())
        hook = "output" if source in (HOST, LOOPBACK) else "prerouting"
        run = run_hook(self.view.ruleset, self.host.id, hook, packet)
        if run.verdict == DROP:
            return _timeout(source, "nat-drop", f"{hook}: {_where(run)} drops it")
        if run.rewrite_unknown:
            return Verdict(source, UNKNOWN, run.unknown or "the rewrite cannot be told", "nat-unknown")
        after = run.packet
        if (after.dst, after.dport) != (self.pf.to_ip, self.pf.to_port):
            return self._not_rewritten(source, run, dst)
        if source == LOOPBACK and self.host.sysctl(f"net.ipv4.conf.{self._bridge_name()}.route_localnet") != "1":
            return _timeout(source, "route-localnet-off",
                            "the DNAT sends 127.0.0.1's packets to the bridge, and the kernel drops "
                            f"them there: route_localnet is off on {self._bridge_name()}")
        return (self._forwarded(source, after) if source in (OUTSIDE, CONTAINER) else None) \
            or self._links(source) or self._route_back(source, src) or self._listener(source)

    def _not_rewritten(self, source: str, run: HookRun, dst: str) -> Verdict:
        """No DNAT to this container caught the packet: the host's own port answers."""
        pf = self.pf
        if run.binding is not None and run.binding.target in ("DNAT", "REDIRECT"):
            return Verdict(source, UNKNOWN, f"`{run.binding.text}` catches it first and sends it to "
                           f"{run.packet.dst}:{run.packet.dport}", "shadowed")
        hook = "OUTPUT" if source in (HOST, LOOPBACK) else "PREROUTING"
        why = (f"no DNAT catches {dst}:{pf.host_port} on its way through {hook}"
               + (f" (nothing jumps from {hook} to chain {pf.chain})" if pf.chain and pf.chain != hook else ""))
        host_listens = listens(self.listeners, self.host.id, pf.proto, dst, pf.host_port)
        if host_listens:
            return Verdict(source, REACHABLE, f"{why}; a program on the host listens on "
                           f"{pf.proto}/{pf.host_port} and answers (a proxy?)", "host-listener")
        if host_listens is None and source == LOOPBACK:
            return Verdict(source, UNKNOWN, f"{why}; whether a program on the host listens on "
                           f"{pf.proto}/{pf.host_port} is not known", "listener-unknown")
        return Verdict(source, REFUSED, f"refused: {why}, and nothing on the host listens on "
                       f"{pf.proto}/{pf.host_port}", "nat-unreached")

    def _forwarded(self, source: str, after: Packet) -> Verdict | None:
        if self.host.sysctl("net.ipv4.ip_forward") == "0":
            return _timeout(source, "ip-forward-off", "ip_forward is off on the host: it does not route "
                            "the packet on to the container")
        out = self.att.bridge.name if self.att else None
        rule = self.view.rule(self.pf.netns, self.pf.chain, self.pf.rule_text)
        packet = forward_packet(self.pf, rule, out, self.bridges)
        if source == CONTAINER and out:
            packet = replace(packet, iif=out, not_iif=frozenset(), src=after.src, src_remote=False)
        run = run_hook(self.view.ruleset, self.host.id, "forward", packet)
        if run.verdict == DROP:
            return _timeout(source, "forward-drop", f"forward: {_where(run)} drops it")
        if run.verdict != ACCEPT:
            return Verdict(source, UNKNOWN, f"forward: {run.unknown or 'cannot tell'}", "forward-unknown")
        if source == CONTAINER and self.att is not None and self.att.port.hairpin is False \
                and self._client_is_target() \
                and self.host.sysctl("net.bridge.bridge-nf-call-iptables") == "1":
            return _timeout(source, "hairpin-off", f"{self.att.bridge.name} will not send the frame back "
                            f"out of {self.att.port.name}: hairpin mode is off")
        return None

    def _links(self, source: str) -> Verdict | None:
        if self.target is None or self.ns is None:
            return _timeout(source, "no-container", f"no container has {self.pf.to_ip}: nothing answers there")
        down = [i for i in self._path_links() if i.state != "up"]
        if down:
            return _timeout(source, "link-down", f"{down[0].name} in {self.snap.ns_name(down[0].netns)} is down")
        return None

    def _route_back(self, source: str, src: str) -> Verdict | None:
        """The container answers src: it needs a route covering it (the default one, for a
        client beyond the host; the bridge's own network, for the host and neighbours)."""
        client = IPv4Address(src)
        if self.target is None:
            return None
        for route in self.view.routes4(self.target.netns):
            if is_default(route):
                return None
            net = _network(route.dst)
            if net is not None and client in net:
                return None
        if any(client in a.network for a in ipv4_addresses(self.target)):
            return None
        return _timeout(source, "no-route", f"{self.snap.ns_name(self.target.netns)} has no route back to "
                        f"{src}: the answer never leaves")

    def _listener(self, source: str) -> Verdict:
        pf = self.pf
        name = self.snap.ns_name(pf.container)
        found = listens(self.listeners, pf.container, pf.proto, pf.to_ip, pf.to_port)
        if found is None:
            return Verdict(source, UNKNOWN, f"the packet reaches {name}; whether a program listens on "
                           f"{pf.proto}/{pf.to_port} there has not been read", "listener-unknown")
        if not found:
            return Verdict(source, REFUSED, f"refused: nothing listens on {pf.proto}/{pf.to_port} in {name}",
                           "no-listener")
        return Verdict(source, REACHABLE, "", "")

    # -- small facts --------------------------------------------------------------------------

    def _path_links(self) -> list[Interface]:
        found = [self.target]
        if self.att is not None:
            found = [self.att.bridge, self.att.port, self.att.inner]
        return found

    def _bridge_name(self) -> str:
        return self.att.bridge.name if self.att else "all"

    def _local(self) -> frozenset[str]:
        return frozenset(str(a.ip) for i in self.view.interfaces_in(self.host.id) for a in ipv4_addresses(i))

    def _host_address(self, source: str) -> str | None:
        if source == LOOPBACK:
            return "127.0.0.1"
        if self.pf.host_ip and not self.pf.host_ip.startswith("127.") and "/" not in self.pf.host_ip:
            return self.pf.host_ip
        uplink = self.view.uplink()
        ifaces = self.view.interfaces_in(self.host.id)
        ordered = sorted(ifaces, key=lambda i: (i.name != uplink, i.kind == "bridge", i.kind == "loopback"))
        return next((str(a.ip) for i in ordered for a in ipv4_addresses(i) if not a.ip.is_loopback), None)

    def _client(self, source: str) -> tuple[str | None, str]:
        """(source address, in-interface; "" for a packet made on the host)."""
        if source == OUTSIDE:
            return _OUTSIDE_CLIENT, self.view.uplink() or "uplink"
        if source == LOOPBACK:
            return "127.0.0.1", ""
        if source == HOST:
            gateway = self.att and next(iter(ipv4_addresses(self.att.bridge)), None)
            return (str(gateway.ip) if gateway else self._host_address(OUTSIDE)), ""
        if self.att is None:
            return None, ""
        others = [a for a in self.att_siblings() if a.inner.id != self.att.inner.id] or [self.att]
        addr = next((str(a.ip) for att in others for a in ipv4_addresses(att.inner)), None)
        return addr, self.att.bridge.name

    def att_siblings(self):
        net = next((n for n in self.view.bridges if n.bridge.id == self.att.bridge.id), None)
        return net.attachments if net else ()

    def _client_is_target(self) -> bool:
        return all(a.inner.id == self.att.inner.id for a in self.att_siblings())


def _where(run: HookRun) -> str:
    if run.decider is None:
        return "a base chain"
    base, rule = run.decider
    return describe(base) + (f" (`{rule.text}`)" if rule is not None else f" (its policy {base.chain.policy})")


def _v4(text: str | None) -> bool:
    try:
        IPv4Address(text or "")
        return True
    except ValueError:
        return False


def _network(text: str) -> IPv4Network | None:
    try:
        return IPv4Network(text, strict=False)
    except ValueError:
        return None

