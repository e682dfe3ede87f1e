"""Kernel edge for the packet path: ask a namespace's routing table where a packet goes.

RTM_GETROUTE is what `ip route get` sends: the kernel answers with the route it would really
use (policy rules, local table, forwarding switched off - all included). One rtnetlink
socket per namespace, made inside it through setns (the one way in), asked from any thread.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from bridgescope.collector.kernel import rtnl
from bridgescope.collector.kernel.netlink import RECV_SIZE, new_route_socket
from bridgescope.collector.kernel.setns import inside

RTN_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
             6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}


@dataclass(frozen=True)
class RouteAnswer:
    type: str  # "unicast", "local", ... or "error"
    oif: int | None = None
    gateway: str | None = None
    prefsrc: str | None = None
    error: str | None = None  # the kernel's words when there is no route


class RouteLookup:
    """One netlink socket per namespace (by id -> nsfs path), opened on first use."""

    def __init__(self, paths: Mapping[str, str]):
        self._paths = dict(paths)
        self._sockets: dict[str, socket.socket] = {}
        self._seq = 0

    def __call__(self, ns_id: str, dst: str, *, src: str | None = None,
                 iif: int | None = None) -> RouteAnswer:
        sock = self._socket(ns_id)
        self._seq += 1
        # with iif: a packet arriving there (forwarded) from src; without: one made here
        sock.send(rtnl.route_get(self._seq, dst, src, iif))
        while True:
            for msg in rtnl.messages(sock.recv(RECV_SIZE)):
                if msg.seq != self._seq:
                    continue
                if msg.type == rtnl.NLMSG_ERROR:
                    return RouteAnswer("error", error=os.strerror(msg.error) if msg.error else "no answer")
                kind, oif, gateway, prefsrc = rtnl.route_get_answer(msg)
                return RouteAnswer(RTN_TYPES.get(kind, str(kind)), oif, gateway, prefsrc)

    def _socket(self, ns_id: str) -> socket.socket:
        if ns_id not in self._sockets:
            path = self._paths.get(ns_id)
            if path:
                with inside(path):  # the socket stays in the namespace it was made in
                    self._sockets[ns_id] = new_route_socket()
            else:
                self._sockets[ns_id] = new_route_socket()
        return self._sockets[ns_id]

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def __enter__(self) -> RouteLookup:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
