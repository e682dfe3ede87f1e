"""The plumbing API: networks, containers and port forwards, built the way Docker builds them.

Each function validates its input, then, in one transaction (the host's state lock, recovery
from an interrupted change, the saved state): gathers the kernel facts the change needs
(facts.py), plans it as a pure function of those facts, the state and the request (plan.py:
steps, each with its undo and its equivalent ip/iptables commands), and runs the steps
all-or-nothing under a write-ahead journal before recording the new desired state.
`dry_run=True` returns the commands the same facts give and changes nothing. Every function
takes `host` (netns name or path treated as the host; None = where we run) and `firewall`.
"""
from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from bridgescope.collector.doctor.forwards import ForwardTarget
from bridgescope.collector.kernel import tools
from bridgescope.collector.model import Snapshot
from bridgescope.plumbing import conflicts, facts, journal, netns, plan, state, steps, validate
from bridgescope.plumbing.errors import PlumbingError, ValidationError
from bridgescope.plumbing.plan import IP_FORWARD, Request
from bridgescope.plumbing.state import Network, State

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
class Transaction:
    """One change's view of a host: where, the state to plan from (under the state lock,
    after recovery from an interrupted change) and that recovery's result, if any."""
    ns: netns.HostNs
    state: State
    recovered: Result | None
    dry_run: bool

    def change(self, request: Request, *, snapshot: Snapshot | None = None) -> Result:
        """Gather the facts, plan, run (or, for a dry run, only show)."""
        found = facts.gather(self.ns, self.state, request, snapshot=snapshot)
        return _execute(plan.plan(self.ns, found, self.state, request), self.dry_run,
                        self.recovered)


@contextmanager
def transaction(host: str | None, dry_run: bool) -> Iterator[Transaction]:
    """One change at a time per host: the lock held, an interrupted change recovered first (a
    dry run changes nothing: the state file is already what recovery converges to)."""
    ns = netns.resolve(host)
    with state.locked(ns.key):
        rec = None if dry_run else _recover(ns)
        yield Transaction(ns, state.load(ns.key), rec, dry_run)


# --- public API --------------------------------------------------------------------------

def load_state(host: str | None = None) -> State:
    return state.load(netns.resolve(host).key)


def owned_tags(host: str | None = None) -> frozenset[str]:
    """What the doctor needs to tell our orphaned rules from our own (the collector cannot
    read the state: it must not depend on the plumbing). An interrupted change's objects are
    not owned: recovery will remove them."""
    return load_state(host).owned_tags()


def forward_targets(host: str | None = None) -> tuple[ForwardTarget, ...]:
    """Every forward of ours as the doctor takes it (forward-target-gone, port-taken): the
    saved state's view of where each one sends its port."""
    st = load_state(host)
    nets = {c.name: (c.ip, c.network) for c in st.containers}
    adopted = {a.name: (a.ip, a.bridge) for a in st.adopted}
    out = []
    for f in st.forwards:
        ip, bridge = nets.get(f.container) or adopted.get(f.container, ("", ""))
        out.append(ForwardTarget(f.container, ip, bridge, f.proto, f.host_port, f.container_port,
                                 f.host_ip, f.container not in nets))
    return tuple(out)


@_in_session
def create_network(name: str, subnet: str, *, gateway: str | None = None, masquerade: bool = True,
                   mtu: int = 1500, host: str | None = None, firewall: str = "auto",
                   dry_run: bool = False) -> Result:
    validate.name(name)
    net = validate.subnet(subnet)
    gw = validate.gateway_for(net, gateway)
    want = Network(name, str(net), str(gw), masquerade, mtu)
    with transaction(host, dry_run) as txn:
        return txn.change(plan.CreateNetwork(want, firewall))


@_in_session
def remove_network(name: str, *, force: bool = False, host: str | None = None,
                   firewall: str = "auto", dry_run: bool = False) -> Result:
    validate.name(name)
    with transaction(host, dry_run) as txn:
        return txn.change(plan.RemoveNetwork(name, force, firewall))


@_in_session
def create_container(name: str, network: str, *, ip: str | None = None, ports: Sequence[str] = (),
                     host: str | None = None, firewall: str = "auto", dry_run: bool = False,
                     snapshot: Snapshot | None = None) -> Result:
    validate.name(name, "name")
    validate.name(network, "network")
    mappings = validate.port_specs(ports)
    with transaction(host, dry_run) as txn:
        return txn.change(plan.CreateContainer(name, network, ip, mappings, firewall),
                          snapshot=snapshot)


@_in_session
def remove_container(name: str, *, host: str | None = None, firewall: str = "auto",
                     dry_run: bool = False) -> Result:
    validate.name(name, "container")
    with transaction(host, dry_run) as txn:
        return txn.change(plan.RemoveContainer(name, firewall))


@_in_session
def add_forward(container: str, spec: str, *, host: str | None = None, firewall: str = "auto",
                dry_run: bool = False, snapshot: Snapshot | None = None) -> Result:
    """A port forward to a container of ours, or to any container on a bridge of the host
    (adopted: by engine name or id, namespace name or path, or IP)."""
    validate.container_ref(container)
    mappings = validate.port_spec(spec)
    with transaction(host, dry_run) as txn:
        return txn.change(plan.AddForwards(container, mappings, firewall), snapshot=snapshot)


@_in_session
def remove_forward(container: str, spec: str, *, host: str | None = None, firewall: str = "auto",
                   dry_run: bool = False) -> Result:
    validate.container_ref(container)
    mappings = validate.port_spec(spec)
    with transaction(host, dry_run) as txn:
        return txn.change(plan.RemoveForwards(container, mappings, firewall))


def exec_in_container(name: str, argv: Sequence[str], *, host: str | None = None) -> int:
    """Run argv inside the container's network namespace; returns its exit status."""
    ctr = plan.require_container(load_state(host), name)
    if not argv:
        raise ValidationError("argv", "give a command to run, e.g. -- curl -s 172.17.0.1")
    try:
        return subprocess.run(tools.nsenter(f"{netns.NETNS_DIR}/{ctr.netns}", list(argv))).returncode
    except FileNotFoundError as err:
        raise PlumbingError(f"run {argv[0]} in {name}", str(err)) from None


@_in_session
def restore(*, host: str | None = None, firewall: str = "auto", dry_run: bool = False) -> Result:
    """Make the kernel match the saved desired state (after a reboot, a crash or a flush):
    remove tagged leftovers, re-create what is missing, rewrite our chains."""
    with transaction(host, dry_run) as txn:
        result = txn.change(plan.Restore(firewall))
        followed = txn.change(plan.Reconcile(firewall)) if txn.state.adopted else None
        if not dry_run:
            conflicts.forget_cache(txn.ns.key)  # the rewrite removed any orphaned rule it held
        if followed is not None and followed.commands:
            return Result(result.commands + followed.commands,
                          f"{result.summary}; {followed.summary}", result.recovery)
        return result


@_in_session
def reconcile(*, host: str | None = None, firewall: str = "auto", dry_run: bool = False,
              snapshot: Snapshot | None = None) -> Result:
    """Follow the adopted containers (plan.Reconcile): what `serve` runs at start and after
    the kernel changed, and `restore` runs after rewriting our chains."""
    with transaction(host, dry_run) as txn:
        if not txn.state.adopted:
            return Result((), "no adopted containers", txn.recovered)
        return txn.change(plan.Reconcile(firewall), snapshot=snapshot)


@_in_session
def recover(*, host: str | None = None) -> Result | None:
    """Roll back a change a crash interrupted, if any (what `serve` does at start; every
    changing command and `restore` do it first by themselves). None: nothing was pending."""
    ns = netns.resolve(host)
    with state.locked(ns.key):
        return _recover(ns)


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
    found = plan.recovery(ns, facts.restore(ns, target, intent=intent), target, intent)
    steps.run(found.steps)
    conflicts.forget_cache(ns.key)
    journal.end(ns.key)
    done = journal.state_file_identity(ns.key) != intent.state_file
    return Result(found.commands,
                  f"{'completed' if done else 'rolled back'} an interrupted change "
                  f"({intent.action}): the kernel matches the saved state again")


# --- running -----------------------------------------------------------------------------

def _intent(found: plan.Plan) -> journal.Intent:
    before, after, ctx = found.ctx.before, found.after, found.ctx
    old = {c.netns for c in before.containers}
    forwarding = dict(after.sysctls_before or before.sysctls_before).get(IP_FORWARD)
    return journal.Intent(found.summary, ctx.backend, tuple(s.what for s in found.steps),
                          found.commands, journal.state_file_identity(ctx.ns.key),
                          tuple(c.netns for c in after.containers if c.netns not in old),
                          forwarding)


def _execute(found: plan.Plan, dry_run: bool, recovered: Result | None) -> Result:
    """Run the plan under a write-ahead intent: on disk before the first kernel step, gone
    once the new state is saved (or the steps were all undone), so a crash anywhere in
    between is rolled back by the next command, `serve` or `restore` (see _recover)."""
    commands = found.commands
    if not found.changes:
        return Result((), found.summary, recovered)
    if dry_run:
        return Result(commands, f"dry run, nothing changed: {found.summary}", recovered)
    key = found.ctx.ns.key
    journal.begin(key, _intent(found))
    try:
        steps.run(found.steps)
    except BaseException as err:
        if getattr(err, "undone", False):
            journal.end(key)  # rolled back in full here: nothing left to recover
        raise
    steps.crash_point("save")
    if found.save:
        state.save(found.after)
    steps.crash_point("clear")
    journal.end(key)
    return Result(commands, found.summary, recovered)
