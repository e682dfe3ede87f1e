"""Namespace discovery and naming: mountinfo parsing (pure), engine names from a fake Docker
socket (the one thing that cannot exist here), and the rtnetlink decoder's pure parts."""
from __future__ import annotations

import dataclasses
import http.server
import json
import os
import socket
import socketserver
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import sh

from bridgescope.collector.kernel import rtnl
from bridgescope.collector.kernel.containers import container_name, engine_container_names, namespace_paths
from bridgescope.collector.kernel.namespaces import discover, nsfs_mounts, rediscover, resolve_netns

DATA = Path(__file__).parent / "data"

# Lines as the kernel writes them: ip netns, a Docker sandbox, a path with a space, a mount
# namespace file (nsfs too, but not net), and ordinary mounts.
MOUNTINFO = """\
22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 28 0:23 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=401020k,mode=755
611 25 0:4 net:[4026532290] /run/netns/blue rw shared:263 - nsfs nsfs rw
640 25 0:4 net:[4026532351] /run/docker/netns/8536366f5820 rw shared:270 - nsfs nsfs rw
641 25 0:4 net:[4026532352] /tmp/with\\040space/ns rw - nsfs nsfs rw
650 25 0:4 mnt:[4026532400] /run/some-mnt-ns rw - nsfs nsfs rw
700 28 8:1 / /var/lib/docker rw,relatime - ext4 /dev/sda1 rw
"""


def test_nsfs_mounts_only_network_namespaces(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert nsfs_mounts(str(info)) == ["/run/netns/blue", "/run/docker/netns/8536366f5820", "/tmp/with space/ns"]


def test_container_name_and_paths_from_real_payloads():
    listing = json.loads((DATA / "docker_containers_json.json").read_text())
    assert [container_name(c) for c in listing] == ["web", "db", "gone"]
    assert container_name({"Names": []}) is None and container_name({}) is None
    detail = json.loads((DATA / "docker_inspect_db.json").read_text().replace('"@PID@"', "4242"))
    assert namespace_paths(detail) == ["/var/run/docker/netns/4cca5961632c", "/proc/4242/ns/net"]
    assert namespace_paths({"State": {"Pid": 0}, "NetworkSettings": {"SandboxKey": ""}}) == []


@pytest.mark.parametrize(("info_kind", "ifi_type", "kind"), [
    ("bridge", 1, "bridge"), ("veth", 1, "veth"), ("dummy", 1, "dummy"), ("macvlan", 1, "macvlan"),
    ("vxlan", 1, "vxlan"), ("tun", 1, "tun"), (None, 772, "loopback"), (None, 1, "physical"),
    ("bond", 1, "other"), ("ifb", 1, "other"), (None, 65534, "other"),
])
def test_link_kind(info_kind, ifi_type, kind):
    assert rtnl.link_kind(info_kind, ifi_type) == kind


def test_messages_split_and_errors():
    ok = rtnl.request(rtnl.NLMSG_DONE, 0, 7, struct.pack("=i", 0))
    err = rtnl.request(rtnl.NLMSG_ERROR, 0, 8, struct.pack("=i", -2) + b"\0" * 16)
    got = list(rtnl.messages(ok + err + b"\x01\x02"))  # trailing garbage is ignored
    assert [(m.type, m.seq, m.error) for m in got] == [(rtnl.NLMSG_DONE, 7, 0), (rtnl.NLMSG_ERROR, 8, 2)]


def test_attrs_skip_truncated():
    good = rtnl._attr(rtnl.IFLA_IFNAME, b"eth0\0")
    assert rtnl.attrs(good + b"\x02\x00", 0) == {rtnl.IFLA_IFNAME: b"eth0\0"}
    assert rtnl.attrs(b"\x00\x00\x03\x00", 0) == {}


# ---- a fake engine: the only mock, serving captured-format payloads ----------------------------

class _EngineHandler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, bytes] = {}

    def do_GET(self):
        body = self.routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body if body is not None else b'{"message":"No such container"}')

    def log_message(self, *args):
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        conn, _ = super().get_request()
        return conn, ("local", 0)


@pytest.fixture
def fake_engine(tmp_path):
    path = str(tmp_path / "docker.sock")
    handler = type("Handler", (_EngineHandler,), {"routes": {}})
    server = _UnixServer(path, handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, handler.routes
    server.shutdown()
    server.server_close()


def _serve_docker(routes: dict, sandbox_key: str, pid: int) -> None:
    listing = json.loads((DATA / "docker_containers_json.json").read_text())
    routes["/containers/json"] = json.dumps(listing).encode()
    web = (DATA / "docker_inspect_web.json").read_text().replace("@SANDBOX_KEY@", sandbox_key)
    db = (DATA / "docker_inspect_db.json").read_text().replace('"@PID@"', str(pid))
    routes[f"/containers/{listing[0]['Id']}/json"] = web.encode()
    routes[f"/containers/{listing[1]['Id']}/json"] = db.encode()
    # "gone" answers 404 on inspect: it must simply be left out


@pytest.mark.kernel
def test_engine_names_namespaces_by_sandbox_key_and_pid(fake_engine, tmp_path):
    sock_path, routes = fake_engine
    sandbox = tmp_path / "docker" / "netns" / "8536366f5820"
    sandbox.parent.mkdir(parents=True)
    sandbox.touch()
    web = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    db = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    mounted = False
    try:
        _wait_netns(web.pid)
        _wait_netns(db.pid)
        sh("mount", "--bind", f"/proc/{web.pid}/ns/net", str(sandbox))
        mounted = True
        web.kill()
        web.wait()
        _serve_docker(routes, str(sandbox), db.pid)
        names = engine_container_names([sock_path])
        assert sorted(names.values()) == ["db", "web"]
        found = {ns.inode: ns for ns in discover(engine_sockets=[sock_path])}
        assert found[os.stat(sandbox).st_ino].name == "web"
        assert found[os.stat(f"/proc/{db.pid}/ns/net").st_ino].name == "db"
    finally:
        for proc in (web, db):
            proc.kill()
            proc.wait()
        if mounted:
            subprocess.run(["umount", "--lazy", str(sandbox)], check=False)  # busy while a watcher holds it


def test_engine_that_answers_garbage_or_nothing_gives_no_names(fake_engine, tmp_path):
    sock_path, routes = fake_engine
    routes["/containers/json"] = b"<html>not json</html>"
    assert engine_container_names([sock_path]) == {}
    routes["/containers/json"] = b'{"message": "not a list"}'
    assert engine_container_names([sock_path]) == {}
    stale = tmp_path / "stale.sock"  # a socket file nobody listens on
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    assert engine_container_names([str(stale), str(tmp_path / "absent.sock")]) == {}


@pytest.mark.kernel
def test_ip_netns_name_wins_and_host_is_the_current_namespace(netns):
    ns = netns("named")
    found = discover(engine_sockets=[])
    mine = [n for n in found if n.name == ns]
    assert len(mine) == 1 and mine[0].paths == (f"/run/netns/{ns}",) and not mine[0].is_host
    hosts = [n for n in found if n.is_host]
    assert len(hosts) == 1 and hosts[0].inode == os.stat("/proc/self/ns/net").st_ino
    assert hosts[0] is found[0]  # host first
    assert len({n.inode for n in found}) == len(found)  # deduplicated


@pytest.mark.kernel
def test_resolve_by_name_and_by_path_agree(netns):
    ns = netns("res")
    by_name, by_path = resolve_netns(ns), resolve_netns(f"/run/netns/{ns}")
    assert by_name.path == by_path.path == f"/run/netns/{ns}"
    assert by_name.name == by_path.name == ns
    here = resolve_netns(None)
    assert os.stat(here.path).st_ino == os.stat("/proc/self/ns/net").st_ino


def _wait_netns(pid: int) -> None:
    import time
    for _ in range(300):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never entered its own namespace")


def test_rediscover_reads_the_mount_table_and_keeps_what_it_knew(netns, monkeypatch):
    """A netns file coming or going is found without walking /proc; a known namespace keeps
    its name and its holders, a deleted netns file's namespace is gone."""
    from bridgescope.collector.kernel import namespaces as ns_module
    host, gone, stays = netns("host"), netns("gone"), netns("stays")
    ref = resolve_netns(host)
    known = discover(ref, engine_sockets=[])
    names = {gone: "engine-gone", stays: "engine-stays"}  # as if an engine had named them
    renamed = [dataclasses.replace(ns, name=names.get(ns.name, ns.name)) for ns in known]
    late = netns("late")
    sh("ip", "netns", "del", gone)
    monkeypatch.setattr(ns_module, "_proc_holders", lambda proc: pytest.fail("walked /proc"))
    found = {ns.name: ns for ns in rediscover(renamed, ref, engine_sockets=[])}
    assert late in found and host in found and "engine-stays" in found
    assert gone not in found and "engine-gone" not in found and stays not in found
    assert found[host].is_host
    mine = next(ns for ns in known if os.getpid() in ns.pids)
    assert os.getpid() in next(ns for ns in found.values() if ns.inode == mine.inode).pids


def test_rediscover_returns_what_it_knew_unchanged_as_the_same_objects(netns):
    """The watcher takes a rediscovery that found the very objects it holds as "nothing new":
    no round, no new snapshot (other tools' namespaces coming and going trigger many)."""
    host, other = netns("host"), netns("other")
    ref = resolve_netns(host)
    known = rediscover(discover(ref, engine_sockets=[]), ref, engine_sockets=[])
    again = {ns.name: ns for ns in rediscover(known, ref, engine_sockets=[])}
    before = {ns.name: ns for ns in known}
    assert again[host] is before[host] and again[other] is before[other]
