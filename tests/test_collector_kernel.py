"""The collector against the real kernel: the blog's topology done right, in throwaway namespaces.

Discovery sees every namespace on the machine (the real host's, other test runs'), so the
assertions pick out the objects these tests made and never count globally.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sh

from bridgescope.collector.errors import NamespaceNotFound
from bridgescope.collector.kernel.namespaces import discover, resolve_netns
from bridgescope.collector.kernel.netlink import NetnsSocket, new_route_socket
from bridgescope.collector.kernel.setns import hop
from bridgescope.collector.kernel.snapshot import collect, scan
from bridgescope.collector.render.export import to_json

pytestmark = pytest.mark.kernel


def blog_topology(netns) -> dict[str, str]:
    """host: br0 172.17.0.1/16; c1/c2: eth0 172.17.0.2/16 and .3/16, default via .1."""
    host, c1, c2 = netns("host"), netns("c1"), netns("c2")
    sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", host, "addr", "add", "172.17.0.1/16", "dev", "br0")
    sh("ip", "-n", host, "link", "set", "br0", "up")
    for index, (ns, ip) in enumerate(((c1, "172.17.0.2"), (c2, "172.17.0.3")), start=1):
        sh("ip", "-n", host, "link", "add", f"veth{index}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", host, "link", "set", f"veth{index}", "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/16", "dev", "eth0")
        sh("ip", "-n", ns, "route", "add", "default", "via", "172.17.0.1")
    return {"host": host, "c1": c1, "c2": c2}


def by_name(doc: dict, name: str) -> dict:
    return next(ns for ns in doc["namespaces"] if ns["name"] == name)


def iface(doc: dict, ns_name: str, if_name: str) -> dict:
    ns_id = by_name(doc, ns_name)["id"]
    return next(i for i in doc["interfaces"] if i["netns"] == ns_id and i["name"] == if_name)


def test_blog_topology_json(netns):
    names = blog_topology(netns)
    doc = to_json(collect(names["host"], firewall=False))

    host = by_name(doc, names["host"])
    assert host["is_host"] and doc["host"] == host["id"]
    assert [ns["is_host"] for ns in doc["namespaces"]].count(True) == 1
    assert f"/run/netns/{names['host']}" in host["paths"]

    br0 = iface(doc, names["host"], "br0")
    assert br0["kind"] == "bridge" and br0["state"] == "up"
    assert "172.17.0.1/16" in br0["addresses"]
    for index, (cname, ip) in enumerate(((names["c1"], "172.17.0.2/16"), (names["c2"], "172.17.0.3/16")), 1):
        host_end = iface(doc, names["host"], f"veth{index}")
        eth0 = iface(doc, cname, "eth0")
        assert host_end["kind"] == eth0["kind"] == "veth"
        assert host_end["master"] == br0["id"] and eth0["master"] is None
        assert host_end["peer"] == eth0["id"] and eth0["peer"] == host_end["id"]
        assert eth0["addresses"][0] == ip and eth0["mtu"] == 1500 and eth0["state"] == "up"
        assert len(eth0["mac"].split(":")) == 6
        lo = iface(doc, cname, "lo")
        assert lo["kind"] == "loopback" and "127.0.0.1/8" in lo["addresses"]
        routes = [r for r in doc["routes"] if r["netns"] == eth0["netns"] and r["family"] == 4]
        assert {"dst": "default", "gateway": "172.17.0.1", "dev": "eth0"}.items() <= \
            next(r for r in routes if r["dst"] == "default").items()
        assert any(r["dst"] == "172.17.0.0/16" and r["dev"] == "eth0" for r in routes)
    host_routes = [r for r in doc["routes"] if r["netns"] == host["id"] and r["family"] == 4]
    assert [(r["dst"], r["dev"]) for r in host_routes] == [("172.17.0.0/16", "br0")]
    assert doc["warnings"] == []


def test_ids_are_stable_across_runs(netns):
    names = blog_topology(netns)
    first, second = to_json(collect(names["host"], firewall=False)), to_json(collect(names["host"], firewall=False))
    mine = {by_name(first, n)["id"] for n in names.values()}
    pick = lambda doc: sorted((i["id"], i["name"], i["peer"]) for i in doc["interfaces"] if i["netns"] in mine)
    assert pick(first) == pick(second) and len(pick(first)) == 8


def test_colliding_names_and_ifindexes_pair_by_nsid(netns):
    names = blog_topology(netns)
    doc = to_json(collect(names["host"], firewall=False))
    e1, e2 = iface(doc, names["c1"], "eth0"), iface(doc, names["c2"], "eth0")
    assert e1["ifindex"] == e2["ifindex"] and e1["name"] == e2["name"]
    assert e1["id"] != e2["id"]
    assert iface(doc, names["host"], "veth1")["peer"] == e1["id"]
    assert iface(doc, names["host"], "veth2")["peer"] == e2["id"]


def test_veth_pair_inside_one_namespace_and_link_kinds(netns):
    host = netns("kinds")
    sh("ip", "-n", host, "link", "add", "va", "type", "veth", "peer", "name", "vb")
    # This kernel has no dummy/macvlan modules; their mapping is covered by test_rtnl.py.
    sh("ip", "-n", host, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "local", "127.0.0.1")
    sh("ip", "-n", host, "tuntap", "add", "dev", "tp0", "mode", "tap")
    sh("ip", "-n", host, "link", "add", "ifb0", "type", "ifb")
    sh("ip", "-n", host, "link", "add", "br9", "type", "bridge")
    doc = to_json(collect(host, firewall=False))
    kinds = {i["name"]: i["kind"] for i in doc["interfaces"] if i["netns"] == by_name(doc, host)["id"]}
    assert kinds == {"lo": "loopback", "va": "veth", "vb": "veth", "vx0": "vxlan", "tp0": "tun",
                     "ifb0": "other", "br9": "bridge"}
    assert iface(doc, host, "va")["peer"] == iface(doc, host, "vb")["id"]
    assert iface(doc, host, "vb")["peer"] == iface(doc, host, "va")["id"]
    assert iface(doc, host, "br9")["state"] == "down" and iface(doc, host, "lo")["state"] == "up"


def test_sysctls_and_hairpin_are_read_per_namespace(netns):
    names = blog_topology(netns)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=names["host"])
    sh("sysctl", "-qw", "net.ipv4.conf.br0.route_localnet=1", ns=names["host"])
    sh("ip", "-n", names["host"], "link", "set", "veth1", "type", "bridge_slave", "hairpin", "on")
    snap = collect(names["host"], firewall=False)
    host = next(ns for ns in snap.namespaces if ns.name == names["host"])
    c1 = next(ns for ns in snap.namespaces if ns.name == names["c1"])
    assert host.sysctl("net.ipv4.ip_forward") == "1"
    assert host.sysctl("net.ipv4.conf.br0.route_localnet") == "1"
    assert c1.sysctl("net.ipv4.ip_forward") == "0"
    assert c1.sysctl("net.ipv4.conf.br0.route_localnet") is None  # no bridge there
    ports = {i.name: i.hairpin for i in snap.interfaces_in(host.id) if i.master}
    assert ports == {"veth1": True, "veth2": False}


def test_hop_reads_proc_sys_of_the_target_namespace(netns):
    ns = netns("sysns")
    sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2", ns=ns)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        read = lambda _: Path("/proc/sys/net/ipv4/conf/all/rp_filter").read_text().strip()
        inode = lambda _: os.stat("/proc/thread-self/ns/net").st_ino
        assert hop([(fd, None)], read) == ["2"]
        assert hop([(fd, None)], inode) == [os.fstat(fd).st_ino]
    finally:
        os.close(fd)
    # the caller's thread never moved
    assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino


def test_socket_opened_in_a_namespace_stays_there_from_other_threads(netns):
    ns = netns("sock")
    sh("ip", "-n", ns, "link", "add", "marker0", "type", "bridge")
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        [sock] = hop([(fd, None)], lambda _: NetnsSocket(new_route_socket()))
    finally:
        os.close(fd)
    try:
        names = {link.name for link in sock.dump().links}  # used from the main thread
    finally:
        sock.close()
    assert names == {"lo", "marker0"}


def test_own_decoder_agrees_with_pyroute2(netns):
    names = blog_topology(netns)
    from pyroute2 import IPRoute

    sh("ip", "-n", names["host"], "link", "set", "veth1", "type", "bridge_slave", "hairpin", "on")
    sh("ip", "-n", names["host"], "link", "set", "veth2", "alias", "to c2")

    fd = os.open(f"/run/netns/{names['host']}", os.O_RDONLY)
    try:
        [sock] = hop([(fd, None)], lambda _: NetnsSocket(new_route_socket()))
    finally:
        os.close(fd)
    ours = sock.dump()
    sock.close()
    with IPRoute(netns=f"/run/netns/{names['host']}", flags=0) as ipr:
        links = ipr.get_links()
        addrs = ipr.get_addr()
    theirs = {(l["index"], l.get_attr("IFLA_IFNAME"), l.get_attr("IFLA_MTU"), l.get_attr("IFLA_MASTER"),
               l.get_attr("IFLA_LINK_NETNSID")) for l in links}
    assert {(l.ifindex, l.name, l.mtu, l.master, l.link_netnsid) for l in ours.links} == theirs

    def info(link, *path):
        return link.get_nested("IFLA_LINKINFO", *path)
    # the decoder keeps only the attributes it shows, and stops at a bridge port's mode
    theirs = {(l["index"], l.get_attr("IFLA_ADDRESS") if l["ifi_type"] == 1 else None, l.get_attr("IFLA_OPERSTATE"),
               info(l, "IFLA_INFO_KIND"), l.get_attr("IFLA_IFALIAS"),
               l.get_attr("IFLA_LINK") if info(l, "IFLA_INFO_KIND") == "veth" else None,
               None if (mode := info(l, "IFLA_INFO_SLAVE_DATA", "IFLA_BRPORT_MODE")) is None else bool(mode))
              for l in links}
    assert {(l.ifindex, l.mac, l.operstate, None if l.kind == "loopback" else l.kind, l.alias, l.link, l.hairpin)
            for l in ours.links} == theirs
    assert any(l.hairpin for l in ours.links) and any(l.alias == "to c2" for l in ours.links)
    assert {(a.ifindex, a.cidr) for a in ours.addresses} == \
        {(a["index"], f"{a.get_attr('IFA_LOCAL') or a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}") for a in addrs}


def test_namespace_held_only_by_a_process(netns):
    host = netns("host")
    proc = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    try:
        path = f"/proc/{proc.pid}/ns/net"
        _wait_until(lambda: os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino)
        sh("ip", "-n", host, "link", "add", "vp", "type", "veth", "peer", "name", "eth0", "netns", str(proc.pid))
        inode = os.stat(path).st_ino
        doc = to_json(collect(host, firewall=False))
        ns = next(n for n in doc["namespaces"] if n["inode"] == inode)
        assert ns["name"] == f"pid {proc.pid} (sleep)" and proc.pid in ns["pids"] and ns["paths"] == []
        eth0 = next(i for i in doc["interfaces"] if i["netns"] == ns["id"] and i["name"] == "eth0")
        assert iface(doc, host, "vp")["peer"] == eth0["id"]
    finally:
        proc.kill()
        proc.wait()


def test_docker_style_namespace_bind_mounted_outside_run_netns(netns, tmp_path):
    host = netns("host")
    target = tmp_path / "docker" / "netns" / "4cca5961632c"
    target.parent.mkdir(parents=True)
    target.touch()
    proc = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    mounted = False
    try:
        path = f"/proc/{proc.pid}/ns/net"
        _wait_until(lambda: os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino)
        sh("ip", "-n", host, "link", "add", "vd", "type", "veth", "peer", "name", "eth0", "netns", str(proc.pid))
        sh("mount", "--bind", path, str(target))
        mounted = True
        proc.kill()
        proc.wait()  # now only the bind mount holds it
        inode = os.stat(target).st_ino
        ns = next(n for n in discover(resolve_netns(host)) if n.inode == inode)
        assert ns.paths == (str(target),) and ns.pids == () and ns.name == f"net:[{inode}]"
        doc = to_json(collect(host, firewall=False))
        eth0 = next(i for i in doc["interfaces"] if i["netns"] == ns.id and i["name"] == "eth0")
        assert iface(doc, host, "vd")["peer"] == eth0["id"]
    finally:
        proc.kill()
        proc.wait()
        if mounted:
            subprocess.run(["umount", "--lazy", str(target)], check=False)  # busy while a watcher holds it


def test_namespace_deleted_during_a_scan_is_a_warning(netns):
    names = blog_topology(netns)
    found = discover(resolve_netns(names["host"]))
    sh("ip", "netns", "del", names["c2"])  # between discovery and the dumps
    snap = scan(found, firewall=False)
    assert any(names["c2"] in w and "vanished" in w for w in snap.warnings)
    assert names["c2"] not in {ns.name for ns in snap.namespaces}
    # the kernel tears the pair down asynchronously: the host end is gone or has no peer
    assert all(i.peer is None for i in snap.interfaces if i.name == "veth2" and i.netns == snap.host)
    assert any(ns.name == names["c1"] for ns in snap.namespaces)


def test_process_exiting_during_a_scan_is_a_warning(netns):
    host = netns("host")
    proc = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    try:
        _wait_until(lambda: os.stat(f"/proc/{proc.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino)
        found = discover(resolve_netns(host))
    finally:
        proc.kill()
        proc.wait()
    snap = scan(found, firewall=False)
    assert any(f"pid {proc.pid} (sleep)" in w for w in snap.warnings)


@pytest.mark.parametrize("bad", ["bstnope-does-not-exist", "..", "", "/tmp/bst-no-such-path"])
def test_missing_netns_raises_and_creates_nothing(bad):
    # Other test runs may add namespaces meanwhile, so look only at what this lookup could
    # have created: the named namespace file (for a plain name) or the path itself.
    could_appear = ["/tmp/bst-no-such-path"]
    if bad not in ("", "..") and "/" not in bad:
        could_appear.append(f"/run/netns/{bad}")
    with pytest.raises(NamespaceNotFound):
        resolve_netns(bad)
    assert [p for p in could_appear if os.path.exists(p)] == []


def test_a_plain_file_is_not_a_namespace(tmp_path):
    fake = tmp_path / "fake-netns"
    fake.write_text("")
    with pytest.raises(NamespaceNotFound):
        resolve_netns(str(fake))


def test_cli_snapshot_netns_missing_one_line_exit_1(run_prefix):
    name = f"{run_prefix}-missing"
    res = subprocess.run([sys.executable, "-m", "bridgescope.webui.cli", "snapshot", "--netns", name],
                         capture_output=True, text=True)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and name in res.stderr and "does not exist" in res.stderr
    assert not os.path.exists(f"/run/netns/{name}")


def test_cli_snapshot_formats(netns):
    names = blog_topology(netns)
    base = [sys.executable, "-m", "bridgescope.webui.cli", "snapshot", "--netns", names["host"], "--no-firewall"]
    tree = subprocess.run(base, capture_output=True, text=True, check=True).stdout
    assert "veth1 veth up" in tree and f"eth0@{names['c1']} 172.17.0.2/16" in tree
    dot = subprocess.run(base + ["--dot"], capture_output=True, text=True, check=True).stdout
    assert dot.startswith("graph bridgescope {") and dot.count("subgraph cluster_") >= 3
    import json
    doc = json.loads(subprocess.run(base + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert iface(doc, names["c2"], "eth0")["addresses"][0] == "172.17.0.3/16"


def test_route_dump_is_main_table_only(netns):
    ns = netns("rt")
    sh("ip", "-n", ns, "link", "add", "dm0", "type", "veth", "peer", "name", "dm1")
    sh("ip", "-n", ns, "link", "set", "dm0", "up")
    sh("ip", "-n", ns, "link", "set", "dm1", "up")
    sh("ip", "-n", ns, "addr", "add", "10.9.0.1/24", "dev", "dm0")
    sh("ip", "-n", ns, "route", "add", "10.77.0.0/16", "via", "10.9.0.254", "table", "100")
    sh("ip", "-n", ns, "route", "add", "10.88.0.0/16", "via", "10.9.0.254")
    doc = to_json(collect(ns, firewall=False))
    dsts = {r["dst"] for r in doc["routes"] if r["netns"] == by_name(doc, ns)["id"]}
    assert "10.88.0.0/16" in dsts and "10.77.0.0/16" not in dsts and "10.9.0.0/24" in dsts


def _wait_until(predicate, tries: int = 200) -> None:
    import time
    for _ in range(tries):
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError("condition never became true")


def test_firewall_forwards_and_masquerade_reach_json_and_graph(netns):
    """End to end with the firewall reader: Docker's two NAT rules in the throwaway host."""
    from bridgescope.collector.render.graph import to_elements

    names = blog_topology(netns)
    rules = ("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
             "-A PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n"
             "-A POSTROUTING -s 172.17.0.0/16 ! -o br0 -j MASQUERADE\nCOMMIT\n")
    sh("iptables-nft-restore", ns=names["host"], input=rules)
    snap = collect(names["host"])
    doc = to_json(snap)
    host_id = by_name(doc, names["host"])["id"]
    forwards = [p for p in doc["port_forwards"] if p["netns"] == host_id]
    assert [(p["proto"], p["host_port"], p["to_ip"], p["to_port"]) for p in forwards] == [("tcp", 8080, "172.17.0.2", 80)]
    assert forwards[0]["container"] == by_name(doc, names["c1"])["id"]
    masq = [m for m in doc["masquerades"] if m["netns"] == host_id]
    assert [(m["source"], m["out_not"]) for m in masq] == [("172.17.0.0/16", "br0")]
    els = {e["data"]["id"]: e for e in to_elements(snap)}
    pf_id = f"pf:{host_id}:tcp:*:8080"
    assert els[pf_id]["data"]["label"] == "tcp *:8080\n→ :80"
    assert els[f"edge:{pf_id}"]["data"]["target"] == iface(doc, names["c1"], "eth0")["id"]
    masq_id = f"masq:{host_id}:172.17.0.0/16:br0"  # the way out: an edge from the bridge
    assert els[masq_id]["data"]["source"] == iface(doc, names["host"], "br0")["id"]


def test_fd_budget_raises_a_low_soft_limit():
    code = ("import resource\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
            "from bridgescope.collector.kernel.netlink import ensure_fd_budget\n"
            "ensure_fd_budget(500)\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) >= 500


def test_sysctls_asked_over_netconf_equal_the_proc_files(netns):
    """ip_forward and rp_filter come from one netconf question; they must read as the files do."""
    import os

    from bridgescope.collector.kernel.netlink import (
        NetnsSocket,
        namespace_sysctls,
        new_route_socket,
        read_sysctls,
        sysctls_here,
    )
    from bridgescope.collector.kernel.setns import hop
    ns = netns("conf")
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=2")
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        def both(_):
            sock = NetnsSocket(new_route_socket())
            try:
                return read_sysctls(namespace_sysctls(["lo"])), sysctls_here(sock, ["lo"])
            finally:
                sock.close()
        [(files, asked)] = hop([(fd, None)], both)
    finally:
        os.close(fd)
    assert asked == files
    assert dict(asked)["net.ipv4.ip_forward"] == "1" and dict(asked)["net.ipv4.conf.all.rp_filter"] == "2"


def test_namespaces_without_tables_are_not_read_by_the_firewall_reader(netns, monkeypatch):
    """The dump's visit asks each namespace whether it has any table; the firewall reader
    enters only those that do, and the snapshot is what reading every namespace gave."""
    from bridgescope.collector import firewall
    from bridgescope.collector.firewall import readers
    from bridgescope.collector.kernel.snapshot import with_firewall
    from bridgescope.collector.model import namespace_id

    names = blog_topology(netns)
    legacy, nft, bare = names["host"], names["c1"], names["c2"]
    sh("iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8080", "-j", "DNAT",
       "--to-destination", "172.17.0.2:80", ns=legacy)
    sh("nft", "add table ip mine; add chain ip mine pre { type nat hook prerouting priority -100; }; "
       "add rule ip mine pre tcp dport 9090 dnat to 172.17.0.3:80", ns=nft)
    sh("iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "-j", "MASQUERADE", ns=nft)
    ids = {namespace_id(os.stat(f"/run/netns/{n}").st_ino): n for n in names.values()}
    mine = [ns for ns in discover(resolve_netns(legacy)) if ns.id in ids]
    entered: list[str] = []
    real_dump = readers.dump_namespace
    monkeypatch.setattr(readers, "dump_namespace", lambda ns_id, path, **kw: (entered.append(ids[ns_id]),
                                                                                real_dump(ns_id, path, **kw))[1])

    snap = scan(mine, taken_at=1.0)
    assert sorted(entered) == sorted([legacy, nft])
    by_ns = {ids[r.netns]: r for r in snap.rules}
    assert by_ns[legacy].backend == "legacy" and {r.backend for r in snap.rules if ids[r.netns] == nft} == {
        "nft", "nftables"}
    assert bare not in by_ns
    entered.clear()
    paths = {ns.id: f"/run/netns/{ids[ns.id]}" for ns in mine}
    everything = with_firewall(scan(mine, firewall=False, taken_at=1.0), firewall.scan(paths))
    assert sorted(entered) == sorted(names.values())  # the old way: every namespace entered
    assert to_json(snap) == to_json(everything)


def test_docker_proxy_in_a_namespace_without_tables_is_still_a_forward(netns, tmp_path):
    """docker-proxy serves published ports where Docker writes no rules (`"iptables": false`):
    a namespace the firewall reader skips for want of tables still has its proxies looked for."""
    import shutil
    import threading

    from bridgescope.collector.model import namespace_id

    names = blog_topology(netns)
    fake_binary = tmp_path / "docker-proxy"
    fake_binary.symlink_to(shutil.which("bash"))
    fake = subprocess.Popen(["ip", "netns", "exec", names["host"], str(fake_binary), "-c", "read -r _",
                             "-proto", "tcp", "-host-port", "8080", "-container-ip", "172.17.0.2",
                             "-container-port", "80"], stdin=subprocess.PIPE)
    try:
        host_id = namespace_id(os.stat(f"/run/netns/{names['host']}").st_ino)
        mine = [ns for ns in discover(resolve_netns(names["host"])) if ns.id == host_id]
        for _ in range(50):  # until the exec has happened
            snap = scan(mine)
            if snap.port_forwards:
                break
            threading.Event().wait(0.1)
        assert [(f.netns, f.host_port, f.to_ip, f.via) for f in snap.port_forwards] == [
            (host_id, 8080, "172.17.0.2", "proxy")]
        assert snap.rules == ()
    finally:
        fake.kill()
        fake.wait()


def test_a_namespace_whose_tables_cannot_be_asked_is_read_by_the_firewall_reader(netns, monkeypatch):
    """When the question fails inside a namespace (an nf_tables socket refused, say) it is
    not taken for one without tables: the reader enters it and looks for itself."""
    from bridgescope.collector.firewall import readers
    from bridgescope.collector.kernel import snapshot
    from bridgescope.collector.model import namespace_id

    names = blog_topology(netns)
    ids = {namespace_id(os.stat(f"/run/netns/{n}").st_ino): n for n in names.values()}
    mine = [ns for ns in discover(resolve_netns(names["host"])) if ns.id in ids]

    def refused() -> bool:
        raise OSError(93, "Protocol not supported")
    monkeypatch.setattr(snapshot, "has_tables_here", refused)
    entered: list[str] = []
    real_dump = readers.dump_namespace
    monkeypatch.setattr(readers, "dump_namespace", lambda ns_id, path, **kw: (entered.append(ids[ns_id]),
                                                                                real_dump(ns_id, path, **kw))[1])
    snap = scan(mine)
    assert sorted(entered) == sorted(names.values()) and snap.rules == ()


def test_small_proc_files_are_read_whole(tmp_path):
    from bridgescope.collector.kernel.procfs import read_small

    text = "é" + "x" * 9000 + "\n"  # longer than one read
    (tmp_path / "f").write_text(text, encoding="utf-8")
    assert read_small(str(tmp_path / "f")) == text
    assert read_small("/proc/sys/net/ipv4/ip_forward").strip() in ("0", "1")
    with pytest.raises(FileNotFoundError):
        read_small(str(tmp_path / "absent"))
