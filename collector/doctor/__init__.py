"""The doctor: what is broken in a host's container networking, why, and the fix.

`diagnose` is a pure function of a Snapshot. It looks only at the host namespace and the
containers plugged into its bridges (see hostview), runs every check of the
catalogue in docs/doctor.md and returns the findings, most severe first. A healthy Docker, CNI, Podman or
bridgescope host yields none.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

from bridgescope.collector.doctor import firewall as fw
from bridgescope.collector.doctor import forwards as fwd
from bridgescope.collector.doctor import links as links
from bridgescope.collector.doctor.finding import SEVERITIES, Finding
from bridgescope.collector.doctor.forwards import ForwardTarget
from bridgescope.collector.hostview import HostView, host_view
from bridgescope.collector.kernel.listeners import ListenerRead
from bridgescope.collector.model import Snapshot

__all__ = ["CHECKS", "Finding", "ForwardTarget", "diagnose"]

Check = Callable[[HostView], tuple[Finding, ...]]

# In the order a person would fix things: kernel switches, links, addresses, routes, NAT.
CHECKS: tuple[Check, ...] = (
    links.ip_forward_off,
    links.link_down,
    links.addr_no_prefix,
    links.no_default_route,
    links.mtu_mismatch,
    fw.split_brain,
    fw.masquerade,
    fw.masquerade_bridge_traffic,
    fw.dnat_unreachable,
    fw.loopback_port_exposed,
    fw.forward_blocked,
    fw.hairpin_off,
    fw.br_netfilter_off,
    fw.duplicate_rule,
    fw.orphan_rule,
)


def diagnose(snap: Snapshot, owned: frozenset[str] | None = None,
             listeners: ListenerRead | None = None,
             forwards: tuple[ForwardTarget, ...] | None = None) -> tuple[Finding, ...]:
    """`owned`: the object tags ("fwd/web/tcp/*/8080") bridgescope's saved state owns on this
    host, when the caller knows them; tagged rules outside that set are then orphans too.
    `listeners`: the listening sockets of the forwards' containers, when the caller read them;
    a published port nothing answers is then a finding too (nothing-listens), and so is a
    program in the host on a port bridgescope forwards (port-taken, with `forwards`).
    `forwards`: bridgescope's own forwards, when the caller knows them; an adopted
    container's that points nowhere is then a finding (forward-target-gone)."""
    view = host_view(snap)
    checks = CHECKS if owned is None else tuple(
        functools.partial(fw.orphan_rule, owned=owned) if c is fw.orphan_rule else c for c in CHECKS)
    # the forwards' verdicts (rules/reach.py) need the listeners the panels see, to agree with them
    checks = tuple(functools.partial(c, listeners=listeners) if c is fw.dnat_unreachable else c for c in checks)
    found = [f for check in checks for f in check(view)]
    if listeners is not None:
        found += fw.nothing_listens(view, listeners)
    if forwards is not None:
        found += fwd.target_gone(view, forwards)
        if listeners is not None:
            found += fwd.port_taken(view, forwards, listeners)
    # stable sort: errors first, within a severity the fixing order above
    return tuple(sorted(found, key=lambda f: SEVERITIES.index(f.severity)))
