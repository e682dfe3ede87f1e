"""Kernel edge for the packet path: ask a namespace's routing table where a packet goes.

RTM_GETROUTE is what `ip route get` sends: the kernel answers with the route it would really
use (policy rules, local table, forwarding switched off - all included). pyroute2's sync
IPRoute opens its socket in the calling thread's namespace on first use from a new thread,
so one `RouteLookup` must be used on the thread that made it (the packet path makes one per
trace and closes it).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

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
        self._sockets: dict[str, IPRoute] = {}

    def __call__(self, ns_id: str, dst: str, *, src: str | None = None,
                 iif: int | None = None) -> RouteAnswer:
        ipr = self._socket(ns_id)
        query: dict = {"dst": dst}
        if iif is not None:  # a packet arriving on iif (forwarded), not one made here
            query.update(iif=iif, src=src)
        elif src is not None:
            query["src"] = src
        try:
            msg = ipr.route("get", **query)[0]
        except NetlinkError as err:
            return RouteAnswer("error", error=err.args[1] if len(err.args) > 1 else str(err))
        return RouteAnswer(RTN_TYPES.get(msg["type"], str(msg["type"])), msg.get_attr("RTA_OIF"),
                           msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_PREFSRC"))

    def _socket(self, ns_id: str) -> IPRoute:
        if ns_id not in self._sockets:
            path = self._paths.get(ns_id)
            # flags=0: never create a namespace that is missing (pyroute2's default would)
            self._sockets[ns_id] = IPRoute(netns=path, flags=0) if path else IPRoute()
        return self._sockets[ns_id]

    def close(self) -> None:
        for ipr in self._sockets.values():
            ipr.close()
        self._sockets.clear()

    def __enter__(self) -> RouteLookup:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
