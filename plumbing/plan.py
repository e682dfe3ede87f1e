"""Planning a change: a pure function from (kernel facts, desired state, request) to steps.

Everything a change must know of the kernel is read first (facts.py) into a Facts value, so
the same facts give the same plan: a preview (`--dry-run`, the forms) shows exactly what the
change runs, and plans are tested without root from recorded facts. Building a step reads
nothing: its do/undo act only when steps.run calls them.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bridgescope.collector import shell
from bridgescope.collector.model import PortForward
from bridgescope.plumbing import adopt, backends, conflicts, ipam, journal, links, netns, rules, state
from bridgescope.plumbing.errors import PlumbingError, UnknownContainer, ValidationError
from bridgescope.plumbing.rules import Change
from bridgescope.plumbing.state import Adopted, Container, Forward, Network, State
from bridgescope.plumbing.steps import Step

IP_FORWARD = "net.ipv4.ip_forward"


# --- what a change is asked for ----------------------------------------------------------

@dataclass(frozen=True)
class CreateNetwork:
    network: Network
    firewall: str = "auto"


@dataclass(frozen=True)
class RemoveNetwork:
    name: str
    force: bool = False
    firewall: str = "auto"


@dataclass(frozen=True)
class CreateContainer:
    name: str
    network: str
    ip: str | None = None
    mappings: tuple[Forward, ...] = ()
    firewall: str = "auto"


@dataclass(frozen=True)
class RemoveContainer:
    name: str
    firewall: str = "auto"


@dataclass(frozen=True)
class AddForwards:
    container: str
    mappings: tuple[Forward, ...]
    firewall: str = "auto"


@dataclass(frozen=True)
class RemoveForwards:
    container: str
    mappings: tuple[Forward, ...]
    firewall: str = "auto"


@dataclass(frozen=True)
class Restore:
    firewall: str = "auto"


@dataclass(frozen=True)
class Reconcile:
    """Follow adopted containers: re-point their forwards where they moved, remove those of
    containers that are gone, put back the engine user-chain jump an engine restart lost."""
    firewall: str = "auto"


Request = (CreateNetwork | RemoveNetwork | CreateContainer | RemoveContainer | AddForwards
           | RemoveForwards | Restore | Reconcile)


@dataclass(frozen=True)
class Facts:
    """What a change needs to know of the kernel, read before planning (facts.gather)."""
    probe: backends.Probe | None = None  # the host's firewall, when a backend must be chosen
    ip_forward: str | None = None  # net.ipv4.ip_forward, before the first network
    links: frozenset[str] = frozenset()  # host interfaces, among the names the change uses
    routes: tuple[tuple[ipaddress.IPv4Network, str], ...] = ()  # (destination, device)
    used: frozenset[ipaddress.IPv4Address] = frozenset()  # addresses seen on the bridge
    foreign: tuple[PortForward, ...] = ()  # others' forwards (and our orphans) on the host
    listeners: tuple[conflicts.Listener, ...] = ()
    netns: frozenset[str] = frozenset()  # named namespaces present, among those it touches
    tagged: tuple[tuple[str, str], ...] = ()  # (interface, object id) of our tagged links
    our_netns: tuple[str, ...] = ()  # container namespaces holding a link tagged by us
    veth: str | None = None  # the host-side name of a new container's veth
    # Adopting: the containers on a bridge of the host, and the namespaces on none.
    candidates: tuple[adopt.Candidate, ...] = ()
    unbridged: tuple[str, ...] = ()
    engines_answered: frozenset[str] = frozenset()  # kinds of engine (docker, podman) that answered


@dataclass(frozen=True)
class Ctx:
    """Where a change acts and with which firewall backend."""
    ns: netns.HostNs
    backend: str
    before: State

    def sh(self, argv: Sequence[str], *, stdin: str | None = None) -> str:
        """A teaching command as typed on this host (addressed to it when it is a named one)."""
        return shell.in_netns(self.ns.name, argv, stdin=stdin)


@dataclass(frozen=True)
class Plan:
    ctx: Ctx
    steps: tuple[Step, ...]
    after: State
    summary: str
    changes: bool = True  # False: nothing to do (the object already exists as asked)
    save: bool = True

    @property
    def commands(self) -> tuple[str, ...]:
        return tuple(c for s in self.steps for c in s.commands)


def needs_probe(st: State, request: Request) -> bool:
    """Whether choosing the backend needs the host's firewall read (facts.gather asks)."""
    if isinstance(request, Restore) and st.backend:
        return False
    if isinstance(request, Reconcile) or (isinstance(request, (AddForwards, RemoveForwards))
                                          and st.container(request.container) is None):
        return True  # the engine's firewall decides whether (and how) an adopted forward works
    wanted = request.firewall
    return wanted in backends.CHOICES and not (st.backend and wanted in ("auto", st.backend))


def _backend(st: State, requested: str, facts: Facts) -> str:
    if st.backend and requested in ("auto", st.backend):
        return st.backend
    backends.check_request(requested, st.backend)
    if facts.probe is None:
        raise PlumbingError("choose the firewall backend", "the host's firewall was not read")
    return backends.choose(requested, facts.probe, st.backend)


def plan(ns: netns.HostNs, facts: Facts, st: State, request: Request) -> Plan:
    """The steps of one change and the state after it; raises ValidationError for a request
    the state or the facts refuse."""
    planner = {CreateNetwork: _network_create, RemoveNetwork: _network_remove,
               CreateContainer: _container_create, RemoveContainer: _container_remove_request,
               AddForwards: _forwards_add_request, RemoveForwards: _forwards_remove_request,
               Restore: _restore, Reconcile: _reconcile}[type(request)]
    return planner(ns, facts, st, request)


# --- checks ------------------------------------------------------------------------------

def require_container(st: State, name: str) -> Container:
    ctr = st.container(name)
    if ctr is None:
        raise UnknownContainer(f"no container named {name} is managed by bridgescope here")
    return ctr


def forward_for(st: State, container: str, m: Forward) -> Forward | None:
    return next((f for f in st.forwards_of(container) if f.key == m.key), None)


def _has_forward(st: State, container: str, m: Forward) -> bool:
    fwd = forward_for(st, container, m)
    return fwd is not None and fwd.container_port == m.container_port


def _check_subnet_free(facts: Facts, st: State, name: str, net: ipaddress.IPv4Network) -> None:
    for other in st.networks:
        if net.overlaps(ipaddress.IPv4Network(other.subnet)):
            raise ValidationError("subnet", f"{net} overlaps network {other.name} ({other.subnet})")
    if name in facts.links:
        raise ValidationError("name", f"an interface named {name} already exists on this host")
    for dst, dev in facts.routes:
        if net.overlaps(dst):
            raise ValidationError("subnet", f"{net} collides with the existing route {dst} dev {dev}")


def _check_ports(facts: Facts, st: State, mappings: Sequence[Forward]) -> None:
    if not mappings:
        return
    _check_host_ips(st, {m.host_ip for m in mappings} - {None})
    problem = conflicts.find_conflicts(mappings, st.forwards, facts.foreign, facts.listeners)
    if problem:
        raise ValidationError("host_port", problem)


def _check_host_ips(st: State, host_ips: set[str]) -> None:
    """A port published on a container's address would never match: the DNAT only sees
    packets for the host's own addresses. A managed subnet holds only containers and its
    gateway (a host address, fine to publish on)."""
    for text in host_ips:
        ip = ipaddress.IPv4Address(text)
        for net in st.networks:
            if ip in ipaddress.IPv4Network(net.subnet) and text != net.gateway:
                raise ValidationError("host_ip", f"{ip} is a container address of network "
                                                 f"{net.name} ({net.subnet}), not the host's: "
                                                 "publish on an address of the host")


def _allocate(facts: Facts, st: State, net: Network, requested: str | None) -> ipaddress.IPv4Address:
    subnet = ipaddress.IPv4Network(net.subnet)
    gateway = ipaddress.IPv4Address(net.gateway)
    used = {ipaddress.IPv4Address(c.ip) for c in st.containers} | facts.used
    if requested:
        return ipam.check_requested(subnet, gateway, requested, used)
    return ipam.next_free(subnet, gateway, used)


# --- requests -> plans -------------------------------------------------------------------

def _network_create(ns: netns.HostNs, facts: Facts, st: State, req: CreateNetwork) -> Plan:
    want = req.network
    backends.check_request(req.firewall, st.backend)
    existing = st.network(want.name)
    net = ipaddress.IPv4Network(want.subnet)
    if existing == want:
        return Plan(Ctx(ns, st.backend or "", st), (), st, f"network {want.name} already exists",
                    changes=False)
    if existing:
        raise ValidationError("name", f"a network named {want.name} already exists with subnet "
                                      f"{existing.subnet}")
    _check_subnet_free(facts, st, want.name, net)
    ctx = Ctx(ns, _backend(st, req.firewall, facts), st)
    after = st.with_(networks=st.networks + (want,), backend=ctx.backend)
    steps, after = network_create(ctx, facts, want, after)
    return Plan(ctx, tuple(steps), after,
                f"network {want.name} {net} (gateway {want.gateway}) on {ctx.backend}")


def _network_remove(ns: netns.HostNs, facts: Facts, st: State, req: RemoveNetwork) -> Plan:
    net = st.network(req.name)
    if net is None:
        raise ValidationError("name", f"no network named {req.name} is managed by bridgescope here")
    attached = st.containers_on(req.name)
    if attached and not req.force:
        raise ValidationError("name", f"network {req.name} still has containers "
                                      f"{', '.join(c.name for c in attached)}; remove them "
                                      "first or use --force")
    ctx = Ctx(ns, _backend(st, req.firewall, facts), st)
    steps: list[Step] = []
    cur = st
    for ctr in attached:
        more, cur = container_remove(ctx, cur, ctr)
        steps += more
    more, after = network_remove(ctx, cur, net)
    return Plan(ctx, tuple(steps + more), after, f"removed network {req.name}")


def _container_create(ns: netns.HostNs, facts: Facts, st: State, req: CreateContainer) -> Plan:
    backends.check_request(req.firewall, st.backend)
    net = st.network(req.network)
    if net is None:
        raise ValidationError("network", f"no network named {req.network}; create it first")
    mappings = req.mappings
    existing = st.container(req.name)
    if existing:
        if existing.network != req.network or (req.ip and req.ip != existing.ip):
            raise ValidationError("name", f"a container named {req.name} already exists on "
                                          f"network {existing.network} ({existing.ip})")
        mappings = tuple(m for m in mappings if not _has_forward(st, req.name, m))
        if not mappings:
            return Plan(Ctx(ns, st.backend or "", st), (), st,
                        f"container {req.name} already exists ({existing.ip})", changes=False)
    ctx = Ctx(ns, _backend(st, req.firewall, facts), st)
    _check_ports(facts, st, mappings)
    if existing:
        steps, after = forwards_add(ctx, st, existing, mappings)
        return Plan(ctx, tuple(steps), after, f"container {req.name}: added forwards")
    ctr_ns = ns.container_netns(req.name)
    if ctr_ns in facts.netns:
        raise ValidationError("name", f"network namespace {ctr_ns} already exists and is "
                                      "not a bridgescope container; pick another name")
    if facts.veth is None:
        raise PlumbingError(f"create container {req.name}", "no name was chosen for its veth")
    addr = _allocate(facts, st, net, req.ip)
    ctr = Container(req.name, req.network, str(addr), ctr_ns, facts.veth)
    steps, after = container_create(ctx, st, ctr, net, mappings)
    # Docker sets the host end up last, once the firewall is ready for the container.
    prefix = ipaddress.IPv4Network(net.subnet).prefixlen
    return Plan(ctx, tuple(steps + [link_up(ctx, ctr)]), after,
                f"container {req.name} {addr}/{prefix} on {req.network}"
                + "".join(f", {m.spec()}" for m in mappings))


def _container_remove_request(ns: netns.HostNs, facts: Facts, st: State,
                              req: RemoveContainer) -> Plan:
    ctr = require_container(st, req.name)
    ctx = Ctx(ns, _backend(st, req.firewall, facts), st)
    steps, after = container_remove(ctx, st, ctr)
    return Plan(ctx, tuple(steps), after, f"removed container {req.name}")


def _forwards_add_request(ns: netns.HostNs, facts: Facts, st: State, req: AddForwards) -> Plan:
    if st.container(req.container) is None:
        return _adopt_add(ns, facts, st, req)
    ctr = require_container(st, req.container)
    ctx = Ctx(ns, _backend(st, req.firewall, facts), st)
    _check_ports(facts, st, req.mappings)
    steps, after = forwards_add(ctx, st, ctr, req.mappings)
    return Plan(ctx, tuple(steps), after,
                f"forward {', '.join(m.spec() for m in req.mappings)} -> {ctr.name} ({ctr.ip})")


def _forwards_remove_request(ns: netns.HostNs, facts: Facts, st: State,
                             req: RemoveForwards) -> Plan:
    if st.container(req.container) is None:
        return _adopt_remove(ns, facts, st, req)
    ctr = require_container(st, req.container)
    gone = []
    for m in req.mappings:
        fwd = forward_for(st, ctr.name, m)
        if fwd is None:
            raise ValidationError("spec", f"container {ctr.name} has no forward {m.spec()}")
        gone.append(fwd)
    ctx = Ctx(ns, _backend(st, req.firewall, facts), st)
    steps, after = forwards_remove(ctx, st, ctr, gone)
    return Plan(ctx, tuple(steps), after,
                f"removed forward {', '.join(f.spec() for f in gone)} from {ctr.name}")


def _restore(ns: netns.HostNs, facts: Facts, st: State, req: Restore) -> Plan:
    ctx = Ctx(ns, st.backend or _backend(st, req.firewall, facts), st)
    steps = cleanup(ctx, facts, st) + recreate(ctx, facts, st)
    return Plan(ctx, tuple(steps), st,
                f"restored {len(st.networks)} networks, {len(st.containers)} containers, "
                f"{len(st.forwards)} forwards", save=False)


def recovery(ns: netns.HostNs, facts: Facts, target: State, intent: journal.Intent) -> Plan:
    """Back to the saved state after a change a crash interrupted (api._recover runs it)."""
    ctx = Ctx(ns, target.backend or intent.backend, target)
    steps = cleanup(ctx, facts, target) + recreate(ctx, facts, target)
    # A namespace made just before the crash has no tagged veth yet for cleanup to know it by.
    kept = {c.netns for c in target.containers}
    steps += [Step(f"delete namespace {name} of the interrupted change",
                   lambda n=name: netns.destroy(n), None, (shell.line(("ip", "netns", "del", name)),))
              for name in intent.new_netns if name not in kept and name in facts.netns]
    if not target.networks and intent.forwarding is not None:
        steps.append(_sysctl_step(ctx, IP_FORWARD, intent.forwarding, None))
    return Plan(ctx, tuple(steps), target, f"recover ({intent.action})", save=False)


# --- steps -------------------------------------------------------------------------------

def _firewall_step(ctx: Ctx, what: str, change: Change, before: State, after: State) -> Step:
    path, backend, key = ctx.ns.path, ctx.backend, ctx.ns.key

    def do() -> None:
        conflicts.track_own_change(key, path, lambda: backends.apply(
            backend, path, change, lambda: rules.desired(after)), before, after)

    def undo() -> None:
        conflicts.track_own_change(key, path, lambda: backends.apply(
            backend, path, change.inverse(), lambda: rules.desired(before)), after, before)
    return Step(what=what, do=do, undo=undo,
                commands=backends.commands(backend, change, lambda: rules.desired(after), ctx.sh))


def _sysctl_step(ctx: Ctx, key: str, value: str, previous: str | None) -> Step:
    path = ctx.ns.path
    undo = (lambda: netns.write_sysctl(path, key, previous)) if previous is not None else None
    return Step(f"set {key}={value}", lambda: netns.write_sysctl(path, key, value), undo,
                (ctx.sh(("sysctl", "-w", f"{key}={value}")),))


def _bridge_steps(ctx: Ctx, net: Network) -> list[Step]:
    path = ctx.ns.path
    subnet = ipaddress.IPv4Network(net.subnet)
    return [
        Step(f"create bridge {net.name}",
             lambda: netns.with_netlink(path, lambda ipr: links.create_bridge(
                 ipr, net.name, net.gateway, subnet.prefixlen, net.mtu, net.tag)),
             lambda: netns.with_netlink(path, lambda ipr: links.delete_link(ipr, net.name)),
             (ctx.sh(("ip", "link", "add", net.name, "type", "bridge")),
              ctx.sh(("ip", "link", "set", net.name, "mtu", str(net.mtu), "alias",
                      f"{state.TAG}{net.tag}")),
              ctx.sh(("ip", "addr", "add", f"{net.gateway}/{subnet.prefixlen}", "dev", net.name)),
              ctx.sh(("ip", "link", "set", net.name, "up")))),
        # Proxy-less localhost publishing: 127.0.0.1 may be routed out of this bridge.
        Step(f"enable route_localnet on {net.name}",
             lambda: netns.write_link_sysctl(path, net.name, "route_localnet", "1"), None,
             (ctx.sh(("sysctl", "-w", f"net.ipv4.conf.{net.name}.route_localnet=1")),)),
    ]


def network_create(ctx: Ctx, facts: Facts, net: Network, after: State) -> tuple[list[Step], State]:
    first = not ctx.before.networks
    steps = _bridge_steps(ctx, net)
    if first:
        before_fwd = facts.ip_forward
        if before_fwd is None:
            raise PlumbingError(f"create network {net.name}", f"{IP_FORWARD} was not read")
        after = after.with_(sysctls_before=((IP_FORWARD, before_fwd),))
        steps.append(_sysctl_step(ctx, IP_FORWARD, "1", before_fwd))
    change = Change(add=(rules.structure() if first else ()) + rules.network_rules(net),
                    new_chains=rules.CHAINS if first else (),
                    add_jumps=rules.jumps() if first else ())
    steps.append(_firewall_step(ctx, f"add the firewall rules of network {net.name}", change,
                                ctx.before, after))
    return steps, after


def network_remove(ctx: Ctx, st: State, net: Network) -> tuple[list[Step], State]:
    path = ctx.ns.path
    after = st.with_(networks=tuple(n for n in st.networks if n.name != net.name))
    last = not after.networks
    if last:
        after = after.with_(backend=None, sysctls_before=())
    change = Change(delete=rules.network_rules(net) + (rules.structure() if last else ()),
                    del_jumps=rules.jumps() if last else (),
                    drop_chains=rules.CHAINS if last else ())
    subnet = ipaddress.IPv4Network(net.subnet)
    steps = [_firewall_step(ctx, f"remove the firewall rules of network {net.name}", change, st, after),
             Step(f"delete bridge {net.name}",
                  lambda: netns.with_netlink(path, lambda ipr: links.delete_link(ipr, net.name)),
                  lambda: netns.with_netlink(path, lambda ipr: links.create_bridge(
                      ipr, net.name, net.gateway, subnet.prefixlen, net.mtu, net.tag)),
                  (ctx.sh(("ip", "link", "del", net.name)),))]
    previous = dict(st.sysctls_before).get(IP_FORWARD)
    if last and previous is not None:
        steps.append(_sysctl_step(ctx, IP_FORWARD, previous, "1"))
    return steps, after


def container_create(ctx: Ctx, st: State, ctr: Container, net: Network,
                     mappings: Sequence[Forward] = (), *, firewall: bool = True
                     ) -> tuple[list[Step], State]:
    """The steps that build one container; firewall=False leaves its rules to the caller
    (restore rewrites every chain of ours in one transaction)."""
    host_path = ctx.ns.path
    ctr_path = f"{netns.NETNS_DIR}/{ctr.netns}"
    prefix = ipaddress.IPv4Network(net.subnet).prefixlen
    fwds = tuple(m.bound_to(ctr.name) for m in mappings)
    after = st.with_(containers=st.containers + (ctr,), forwards=st.forwards + fwds)
    # The container's own rules and those of its published ports: one transaction.
    change = Change(add=rules.container_rules(ctr, net)
                    + tuple(r for f in fwds for r in rules.forward_rules(f, ctr, net)))

    def in_ctr(*argv: str) -> str:
        return shell.in_netns(ctr.netns, argv)
    steps = [
        Step(f"create network namespace {ctr.netns}",
             lambda: netns.create(ctr.netns), lambda: netns.destroy(ctr.netns),
             (shell.line(("ip", "netns", "add", ctr.netns)), in_ctr("ip", "link", "set", "lo", "up"))),
        Step(f"create veth {ctr.veth} with its peer eth0 inside {ctr.netns}, attach it to "
             f"{net.name} in hairpin mode",
             lambda: netns.with_netlink(host_path, lambda ipr: links.create_veth(
                 ipr, ctr.veth, ctr_path, net.name, net.mtu, ctr.tag)),
             lambda: netns.with_netlink(host_path, lambda ipr: links.delete_link(ipr, ctr.veth)),
             (ctx.sh(("ip", "link", "add", ctr.veth, "mtu", str(net.mtu), "master", net.name,
                      "type", "veth", "peer", "name", "eth0", "netns", ctr.netns)),
              ctx.sh(("ip", "link", "set", ctr.veth, "alias", f"{state.TAG}{ctr.tag}")),
              ctx.sh(("ip", "link", "set", ctr.veth, "type", "bridge_slave", "hairpin", "on")))),
        Step(f"configure eth0 in {ctr.netns} ({ctr.ip}/{prefix}, default via {net.gateway})",
             lambda: netns.with_netlink(ctr_path, lambda ipr: links.configure_container_side(
                 ipr, ctr.ip, prefix, net.gateway, ctr.tag)),
             None,
             (in_ctr("ip", "addr", "add", f"{ctr.ip}/{prefix}", "dev", "eth0"),
              in_ctr("ip", "link", "set", "eth0", "up"),
              in_ctr("ip", "route", "add", "default", "via", net.gateway))),
    ]
    if firewall:
        steps.append(_firewall_step(ctx, f"add the firewall rules of container {ctr.name}",
                                    change, st, after))
    steps += [_conntrack_step(ctx, f) for f in fwds if f.proto == "udp"]
    return steps, after


def link_up(ctx: Ctx, ctr: Container) -> Step:
    path = ctx.ns.path
    return Step(f"set {ctr.veth} up",
                lambda: netns.with_netlink(path, lambda ipr: links.set_up(ipr, ctr.veth)), None,
                (ctx.sh(("ip", "link", "set", ctr.veth, "up")),))


def container_remove(ctx: Ctx, st: State, ctr: Container) -> tuple[list[Step], State]:
    host_path = ctx.ns.path
    net = st.network(ctr.network)
    fwds = st.forwards_of(ctr.name)
    after = st.with_(containers=tuple(c for c in st.containers if c.name != ctr.name),
                     forwards=tuple(f for f in st.forwards if f.container != ctr.name))
    dead = tuple(r for f in fwds for r in rules.forward_rules(f, ctr, net)) + \
        rules.container_rules(ctr, net)
    steps = [
        _firewall_step(ctx, f"remove the firewall rules of container {ctr.name}",
                       Change(delete=dead), st, after),
        Step(f"delete veth {ctr.veth}",
             lambda: netns.with_netlink(host_path, lambda ipr: links.delete_link(ipr, ctr.veth)),
             None, (ctx.sh(("ip", "link", "del", ctr.veth)),)),
        Step(f"delete network namespace {ctr.netns} and stop its processes",
             lambda: netns.destroy(ctr.netns), None, (shell.line(("ip", "netns", "del", ctr.netns)),)),
    ]
    return steps, after


def forwards_add(ctx: Ctx, st: State, ctr: Container,
                 mappings: Sequence[Forward]) -> tuple[list[Step], State]:
    if not mappings:
        return [], st
    net = st.network(ctr.network)
    new = tuple(m.bound_to(ctr.name) for m in mappings)
    after = st.with_(forwards=st.forwards + new)
    change = Change(add=tuple(r for f in new for r in rules.forward_rules(f, ctr, net)))
    steps = [_firewall_step(ctx, f"add the port forward rules for {ctr.name}", change, st, after)]
    steps += [_conntrack_step(ctx, f) for f in new if f.proto == "udp"]
    return steps, after


def forwards_remove(ctx: Ctx, st: State, ctr: Container,
                    gone: Sequence[Forward]) -> tuple[list[Step], State]:
    net = st.network(ctr.network)
    after = st.with_(forwards=tuple(f for f in st.forwards if f not in gone))
    change = Change(delete=tuple(r for f in gone for r in rules.forward_rules(f, ctr, net)))
    steps = [_firewall_step(ctx, f"remove the port forward rules of {ctr.name}", change, st, after)]
    steps += [_conntrack_step(ctx, f) for f in gone if f.proto == "udp"]
    return steps, after


def _conntrack_step(ctx: Ctx, fwd: Forward) -> Step:
    """UDP flows keep their old NAT binding until they go quiet: drop them (moby#8795)."""
    argv = ["conntrack", "-D", "-p", "udp", "--dport", str(fwd.host_port)]
    path = ctx.ns.path

    def flush() -> None:
        res = netns.run_command(path, argv, timeout=30)
        if res.returncode not in (0, 1):  # 1: nothing matched
            raise PlumbingError(f"flush UDP conntrack entries for port {fwd.host_port}",
                                res.stderr.strip() or f"exit status {res.returncode}")
    return Step(f"flush UDP conntrack entries for port {fwd.host_port}", flush, None,
                (ctx.sh(argv),))


# --- restore / cleanup -------------------------------------------------------------------

def cleanup(ctx: Ctx, facts: Facts, st: State) -> list[Step]:
    """Tagged interfaces and container namespaces the desired state does not know about."""
    wanted = {n.tag for n in st.networks} | {c.tag for c in st.containers}
    steps = []
    for ifname, tag in sorted(facts.tagged):
        if tag not in wanted:
            steps.append(Step(f"delete leftover interface {ifname} ({tag})",
                              lambda n=ifname: netns.with_netlink(
                                  ctx.ns.path, lambda ipr: links.delete_link(ipr, n)),
                              None, (ctx.sh(("ip", "link", "del", ifname)),)))
    known = {c.netns for c in st.containers}
    for name in facts.our_netns:
        if name not in known:
            steps.append(Step(f"delete leftover namespace {name}",
                              lambda n=name: netns.destroy(n), None,
                              (shell.line(("ip", "netns", "del", name)),)))
    return steps


def recreate(ctx: Ctx, facts: Facts, st: State) -> list[Step]:
    path = ctx.ns.path
    present = {tag for _, tag in facts.tagged}
    steps: list[Step] = []
    for net in st.networks:
        if net.tag not in present:
            steps += _bridge_steps(ctx, net)
    if st.networks:
        steps.append(_sysctl_step(ctx, IP_FORWARD, "1", None))
    for ctr in st.containers:
        if ctr.tag not in present or ctr.netns not in facts.netns:
            net = st.network(ctr.network)
            steps.append(Step(f"clear what is left of container {ctr.name}",
                              lambda c=ctr: _clear_container(path, c), None, ()))
            steps += container_create(ctx, st, ctr, net, firewall=False)[0]  # rewritten below
            steps.append(link_up(ctx, ctr))
    steps.append(_rewrite(ctx, st, st))
    return steps


def _rewrite(ctx: Ctx, before: State, after: State) -> Step:
    """Our chains rewritten whole to match `after` (and the jumps into them put back)."""
    if rules.has_chains(after):
        stale = tuple(j for j in rules.user_jumps(before) if j not in rules.user_jumps(after))
        change = Change(add=rules.desired(after), flush_chains=rules.CHAINS, del_jumps=stale,
                        add_jumps=rules.jumps() + rules.user_jumps(after))
    else:
        change = Change(del_jumps=rules.jumps() + rules.user_jumps(before), drop_chains=rules.CHAINS)
    return _firewall_step(ctx, "rewrite the bridgescope chains", change, before, after)


# --- adopted containers (plumbing/adopt.py) ------------------------------------------------

def _adopt_add(ns: netns.HostNs, facts: Facts, st: State, req: AddForwards) -> Plan:
    known = adopt.known(st, req.container)
    found = adopt.follow(known, facts.candidates) if known else \
        adopt.resolve(req.container, facts.candidates, facts.unbridged)
    if found is None:
        raise UnknownContainer(f"adopted container {req.container} is gone; run restore to "
                               "forget its forwards")
    if known is None and (st.adoptee(found.name) or st.container(found.name)):
        raise ValidationError("container", f"another container named {found.name} is already "
                                           "known here")
    ctx = Ctx(ns, _backend(st, req.firewall, facts), st)
    chain = adopt.user_chain(_probe(facts), ctx.backend)
    _check_ports(facts, st, req.mappings)
    a = found.adopted(chain) if known is None else adopt.moved(known, found)
    new = tuple(m.bound_to(a.name) for m in req.mappings)
    after = st.with_(adopted=tuple(x for x in st.adopted if x.name != a.name) + (a,),
                     forwards=st.forwards + new, backend=ctx.backend)
    first = not rules.has_chains(st)
    fresh = tuple(j for j in rules.user_jumps(after) if j not in rules.user_jumps(st))
    change = Change(add=(rules.structure() if first else ())
                    + tuple(r for f in new for r in rules.adopted_rules(f, a)),
                    new_chains=rules.CHAINS if first else (),
                    add_jumps=(rules.jumps() if first else ()) + fresh)
    steps = [_firewall_step(ctx, f"add the port forward rules for {a.name}", change, st, after)]
    steps += [_conntrack_step(ctx, f) for f in new if f.proto == "udp"]
    via = f", accepted from {chain}" if chain else ""
    return Plan(ctx, tuple(steps), after,
                f"forward {', '.join(m.spec() for m in req.mappings)} -> {a.name} ({a.ip} on "
                f"{a.bridge}{', ' + a.engine if a.engine else ''}{via})")


def _probe(facts: Facts) -> backends.Probe:
    if facts.probe is None:
        raise PlumbingError("read the engine's firewall", "the host's firewall was not read")
    return facts.probe


def _adopt_remove(ns: netns.HostNs, facts: Facts, st: State, req: RemoveForwards) -> Plan:
    a = adopt.known(st, req.container)
    if a is None:
        raise UnknownContainer(f"no container named {req.container} has forwards of bridgescope here")
    gone = []
    for m in req.mappings:
        fwd = forward_for(st, a.name, m)
        if fwd is None:
            raise ValidationError("spec", f"container {a.name} has no forward {m.spec()}")
        gone.append(fwd)
    ctx = Ctx(ns, _backend(st, req.firewall, facts), st)
    after = _without(st, a, gone)
    change = Change(delete=tuple(r for f in gone for r in rules.adopted_rules(f, a)),
                    del_jumps=tuple(j for j in rules.user_jumps(st) if j not in rules.user_jumps(after)))
    if not rules.has_chains(after):
        change = Change(del_jumps=rules.jumps() + rules.user_jumps(st), drop_chains=rules.CHAINS)
    steps = [_firewall_step(ctx, f"remove the port forward rules of {a.name}", change, st, after)]
    steps += [_conntrack_step(ctx, f) for f in gone if f.proto == "udp"]
    return Plan(ctx, tuple(steps), after,
                f"removed forward {', '.join(f.spec() for f in gone)} from {a.name}")


def _without(st: State, a: Adopted, gone: Sequence[Forward]) -> State:
    """The state without those forwards, and without the container once it has none left."""
    forwards = tuple(f for f in st.forwards if f not in gone)
    keep = any(f.container == a.name for f in forwards)
    after = st.with_(forwards=forwards,
                     adopted=st.adopted if keep else tuple(x for x in st.adopted if x != a))
    return after if rules.has_chains(after) or after.networks else after.with_(backend=None)


def _reconcile(ns: netns.HostNs, facts: Facts, st: State, req: Reconcile) -> Plan:
    ctx = Ctx(ns, st.backend or _backend(st, req.firewall, facts), st)
    after, notes = st, []
    for a in st.adopted:
        now = adopt.follow(a, facts.candidates)
        if now is None and a.engine and a.engine not in facts.engines_answered:
            notes.append(f"kept the forwards of {a.name}: {a.engine} did not answer (restarting?)")
        elif now is None:
            after = _without(after, a, after.forwards_of(a.name))
            notes.append(f"removed the forwards of {a.name} ({', '.join(f.spec() for f in st.forwards_of(a.name))}): "
                         "the container is gone")
        elif (now.ip, now.bridge, now.inode, now.netns) != (a.ip, a.bridge, a.inode, a.netns):
            after = after.with_(adopted=tuple(adopt.moved(a, now) if x == a else x
                                              for x in after.adopted))
            if (now.ip, now.bridge) != (a.ip, a.bridge):
                notes.append(f"re-pointed the forwards of {a.name} from {a.ip} to {now.ip} on {now.bridge}")
    lost = _lost_user_jumps(facts, after)
    if after == st and not lost:
        return Plan(ctx, (), st, "adopted containers: nothing to follow", changes=False)
    if lost:
        notes.append(f"put back the jump from {', '.join(lost)} the engine's restart removed")
    return Plan(ctx, (_rewrite(ctx, st, after),), after, "; ".join(notes) or "followed adopted containers")


def _lost_user_jumps(facts: Facts, st: State) -> tuple[str, ...]:
    """The user chains whose jump into our chain is missing (the engine flushed it)."""
    if facts.probe is None:
        return ()
    save = facts.probe.legacy_save if st.backend == "legacy" else facts.probe.nft_save
    return tuple(j.chain for j in rules.user_jumps(st)
                 if not re.search(rf"^-A {re.escape(j.chain)} .*{state.TAG}{rules.JUMP_TAG}", save, re.M))


def _clear_container(host_path: str, ctr: Container) -> None:
    # Its veth may outlive the namespace for a moment (namespace teardown is deferred).
    netns.with_netlink(host_path, lambda ipr: links.delete_link(ipr, ctr.veth))
    netns.destroy(ctr.netns)
