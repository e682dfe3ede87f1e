"""Reading one parsed firewall rule: its address, interface and port matches.

The firewall readers fill `Rule.matches` for iptables rules; native nftables rules carry
only their statement text, so the few nft forms the doctor and the packet path need
(`iifname != "br"`, `ip saddr X`, `ip daddr X`) are read from the text. Pure functions.
"""
from __future__ import annotations

import ipaddress
import re
from ipaddress import IPv4Address, IPv4Network

from bridgescope.collector.model import Rule

_ALIASES = {
    "-s": ("-s", "--source", "--src"),
    "-d": ("-d", "--destination", "--dst"),
    "-i": ("-i", "--in-interface"),
    "-o": ("-o", "--out-interface"),
    "-p": ("-p", "--protocol"),
    "--dport": ("--dport", "--destination-port", "--dports"),
    "--sport": ("--sport", "--source-port"),
}
_NFT_COUNTER = re.compile(r"counter packets \d+ bytes \d+")
_NFT_IFACE = re.compile(r'\b(iifname|oifname)\s+(!=\s+)?"?([\w.@-]+)"?')
_NFT_ADDR = re.compile(r"\bip (saddr|daddr)\s+(!=\s+)?([0-9./]+)")


def option(rule: Rule, name: str) -> tuple[tuple[str, ...], bool] | None:
    """(args, negated) of the first match called name (or an alias of it), else None."""
    names = _ALIASES.get(name, (name,))
    for opt, args, neg in rule.matches:
        if opt in names:
            return args, neg
    return None


def network(rule: Rule, name: str) -> tuple[IPv4Network, bool] | None:
    """The -s/-d match of rule as a network: iptables prints hosts as /32."""
    found = option(rule, name)
    if found is None and rule.backend == "nftables":
        return _nft_network(rule, "saddr" if name == "-s" else "daddr")
    if found is None or not found[0]:
        return None
    try:
        return IPv4Network(found[0][0], strict=False), found[1]
    except ValueError:
        return None


def interface(rule: Rule, name: str) -> tuple[str, bool] | None:
    """(interface name, negated) of a -i/-o match."""
    found = option(rule, name)
    if found is None and rule.backend == "nftables":
        key = "iifname" if name == "-i" else "oifname"
        for kind, neg, ifname in _NFT_IFACE.findall(rule.text):
            if kind == key:
                return ifname, bool(neg)
        return None
    if found is None or not found[0]:
        return None
    return found[0][0], found[1]


def _nft_network(rule: Rule, key: str) -> tuple[IPv4Network, bool] | None:
    for kind, neg, text in _NFT_ADDR.findall(rule.text):
        if kind == key:
            try:
                return IPv4Network(text, strict=False), bool(neg)
            except ValueError:
                return None
    return None


def target_arg(rule: Rule, name: str) -> str | None:
    return next((v for k, v in rule.target_args if k == name), None)


def dnat_destination(rule: Rule) -> tuple[IPv4Address, int | None] | None:
    """Where a DNAT rule sends packets: (--to-destination address, port or None)."""
    text = target_arg(rule, "--to-destination")
    if text is None and rule.backend == "nftables":
        m = re.search(r"\bdnat (?:ip )?to ([0-9.]+)(?::(\d+))?", rule.text)
        text = f"{m.group(1)}:{m.group(2)}" if m and m.group(2) else (m.group(1) if m else None)
    if not text:
        return None
    host, _, port = text.partition(":")
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        return None
    first = port.split("-")[0]
    return addr, int(first) if first.isdigit() else None


def normalized_text(rule: Rule) -> str:
    """The rule text without per-rule counters, so two copies of one rule compare equal."""
    return " ".join(_NFT_COUNTER.sub("counter", rule.text).split())


def is_host_route(net: IPv4Network) -> bool:
    return net.prefixlen == 32
