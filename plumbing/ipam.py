"""Address management: the next free address on a subnet, as Docker's default IPAM hands them out.

Pure: the caller gathers what is in use (our state, the host's addresses, the bridge's ARP
neighbours and, when something we did not make is attached, the snapshot's addresses).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from bridgescope.collector.model import Snapshot
from bridgescope.plumbing.errors import ValidationError
from bridgescope.plumbing.validate import host_in

Addr = ipaddress.IPv4Address
Net = ipaddress.IPv4Network


def addresses_in(snapshot: Snapshot, subnet: Net) -> set[Addr]:
    """Every IPv4 address configured anywhere in the snapshot that falls inside subnet."""
    out = set()
    for iface in snapshot.interfaces:
        for cidr in iface.addresses:
            if ":" in cidr:
                continue
            addr = ipaddress.IPv4Interface(cidr).ip
            if addr in subnet:
                out.add(addr)
    return out


def next_free(subnet: Net, gateway: Addr, used: Iterable[Addr]) -> Addr:
    taken = set(used) | {gateway}
    for addr in subnet.hosts():
        if addr not in taken:
            return addr
    raise ValidationError("ip", f"no free address left in {subnet}")


def check_requested(subnet: Net, gateway: Addr, requested: str, used: Iterable[Addr]) -> Addr:
    addr = host_in(subnet, requested, "ip")
    if addr == gateway:
        raise ValidationError("ip", f"{addr} is the gateway of {subnet}")
    if addr in set(used):
        raise ValidationError("ip", f"{addr} is already in use on {subnet}")
    return addr
