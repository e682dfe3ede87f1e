"""The firewall collector against the real kernel, in throwaway namespaces.

Each healthy layout (tests/reference_layouts.py, tests/data/firewall) is loaded with the real tool (iptables-nft-restore,
iptables-legacy-restore, ip6tables-nft-restore, nft -f) into a fresh "host" namespace that
has a real docker0-like bridge and a real container namespace behind a veth pair; then
scan() reads it back the way it would on a real host, and interpret() says what it means.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bridgescope.collector import firewall
from bridgescope.collector.firewall.monitor import FirewallWatch
from bridgescope.collector.model import Interface
from bridgescope.collector.rules.nat import interpret
from tests.conftest import sh

pytestmark = pytest.mark.kernel
DATA = Path(__file__).parent / "data" / "firewall"


def path(ns: str) -> str:
    return f"/run/netns/{ns}"


def _links(ns: str) -> dict[str, dict]:
    links = json.loads(sh("ip", "-j", "addr", "show", ns=ns).stdout)
    return {link["ifname"]: link for link in links}


def _interface(ns: str, link: dict, kind: str, **extra) -> Interface:
    return Interface(id=f"{ns}/if{link['ifindex']}", netns=ns, name=link["ifname"],
                     ifindex=link["ifindex"], kind=kind, state="up", mtu=link["mtu"],
                     mac=link.get("address"),
                     addresses=tuple(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                                     if a.get("scope") != "link"),
                     **extra)


@pytest.fixture
def host(netns):
    """A host namespace with bridge `bridge` and one container `ctr` at `address` behind it.

    Returns a function building it: host(bridge, gateway_cidr, container_cidr) ->
    (host ns, container ns, interfaces read back from the kernel).
    """
    def build(bridge: str = "docker0", gateway: str = "172.17.0.1/16",
              address: str = "172.17.0.2/16"):
        hns, cns = netns("host"), netns("ctr")
        sh("ip", "link", "add", bridge, "type", "bridge", ns=hns)
        sh("ip", "addr", "add", gateway, "dev", bridge, ns=hns)
        sh("ip", "link", "add", "vethc1", "type", "veth", "peer", "name", "eth0", "netns", cns, ns=hns)
        sh("ip", "link", "set", "vethc1", "master", bridge, "up", ns=hns)
        sh("ip", "link", "set", bridge, "up", ns=hns)
        sh("ip", "addr", "add", address, "dev", "eth0", ns=cns)
        sh("ip", "link", "set", "eth0", "up", ns=cns)
        hl, cl = _links(hns), _links(cns)
        br = _interface(hns, hl[bridge], "bridge")
        port_id, inner_id = f"{hns}/if{hl['vethc1']['ifindex']}", f"{cns}/if{cl['eth0']['ifindex']}"
        interfaces = (br, _interface(hns, hl["vethc1"], "veth", master=br.id, peer=inner_id),
                      _interface(cns, cl["eth0"], "veth", peer=port_id))
        return hns, cns, interfaces
    return build


def load(ns: str, listing: str, tool: str) -> None:
    argv = ["nft", "-f", str(DATA / listing)] if tool == "nft" else [tool]
    sh(*argv, ns=ns, input=None if tool == "nft" else (DATA / listing).read_text())


def legacy_tables(ns: str) -> str:
    return sh("cat", "/proc/self/net/ip_tables_names", ns=ns).stdout.strip()


CASES = [  # listing, loader, backend, family, bridge, gateway, container address, owner, host ports
    ("docker27.rules", "iptables-nft-restore", "nft", 4, "docker0", "172.17.0.1/16", "172.17.0.2/16", "docker", [8080]),
    ("docker27.rules", "iptables-legacy-restore", "legacy", 4, "docker0", "172.17.0.1/16", "172.17.0.2/16", "docker", [8080]),
    ("docker28.rules", "iptables-nft-restore", "nft", 4, "docker0", "172.17.0.1/16", "172.17.0.2/16", "docker", [8080]),
    ("docker29.rules", "iptables-nft-restore", "nft", 4, "docker0", "172.17.0.1/16", "172.17.0.2/16", "docker", [8080]),
    ("docker29.rules", "iptables-legacy-restore", "legacy", 4, "docker0", "172.17.0.1/16", "172.17.0.2/16", "docker", [8080]),
    ("docker29-nftables.nft", "nft", "nftables", 4, "docker0", "172.17.0.1/16", "172.17.0.2/16", "docker", [8080]),
    ("docker29-ipv6.rules", "ip6tables-nft-restore", "nft", 6, "docker0", "fd00:d0c::1/64", "fd00:d0c::2/64", "docker", [8080]),
    ("cni-portmap.rules", "iptables-nft-restore", "nft", 4, "cni0", "10.22.0.1/16", "10.22.0.5/16", "cni", [8080]),
    ("cni-portmap-nftables.nft", "nft", "nftables", 4, "cni0", "10.22.0.1/16", "10.22.0.5/16", "cni", [5353, 8080, 8443]),
    ("netavark-iptables.rules", "iptables-nft-restore", "nft", 4, "podman0", "10.88.0.1/16", "10.88.0.14/16", "podman", [8000, 8080]),
    ("netavark-nftables.nft", "nft", "nftables", 4, "podman0", "10.88.0.1/16", "10.88.0.14/16", "podman", [8080]),
]


@pytest.mark.parametrize("listing, loader, backend, family, bridge, gateway, address, owner, ports",
                         CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_listing_read_back_from_the_kernel(host, listing, loader, backend, family, bridge,
                                           gateway, address, owner, ports):
    hns, cns, interfaces = host(bridge, gateway, address)
    load(hns, listing, loader)
    scan = firewall.scan({hns: path(hns)})
    assert scan.warnings == ()
    mine = [r for r in scan.rules if r.backend == backend]
    assert mine and {r.owner for r in mine} == {owner}
    assert {r.family for r in mine} <= {family, 0}
    nat = interpret(scan.rules, scan.chains, interfaces, ())
    forwards = sorted(nat.port_forwards, key=lambda f: f.host_port)
    assert [f.host_port for f in forwards] == ports
    container_ip = address.split("/")[0]
    for forward in forwards:
        assert (forward.netns, forward.backend, forward.owner) == (hns, backend, owner)
        assert forward.to_ip == container_ip and forward.reachable
        assert forward.container == cns and forward.to_interface == interfaces[2].id
    if listing != "cni-portmap-nftables.nft":
        assert all(f.forward_accept is True for f in forwards)
    assert nat.masquerades and {m.owner for m in nat.masquerades} == {owner}
    if backend != "legacy":
        assert legacy_tables(hns) == ""  # reading created no legacy tables


def test_variants_udp_bound_ranged_and_orphan_dnat(host):
    hns, cns, interfaces = host()
    load(hns, "variants.rules", "iptables-nft-restore")
    scan = firewall.scan({hns: path(hns)})
    nat = interpret(scan.rules, scan.chains, interfaces, ())
    got = {(f.proto, f.host_ip, f.host_port, f.host_port_end, f.to_ip, f.to_port, f.to_port_end,
            f.reachable) for f in nat.port_forwards}
    assert got == {
        ("udp", None, 5353, None, "172.17.0.3", 53, None, True),
        ("tcp", "192.0.2.10", 8443, None, "172.17.0.4", 443, None, True),
        ("tcp", "127.0.0.1", 8443, None, "172.17.0.4", 443, None, True),
        ("tcp", None, 8000, 8009, "172.17.0.6", 80, 89, True),
        ("tcp", None, 9090, None, "172.17.0.5", 90, None, False),  # nothing jumps to it
    }


def test_compat_and_several_native_tables_in_one_namespace(host):
    hns, cns, interfaces = host()
    load(hns, "docker29.rules", "iptables-nft-restore")
    load(hns, "docker29-nftables.nft", "nft")
    load(hns, "cni-portmap-nftables.nft", "nft")
    scan = firewall.scan({hns: path(hns)})
    assert {(r.backend, r.table) for r in scan.rules if r.backend == "nftables"} == {
        ("nftables", "docker-bridges"), ("nftables", "cni_hostport")}
    assert not any(r.backend == "nftables" and r.table in ("nat", "filter", "raw") for r in scan.rules)
    got = sorted((f.backend, f.owner, f.host_port) for f in
                 interpret(scan.rules, scan.chains, interfaces, ()).port_forwards)
    assert got == [("nft", "docker", 8080), ("nftables", "cni", 5353), ("nftables", "cni", 8080),
                   ("nftables", "cni", 8443), ("nftables", "docker", 8080)]
    assert scan.warnings == ()  # nft and native nftables together are no split brain


def test_split_brain_between_legacy_and_nft(host):
    hns, _, _ = host()
    load(hns, "docker29.rules", "iptables-nft-restore")
    load(hns, "cni-portmap.rules", "iptables-legacy-restore")
    scan = firewall.scan({hns: path(hns)})
    assert {r.backend for r in scan.rules} == {"legacy", "nft"}
    warning, = [w for w in scan.warnings if "split brain" in w]
    assert hns in warning and "iptables-legacy" in warning and "iptables-nft" in warning


def test_many_namespaces_at_once_and_a_vanished_one(netns):
    names = [netns(f"n{i}") for i in range(6)]
    for ns in names:
        load(ns, "docker29.rules", "iptables-nft-restore")
    paths = {ns: path(ns) for ns in names}
    paths["ns-gone"] = path(names[0] + "-never-made")
    scan = firewall.scan(paths)
    assert {r.netns for r in scan.rules} == set(names)
    assert len(scan.rules) == 6 * 15
    assert any("ns-gone" in w for w in scan.warnings)


def test_empty_namespace_has_no_rules_and_stays_clean(netns):
    ns = netns("empty")
    scan = firewall.scan({ns: path(ns)})
    assert scan == firewall.FirewallScan()
    assert legacy_tables(ns) == "" and sh("nft", "list", "tables", ns=ns).stdout == ""


# -- change detection ----------------------------------------------------------------------

class Calls:
    def __init__(self):
        self.seen: list[str] = []
        self.event = threading.Event()

    def __call__(self, ns_id: str) -> None:
        self.seen.append(ns_id)
        self.event.set()

    def wait(self) -> bool:
        got = self.event.wait(timeout=5)
        self.event.clear()
        return got


@pytest.fixture
def watch():
    made = []

    def start(namespaces, on_change):
        w = FirewallWatch(namespaces, on_change, poll=0.5)
        made.append(w)
        w.start()
        return w
    yield start
    for w in made:
        w.stop()


def test_watch_fires_for_an_nft_change_in_that_namespace_only(netns, watch):
    a, b = netns("wa"), netns("wb")
    calls = Calls()
    watch({"A": path(a), "B": path(b)}, calls)
    sh("nft", "add", "table", "ip", "bsttest", ns=a)  # our own table, in our own namespace
    for n in range(6):  # the monitor may not listen yet: make new changes until it reports
        sh("nft", "add", "chain", "ip", "bsttest", f"c{n}", ns=a)
        if calls.wait():
            break
    else:
        pytest.fail("no change reported for namespace A")
    assert set(calls.seen) == {"A"}


def test_watch_fires_for_iptables_nft_change(netns, watch):
    ns = netns("wn")
    calls = Calls()
    watch({"N": path(ns)}, calls)
    for n in range(6):
        sh("iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", f"10.9.{n}.0/24", "-j",
           "MASQUERADE", ns=ns)
        if calls.wait():
            break
    else:
        pytest.fail("no change reported for an iptables-nft rule")
    assert calls.seen[0] == "N"


def test_watch_polls_legacy_tables(netns, watch):
    ns = netns("wl")
    load(ns, "docker29.rules", "iptables-legacy-restore")
    calls = Calls()
    w = watch({"L": path(ns)}, calls)
    calls.wait()  # let the first look settle (it may report the initial state)
    calls.seen.clear()
    sh("iptables-legacy", "-t", "nat", "-A", "DOCKER", "-p", "tcp", "--dport", "9999", "-j", "DNAT",
       "--to-destination", "172.17.0.9:99", ns=ns)
    assert calls.wait() and calls.seen == ["L"]
    assert w.errors == []


def test_watch_follows_update_and_releases_its_sockets(netns, watch):
    a, b = netns("ua"), netns("ub")
    open_before = len(os.listdir("/proc/self/fd"))
    calls = Calls()
    w = watch({"A": path(a)}, calls)
    w.update({"B": path(b)})
    for n in range(6):
        sh("nft", "add", "table", "ip", f"bst{n}", ns=b)
        if calls.wait() and "B" in calls.seen:
            break
    else:
        pytest.fail("the namespace added by update() is not watched")
    assert "A" not in calls.seen
    w.stop()
    assert len(os.listdir("/proc/self/fd")) == open_before  # every netlink socket closed


def test_watch_survives_a_namespace_that_does_not_exist(netns, watch):
    ns = netns("real")
    calls = Calls()
    w = watch({"gone": path(ns) + "-missing", "real": path(ns)}, calls)
    for n in range(6):
        sh("nft", "add", "table", "ip", f"bst{n}", ns=ns)
        if calls.wait():
            break
    assert calls.seen == ["real"]
    assert any("gone" in e for e in w.errors)


# -- the interpretation checked against real packets ------------------------------------------

LISTEN = ("import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind(('0.0.0.0', 80))\ns.listen()\nprint('ready', flush=True)\n"
          "while True:\n    s.accept()[0].close()\n")
CONNECT = "import socket, sys\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"


@pytest.fixture
def lab(host, netns):
    """host() plus a client namespace on an uplink (192.0.2.0/24) and a listener on :80."""
    hns, cns, interfaces = host()
    client = netns("client")
    sh("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", client, ns=hns)
    sh("ip", "addr", "add", "192.0.2.1/24", "dev", "uplink0", ns=hns)
    sh("ip", "link", "set", "uplink0", "up", ns=hns)
    sh("ip", "addr", "add", "192.0.2.2/24", "dev", "eth0", ns=client)
    sh("ip", "link", "set", "eth0", "up", ns=client)
    sh("ip", "route", "add", "default", "via", "192.0.2.1", ns=client)
    sh("ip", "route", "add", "default", "via", "172.17.0.1", ns=cns)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=hns)  # the throwaway host's, not ours
    server = subprocess.Popen(["ip", "netns", "exec", cns, sys.executable, "-c", LISTEN],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        yield hns, client, interfaces
    finally:
        server.kill()
        server.wait()


def connects(client: str, port: int) -> bool:
    return sh(sys.executable, "-c", CONNECT, "192.0.2.1", str(port), ns=client, check=False).returncode == 0


DROP_ACCEPT = "-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT\n"


@pytest.mark.parametrize("listing, edit, port, works", [
    ("docker29.rules", None, 8080, True),  # FORWARD policy ACCEPT
    ("docker28.rules", None, 8080, True),  # policy DROP, per-port ACCEPT in DOCKER
    ("docker28.rules", DROP_ACCEPT, 8080, False),  # policy DROP, the ACCEPT missing
    ("docker29.rules", ("--dport 8080 -j DNAT", "--dport 8080 -j RETURN\n-A ORPHAN -p tcp -m tcp --dport 8080 -j DNAT"), 8080, False),
])
def test_verdicts_match_what_packets_do(lab, listing, edit, port, works):
    hns, client, interfaces = lab
    text = (DATA / listing).read_text()
    if isinstance(edit, tuple):  # move the DNAT into a chain nothing jumps to
        text = text.replace(*edit).replace(":DOCKER - [0:0]\n-A PREROUTING",
                                           ":DOCKER - [0:0]\n:ORPHAN - [0:0]\n-A PREROUTING", 1)
    elif edit:
        text = text.replace(edit, "")
    sh("iptables-nft-restore", ns=hns, input=text)
    scan = firewall.scan({hns: path(hns)})
    nat = interpret(scan.rules, scan.chains, interfaces, ())
    forward = next(f for f in nat.port_forwards if f.host_port == port)
    predicted = forward.reachable and forward.forward_accept is True
    assert predicted == works == connects(client, port)


def test_legacy_forward_policy_drop_beside_iptables_nft_accepts_drops_real_packets(lab):
    """An accept in iptables-nft does not save a packet the iptables-legacy table drops."""
    hns, client, interfaces = lab
    sh("iptables-nft-restore", ns=hns, input=(DATA / "docker28.rules").read_text())
    assert connects(client, 8080)
    sh("iptables-legacy", "-P", "FORWARD", "DROP", ns=hns)
    scan = firewall.scan({hns: path(hns)})
    forward, = interpret(scan.rules, scan.chains, interfaces, ()).port_forwards
    assert forward.forward_accept is False and not connects(client, 8080)


@pytest.mark.slow
def test_snapshot_lists_the_published_port_with_owner_backend_and_container(host):
    """End to end through the collector core: what `bridgescope snapshot` shows."""
    from bridgescope.collector.kernel.snapshot import collect
    from bridgescope.collector.model import namespace_id

    hns, cns, _ = host()
    load(hns, "docker29.rules", "iptables-legacy-restore")
    load(hns, "netavark-nftables.nft", "nft")
    snap = collect(hns)
    host_id, ctr_id = (namespace_id(os.stat(path(n)).st_ino) for n in (hns, cns))
    mine = {(f.owner, f.backend, f.to_ip, f.container) for f in snap.port_forwards
            if f.netns == host_id and f.host_port == 8080}
    assert mine == {("docker", "legacy", "172.17.0.2", ctr_id), ("podman", "nftables", "10.88.0.14", None)}
    assert any(r.netns == host_id and r.owner == "docker" and r.backend == "legacy" for r in snap.rules)
    assert any(m.netns == host_id and m.source == "172.17.0.0/16" and m.out_not == "docker0"
               for m in snap.masquerades)
    assert any(host_id in w and "split brain" in w for w in snap.warnings)


def test_docker_proxy_process_is_reported_as_a_forward(netns, tmp_path):
    """A process with docker-proxy's name and command line (bash behind a symlink)."""
    ns = netns("proxy")
    fake_binary = tmp_path / "docker-proxy"
    fake_binary.symlink_to(shutil.which("bash"))
    argv = ["-proto", "udp", "-host-ip", "127.0.0.1", "-host-port", "5353",
            "-container-ip", "172.17.0.3", "-container-port", "53"]
    fake = subprocess.Popen(["ip", "netns", "exec", ns, str(fake_binary), "-c", "read -r _",
                             *argv], stdin=subprocess.PIPE)
    try:
        for _ in range(50):  # until the exec has happened
            scan = firewall.scan({ns: path(ns)})
            if scan.proxies:
                break
            threading.Event().wait(0.1)
        proxy, = scan.proxies
        assert (proxy.netns, proxy.proto, proxy.host_ip, proxy.host_port, proxy.to_ip,
                proxy.to_port, proxy.via, proxy.owner) == (
            ns, "udp", "127.0.0.1", 5353, "172.17.0.3", 53, "proxy", "docker")
        other = netns("other")
        assert firewall.scan({other: path(other)}).proxies == ()  # not in that namespace
    finally:
        fake.kill()
        fake.wait()


@pytest.mark.parametrize("backend", ["legacy", "nft", "nftables"])
def test_unchanged_rules_are_read_without_a_tool_and_a_change_is_read_again(netns, monkeypatch, backend):
    """The kernel's own fingerprint (nf_tables' generation, a digest of each legacy table's
    entries) says the rules did not change: no save tool runs. A changed rule is read anew."""
    from bridgescope.collector.firewall import readers
    ns = netns("fp")
    rule = {"legacy": ["iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport"],
            "nft": ["iptables-nft", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport"]}

    def add(port: int) -> None:
        if backend == "nftables":
            sh("nft", f"add rule ip fp pre tcp dport {port} dnat to 10.9.0.2:80", ns=ns)
        else:
            sh(*rule[backend], str(port), "-j", "DNAT", "--to-destination", "10.9.0.2:80", ns=ns)

    if backend == "nftables":
        sh("nft", "add table ip fp; add chain ip fp pre { type nat hook prerouting priority -100; }", ns=ns)
    add(8080)
    started: list[list[str]] = []
    real_start = readers.start_tool
    monkeypatch.setattr(readers, "start_tool", lambda p, argv: (started.append(argv), real_start(p, argv))[1])
    first = readers.dump_namespace(ns, path(ns), reuse=True)
    assert started and "8080" in "".join(s.text for s in first.saves) + "".join(first.nft_json)
    started.clear()
    assert readers.dump_namespace(ns, path(ns), reuse=True) is first and started == []
    add(9090)
    again = readers.dump_namespace(ns, path(ns), reuse=True)
    assert started and "9090" in "".join(s.text for s in again.saves) + "".join(again.nft_json)
    started.clear()
    # Without `reuse` (one-shot reads: the CLI, the packet path, a panel) the tools always run:
    # the counters must be today's, and a freed namespace's id may belong to a new one.
    fresh = readers.dump_namespace(ns, path(ns))
    assert started and fresh is not again
    readers.forget_reads([ns])
    started.clear()
    assert readers.dump_namespace(ns, path(ns), reuse=True) is not again and started
