"""The plumbing API: networks, containers and port forwards, built the way Docker builds them.

Each function validates everything first, plans a list of steps (each with its undo and its
equivalent ip/iptables commands), then runs them all-or-nothing and records the new desired
state. `dry_run=True` returns the commands and changes nothing. Every function takes
`host` (netns name or path treated as the host; None = where we run) and `firewall`.
"""
from __future__ import annotations

import functools
import ipaddress
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from bridgescope.collector.model import Snapshot
from bridgescope.plumbing import (
    backends,
    conflicts,
    ipam,
    journal,
    links,
    netns,
    rules,
    state,
    steps,
    validate,
)
from bridgescope.plumbing.errors import PlumbingError, ValidationError
from bridgescope.plumbing.rules import Change
from bridgescope.plumbing.state import Container, Forward, Network, State
from bridgescope.plumbing.steps import Step

IP_FORWARD = "net.ipv4.ip_forward"
R = TypeVar("R")


def _in_session(fn: Callable[..., R]) -> Callable[..., R]:
    """Each public call keeps one parked thread + netlink socket per namespace it touches."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with netns.session():
            return fn(*args, **kwargs)
    return wrapper


@dataclass(frozen=True)
class Result:
    commands: tuple[str, ...]  # the equivalent ip/iptables commands (teaching text)
    summary: str
    # An interrupted earlier change this command rolled back first (the caller reports it).
    recovery: Result | None = None


@dataclass(frozen=True)
class Ctx:
    """Where a command acts and with which firewall backend."""
    ns: netns.HostNs
    backend: str
    before: State
    recovered: Result | None = None

    def sh(self, argv: str) -> str:
        """A teaching command as typed on this host (inside `ip netns exec` for a lab host)."""
        if argv.startswith("#") or not self.ns.name:  # comments stay comments
            return argv
        return f"ip netns exec {self.ns.name} {argv}"


# --- public API --------------------------------------------------------------------------

def load_state(host: str | None = None) -> State:
    return state.load(netns.resolve(host).key)


def owned_tags(host: str | None = None) -> frozenset[str]:
    """What the doctor needs to tell our orphaned rules from our own (the collector cannot
    read the state: it must not depend on the plumbing). An interrupted change's objects are
    not owned: recovery will remove them."""
    return load_state(host).owned_tags()


@_in_session
def create_network(name: str, subnet: str, *, gateway: str | None = None, masquerade: bool = True,
                   mtu: int = 1500, host: str | None = None, firewall: str = "auto",
                   dry_run: bool = False) -> Result:
    validate.name(name)
    net = validate.subnet(subnet)
    gw = validate.gateway_for(net, gateway)
    want = Network(name, str(net), str(gw), masquerade, mtu)
    ns = netns.resolve(host)
    with state.locked(ns.key):
        st, rec = _load(ns, dry_run)
        _check_firewall(st, firewall)
        existing = st.network(name)
        if existing == want:
            return Result((), f"network {name} already exists")
        if existing:
            raise ValidationError("name", f"a network named {name} already exists with subnet "
                                          f"{existing.subnet}")
        _check_subnet_free(ns, st, name, net)
        ctx = Ctx(ns, _backend(ns, st, firewall), st, rec)
        after = st.with_(networks=st.networks + (want,), backend=ctx.backend)
        plan, after = _plan_network_create(ctx, want, after)
        return _execute(ctx, plan, after, dry_run,
                        f"network {name} {net} (gateway {gw}) on {ctx.backend}")


@_in_session
def remove_network(name: str, *, force: bool = False, host: str | None = None,
                   firewall: str = "auto", dry_run: bool = False) -> Result:
    validate.name(name)
    ns = netns.resolve(host)
    with state.locked(ns.key):
        st, rec = _load(ns, dry_run)
        net = st.network(name)
        if net is None:
            raise ValidationError("name", f"no network named {name} is managed by bridgescope here")
        attached = st.containers_on(name)
        if attached and not force:
            raise ValidationError("name", f"network {name} still has containers "
                                          f"{', '.join(c.name for c in attached)}; remove them "
                                          "first or use --force")
        ctx = Ctx(ns, _backend(ns, st, firewall), st, rec)
        plan: list[Step] = []
        cur = st
        for ctr in attached:
            more, cur = _plan_container_remove(ctx, cur, ctr)
            plan += more
        more, after = _plan_network_remove(ctx, cur, net)
        return _execute(ctx, plan + more, after, dry_run, f"removed network {name}")


@_in_session
def create_container(name: str, network: str, *, ip: str | None = None, ports: Sequence[str] = (),
                     host: str | None = None, firewall: str = "auto", dry_run: bool = False,
                     snapshot: Snapshot | None = None) -> Result:
    validate.name(name, "name")
    validate.name(network, "network")
    mappings = _parse_specs(ports)
    ns = netns.resolve(host)
    with state.locked(ns.key):
        st, rec = _load(ns, dry_run)
        _check_firewall(st, firewall)
        net = st.network(network)
        if net is None:
            raise ValidationError("network", f"no network named {network}; create it first")
        existing = st.container(name)
        if existing:
            if existing.network != network or (ip and ip != existing.ip):
                raise ValidationError("name", f"a container named {name} already exists on "
                                              f"network {existing.network} ({existing.ip})")
            mappings = tuple(m for m in mappings if not _has_forward(st, name, m))
            if not mappings:
                return Result((), f"container {name} already exists ({existing.ip})")
        ctx = Ctx(ns, _backend(ns, st, firewall), st, rec)
        _check_ports(ctx, st, mappings)
        if existing:
            plan, after = _plan_forwards_add(ctx, st, existing, mappings)
            return _execute(ctx, plan, after, dry_run, f"container {name}: added forwards")
        ctr_ns = ns.container_netns(name)
        if netns.exists(ctr_ns):
            raise ValidationError("name", f"network namespace {ctr_ns} already exists and is "
                                          "not a bridgescope container; pick another name")
        addr = _allocate(ctx, st, net, ip, snapshot)
        veth = netns.with_netlink(ns.path, links.new_veth_name)
        ctr = Container(name, network, str(addr), ctr_ns, veth)
        plan, after = _plan_container_create(ctx, st, ctr, net, mappings)
        # Docker sets the host end up last, once the firewall is ready for the container.
        up = _step_link_up(ctx, ctr)
        return _execute(ctx, plan + [up], after, dry_run,
                        f"container {name} {addr}/{ipaddress.IPv4Network(net.subnet).prefixlen} "
                        f"on {network}" + "".join(f", {m.spec()}" for m in mappings))


@_in_session
def remove_container(name: str, *, host: str | None = None, firewall: str = "auto",
                     dry_run: bool = False) -> Result:
    validate.name(name, "container")
    ns = netns.resolve(host)
    with state.locked(ns.key):
        st, rec = _load(ns, dry_run)
        ctr = _require_container(st, name)
        ctx = Ctx(ns, _backend(ns, st, firewall), st, rec)
        plan, after = _plan_container_remove(ctx, st, ctr)
        return _execute(ctx, plan, after, dry_run, f"removed container {name}")


@_in_session
def add_forward(container: str, spec: str, *, host: str | None = None, firewall: str = "auto",
                dry_run: bool = False) -> Result:
    validate.name(container, "container")
    mappings = validate.port_spec(spec)
    ns = netns.resolve(host)
    with state.locked(ns.key):
        st, rec = _load(ns, dry_run)
        ctr = _require_container(st, container)
        ctx = Ctx(ns, _backend(ns, st, firewall), st, rec)
        _check_ports(ctx, st, mappings)
        plan, after = _plan_forwards_add(ctx, st, ctr, mappings)
        return _execute(ctx, plan, after, dry_run,
                        f"forward {', '.join(m.spec() for m in mappings)} -> {container} ({ctr.ip})")


@_in_session
def remove_forward(container: str, spec: str, *, host: str | None = None, firewall: str = "auto",
                   dry_run: bool = False) -> Result:
    validate.name(container, "container")
    mappings = validate.port_spec(spec)
    ns = netns.resolve(host)
    with state.locked(ns.key):
        st, rec = _load(ns, dry_run)
        ctr = _require_container(st, container)
        gone = []
        for m in mappings:
            fwd = _forward_for(st, container, m)
            if fwd is None:
                raise ValidationError("spec", f"container {container} has no forward {m.spec()}")
            gone.append(fwd)
        ctx = Ctx(ns, _backend(ns, st, firewall), st, rec)
        plan, after = _plan_forwards_remove(ctx, st, ctr, gone)
        return _execute(ctx, plan, after, dry_run,
                        f"removed forward {', '.join(f.spec() for f in gone)} from {container}")


def exec_in_container(name: str, argv: Sequence[str], *, host: str | None = None) -> int:
    """Run argv inside the container's network namespace; returns its exit status."""
    ctr = _require_container(load_state(host), name)
    if not argv:
        raise ValidationError("argv", "give a command to run, e.g. -- curl -s 172.17.0.1")
    try:
        return subprocess.run(netns.nsenter(f"{netns.NETNS_DIR}/{ctr.netns}", list(argv))).returncode
    except FileNotFoundError as err:
        raise PlumbingError(f"run {argv[0]} in {name}", str(err)) from None


def container_netns_path(name: str, *, host: str | None = None) -> str:
    return f"{netns.NETNS_DIR}/{_require_container(load_state(host), name).netns}"


@_in_session
def restore(*, host: str | None = None, firewall: str = "auto", dry_run: bool = False) -> Result:
    """Make the kernel match the saved desired state (after a reboot, a crash or a flush):
    remove tagged leftovers, re-create what is missing, rewrite our chains."""
    ns = netns.resolve(host)
    with state.locked(ns.key):
        st, rec = _load(ns, dry_run)
        backend = st.backend or _backend(ns, st, firewall)
        ctx = Ctx(ns, backend, st, rec)
        plan = _plan_cleanup(ctx, st) + _plan_recreate(ctx, st)
        summary = (f"restored {len(st.networks)} networks, {len(st.containers)} containers, "
                   f"{len(st.forwards)} forwards")
        result = _execute(ctx, plan, st, dry_run, summary, save=False)
        if not dry_run:
            conflicts.forget_cache(ns.key)  # the rewrite removed any orphaned rule it held
        return result


@_in_session
def recover(*, host: str | None = None) -> Result | None:
    """Roll back a change a crash interrupted, if any (what `serve` does at start; every
    changing command and `restore` do it first by themselves). None: nothing was pending."""
    ns = netns.resolve(host)
    with state.locked(ns.key):
        return _recover(ns)


def _load(ns: netns.HostNs, dry_run: bool) -> tuple[State, Result | None]:
    """The state to plan from (under the state lock), after recovering from an interrupted
    change. A dry run changes nothing (the state file is already what recovery converges to)."""
    if dry_run:
        return state.load(ns.key), None
    rec = _recover(ns)
    return state.load(ns.key), rec


def _recover(ns: netns.HostNs) -> Result | None:
    """Make the kernel match the saved state again: the state before the change if the crash
    came before its save (nothing confirmed it: rolled back), after it otherwise (completed).
    Restore's machinery does it (clean tagged leftovers, re-create what is missing, rewrite
    our chains), plus what tags cannot find. A crash in here leaves the intent in place and
    the next attempt starts over."""
    intent = journal.pending(ns.key)
    if intent is None:
        return None
    target = state.load(ns.key)
    ctx = Ctx(ns, target.backend or intent.backend, target)
    plan = _plan_cleanup(ctx, target) + _plan_recreate(ctx, target)
    # A namespace made just before the crash has no tagged veth yet for cleanup to know it by.
    kept = {c.netns for c in target.containers}
    plan += [Step(f"delete namespace {name} of the interrupted change",
                  lambda n=name: netns.destroy(n), None, (f"ip netns del {name}",))
             for name in intent.new_netns if name not in kept and netns.exists(name)]
    if not target.networks and intent.forwarding is not None:
        plan.append(_sysctl_step(ctx, IP_FORWARD, intent.forwarding, None))
    steps.run(plan)
    conflicts.forget_cache(ns.key)
    journal.end(ns.key)
    done = journal.state_file_identity(ns.key) != intent.state_file
    return Result(steps.commands_of(plan),
                  f"{'completed' if done else 'rolled back'} an interrupted change "
                  f"({intent.action}): the kernel matches the saved state again")


# --- checks ------------------------------------------------------------------------------

def _require_container(st: State, name: str) -> Container:
    ctr = st.container(name)
    if ctr is None:
        raise ValidationError("container", f"no container named {name} is managed by "
                                           "bridgescope here")
    return ctr


def _parse_specs(specs: Iterable[str]) -> tuple[validate.PortMapping, ...]:
    return validate.port_specs(specs)


def _forward_for(st: State, container: str, m: validate.PortMapping) -> Forward | None:
    return next((f for f in st.forwards_of(container) if f.key == m.key), None)


def _has_forward(st: State, container: str, m: validate.PortMapping) -> bool:
    fwd = _forward_for(st, container, m)
    return fwd is not None and fwd.container_port == m.container_port


def _check_subnet_free(ns: netns.HostNs, st: State, name: str, net: ipaddress.IPv4Network) -> None:
    for other in st.networks:
        if net.overlaps(ipaddress.IPv4Network(other.subnet)):
            raise ValidationError("subnet", f"{net} overlaps network {other.name} ({other.subnet})")

    def read(ipr):
        return links.index_of(ipr, name), links.route_destinations(ipr)
    idx, routes = netns.with_netlink(ns.path, read)
    if idx is not None:
        raise ValidationError("name", f"an interface named {name} already exists on this host")
    for dst, dev in routes:
        if net.overlaps(dst):
            raise ValidationError("subnet", f"{net} collides with the existing route {dst} dev {dev}")


def _check_ports(ctx: Ctx, st: State, mappings: Sequence[validate.PortMapping]) -> None:
    if not mappings:
        return
    _check_host_ips(st, {m.host_ip for m in mappings} - {None})
    foreign, listening = conflicts.port_users(ctx.ns.key, ctx.ns.path)
    problem = conflicts.find_conflicts(mappings, st.forwards, foreign, listening)
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


def _check_firewall(st: State, requested: str) -> None:
    """Asking for another backend than the one holding our rules is an error, even when the
    object already exists (a silent no-op would hide that the request was not honoured)."""
    backends.check_request(requested, st.backend)


def _backend(ns: netns.HostNs, st: State, requested: str) -> str:
    if st.backend and requested in ("auto", st.backend):
        return st.backend
    return backends.choose(requested, backends.probe(ns.path), st.backend)


def _allocate(ctx: Ctx, st: State, net: Network, requested: str | None,
              snapshot: Snapshot | None) -> ipaddress.IPv4Address:
    subnet = ipaddress.IPv4Network(net.subnet)
    gateway = ipaddress.IPv4Address(net.gateway)
    used = {ipaddress.IPv4Address(c.ip) for c in st.containers}

    def read(ipr):
        idx = links.require(ipr, net.name)
        ports = links.port_aliases(idx)  # same thread: same namespace
        foreign_ports = any(not alias.startswith(state.TAG + "ctr/") for alias in ports.values())
        return links.local_addresses(ipr) | links.neighbours_on(ipr, net.name), foreign_ports
    seen, foreign_ports = netns.with_netlink(ctx.ns.path, read)
    used |= seen
    if snapshot is None and foreign_ports:
        # Something we did not make is plugged into the bridge: ask the whole machine.
        from bridgescope.collector.kernel.snapshot import collect
        snapshot = collect(ctx.ns.path, firewall=False)
    if snapshot is not None:
        used |= ipam.addresses_in(snapshot, subnet)
    if requested:
        return ipam.check_requested(subnet, gateway, requested, used)
    return ipam.next_free(subnet, gateway, used)


# --- plans: lists of steps ---------------------------------------------------------------

def _firewall_step(ctx: Ctx, what: str, change: Change, before: State, after: State) -> Step:
    path, backend, key = ctx.ns.path, ctx.backend, ctx.ns.key

    def do() -> None:
        conflicts.track_own_change(key, path, lambda: backends.apply(
            backend, path, change, lambda: rules.desired(after)), before, after)

    def undo() -> None:
        conflicts.track_own_change(key, path, lambda: backends.apply(
            backend, path, change.inverse(), lambda: rules.desired(before)), after, before)
    return Step(
        what=what, do=do, undo=undo,
        commands=tuple(ctx.sh(c) for c in backends.commands(backend, change,
                                                            lambda: rules.desired(after))),
    )


def _sysctl_step(ctx: Ctx, key: str, value: str, previous: str | None) -> Step:
    path = ctx.ns.path
    undo = (lambda: netns.write_sysctl(path, key, previous)) if previous is not None else None
    return Step(f"set {key}={value}", lambda: netns.write_sysctl(path, key, value), undo,
                (ctx.sh(f"sysctl -w {key}={value}"),))


def _bridge_steps(ctx: Ctx, net: Network) -> list[Step]:
    path = ctx.ns.path
    subnet = ipaddress.IPv4Network(net.subnet)
    return [
        Step(f"create bridge {net.name}",
             lambda: netns.with_netlink(path, lambda ipr: links.create_bridge(
                 ipr, net.name, net.gateway, subnet.prefixlen, net.mtu, net.tag)),
             lambda: netns.with_netlink(path, lambda ipr: links.delete_link(ipr, net.name)),
             (ctx.sh(f"ip link add {net.name} type bridge"),
              ctx.sh(f"ip link set {net.name} mtu {net.mtu} alias {state.TAG}{net.tag}"),
              ctx.sh(f"ip addr add {net.gateway}/{subnet.prefixlen} dev {net.name}"),
              ctx.sh(f"ip link set {net.name} up"))),
        # Proxy-less localhost publishing: 127.0.0.1 may be routed out of this bridge.
        Step(f"enable route_localnet on {net.name}",
             lambda: netns.write_link_sysctl(path, net.name, "route_localnet", "1"), None,
             (ctx.sh(f"sysctl -w net.ipv4.conf.{net.name}.route_localnet=1"),)),
    ]


def _plan_network_create(ctx: Ctx, net: Network, after: State) -> tuple[list[Step], State]:
    path, first = ctx.ns.path, not ctx.before.networks
    plan = _bridge_steps(ctx, net)
    if first:
        before_fwd = netns.read_sysctl(path, IP_FORWARD)
        after = after.with_(sysctls_before=((IP_FORWARD, before_fwd),))
        plan.append(_sysctl_step(ctx, IP_FORWARD, "1", before_fwd))
    change = Change(add=(rules.structure() if first else ()) + rules.network_rules(net),
                    new_chains=rules.CHAINS if first else (),
                    add_jumps=rules.jumps() if first else ())
    plan.append(_firewall_step(ctx, f"add the firewall rules of network {net.name}", change,
                               ctx.before, after))
    return plan, after


def _plan_network_remove(ctx: Ctx, st: State, net: Network) -> tuple[list[Step], State]:
    path = ctx.ns.path
    after = st.with_(networks=tuple(n for n in st.networks if n.name != net.name))
    last = not after.networks
    if last:
        after = after.with_(backend=None, sysctls_before=())
    change = Change(delete=rules.network_rules(net) + (rules.structure() if last else ()),
                    del_jumps=rules.jumps() if last else (),
                    drop_chains=rules.CHAINS if last else ())
    subnet = ipaddress.IPv4Network(net.subnet)
    plan = [_firewall_step(ctx, f"remove the firewall rules of network {net.name}", change, st, after),
            Step(f"delete bridge {net.name}",
                 lambda: netns.with_netlink(path, lambda ipr: links.delete_link(ipr, net.name)),
                 lambda: netns.with_netlink(path, lambda ipr: links.create_bridge(
                     ipr, net.name, net.gateway, subnet.prefixlen, net.mtu, net.tag)),
                 (ctx.sh(f"ip link del {net.name}"),))]
    previous = dict(st.sysctls_before).get(IP_FORWARD)
    if last and previous is not None:
        plan.append(_sysctl_step(ctx, IP_FORWARD, previous, "1"))
    return plan, after


def _plan_container_create(ctx: Ctx, st: State, ctr: Container, net: Network,
                           mappings: Sequence[validate.PortMapping] = (), *, firewall: bool = True
                           ) -> tuple[list[Step], State]:
    """The steps that build one container; firewall=False leaves its rules to the caller
    (restore rewrites every chain of ours in one transaction)."""
    host_path = ctx.ns.path
    ctr_path = f"{netns.NETNS_DIR}/{ctr.netns}"
    prefix = ipaddress.IPv4Network(net.subnet).prefixlen
    fwds = _forwards(ctr, mappings)
    after = st.with_(containers=st.containers + (ctr,), forwards=st.forwards + fwds)
    # The container's own rules and those of its published ports: one transaction.
    change = Change(add=rules.container_rules(ctr, net)
                    + tuple(r for f in fwds for r in rules.forward_rules(f, ctr, net)))
    in_ctr = f"ip netns exec {ctr.netns}"
    plan = [
        Step(f"create network namespace {ctr.netns}",
             lambda: netns.create(ctr.netns), lambda: netns.destroy(ctr.netns),
             (f"ip netns add {ctr.netns}", f"{in_ctr} ip link set lo up")),
        Step(f"create veth {ctr.veth} with its peer eth0 inside {ctr.netns}, attach it to "
             f"{net.name} in hairpin mode",
             lambda: netns.with_netlink(host_path, lambda ipr: links.create_veth(
                 ipr, ctr.veth, ctr_path, net.name, net.mtu, ctr.tag)),
             lambda: netns.with_netlink(host_path, lambda ipr: links.delete_link(ipr, ctr.veth)),
             (ctx.sh(f"ip link add {ctr.veth} mtu {net.mtu} master {net.name} type veth "
                     f"peer name eth0 netns {ctr.netns}"),
              ctx.sh(f"ip link set {ctr.veth} alias {state.TAG}{ctr.tag}"),
              ctx.sh(f"ip link set {ctr.veth} type bridge_slave hairpin on"))),
        Step(f"configure eth0 in {ctr.netns} ({ctr.ip}/{prefix}, default via {net.gateway})",
             lambda: netns.with_netlink(ctr_path, lambda ipr: links.configure_container_side(
                 ipr, ctr.ip, prefix, net.gateway, ctr.tag)),
             None,
             (f"{in_ctr} ip addr add {ctr.ip}/{prefix} dev eth0",
              f"{in_ctr} ip link set eth0 up",
              f"{in_ctr} ip route add default via {net.gateway}")),
    ]
    if firewall:
        plan.append(_firewall_step(ctx, f"add the firewall rules of container {ctr.name}", change, st, after))
    plan += [_conntrack_step(ctx, f) for f in fwds if f.proto == "udp"]
    return plan, after


def _forwards(ctr: Container, mappings: Sequence[validate.PortMapping]) -> tuple[Forward, ...]:
    return tuple(Forward(ctr.name, m.proto, m.host_port, m.container_port, m.host_ip)
                 for m in mappings)


def _step_link_up(ctx: Ctx, ctr: Container) -> Step:
    path = ctx.ns.path
    return Step(f"set {ctr.veth} up",
                lambda: netns.with_netlink(path, lambda ipr: links.set_up(ipr, ctr.veth)), None,
                (ctx.sh(f"ip link set {ctr.veth} up"),))


def _plan_container_remove(ctx: Ctx, st: State, ctr: Container) -> tuple[list[Step], State]:
    host_path = ctx.ns.path
    net = st.network(ctr.network)
    fwds = st.forwards_of(ctr.name)
    after = st.with_(containers=tuple(c for c in st.containers if c.name != ctr.name),
                     forwards=tuple(f for f in st.forwards if f.container != ctr.name))
    dead = tuple(r for f in fwds for r in rules.forward_rules(f, ctr, net)) + \
        rules.container_rules(ctr, net)
    plan = [
        _firewall_step(ctx, f"remove the firewall rules of container {ctr.name}",
                       Change(delete=dead), st, after),
        Step(f"delete veth {ctr.veth}",
             lambda: netns.with_netlink(host_path, lambda ipr: links.delete_link(ipr, ctr.veth)),
             None, (ctx.sh(f"ip link del {ctr.veth}"),)),
        Step(f"delete network namespace {ctr.netns} and stop its processes",
             lambda: netns.destroy(ctr.netns), None, (f"ip netns del {ctr.netns}",)),
    ]
    return plan, after


def _plan_forwards_add(ctx: Ctx, st: State, ctr: Container,
                       mappings: Sequence[validate.PortMapping]) -> tuple[list[Step], State]:
    if not mappings:
        return [], st
    net = st.network(ctr.network)
    new = _forwards(ctr, mappings)
    after = st.with_(forwards=st.forwards + new)
    change = Change(add=tuple(r for f in new for r in rules.forward_rules(f, ctr, net)))
    plan = [_firewall_step(ctx, f"add the port forward rules for {ctr.name}", change, st, after)]
    plan += [_conntrack_step(ctx, f) for f in new if f.proto == "udp"]
    return plan, after


def _plan_forwards_remove(ctx: Ctx, st: State, ctr: Container,
                          gone: Sequence[Forward]) -> tuple[list[Step], State]:
    net = st.network(ctr.network)
    after = st.with_(forwards=tuple(f for f in st.forwards if f not in gone))
    change = Change(delete=tuple(r for f in gone for r in rules.forward_rules(f, ctr, net)))
    plan = [_firewall_step(ctx, f"remove the port forward rules of {ctr.name}", change, st, after)]
    plan += [_conntrack_step(ctx, f) for f in gone if f.proto == "udp"]
    return plan, after


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
                (ctx.sh(" ".join(argv)),))


# --- restore / cleanup -------------------------------------------------------------------

def _plan_cleanup(ctx: Ctx, st: State) -> list[Step]:
    """Tagged interfaces and container namespaces the desired state does not know about."""
    wanted = {n.tag for n in st.networks} | {c.tag for c in st.containers}
    tagged = netns.with_netlink(ctx.ns.path, links.tagged_links)
    plan = []
    for ifname, tag in sorted(tagged.items()):
        if tag not in wanted:
            plan.append(Step(f"delete leftover interface {ifname} ({tag})",
                             lambda n=ifname: netns.with_netlink(
                                 ctx.ns.path, lambda ipr: links.delete_link(ipr, n)),
                             None, (ctx.sh(f"ip link del {ifname}"),)))
    known = {c.netns for c in st.containers}
    for name in _our_container_netns(ctx.ns):
        if name not in known:
            plan.append(Step(f"delete leftover namespace {name}",
                             lambda n=name: netns.destroy(n), None, (f"ip netns del {name}",)))
    return plan


def _our_container_netns(ns: netns.HostNs) -> list[str]:
    prefix = ns.container_netns("")
    if not netns.NETNS_DIR.is_dir():
        return []
    out = []
    for entry in sorted(netns.NETNS_DIR.iterdir()):
        if entry.name.startswith(prefix) and entry.name != ns.name:
            try:
                tags = netns.with_netlink(str(entry), links.tagged_links)
            except OSError:
                continue
            if any(t.startswith("ctr/") for t in tags.values()):
                out.append(entry.name)
    return out


def _plan_recreate(ctx: Ctx, st: State) -> list[Step]:
    path = ctx.ns.path
    present = set(netns.with_netlink(path, links.tagged_links).values())
    plan: list[Step] = []
    for net in st.networks:
        if net.tag not in present:
            plan += _bridge_steps(ctx, net)
    if st.networks:
        plan.append(_sysctl_step(ctx, IP_FORWARD, "1", None))
    for ctr in st.containers:
        if ctr.tag not in present or not netns.exists(ctr.netns):
            net = st.network(ctr.network)
            plan.append(Step(f"clear what is left of container {ctr.name}",
                             lambda c=ctr: _clear_container(path, c), None, ()))
            plan += _plan_container_create(ctx, st, ctr, net, firewall=False)[0]  # rewritten below
            plan.append(_step_link_up(ctx, ctr))
    if st.networks:
        change = Change(add=rules.desired(st), flush_chains=rules.CHAINS, add_jumps=rules.jumps())
    else:
        change = Change(del_jumps=rules.jumps(), drop_chains=rules.CHAINS)
    plan.append(_firewall_step(ctx, "rewrite the bridgescope chains", change, st, st))
    return plan


def _clear_container(host_path: str, ctr: Container) -> None:
    # Its veth may outlive the namespace for a moment (namespace teardown is deferred).
    netns.with_netlink(host_path, lambda ipr: links.delete_link(ipr, ctr.veth))
    netns.destroy(ctr.netns)


# --- running -----------------------------------------------------------------------------

def _intent(ctx: Ctx, plan: list[Step], after: State, summary: str) -> journal.Intent:
    before = ctx.before
    old = {c.netns for c in before.containers}
    forwarding = dict(after.sysctls_before or before.sysctls_before).get(IP_FORWARD)
    return journal.Intent(summary, ctx.backend, tuple(s.what for s in plan),
                          steps.commands_of(plan), journal.state_file_identity(ctx.ns.key),
                          tuple(c.netns for c in after.containers if c.netns not in old),
                          forwarding)


def _execute(ctx: Ctx, plan: list[Step], after: State, dry_run: bool, summary: str, *,
             save: bool = True) -> Result:
    """Run the plan under a write-ahead intent: on disk before the first kernel step, gone
    once the new state is saved (or the steps were all undone), so a crash anywhere in
    between is rolled back by the next command, `serve` or `restore` (see _recover)."""
    commands = steps.commands_of(plan)
    if dry_run:
        return Result(commands, f"dry run, nothing changed: {summary}", ctx.recovered)
    key = ctx.ns.key
    journal.begin(key, _intent(ctx, plan, after, summary))
    try:
        steps.run(plan)
    except BaseException as err:
        if getattr(err, "undone", False):
            journal.end(key)  # rolled back in full here: nothing left to recover
        raise
    steps.crash_point("save")
    if save:
        state.save(after)
    steps.crash_point("clear")
    journal.end(key)
    return Result(commands, summary, ctx.recovered)

