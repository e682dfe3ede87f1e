"""Netlink operations (pyroute2) for bridges, veth pairs, addresses and routes.

Each function takes an IPRoute already bound inside the right namespace (see netns.with_netlink)
and does one kernel job; the interface alias carries `bridgescope:<object id>` so leftovers of a
crash can be found.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bridgescope.collector.kernel import rtnl
from bridgescope.collector.kernel.rtnl import LinkFacts
from bridgescope.plumbing.state import TAG

ENOENT, ENODEV = 2, 19
BRIDGE_MODE_HAIRPIN = 1


def index_of(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def require(ipr: IPRoute, ifname: str) -> int:
    idx = index_of(ipr, ifname)
    if idx is None:
        raise OSError(ENODEV, f"interface {ifname} does not exist")
    return idx


def veth_name(host: str, container: str, attempt: int = 0) -> str:
    """Docker's host-side shape, 'veth' + 7 hex digits, derived from the container's identity
    (its host's state key and its name): a preview and the change it previews agree on it."""
    digest = hashlib.sha256(f"{host}/{container}/{attempt}".encode()).hexdigest()
    return "veth" + digest[:7]


def free_veth_name(ipr: IPRoute, host: str, container: str) -> str:
    """The first of the container's veth names that no interface here holds yet."""
    attempt = 0
    while index_of(ipr, veth_name(host, container, attempt)) is not None:
        attempt += 1
    return veth_name(host, container, attempt)


def create_bridge(ipr: IPRoute, name: str, gateway: str, prefixlen: int, mtu: int, tag: str) -> None:
    ipr.link("add", ifname=name, kind="bridge")
    idx = require(ipr, name)
    ipr.link("set", index=idx, ifalias=TAG + tag, mtu=mtu)
    ipr.addr("add", index=idx, address=gateway, prefixlen=prefixlen)
    ipr.link("set", index=idx, state="up")


def delete_link(ipr: IPRoute, ifname: str) -> None:
    """Idempotent: a link that is already gone is fine (deleting one veth end removes both)."""
    idx = index_of(ipr, ifname)
    if idx is None:
        return
    try:
        ipr.link("del", index=idx)
    except NetlinkError as err:
        if err.code not in (ENODEV, ENOENT):
            raise


def create_veth(ipr: IPRoute, host_name: str, peer_netns_path: str, bridge: str, mtu: int,
                tag: str) -> None:
    """The peer is born inside the container namespace as eth0 (never eth0 in the host)."""
    fd = os.open(peer_netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ipr.link("add", ifname=host_name, kind="veth", mtu=mtu, master=require(ipr, bridge),
                 peer={"ifname": "eth0", "net_ns_fd": fd, "mtu": mtu})
    finally:
        os.close(fd)
    idx = require(ipr, host_name)
    ipr.link("set", index=idx, ifalias=TAG + tag)
    # Proxy-less hairpin: a container reaching its own published port comes back this port.
    ipr.brport("set", index=idx, mode=BRIDGE_MODE_HAIRPIN)


def set_up(ipr: IPRoute, ifname: str) -> None:
    ipr.link("set", index=require(ipr, ifname), state="up")


def configure_container_side(ipr: IPRoute, address: str, prefixlen: int, gateway: str,
                             tag: str) -> None:
    """Inside the container: eth0 with address/prefix, eth0 and lo up, default via gateway."""
    idx = require(ipr, "eth0")
    ipr.link("set", index=idx, ifalias=TAG + tag)
    ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
    ipr.link("set", index=idx, state="up")
    ipr.link("set", index=require(ipr, "lo"), state="up")
    ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=idx)


def tagged_links(ipr: IPRoute) -> dict[str, str]:
    """{ifname: object id} for every interface carrying our alias tag."""
    out = {}
    for link in ipr.get_links():
        alias = link.get("IFLA_IFALIAS") or link.get("ifalias") or ""
        if alias.startswith(TAG):
            out[link.get("ifname")] = alias[len(TAG):]
    return out


def route_destinations(ipr: IPRoute) -> list[tuple[ipaddress.IPv4Network, str]]:
    """IPv4 routes of the main table with their device names, for subnet collision checks."""
    names = {l["index"]: l.get("ifname") for l in ipr.get_links()}
    out = []
    for route in ipr.get_routes(family=2, table=254):
        dst = route.get("RTA_DST")
        if dst is None:
            continue  # the default route overlaps everything by design
        net = ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False)
        out.append((net, names.get(route.get("RTA_OIF"), "?")))
    return out


def local_addresses(ipr: IPRoute) -> set[ipaddress.IPv4Address]:
    return {ipaddress.IPv4Address(a.get("IFA_ADDRESS")) for a in ipr.get_addr(family=2)}


def neighbours_on(ipr: IPRoute, ifname: str) -> set[ipaddress.IPv4Address]:
    """Addresses the bridge has seen answering ARP: in use by someone, whoever made them."""
    idx = index_of(ipr, ifname)
    if idx is None:
        return set()
    out = set()
    for n in ipr.get_neighbours(family=2, ifindex=idx):
        dst = n.get("NDA_DST")
        if dst and n["state"] not in (0x20,):  # skip NUD_FAILED
            out.add(ipaddress.IPv4Address(dst))
    return out


# A bridge's ports, read with the kernel doing the filtering (IFLA_MASTER) and without the
# per-link statistics: pyroute2 decodes every attribute of every link, which costs ~0.3 ms
# per link, and this runs on every container create.
RTM_NEWLINK, RTM_GETLINK, NLMSG_DONE, NLMSG_ERROR = 16, 18, 3, 2
NLM_F_REQUEST_DUMP = 0x1 | 0x300
IFLA_IFNAME, IFLA_MASTER, IFLA_IFALIAS, IFLA_EXT_MASK = 3, 10, 20, 29
RTEXT_FILTER_SKIP_STATS = 1 << 3


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("HH", data, pos)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return out


def port_aliases(master: int) -> dict[str, str]:
    """{port name: alias} of the bridge with ifindex `master`, in the calling thread's netns."""
    body = struct.pack("BxHiII", 0, 0, 0, 0, 0) + _attr(IFLA_MASTER, struct.pack("I", master)) \
        + _attr(IFLA_EXT_MASK, struct.pack("I", RTEXT_FILTER_SKIP_STATS))
    out: dict[str, str] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.sendto(struct.pack("IHHII", 16 + len(body), RTM_GETLINK, NLM_F_REQUEST_DUMP, 1, 0)
                    + body, (0, 0))
        while True:
            data, pos = sock.recv(1 << 16), 0
            while pos + 16 <= len(data):
                length, kind = struct.unpack_from("IH", data, pos)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("i", data, pos + 16)[0]
                    raise OSError(err, os.strerror(err))
                if kind == RTM_NEWLINK:
                    attrs = _attrs(data[pos + 32:pos + length])
                    if struct.unpack("I", attrs.get(IFLA_MASTER, b"\0\0\0\0"))[0] == master:
                        name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
                        out[name] = attrs.get(IFLA_IFALIAS, b"").rstrip(b"\0").decode()
                pos += (length + 3) & ~3



def link_by_index(index: int) -> LinkFacts | None:
    """One interface of the calling thread's namespace, as the collector decodes it (one
    question, however many interfaces the namespace holds); None when there is none."""
    body = struct.pack("=BxHiII", 0, 0, index, 0, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.send(rtnl.request(rtnl.RTM_GETLINK, rtnl.NLM_F_REQUEST, 1, body))
        for msg in rtnl.messages(sock.recv(1 << 16)):
            if msg.type == rtnl.RTM_NEWLINK:
                return rtnl.link_facts(msg)
    return None


def port_and_bridge(index: int) -> tuple[LinkFacts, ...]:
    """The interface with ifindex `index` and the bridge it is a port of (the ones there are)."""
    port = link_by_index(index)
    bridge = link_by_index(port.master) if port is not None and port.master else None
    return tuple(link for link in (port, bridge) if link is not None)
