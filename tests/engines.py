"""Real container engines, each confined to a network namespace a test made (docs/engines-in-tests.md).

Docker (dockerd started with nsenter, never `ip netns exec`, which breaks its cgroups), rootful
Podman with netavark, and the CNI bridge + host-local + portmap plugins invoked by hand. Every
bridge, veth and rule they make lives in the engine's namespace; every process they start is
stopped by the PID we recorded; every directory lives under the test's temporary directory.
A client namespace joined to the engine's by a veth sends the real traffic.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import RUN_PREFIX, delete_netns, sh

ENGINE_PROCESSES = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2",
                    "docker-proxy", "podman", "conmon", "netavark", "aardvark-dns")
DOCKER, DOCKERD = "/usr/bin/docker", "/usr/sbin/dockerd"
PODMAN, BUSYBOX, CNI_BIN = "/usr/bin/podman", "/bin/busybox", "/usr/lib/cni"
IMAGE = "bstbusybox:1"
RUN_DOCKER = "/run/docker"
HOST_UPLINK, CLIENT_UPLINK = "198.51.100.1", "198.51.100.2"  # TEST-NET-2: never routed anywhere
HTTPD = ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"]
PAGE = "served by a real engine\n"
LEGACY_TOOLS = ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                "ip6tables-restore")


def missing(*tools: str) -> list[str]:
    return [t for t in tools if not os.path.exists(t)]


def needs(*tools: str):
    gone = missing(*tools)
    return pytest.mark.skipif(bool(gone), reason=f"not installed: {gone} (make deps installs them)")


# --- where engine processes run ---------------------------------------------------------------

def engine_processes_here(proc: str = "/proc") -> list[tuple[int, str]]:
    """(pid, comm) of every engine process in this process's network namespace."""
    here = os.readlink(f"{proc}/self/ns/net")
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"{proc}/{entry}/comm").read_text().strip()
            if comm in ENGINE_PROCESSES and os.readlink(f"{proc}/{entry}/ns/net") == here:
                found.append((int(entry), comm))
        except OSError:
            continue
    return found


# --- the namespaces -------------------------------------------------------------------------

def make_netns(name: str) -> str:
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


def wire_client(host: str, client: str) -> None:
    """client --veth-- host: the client reaches the host's published ports at HOST_UPLINK."""
    sh("ip", "-n", host, "link", "add", "uplink", "type", "veth", "peer", "name", "uplink", "netns", client)
    sh("ip", "-n", host, "addr", "add", f"{HOST_UPLINK}/24", "dev", "uplink")
    sh("ip", "-n", client, "addr", "add", f"{CLIENT_UPLINK}/24", "dev", "uplink")
    sh("ip", "-n", host, "link", "set", "uplink", "up")
    sh("ip", "-n", client, "link", "set", "uplink", "up")


_FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode(), end="")
except OSError:
    sys.exit(1)
"""


def fetch(client: str, url: str, timeout: float = 3) -> str | None:
    """The page at url as the client namespace sees it, None when nothing answers."""
    res = sh(sys.executable, "-I", "-c", _FETCH, url, str(timeout), ns=client, check=False,
             timeout=timeout + 10)
    return res.stdout if res.returncode == 0 else None


def busybox_rootfs(into: Path) -> Path:
    """A tarball of a root with busybox, its sh and httpd, and one page in /www."""
    root = into / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "www").mkdir()
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "httpd", "wget", "timeout"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "www" / "index.html").write_text(PAGE)
    tarball = into / "rootfs.tar"
    sh("tar", "-C", str(root), "-cf", str(tarball), ".")
    return tarball


def stop_pid(pid: int, grace: float = 20) -> None:
    """SIGTERM, wait, SIGKILL: for a daemon we started and whose PID we recorded."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        # a zombie is dead for our purpose: its child of ours is reaped by wait() elsewhere
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# --- an engine host ------------------------------------------------------------------------

@dataclass
class EngineHost:
    """One engine confined to `ns`, with a client namespace wired to it."""
    kind: str           # docker | podman | cni
    ns: str
    client: str
    workdir: Path
    socket: str | None = None  # the engine's API socket, where it has one
    pids: list[int] = field(default_factory=list)  # daemons we started, stopped in reverse

    def url(self, port: int = 8080) -> str:
        return f"http://{HOST_UPLINK}:{port}/"


class Docker(EngineHost):
    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh(DOCKER, "-H", f"unix://{self.socket}", *args, check=check, timeout=timeout)

    def start_daemon(self, path: str) -> None:
        self._made_run_docker = getattr(self, "_made_run_docker", not os.path.exists(RUN_DOCKER))
        pidfile = self.workdir / "dockerd.pid"
        pidfile.unlink(missing_ok=True)
        log = open(self.workdir / "dockerd.log", "ab")  # noqa: SIM115 - the daemon keeps it
        daemon = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns}", "--", DOCKERD,
             "--data-root", str(self.workdir / "data"), "--exec-root", str(self.workdir / "exec"),
             "--pidfile", str(pidfile), "-H", f"unix://{self.socket}"],
            stdout=log, stderr=log, env={"PATH": path}, start_new_session=True)
        log.close()
        self.pids.append(daemon.pid)  # nsenter execs dockerd: the same PID
        wait_for(lambda: self.cli("version", check=False, timeout=10).returncode == 0
                 or daemon.poll() is not None, "dockerd to answer")
        if daemon.poll() is not None:
            raise AssertionError(f"dockerd exited: {(self.workdir / 'dockerd.log').read_text()[-2000:]}")
        self._daemon = daemon

    def stop_daemon(self) -> None:
        daemon = getattr(self, "_daemon", None)
        if daemon is None:
            return
        stop_pid(daemon.pid)
        daemon.wait(timeout=30)
        self.pids.remove(daemon.pid)
        self._daemon = None

    def run_web(self, name: str, publish: str = "8080:80", *extra: str) -> str:
        return self.cli("run", "-d", "--name", name, "--restart", "always", "-p", publish, *extra,
                        IMAGE, *HTTPD).stdout.strip()

    def stop(self) -> None:
        if getattr(self, "_daemon", None) is not None:
            ids = self.cli("ps", "-aq", check=False).stdout.split()
            if ids:
                self.cli("rm", "-f", *ids, check=False)  # httpd ignores SIGTERM: rm -f kills
        self.stop_daemon()
        if getattr(self, "_made_run_docker", False):  # dockerd's one mark outside its roots
            for empty in (f"{RUN_DOCKER}/plugins", RUN_DOCKER):
                try:
                    os.rmdir(empty)
                except OSError:
                    break  # not empty: another daemon uses it


class Podman(EngineHost):
    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh("nsenter", f"--net=/run/netns/{self.ns}", "--", *self.argv(), *args, check=check,
                  timeout=timeout)

    def argv(self) -> list[str]:
        d = self.workdir
        return [PODMAN, "--root", str(d / "root"), "--runroot", str(d / "run"), "--tmpdir", str(d / "tmp"),
                "--network-config-dir", str(d / "networks"), "--runtime", "runc",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file"]

    def run_web(self, name: str, publish: str = "8080:80") -> str:
        hard = subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip()
        return self.cli("run", "-d", "--name", name, "--ulimit", f"nofile={hard}:{hard}",
                        "--ulimit", "nproc=32768:32768", "-p", publish, f"localhost/{IMAGE}",
                        *HTTPD).stdout.strip()

    def netns_of(self, name: str) -> str:
        return self.cli("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", name).stdout.strip()

    def start_service(self) -> None:
        self.socket = str(self.workdir / "podman.sock")
        log = open(self.workdir / "service.log", "ab")  # noqa: SIM115 - the service keeps it
        service = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns}", "--", *self.argv(),
             "system", "service", "--time=0", f"unix://{self.socket}"],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.pids.append(service.pid)
        self._service = service
        wait_for(lambda: os.path.exists(self.socket) or service.poll() is not None, "podman's socket")

    def stop(self) -> None:
        netns_files = [self.netns_of(n) for n in self.cli("ps", "-a", "--format", "{{.Names}}",
                                                          check=False).stdout.split()]
        self.cli("rm", "-a", "-f", "-t", "0", check=False)
        for path in netns_files:  # podman removes them; a failed test may not have let it
            if path.startswith("/run/netns/") and os.path.exists(path):
                delete_netns(os.path.basename(path))
        service = getattr(self, "_service", None)
        if service is not None:
            stop_pid(service.pid)
            service.wait(timeout=30)
            self.pids.remove(service.pid)


class Cni(EngineHost):
    """The CNI plugins invoked by hand, as a runtime would: bridge + host-local, then portmap."""
    network = "bstcni"
    subnet = "10.88.77.0/24"

    def add(self, container_ns: str, ports: Sequence[tuple[int, int]]) -> dict:
        bridge = {"cniVersion": "0.4.0", "name": self.network, "type": "bridge", "bridge": "cni-bst0",
                  "isGateway": True, "ipMasq": True, "hairpinMode": True,
                  "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                           "routes": [{"dst": "0.0.0.0/0"}],
                           "dataDir": str(self.workdir / "ipam")}}
        result = self._plugin("bridge", "ADD", container_ns, bridge)
        portmap = {"cniVersion": "0.4.0", "name": self.network, "type": "portmap", "snat": True,
                   "capabilities": {"portMappings": True},
                   "runtimeConfig": {"portMappings": [
                       {"hostPort": h, "containerPort": c, "protocol": "tcp"} for h, c in ports]},
                   "prevResult": result}
        self._plugin("portmap", "ADD", container_ns, portmap)
        return result

    def _plugin(self, plugin: str, command: str, container_ns: str, config: dict) -> dict:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_ns, "CNI_IFNAME": "eth0",
               "CNI_NETNS": f"/run/netns/{container_ns}", "CNI_PATH": CNI_BIN,
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        res = subprocess.run(["ip", "netns", "exec", self.ns, f"{CNI_BIN}/{plugin}"], input=json.dumps(config),
                             capture_output=True, text=True, env=env, timeout=30)
        if res.returncode != 0:
            raise AssertionError(f"CNI {plugin} {command} failed: {res.stdout} {res.stderr}")
        return json.loads(res.stdout) if res.stdout.strip() else {}

    def serve(self, container_ns: str) -> None:
        www = self.workdir / "www"
        www.mkdir(exist_ok=True)
        (www / "index.html").write_text(PAGE)
        server = subprocess.Popen(["ip", "netns", "exec", container_ns, BUSYBOX, "httpd", "-f", "-p", "80",
                                   "-h", str(www)], start_new_session=True)
        self.pids.append(server.pid)
        self._servers = [*getattr(self, "_servers", []), server]

    def stop(self) -> None:
        for server in getattr(self, "_servers", []):
            server.kill()  # busybox httpd ignores SIGTERM
            server.wait(timeout=10)
            self.pids.remove(server.pid)


# --- fixtures' bodies (the fixtures live in the test modules: module scope) -----------------

def confined(host: EngineHost, containers: Sequence[str] = ()) -> Iterator[EngineHost]:
    """Yield host, then stop what it started and delete its namespaces, even after a failure."""
    try:
        yield host
    finally:
        teardown(host, containers)


def teardown(host: EngineHost, containers: Sequence[str] = ()) -> None:
    try:
        host.stop()
    finally:
        for pid in reversed(host.pids):
            stop_pid(pid, grace=5)
        for ns in (*containers, host.client, host.ns):
            delete_netns(ns)


def new_namespaces(tag: str) -> tuple[str, str]:
    host, client = f"{RUN_PREFIX}{tag}-host", f"{RUN_PREFIX}{tag}-client"
    make_netns(host)
    make_netns(client)
    wire_client(host, client)
    return host, client


def legacy_path(workdir: Path) -> str:
    """A PATH whose iptables tools are the legacy ones: dockerd then writes legacy rules."""
    bindir = workdir / "legacy-bin"
    bindir.mkdir(exist_ok=True)
    for tool in LEGACY_TOOLS:
        variant = tool.replace("tables", "tables-legacy", 1)
        (bindir / tool).symlink_to(f"/usr/sbin/{variant}")
    return f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"


def start_docker(workdir: Path, tag: str, backend: str) -> Docker:
    ns, client = new_namespaces(tag)
    host = Docker("docker", ns, client, workdir, socket=str(workdir / "docker.sock"))
    host.path = legacy_path(workdir) if backend == "legacy" else "/usr/sbin:/usr/bin:/sbin:/bin"
    try:
        host.start_daemon(host.path)
        host.cli("import", str(busybox_rootfs(workdir)), IMAGE)
    except BaseException:
        teardown(host)
        raise
    return host


def start_podman(workdir: Path, tag: str) -> Podman:
    ns, client = new_namespaces(tag)
    host = Podman("podman", ns, client, workdir)
    (workdir / "networks").mkdir()
    try:
        host.cli("import", str(busybox_rootfs(workdir)), IMAGE)
        host.start_service()
    except BaseException:
        teardown(host)
        raise
    return host


# --- containerd, as a Kubernetes node runs it (its CRI plugin off: pods are made by hand) -------

CONTAINERD, CTR, RUNC = "/usr/bin/containerd", "/usr/bin/ctr", "/usr/sbin/runc"
RUN_CONTAINERD = "/run/containerd"  # shims bind their sockets in s/ under it, whatever --state says
CRI_NAMESPACE = "k8s.io"
SANDBOX_LABELS = {"io.cri-containerd.kind": "sandbox"}


class Containerd(EngineHost):
    """containerd with its own root, state and socket under the test's directory; a "pod
    sandbox" is a container with CRI's labels whose task joins a namespace the test made."""

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh(CTR, "-a", str(self.socket), "-n", CRI_NAMESPACE, *args, check=check, timeout=timeout)

    def start_daemon(self) -> None:
        d = self.workdir
        config = d / "containerd.toml"
        config.write_text(f'version = 2\nroot = "{d / "root"}"\nstate = "{d / "state"}"\n'
                          'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                          f'[grpc]\n  address = "{self.socket}"\n[ttrpc]\n  address = "{self.socket}.ttrpc"\n')
        log = open(d / "containerd.log", "ab")  # noqa: SIM115 - the daemon keeps it
        daemon = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.ns}", "--", CONTAINERD, "--config",
                                   str(config)], stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.pids.append(daemon.pid)  # nsenter execs containerd: the same PID
        self._daemon = daemon
        wait_for(lambda: daemon.poll() is not None or self.cli("version", check=False, timeout=10).returncode == 0,
                 "containerd to answer")
        if daemon.poll() is not None:
            raise AssertionError(f"containerd exited: {(d / 'containerd.log').read_text()[-2000:]}")

    def run_pod(self, cid: str, netns: str, labels: dict[str, str]) -> int:
        """A container whose task sleeps in /run/netns/NETNS; its pid. Its shim (the task's
        parent, started by containerd) is recorded to be stopped."""
        rootfs = self.workdir / cid / "rootfs"
        if not rootfs.exists():  # a container made again under the same id reuses its root
            busybox_rootfs(rootfs.parent)
        flags = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
        self.cli("run", "-d", "--null-io", "--rootfs", *flags, "--with-ns", f"network:/run/netns/{netns}",
                 str(rootfs), cid, "/bin/busybox", "sleep", "600")
        pid = self.task_pid(cid)
        shim = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        self.pids.append(shim)
        self._shims = {**getattr(self, "_shims", {}), cid: shim}
        return pid

    def task_pid(self, cid: str) -> int:
        for line in self.cli("tasks", "ls").stdout.splitlines()[1:]:
            task, pid, *_ = line.split()
            if task == cid:
                return int(pid)
        raise AssertionError(f"no task {cid}")

    def remove(self, cid: str) -> None:
        self.cli("tasks", "kill", "-s", "KILL", cid, check=False)
        wait_for(lambda: self.cli("tasks", "delete", cid, check=False).returncode == 0
                 or cid not in self.cli("tasks", "ls", check=False).stdout, f"task {cid} to go")
        self.cli("containers", "delete", cid, check=False)
        shim = getattr(self, "_shims", {}).pop(cid, None)
        if shim is None:
            return
        try:
            wait_for(lambda: not _alive(shim), f"the shim of {cid} to exit", timeout=10)
            self.pids.remove(shim)  # gone: its pid may be reused, never to be signalled
        except AssertionError:
            pass  # still there: teardown stops it by its pid

    def stop(self) -> None:
        daemon = getattr(self, "_daemon", None)
        if daemon is None:
            return
        for cid in list(getattr(self, "_shims", {})):
            self.remove(cid)
        stop_pid(daemon.pid)
        daemon.wait(timeout=30)
        self.pids.remove(daemon.pid)
        self._daemon = None


def remove_empty_dirs(root: str) -> None:
    """The directories under root (and root) that are empty, deepest first: containerd's shims
    (Docker's too) leave /run/containerd/{s,runc/NS} behind, their one mark outside their roots.
    A file in it means a real containerd uses it: nothing is removed above that file."""
    for path, _, _ in os.walk(root, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def start_containerd(workdir: Path, tag: str) -> Containerd:
    """containerd in its own namespace (a client namespace too, as for every engine host)."""
    ns, client = new_namespaces(tag)
    host = Containerd("containerd", ns, client, workdir, socket=str(workdir / "containerd.sock"))
    try:
        host.start_daemon()
    except BaseException:
        teardown(host)
        raise
    return host
