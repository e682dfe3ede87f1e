"""Reading one rule: its address, interface and port matches, its target's arguments.

What the doctor asks of single rules, over the shared rule model (aliases folded, values
parsed by rules.model). Pure.
"""
from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network

from bridgescope.collector.model import Rule
from bridgescope.collector.rules import model

_COUNTER = re.compile(r"counter packets \d+ bytes \d+")


def option(rule: Rule, name: str) -> tuple[tuple[str, ...], bool] | None:
    """(args, negated) of the first match called name (or an alias of it), else None."""
    name = model.canonical(name)
    for opt, args, neg in rule.matches:
        if model.canonical(opt) == name:
            return args, neg
    return None


def network(rule: Rule, name: str) -> tuple[IPv4Network, bool] | None:
    """The -s/-d match of rule as an IPv4 network (iptables prints hosts as /32)."""
    found = option(rule, name)
    if found is None or not found[0]:
        return None
    net = model.network(found[0][0])
    return (net, found[1]) if isinstance(net, IPv4Network) else None


def interface(rule: Rule, name: str) -> tuple[str, bool] | None:
    """(interface name, negated) of a -i/-o match."""
    found = option(rule, name)
    if found is None or not found[0]:
        return None
    return found[0][0], found[1]


def target_arg(rule: Rule, name: str) -> str | None:
    return next((v for k, v in rule.target_args if k == name), None)


def dnat_destination(rule: Rule) -> tuple[IPv4Address, int | None] | None:
    """Where an IPv4 DNAT rule sends packets: (address, first port or None)."""
    parsed = model.parse_destination(target_arg(rule, "--to-destination") or "")
    if parsed is None or ":" in parsed[0]:
        return None
    return IPv4Address(parsed[0]), parsed[1]


def normalized_text(rule: Rule) -> str:
    """The rule text without per-rule counters, so two copies of one rule compare equal."""
    return " ".join(_COUNTER.sub("counter", rule.text).split())
