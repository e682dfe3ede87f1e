"""NAT interpretation: pure functions from rules (+ interfaces) to forwards and masquerades.

(Interface fixed; the interpretation lands with the firewall-collector issue.)
"""
from __future__ import annotations

from dataclasses import dataclass

from bridgescope.collector.model import Chain, Interface, Masquerade, Namespace, PortForward, Rule


@dataclass(frozen=True)
class NatView:
    port_forwards: tuple[PortForward, ...] = ()
    masquerades: tuple[Masquerade, ...] = ()
    warnings: tuple[str, ...] = ()


def interpret(rules: tuple[Rule, ...], chains: tuple[Chain, ...],
              interfaces: tuple[Interface, ...], namespaces: tuple[Namespace, ...]) -> NatView:
    return NatView()
