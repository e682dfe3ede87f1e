"""Firewall readers: iptables-legacy, iptables-nft and native nftables, one rule model.

`scan` is the entry point the snapshot calls. (Interface fixed; the readers land with the
firewall-collector issue.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from bridgescope.collector.model import Chain, Rule


@dataclass(frozen=True)
class FirewallScan:
    rules: tuple[Rule, ...] = ()
    chains: tuple[Chain, ...] = ()
    warnings: tuple[str, ...] = ()


def scan(namespaces: Mapping[str, str]) -> FirewallScan:
    """Read every backend in each namespace ({namespace id: nsfs path}) into one model."""
    return FirewallScan()
