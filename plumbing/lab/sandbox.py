"""The sandbox lab: a whole demo host in namespaces, built with the same API users call.

  <P>-client (198.51.100.2) --- <P>-inet (router + "internet" 203.0.113.10) --- <P>-host (198.18.0.2)
                                                                                   docker0 172.17.0.1/16
                                                                                   c1 (:80, published 8080), c2 (:80)

All addresses are documentation ranges that exist only inside these namespaces.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from bridgescope.collector import shell
from bridgescope.collector.kernel import tools
from bridgescope.plumbing import api, conflicts, netns, state
from bridgescope.plumbing.errors import PlumbingError

DEFAULT_PREFIX = "bslab"
HOST_UPLINK, INET_TO_HOST = "198.18.0.2", "198.18.0.1"  # RFC 2544 test range: unused by real networks
CLIENT_UPLINK, INET_TO_CLIENT = "198.51.100.2", "198.51.100.1"
INTERNET = "203.0.113.10"
BRIDGE, SUBNET = "docker0", "172.17.0.0/16"
CONTAINERS = ("c1", "c2")
PUBLISHED = "8080:80"


@dataclass(frozen=True)
class LabInfo:
    prefix: str
    host: str  # namespace names
    inet: str
    client: str
    host_ip: str = HOST_UPLINK
    internet_ip: str = INTERNET
    client_ip: str = CLIENT_UPLINK
    containers: tuple[tuple[str, str], ...] = ()  # (name, ip)

    def describe(self) -> str:
        ctrs = ", ".join(f"{n} {ip}" for n, ip in self.containers)
        return (f"lab {self.prefix} is up: host {self.host} (uplink {self.host_ip}, {BRIDGE} "
                f"172.17.0.1/16; {ctrs}; forward {PUBLISHED} -> c1), internet {self.inet} "
                f"({self.internet_ip}), client {self.client} ({self.client_ip})\n"
                f"try: ip netns exec {self.client} curl -s http://{self.host_ip}:8080/\n"
                f"     bridgescope serve --netns {self.host}")


def names(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}-host", f"{prefix}-inet", f"{prefix}-client"


def lab_up(prefix: str = DEFAULT_PREFIX, *, firewall: str = "auto") -> LabInfo:
    """Build the lab; running it again completes whatever is missing."""
    host, inet, client = names(prefix)
    fresh = not netns.exists(host)
    try:
        wire_uplinks(host, inet, client)
        api.create_network(BRIDGE, SUBNET, host=host, firewall=firewall)
        api.create_container("c1", BRIDGE, ports=[PUBLISHED], host=host, firewall=firewall)
        api.create_container("c2", BRIDGE, host=host, firewall=firewall)
        st = api.load_state(host)
        for ctr in st.containers:
            _serve(f"{netns.NETNS_DIR}/{ctr.netns}", ctr.name, 80)
        _serve(f"{netns.NETNS_DIR}/{inet}", "internet", 80)
    except BaseException:
        if fresh:  # never tear down a working lab because completing it failed
            lab_down(prefix)
        raise
    return LabInfo(prefix, host, inet, client,
                   containers=tuple((c.name, c.ip) for c in st.containers))


def lab_down(prefix: str = DEFAULT_PREFIX) -> None:
    """Remove everything the lab made: processes, namespaces, its saved state."""
    host, inet, client = names(prefix)
    if netns.exists(host):
        for ctr in api.load_state(host).containers:
            netns.destroy(ctr.netns)
    for ns in (f"{host}-{c}" for c in CONTAINERS):
        netns.destroy(ns)
    for ns in (client, inet, host):
        netns.destroy(ns)
    state.forget(host, lock=True)


def wire_uplinks(host: str, inet: str, client: str) -> None:
    """host --- inet (the fake internet, a router) --- client; idempotent."""
    for ns in (host, inet, client):
        if not netns.exists(ns):
            netns.create(ns)
    paths = {ns: f"{netns.NETNS_DIR}/{ns}" for ns in (host, inet, client)}
    _veth(paths[host], "uplink", paths[inet], "to-host", f"{HOST_UPLINK}/24", f"{INET_TO_HOST}/24")
    _veth(paths[client], "uplink", paths[inet], "to-client", f"{CLIENT_UPLINK}/24",
          f"{INET_TO_CLIENT}/24")
    netns.with_netlink(paths[inet], lambda ipr: _ensure_addr(ipr, "lo", f"{INTERNET}/32"))
    netns.write_sysctl(paths[inet], "net.ipv4.ip_forward", "1")  # the internet routes
    netns.with_netlink(paths[host], lambda ipr: _ensure_default(ipr, INET_TO_HOST))
    netns.with_netlink(paths[client], lambda ipr: _ensure_default(ipr, INET_TO_CLIENT))


def uplink_commands(host: str, inet: str, client: str) -> tuple[str, ...]:
    """What wire_uplinks does on a fresh lab, as the ip commands that would do the same."""
    def veth(a: str, a_if: str, b: str, b_if: str, a_cidr: str, b_cidr: str) -> list[str]:
        return [f"ip -n {a} link add {a_if} type veth peer name {b_if} netns {b}",
                f"ip -n {a} addr add {a_cidr} dev {a_if}", f"ip -n {a} link set {a_if} up",
                f"ip -n {b} addr add {b_cidr} dev {b_if}", f"ip -n {b} link set {b_if} up"]
    return tuple([f"ip netns add {ns}" for ns in (host, inet, client)]
                 + [f"ip -n {ns} link set lo up" for ns in (host, inet, client)]
                 + veth(host, "uplink", inet, "to-host", f"{HOST_UPLINK}/24", f"{INET_TO_HOST}/24")
                 + veth(client, "uplink", inet, "to-client", f"{CLIENT_UPLINK}/24",
                        f"{INET_TO_CLIENT}/24")
                 + [f"ip -n {inet} addr add {INTERNET}/32 dev lo",
                    f"ip netns exec {inet} sysctl -w net.ipv4.ip_forward=1",
                    f"ip -n {host} route add default via {INET_TO_HOST}",
                    f"ip -n {client} route add default via {INET_TO_CLIENT}"])


def _veth(a_path: str, a_name: str, b_path: str, b_name: str, a_cidr: str, b_cidr: str) -> None:
    import os

    def make(ipr) -> None:
        if ipr.link_lookup(ifname=a_name):
            return
        fd = os.open(b_path, os.O_RDONLY)
        try:
            ipr.link("add", ifname=a_name, kind="veth", peer={"ifname": b_name, "net_ns_fd": fd})
        finally:
            os.close(fd)
    netns.with_netlink(a_path, make)
    netns.with_netlink(a_path, lambda ipr: _ensure_addr(ipr, a_name, a_cidr))
    netns.with_netlink(b_path, lambda ipr: _ensure_addr(ipr, b_name, b_cidr))


def _ensure_addr(ipr, ifname: str, cidr: str) -> None:
    idx = ipr.link_lookup(ifname=ifname)[0]
    addr, plen = cidr.split("/")
    have = {a.get("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
    if addr not in have:
        ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))
    ipr.link("set", index=idx, state="up")


def _ensure_default(ipr, gateway: str) -> None:
    if not [r for r in ipr.get_routes(family=2, table=254) if r["dst_len"] == 0]:
        ipr.route("add", dst="0.0.0.0/0", gateway=gateway)


def _serve(path: str, name: str, port: int) -> None:
    start_listening(path, echo_server(name, port), port, f"start the HTTP server of {name}")


def echo_server(name: str, port: int) -> list[str]:
    """The lab's tiny HTTP server as a command: this interpreter, isolated from its surroundings."""
    return tools.python_module("bridgescope.plumbing.lab.echo_server", name, str(port))


def start_listening(path: str, argv: list[str], port: int, what: str) -> str | None:
    """Start argv detached inside the namespace at path, unless something already listens on
    TCP port there; return once it listens (or raise, naming `what`). Returns the command
    line started, None when nothing was."""
    def listening() -> bool:
        return any(ls.port == port and ls.proto == "tcp" for ls in conflicts.listeners(path))
    if listening():
        return None
    argv = tools.nsenter(path, argv)
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, env=tools.ENV)
    deadline = time.monotonic() + 10
    while not listening():
        if time.monotonic() > deadline:
            raise PlumbingError(what, "it did not listen within 10 s")
        time.sleep(0.05)
    return shell.line(argv)
