"""The immutable picture of one host's container networking.

Everything the kernel readers produce ends up in these frozen dataclasses; graph building,
NAT interpretation, the doctor and the exporters are pure functions over them. Ids are
derived from kernel identities (namespace inode, ifindex) so they stay stable across runs
for the same kernel objects.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any, TypeVar

Owner = str  # "docker", "cni", "podman", "kube-proxy", "bridgescope", "unknown"
Backend = str  # "legacy", "nft", "nftables"


def namespace_id(inode: int) -> str:
    return f"ns-{inode}"


def interface_id(netns_id: str, ifindex: int) -> str:
    return f"{netns_id}/if{ifindex}"


def portforward_id(pf: PortForward) -> str:
    return f"pf:{pf.netns}:{pf.proto}:{pf.host_ip or '*'}:{pf.host_port}"


def masquerade_id(m: Masquerade) -> str:
    return f"masq:{m.netns}:{m.source or '*'}:{m.out_not or '*'}"


@dataclass(frozen=True)
class Namespace:
    id: str
    name: str
    inode: int
    paths: tuple[str, ...] = ()
    pids: tuple[int, ...] = ()
    is_host: bool = False
    # Selected per-namespace sysctls as read ("net.ipv4.ip_forward" -> "1"); the doctor
    # and the plumbing read them, so they travel with the snapshot.
    sysctls: tuple[tuple[str, str], ...] = ()

    def sysctl(self, key: str) -> str | None:
        for k, v in self.sysctls:
            if k == key:
                return v
        return None


@dataclass(frozen=True)
class Interface:
    id: str
    netns: str
    name: str
    ifindex: int
    kind: str  # bridge, veth, physical, loopback, vxlan, macvlan, dummy, tun, other
    state: str  # "up" / "down"
    mtu: int
    mac: str | None
    addresses: tuple[str, ...] = ()  # CIDR strings, IPv4 and IPv6
    master: str | None = None  # interface id of the bridge
    peer: str | None = None  # interface id of the veth peer (any namespace)
    alias: str | None = None  # IFLA_IFALIAS; bridgescope tags its objects here
    operstate: str | None = None  # kernel operstate ("UP", "DOWN", "LOWERLAYERDOWN", ...)
    hairpin: bool | None = None  # bridge-port hairpin mode, for ports of a bridge


@dataclass(frozen=True)
class Route:
    netns: str
    dst: str  # "default" or a CIDR
    gateway: str | None
    dev: str | None  # interface name
    dev_id: str | None = None  # interface id
    family: int = 4
    scope: str | None = None
    proto: str | None = None
    prefsrc: str | None = None


@dataclass(frozen=True)
class Chain:
    """A chain as declared in a table; policy is None for user chains."""
    netns: str
    backend: Backend
    family: int  # 4 or 6
    table: str
    name: str
    policy: str | None = None
    packets: int = 0
    bytes: int = 0
    # Where packets enter the chain: the netfilter hook ("prerouting", "input", "forward",
    # "output", "postrouting") and the chain type ("nat", "filter", ...) - for iptables the
    # built-in chains of a table, for nftables the base chains (whose names are free-form).
    hook: str | None = None
    hook_type: str | None = None
    # Order among the base chains of one hook (nftables' `priority`); None for iptables,
    # whose tables sit at fixed priorities (rules/model.py knows them).
    priority: int | None = None


@dataclass(frozen=True)
class Rule:
    netns: str
    backend: Backend
    family: int
    table: str
    chain: str
    text: str  # the rule as the backend prints it (iptables-save line or nft statement)
    owner: Owner = "unknown"
    packets: int = 0
    bytes: int = 0
    # Parsed form, filled by the firewall readers: the list of (option, args) pairs in order,
    # e.g. (("-s", ("172.17.0.0/16",), False), ("-o", ("docker0",), True)); the bool is "!".
    matches: tuple[tuple[str, tuple[str, ...], bool], ...] = ()
    target: str | None = None  # ACCEPT, DNAT, MASQUERADE, a chain name, ...
    target_args: tuple[tuple[str, str], ...] = ()  # (("--to-destination", "172.17.0.2:80"),)
    goto: bool = False  # -g instead of -j
    comment: str | None = None
    position: int = 0  # 1-based index within its chain
    handle: int | None = None  # nftables rule handle


@dataclass(frozen=True)
class PortForward:
    netns: str  # the namespace whose firewall holds the DNAT
    proto: str  # tcp, udp, sctp
    host_ip: str | None  # None means any local address
    host_port: int
    to_ip: str
    to_port: int
    owner: Owner
    backend: Backend
    container: str | None = None  # namespace id owning to_ip
    host_port_end: int | None = None  # for ranges
    to_port_end: int | None = None
    to_interface: str | None = None  # interface id owning to_ip
    reachable: bool = True  # a jump from PREROUTING/OUTPUT leads to the DNAT
    forward_accept: bool | None = None  # FORWARD lets it through (None: not decidable)
    chain: str | None = None
    rule_text: str | None = None
    via: str = "dnat"  # "dnat" or "proxy" (a userland proxy listener)


@dataclass(frozen=True)
class Masquerade:
    netns: str
    source: str | None  # CIDR, None = any
    out_not: str | None  # interface name from "! -o IF", else None
    owner: Owner
    backend: Backend
    out: str | None = None  # interface name from "-o IF"
    to_source: str | None = None  # SNAT address, None for MASQUERADE
    destination: str | None = None
    dest_not: bool = False
    chain: str | None = None
    rule_text: str | None = None


@dataclass(frozen=True)
class Snapshot:
    namespaces: tuple[Namespace, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    routes: tuple[Route, ...] = ()
    rules: tuple[Rule, ...] = ()
    chains: tuple[Chain, ...] = ()
    port_forwards: tuple[PortForward, ...] = ()
    masquerades: tuple[Masquerade, ...] = ()
    warnings: tuple[str, ...] = ()
    taken_at: float = 0.0  # time.time() when the scan started
    host: str | None = None  # namespace id of "the host"

    # Small indexes; cheap enough to compute on demand and keep the data plain.
    def namespace(self, ns_id: str) -> Namespace | None:
        return next((n for n in self.namespaces if n.id == ns_id), None)

    def ns_name(self, ns_id: str | None) -> str:
        """A namespace's name for people: its name, else its id ("?" for none)."""
        ns = self.namespace(ns_id) if ns_id else None
        return ns.name if ns else (ns_id or "?")

    def interface(self, if_id: str) -> Interface | None:
        return next((i for i in self.interfaces if i.id == if_id), None)

    def host_namespace(self) -> Namespace | None:
        """The namespace served as the host: `host` when the snapshot names one, else the
        one marked is_host."""
        if self.host:
            return self.namespace(self.host)
        return next((n for n in self.namespaces if n.is_host), None)

    def interfaces_in(self, ns_id: str) -> tuple[Interface, ...]:
        return tuple(i for i in self.interfaces if i.netns == ns_id)


T = TypeVar("T")
_DEFAULTS: dict[type, dict[str, Any]] = {}


def built(cls: type[T], values: dict[str, Any]) -> T:
    """`cls(**values)` for one of these frozen dataclasses (none has a __post_init__), five
    times faster: the generated __init__ assigns each field through object.__setattr__,
    which a reader building 5,000 rules pays 16 times per rule. The caller names fields only
    (no check here); fields it leaves out take their defaults."""
    defaults = _DEFAULTS.get(cls)
    if defaults is None:
        defaults = _DEFAULTS.setdefault(cls, {f.name: f.default for f in fields(cls)
                                              if f.default is not MISSING})
    made = object.__new__(cls)
    made.__dict__.update(defaults)
    made.__dict__.update(values)
    return made


@contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Build many of these objects without the cyclic collector running meanwhile: reading
    5,000 rules allocates ~100,000 containers, which trigger collections that walk every
    object of the process (~12% of a cold firewall read) and can free nothing, since plain
    immutable records form no cycles. The collector resumes afterwards (unless it was off)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


_PLAIN = (str, int, float, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def to_plain(obj: Any) -> Any:
    """Dataclasses/tuples -> JSON-ready dicts/lists (no copies of the plain parts)."""
    kind = type(obj)
    if kind in _PLAIN:
        return obj
    names = _FIELD_NAMES.get(kind)
    if names is None and is_dataclass(obj) and not isinstance(obj, type):
        names = _FIELD_NAMES.setdefault(kind, tuple(f.name for f in fields(obj)))  # fields() is slow
    if names is not None:
        plain = {name: getattr(obj, name) for name in names}
        for name, value in plain.items():
            if type(value) not in _PLAIN:  # most fields are: no call for them
                plain[name] = to_plain(value)
        return plain
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj

