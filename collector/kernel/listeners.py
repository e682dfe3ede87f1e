"""Which sockets listen in a namespace: sock_diag (NETLINK_SOCK_DIAG, inet_diag), read raw.

No netlink event announces a new listening socket, so whoever needs this polls it, and only
for the namespaces it cares about (the ones port forwards point at); each read carries the
time it was taken, so a verdict built on it can say how old it is. TCP: sockets in LISTEN;
UDP: bound, unconnected sockets (what a UDP server holds). A netlink socket stays in the
namespace it was created in, so it is created inside (collector/kernel/setns) and used from
anywhere.
"""
from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridgescope.collector.errors import NamespaceNotFound
from bridgescope.collector.kernel import setns
from bridgescope.collector.kernel.namespaces import open_path
from bridgescope.collector.kernel.rtnl import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    messages,
    request,
)
from bridgescope.collector.model import Namespace

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCP_LISTEN, TCP_CLOSE = 10, 7  # TCP_CLOSE: what an unconnected UDP socket reports
_REQ = struct.Struct("=BBBxI48x")  # inet_diag_req_v2: family, protocol, ext, states, sockid
_HDR_SIZE = 16
_MSG_PORT = struct.Struct("!H")  # inet_diag_msg: family, state, timer, retrans, sockid...


ANY_ADDRESS = ("0.0.0.0", "::")  # a socket bound to either takes every address of its family


@dataclass(frozen=True)
class Listener:
    proto: str  # "tcp" | "udp"
    address: str  # "0.0.0.0", "::" or one address
    port: int

    def holds(self, proto: str, addr: str | None, port: int) -> bool:
        """Does this socket take proto traffic to addr:port (addr None: any of the host's)? An
        IPv6 socket on `::` or on `::ffff:A` takes IPv4's too."""
        return self.proto == proto and self.port == port and (
            self.address in ANY_ADDRESS or addr is None or self.address == addr
            or self.address == f"::ffff:{addr}")


@dataclass(frozen=True)
class ListenerRead:
    """The listening sockets of some namespaces (id -> sockets), read at `read_at` (time.time());
    a namespace missing from `by_ns` was not read: nothing is known about it."""
    by_ns: Mapping[str, frozenset[Listener]]
    read_at: float = 0.0
    errors: Mapping[str, str] = field(default_factory=dict)  # ns id -> why it was not read

    def known(self, ns_id: str) -> bool:
        return ns_id in self.by_ns


def read_namespaces(namespaces: Iterable[Namespace]) -> ListenerRead:
    """The listening sockets of these namespaces; one that cannot be opened is an error."""
    paths, errors = {}, {}
    for ns in namespaces:
        try:
            paths[ns.id] = open_path(ns)
        except NamespaceNotFound as err:
            errors[ns.id] = str(err)
    found = read(paths)
    return ListenerRead(found.by_ns, found.read_at, {**found.errors, **errors})


def read(paths: Mapping[str, str]) -> ListenerRead:
    """ns id -> namespace path (/run/netns/X, /proc/PID/ns/net): their listening sockets."""
    found: dict[str, frozenset[Listener]] = {}
    errors: dict[str, str] = {}
    taken = time.time()
    for ns_id, path in paths.items():
        try:
            found[ns_id] = read_one(path)
        except OSError as err:
            errors[ns_id] = err.strerror or str(err)
    return ListenerRead(found, taken, errors)


def read_one(path: str) -> frozenset[Listener]:
    """The listening sockets of the namespace at path."""
    with setns.inside(path):
        sock = _diag_socket()
    return _read(sock)


def read_here() -> frozenset[Listener]:
    """The listening sockets of the calling thread's namespace."""
    return _read(_diag_socket())


def _diag_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)


def _read(sock: socket.socket) -> frozenset[Listener]:
    """TCP sockets listening and UDP ones unconnected, IPv4 and IPv6 (sock_diag walks only
    those; /proc/net/tcp would walk the whole machine's connection table)."""
    with sock:
        return frozenset(listener for family in (socket.AF_INET, socket.AF_INET6)
                         for proto, number, state in (("tcp", socket.IPPROTO_TCP, TCP_LISTEN),
                                                      ("udp", socket.IPPROTO_UDP, TCP_CLOSE))
                         for listener in _dump(sock, family, proto, number, state))


def _dump(sock: socket.socket, family: int, proto: str, number: int, state: int) -> list[Listener]:
    body = _REQ.pack(family, number, 0, 1 << state)
    sock.sendall(request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, body))
    out: list[Listener] = []
    while True:
        for msg in messages(sock.recv(65536)):
            if msg.type == NLMSG_DONE:
                return out
            if msg.type == NLMSG_ERROR:
                if msg.error == 0:
                    return out
                raise OSError(msg.error, f"sock_diag: {socket.AddressFamily(family).name} {proto}")
            listener = parse(msg.data[_HDR_SIZE:], proto)
            if listener is not None:
                out.append(listener)


def parse(body: bytes, proto: str) -> Listener | None:
    """One inet_diag_msg -> a Listener (None for a socket bound to no port)."""
    if len(body) < 24:
        return None
    family = body[0]
    (port,) = _MSG_PORT.unpack_from(body, 4)
    if port == 0:
        return None
    size = 4 if family == socket.AF_INET else 16
    address = socket.inet_ntop(family, body[8:8 + size])
    return Listener(proto, address, port)
