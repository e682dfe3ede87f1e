"""The rtnetlink wire format, only as far as bridgescope reads it: requests out, facts in. Pure.

Why not pyroute2's message classes here: they decode every attribute of every message into
objects (link dumps carry ~50, mostly statistics), which was 85% of a 200-namespace scan
(0.33 s of 0.43 s, cProfile). Walking the TLVs and keeping the ~15 attributes we show is
about ten times cheaper. pyroute2 stays the reference: a kernel test dumps the same
namespace through pyroute2's IPRoute and compares.
"""
from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNSID, RTM_GETNSID = 88, 90
RTM_NEWNETCONF, RTM_DELNETCONF, RTM_GETNETCONF = 80, 81, 82
NETCONFA_IFINDEX, NETCONFA_FORWARDING, NETCONFA_RP_FILTER = 1, 2, 3
NETCONFA_IFINDEX_ALL = -1

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_EXT_MASK, IFLA_LINK_NETNSID = 16, 18, 20, 29, 37
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFLA_INFO_KIND, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 4, 5
IFLA_BRPORT_MODE = 4
IFLA_PROTINFO = 12
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_SRC, RTA_IIF, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE, RTA_VIA = 1, 2, 3, 4, 5, 7, 15, 18
NETNSA_NSID, NETNSA_FD = 1, 3

RT_TABLE_MAIN = 254
RTM_F_CLONED = 0x200
IFF_UP = 0x1
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
NSID_NOT_ASSIGNED = -1
BRIDGE_MODE_HAIRPIN = 1

KNOWN_KINDS = frozenset({"bridge", "veth", "vxlan", "macvlan", "dummy", "tun"})
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
PROTOS = {1: "redirect", 2: "kernel", 3: "boot", 4: "static", 16: "dhcp"}

_HDR = struct.Struct("=IHHII")
HEADER_SIZE = _HDR.size  # a message body starts here
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLA = struct.Struct("=HH")


@dataclass(frozen=True)
class LinkFacts:
    ifindex: int
    name: str
    kind: str
    up: bool
    operstate: str | None
    mtu: int
    mac: str | None
    master: int | None  # ifindex of the bridge, same namespace
    link: int | None  # veth: the peer's ifindex, in the peer's namespace
    link_netnsid: int | None  # veth: the peer namespace's nsid as seen from here
    alias: str | None
    hairpin: bool | None


@dataclass(frozen=True)
class AddressFacts:
    ifindex: int
    cidr: str
    family: int


@dataclass(frozen=True)
class RouteFacts:
    dst: str
    gateway: str | None
    oif: int | None
    family: int
    scope: str | None
    proto: str | None
    prefsrc: str | None


@dataclass(frozen=True)
class Message:
    type: int
    flags: int
    seq: int
    data: bytes  # the whole message, header included
    error: int = 0  # errno of an NLMSG_ERROR (0 = an ACK)


# ---- requests -------------------------------------------------------------------------------

def request(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(_HDR.size + len(body), mtype, flags, seq, 0) + body


def link_dump(seq: int) -> bytes:
    """Every link, without its statistics (a fifth of each message, never read; a kernel
    that does not know the filter ignores the bit and sends them anyway)."""
    body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
    return request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def address_dump(seq: int) -> bytes:
    return request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, _IFADDR.pack(0, 0, 0, 0, 0))


def route_dump(seq: int) -> bytes:
    """Main table, both families (the kernel filters by table under NETLINK_GET_STRICT_CHK)."""
    body = _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0)
    return request(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def route_get(seq: int, dst: str, src: str | None = None, iif: int | None = None) -> bytes:
    """`ip route get DST [from SRC] [iif N]`: the route the kernel would use for one packet,
    made here, or arriving on interface iif (forwarded) when iif is given."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    bits = 128 if family == socket.AF_INET6 else 32
    body = _RTMSG.pack(family, bits, bits if src else 0, 0, 0, 0, 0, 0, 0)
    body += _attr(RTA_DST, socket.inet_pton(family, dst))
    if src:
        body += _attr(RTA_SRC, socket.inet_pton(family, src))
    if iif is not None:
        body += _attr(RTA_IIF, struct.pack("=I", iif))
    return request(RTM_GETROUTE, NLM_F_REQUEST, seq, body)


def route_get_answer(msg: Message) -> tuple[int, int | None, str | None, str | None]:
    """(rtm_type, output ifindex, gateway, preferred source) of route_get's RTM_NEWROUTE."""
    family, *_, rtm_type, _ = _RTMSG.unpack_from(msg.data, _HDR.size)
    a = attrs(msg.data, _HDR.size + _RTMSG.size)
    return (rtm_type, _u32(a.get(RTA_OIF)), _ip(family, a.get(RTA_GATEWAY)), _ip(family, a.get(RTA_PREFSRC)))


def nsid_query(seq: int, fd: int) -> bytes:
    body = struct.pack("=Bxxx", socket.AF_UNSPEC) + _attr(NETNSA_FD, struct.pack("=I", fd))
    return request(RTM_GETNSID, NLM_F_REQUEST, seq, body)


def netconf_all(seq: int) -> bytes:
    """IPv4's "all" settings (ip_forward, rp_filter): one question instead of two /proc/sys files."""
    body = struct.pack("=Bxxx", socket.AF_INET) + _attr(NETCONFA_IFINDEX, struct.pack("=i", NETCONFA_IFINDEX_ALL))
    return request(RTM_GETNETCONF, NLM_F_REQUEST, seq, body)


def netconf_facts(msg: Message) -> dict[int, int]:
    """{NETCONFA_* attribute: value} of an RTM_NEWNETCONF answer."""
    return {kind: value for kind, raw in attrs(msg.data, _HDR.size + 4).items()
            if kind != NETCONFA_IFINDEX and (value := _u32(raw)) is not None}


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


# ---- replies --------------------------------------------------------------------------------

def messages(buf: bytes) -> Iterator[Message]:
    """Split one recv() buffer into messages."""
    offset = 0
    while offset + _HDR.size <= len(buf):
        length, mtype, flags, seq, _ = _HDR.unpack_from(buf, offset)
        if length < _HDR.size or offset + length > len(buf):
            break
        data = buf[offset:offset + length]
        error = -struct.unpack_from("=i", data, _HDR.size)[0] if mtype == NLMSG_ERROR else 0
        yield Message(mtype, flags, seq, data, error)
        offset += (length + 3) & ~3


def attrs(data: bytes, offset: int, wanted: frozenset[int] | None = None) -> dict[int, bytes]:
    """{type: payload} of the attributes from offset on (the last one wins on repeats); only
    the `wanted` types when given (a link carries ~40 attributes, a handful of them read),
    and then the walk stops once each has been seen (the kernel does not repeat a type at one
    level: a bridge port's mode comes fourth of its ~40)."""
    found = {}
    end = len(data)
    unpack = _NLA.unpack_from
    while offset + 4 <= end:
        length, kind = unpack(data, offset)
        if length < 4:
            break
        kind &= 0x3FFF
        if wanted is None:
            found[kind] = data[offset + 4:offset + length]
        elif kind in wanted:
            found[kind] = data[offset + 4:offset + length]
            if len(found) == len(wanted):
                break
        offset += (length + 3) & ~3
    return found


def _u32(raw: bytes | None) -> int | None:
    return struct.unpack("=I", raw[:4])[0] if raw and len(raw) >= 4 else None


def _s32(raw: bytes | None) -> int | None:
    return struct.unpack("=i", raw[:4])[0] if raw and len(raw) >= 4 else None


def _text(raw: bytes | None) -> str | None:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace") if raw is not None else None


def _mac(raw: bytes | None) -> str | None:
    return raw.hex(":") if raw and len(raw) == 6 else None


def _ip(family: int, raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        return socket.inet_ntop(family, raw)
    except (ValueError, OSError):
        return None


_LINK_ATTRS = frozenset({IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_OPERSTATE,
                         IFLA_LINKINFO, IFLA_IFALIAS, IFLA_LINK_NETNSID})


def link_facts(msg: Message) -> LinkFacts:
    _, ifi_type, index, flags, _ = _IFINFO.unpack_from(msg.data, _HDR.size)
    a = attrs(msg.data, _HDR.size + _IFINFO.size, _LINK_ATTRS)
    info = attrs(a[IFLA_LINKINFO], 0) if IFLA_LINKINFO in a else {}
    kind = _text(info.get(IFLA_INFO_KIND))
    is_veth = kind == "veth"
    netnsid = _s32(a.get(IFLA_LINK_NETNSID))
    operstate = a.get(IFLA_OPERSTATE)
    master = _u32(a.get(IFLA_MASTER))
    return LinkFacts(
        ifindex=index,
        name=_text(a.get(IFLA_IFNAME)) or f"if{index}",
        kind=link_kind(kind, ifi_type),
        up=bool(flags & IFF_UP),
        operstate=OPERSTATES[operstate[0]] if operstate and operstate[0] < len(OPERSTATES) else None,
        mtu=_u32(a.get(IFLA_MTU)) or 0,
        mac=_mac(a.get(IFLA_ADDRESS)) if ifi_type == ARPHRD_ETHER else None,
        master=master or None,
        link=(_u32(a.get(IFLA_LINK)) or None) if is_veth else None,
        link_netnsid=netnsid if is_veth and netnsid is not None and netnsid >= 0 else None,
        alias=_text(a.get(IFLA_IFALIAS)) or None,
        hairpin=_hairpin(info),
    )


def link_kind(info_kind: str | None, ifi_type: int) -> str:
    if info_kind in KNOWN_KINDS:
        return info_kind
    if info_kind is None and ifi_type == ARPHRD_LOOPBACK:
        return "loopback"
    if info_kind is None and ifi_type == ARPHRD_ETHER:
        return "physical"
    return "other"


_BRPORT_MODE = frozenset({IFLA_BRPORT_MODE})


def _hairpin(info: dict[int, bytes]) -> bool | None:
    if _text(info.get(IFLA_INFO_SLAVE_KIND)) != "bridge" or IFLA_INFO_SLAVE_DATA not in info:
        return None
    mode = attrs(info[IFLA_INFO_SLAVE_DATA], 0, _BRPORT_MODE).get(IFLA_BRPORT_MODE)
    return None if not mode else bool(mode[0] & BRIDGE_MODE_HAIRPIN)


def bridge_port_facts(msg: Message) -> tuple[int, int | None, bool | None]:
    """(ifindex, master, hairpin) from an AF_BRIDGE link message (the bridge's own view of a port)."""
    _, _, index, _, _ = _IFINFO.unpack_from(msg.data, _HDR.size)
    a = attrs(msg.data, _HDR.size + _IFINFO.size)
    mode = attrs(a[IFLA_PROTINFO], 0, _BRPORT_MODE).get(IFLA_BRPORT_MODE) if IFLA_PROTINFO in a else None
    return index, _u32(a.get(IFLA_MASTER)) or None, None if mode is None else bool(mode[0] & BRIDGE_MODE_HAIRPIN)


def address_facts(msg: Message) -> AddressFacts | None:
    family, prefixlen, _, _, index = _IFADDR.unpack_from(msg.data, _HDR.size)
    a = attrs(msg.data, _HDR.size + _IFADDR.size)
    addr = _ip(family, a.get(IFA_LOCAL) or a.get(IFA_ADDRESS))
    if addr is None:
        return None
    return AddressFacts(index, f"{addr}/{prefixlen}", 4 if family == socket.AF_INET else 6)


def route_facts(msg: Message) -> RouteFacts | None:
    family, dst_len, _, _, table, proto, scope, _, flags = _RTMSG.unpack_from(msg.data, _HDR.size)
    a = attrs(msg.data, _HDR.size + _RTMSG.size)
    if (_u32(a.get(RTA_TABLE)) or table) != RT_TABLE_MAIN or flags & RTM_F_CLONED:
        return None
    dst = _ip(family, a.get(RTA_DST))
    return RouteFacts(
        dst=f"{dst}/{dst_len}" if dst else ("default" if dst_len == 0 else f"?/{dst_len}"),
        gateway=_ip(family, a.get(RTA_GATEWAY)) or _via(a.get(RTA_VIA)),
        oif=_u32(a.get(RTA_OIF)),
        family=4 if family == socket.AF_INET else 6,
        scope=SCOPES.get(scope, str(scope)),
        proto=PROTOS.get(proto, str(proto)),
        prefsrc=_ip(family, a.get(RTA_PREFSRC)),
    )


def _via(raw: bytes | None) -> str | None:
    if not raw or len(raw) < 2:
        return None
    return _ip(struct.unpack_from("=H", raw)[0], raw[2:])


def nsid_of(msg: Message) -> int | None:
    """The nsid in an RTM_NEWNSID answer; None when the namespace has none from here."""
    nsid = _s32(attrs(msg.data, _HDR.size + 4).get(NETNSA_NSID))
    return None if nsid is None or nsid == NSID_NOT_ASSIGNED else nsid
