"""Reads recorded from real namespaces, as plain JSON, for replaying through incremental.advance.

`python tests/live_recording.py OUT.json` (as root) builds a host with br0 and a container c1
on it in throwaway namespaces, then records each namespace's read at every stage of a short
story: the start, a bridge added in the host, an address added in c1, a container c2 plugged
in, c2 gone. `load` turns the file back into the reads the Watcher would have handed over.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import socket
import subprocess
import sys
import time

from bridgescope.collector.kernel.namespaces import discover, resolve_netns
from bridgescope.collector.kernel.netlink import (
    NETLINK_ADD_MEMBERSHIP,
    RTMGRP_TOPOLOGY,
    SOL_NETLINK,
    NamespaceRead,
    RtnlDump,
    new_route_socket,
    open_handles,
)
from bridgescope.collector.kernel.rtnl import AddressFacts, LinkFacts, RouteFacts
from bridgescope.collector.kernel.setns import hop
from bridgescope.collector.kernel.snapshot import path_or_blank, resolve_all_nsids
from bridgescope.collector.model import Namespace


def _namespace(d: dict) -> Namespace:
    return Namespace(**{**d, "paths": tuple(d["paths"]), "pids": tuple(d["pids"]),
                        "sysctls": tuple(tuple(kv) for kv in d["sysctls"])})


def _read(d: dict) -> NamespaceRead:
    dump = d["dump"]
    return NamespaceRead(RtnlDump(tuple(LinkFacts(**x) for x in dump["links"]),
                                       tuple(AddressFacts(**x) for x in dump["addresses"]),
                                       tuple(RouteFacts(**x) for x in dump["routes"])),
                         tuple(tuple(kv) for kv in d["sysctls"]))


def load(path: str) -> dict[str, dict]:
    """{stage: {"namespaces": {id: Namespace}, "reads": {id: NamespaceRead}, "nsids": {id: {nsid: id}},
    "events": {name suffix: [bytes the namespace's event socket received on the way to this stage]}}}."""
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    return {stage: {"namespaces": {k: _namespace(v) for k, v in s["namespaces"].items()},
                    "reads": {k: _read(v) for k, v in s["reads"].items()},
                    "nsids": {k: {int(n): t for n, t in v.items()} for k, v in s["nsids"].items()},
                    "events": {k: [base64.b64decode(c) for c in v] for k, v in s.get("events", {}).items()}}
            for stage, s in raw.items()}


def _event_sockets(names: list[str]) -> dict[str, socket.socket]:
    fds = [(os.open(f"/run/netns/{name}", os.O_RDONLY), name) for name in names]
    try:
        socks = hop(fds, lambda _: new_route_socket(RTMGRP_TOPOLOGY))
    finally:
        for fd, _ in fds:
            os.close(fd)
    for sock in socks:
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, 24)  # netconf, as the Watcher
    return dict(zip(names, socks))


def _drain(socks: dict[str, socket.socket]) -> dict[str, list[str]]:
    time.sleep(0.2)
    out: dict[str, list[str]] = {}
    for name, sock in socks.items():
        while True:
            try:
                out.setdefault(name.rsplit("-", 1)[1], []).append(
                    base64.b64encode(sock.recv(1 << 16, socket.MSG_DONTWAIT)).decode())
            except BlockingIOError:
                break
    return out


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


def _stage(host: str, prefix: str) -> dict:
    found = [ns for ns in discover(resolve_netns(host)) if ns.is_host or ns.name.startswith(prefix)]
    handles, reads, _ = open_handles({ns.id: path_or_blank(ns) for ns in found})
    try:
        nsids = resolve_all_nsids(handles, reads)
    finally:
        for handle in handles.values():
            handle.close()
    return {"namespaces": {ns.id: dataclasses.asdict(ns) for ns in found},
            "reads": {k: dataclasses.asdict(r) for k, r in reads.items()},
            "nsids": {k: {str(n): t for n, t in v.items()} for k, v in nsids.items()}}


def record(out: str) -> None:
    prefix = "bsrec" + secrets.token_hex(2)
    host, c1, c2 = f"{prefix}-host", f"{prefix}-c1", f"{prefix}-c2"
    try:
        for ns in (host, c1):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", host, "link", "add", "br0", "type", "bridge")
        _ip("-n", host, "addr", "add", "10.50.0.1/24", "dev", "br0")
        _ip("-n", host, "link", "set", "br0", "up")
        _ip("-n", host, "link", "add", "vc1", "type", "veth", "peer", "name", "eth0", "netns", c1)
        _ip("-n", host, "link", "set", "vc1", "master", "br0", "up")
        _ip("-n", c1, "link", "set", "eth0", "up")
        _ip("-n", c1, "addr", "add", "10.50.0.2/24", "dev", "eth0")
        stages = {"start": _stage(host, prefix)}
        socks = _event_sockets([host, c1])
        _drain(socks)
        _ip("-n", host, "link", "add", "br1", "type", "bridge")
        stages["bridge"] = {**_stage(host, prefix), "events": _drain(socks)}
        _ip("-n", c1, "addr", "add", "10.50.0.9/24", "dev", "eth0")
        stages["address"] = {**_stage(host, prefix), "events": _drain(socks)}
        for sock in socks.values():
            sock.close()
        _ip("netns", "add", c2)
        _ip("-n", host, "link", "add", "vc2", "type", "veth", "peer", "name", "eth0", "netns", c2)
        _ip("-n", host, "link", "set", "vc2", "master", "br0", "up")
        _ip("-n", c2, "addr", "add", "10.50.0.3/24", "dev", "eth0")
        stages["container"] = _stage(host, prefix)
        _ip("netns", "del", c2)
        stages["gone"] = _stage(host, prefix)
    finally:
        for ns in (c2, c1, host):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(stages, fh, indent=1, sort_keys=True)
        fh.write("\n")


if __name__ == "__main__":
    record(sys.argv[1])
