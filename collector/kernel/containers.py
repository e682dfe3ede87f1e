"""Container names from the engines: their API sockets, and Podman's conmon for the rest.

Optional by design: no engine, a dead socket or a garbled answer all mean "no names", never
an error. Docker's list endpoint carries no namespace facts, so a running container is
inspected for its SandboxKey (the nsfs bind mount) and State.Pid; both are matched to a
namespace by (st_dev, st_ino), which survives /var/run vs /run spellings. An inspection is
kept by container id and asked again only when its paths no longer lead to the namespace they
led to (the container restarted or went away): a rediscovery costs one list call per engine.

Which sockets: those chosen on the command line (`--engine-socket`, any number), the ones
DOCKER_HOST and CONTAINER_HOST name (unix:// only: a remote engine's namespaces are not
ours to open), then the engines' default places. A missing socket is skipped. Docker and
Podman speak HTTP/1.1 on theirs, containerd gRPC (HTTP/2): which one a socket speaks is asked
once per socket file (containerd.py reads containerd's; containerd resets an HTTP/1
request, so none is sent).

Podman needs no daemon, so its API socket is often absent; each container's first process is
then a child of its conmon, whose `-n` argument is the container's name.

A Kubernetes pod's containers, where the runtime names them in the kubelet's format
(`k8s_CONTAINER_POD_NAMESPACE_UID_ATTEMPT`: CRI-O, through its conmons, and cri-dockerd, through
Docker), name their namespace `NAMESPACE/POD`, as containerd.py names containerd's pods.
Kubernetes names hold no `_`, so the format reads one way only.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

DEFAULT_SOCKETS = ("/run/docker.sock", "/run/podman/podman.sock", "/run/containerd/containerd.sock")
ENGINE_HOST_VARIABLES = ("DOCKER_HOST", "CONTAINER_HOST")
TIMEOUT = 0.5
CONMON_PIDS_CHECKED = 3  # a container's init is among its namespace's first pids
KUBELET_NAME = re.compile(r"k8s_[^_]+_([^_]+)_([^_]+)_[^_]+_[0-9]+")

NsKey = tuple[int, int]


def _connection(path: str):
    """An HTTP connection over a unix socket. http.client is imported here, when an engine
    socket exists: it pulls in the email package, a fifth of `snapshot`'s start-up."""
    import http.client

    class UnixHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(TIMEOUT)
            sock.connect(path)
            self.sock = sock

    return UnixHTTPConnection("localhost", timeout=TIMEOUT), http.client.HTTPException


def engine_get(socket_path: str, url: str) -> object:
    """GET url from the engine API on a unix socket; JSON decoded. Raises OSError/ValueError."""
    if speaks_http2(socket_path):
        raise OSError(f"{socket_path} speaks HTTP/2 (containerd's gRPC), not an engine's HTTP API")
    conn, http_error = _connection(socket_path)
    try:
        conn.request("GET", url, headers={"Host": "docker"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"engine answered {resp.status} for {url}")
        return json.loads(body)
    except http_error as err:
        raise OSError(str(err)) from err
    finally:
        conn.close()


# --- which sockets ---------------------------------------------------------------------------

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_http2: dict[tuple[str, int, int], bool] = {}


def speaks_http2(path: str) -> bool:
    """Whether the server on this unix socket speaks HTTP/2: it answers the client preface
    with a SETTINGS frame, where an HTTP/1 server answers a status line or hangs up. Asked once
    per socket file (a restarted daemon binds a new one); a dead socket is not remembered."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    known = _http2.get((path, st.st_dev, st.st_ino))
    if known is None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(TIMEOUT)
                sock.connect(path)
                sock.sendall(HTTP2_PREFACE + EMPTY_SETTINGS)
                head = _recv_exactly(sock, 9)
        except OSError:
            return False
        known = _http2[(path, st.st_dev, st.st_ino)] = head[3] == 0x4 and head[5:9] == bytes(4)
    return known


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data.ljust(size, b"\xff")


_chosen: tuple[str, ...] = ()


def unix_socket_path(value: str) -> str | None:
    """`unix:///run/x.sock` or a plain absolute path -> the path; anything else -> None."""
    if value.startswith("unix://"):
        value = value[len("unix://"):]
    elif "://" in value:
        return None
    return value if value.startswith("/") else None


def engine_sockets(chosen: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Chosen sockets, then DOCKER_HOST's and CONTAINER_HOST's, then the defaults; no repeats."""
    environ = os.environ if environ is None else environ
    from_env = [unix_socket_path(environ.get(var, "")) for var in ENGINE_HOST_VARIABLES]
    picked = [unix_socket_path(c) for c in chosen]
    return tuple(dict.fromkeys(p for p in (*picked, *from_env, *DEFAULT_SOCKETS) if p))


def choose_engine_sockets(chosen: Iterable[str]) -> None:
    """The command line's `--engine-socket`s, for every later discovery in this process."""
    global _chosen
    _chosen = tuple(chosen)


def configured_sockets() -> tuple[str, ...]:
    return engine_sockets(_chosen)


# --- names from the engines' APIs ------------------------------------------------------------

@dataclass(frozen=True)
class Located:
    """Where a container's namespace was found: each path with the key it had."""
    found: tuple[tuple[str, NsKey], ...]

    def still_there(self) -> bool:
        return bool(self.found) and all(_key(path) == key for path, key in self.found)


def locate(paths: Iterable[str]) -> Located:
    """The paths that open a namespace now, with its key."""
    found = [(path, _key(path)) for path in paths]
    return Located(tuple((path, key) for path, key in found if key is not None))


_inspected: dict[tuple[str, str], Located] = {}
_inspected_lock = threading.Lock()


def engine_container_names(sockets: Iterable[str] | None = None, *,
                           proc: str = "/proc") -> dict[NsKey, str]:
    """{namespace (dev, ino): container name} from every engine that answers."""
    names: dict[NsKey, str] = {}
    for path in configured_sockets() if sockets is None else sockets:
        if not os.path.exists(path):
            continue
        try:
            listing = engine_get(path, "/containers/json")
        except (OSError, ValueError):
            continue
        summaries = [s for s in listing if isinstance(s, dict)] if isinstance(listing, list) else []
        for summary in summaries:
            name = container_name(summary)
            cid = summary.get("Id")
            if name and isinstance(cid, str):
                names.update(dict.fromkeys(namespace_keys(path, cid, proc), name))
        _forget_others(path, {s.get("Id") for s in summaries})
    return names


def namespace_keys(socket_path: str, cid: str, proc: str = "/proc") -> list[NsKey]:
    """The (dev, ino) of container `cid`'s network namespace, as the engine at socket_path
    reports it; inspected once and cached while the namespace stays where it was found."""
    with _inspected_lock:
        known = _inspected.get((socket_path, cid))
    if known is None or not known.still_there():
        known = _inspect(socket_path, cid, proc)
        with _inspected_lock:
            _inspected[(socket_path, cid)] = known
    return [key for _, key in known.found]


def _inspect(socket_path: str, cid: str, proc: str) -> Located:
    try:
        detail = engine_get(socket_path, f"/containers/{quote(cid, safe='')}/json")
    except (OSError, ValueError):
        return Located(())
    return locate(namespace_paths(detail, proc) if isinstance(detail, dict) else ())


def _forget_others(socket_path: str, listed: set) -> None:
    with _inspected_lock:
        for entry in [e for e in _inspected if e[0] == socket_path and e[1] not in listed]:
            del _inspected[entry]


def _key(path: str) -> NsKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def container_name(summary: Mapping) -> str | None:
    names = summary.get("Names")
    if isinstance(names, list) and names and isinstance(names[0], str):
        return pod_or_container(names[0].lstrip("/")) or None
    return None


def pod_or_container(name: str) -> str:
    """`NAMESPACE/POD` for a pod's container named in the kubelet's format, else the name."""
    kubelet = KUBELET_NAME.fullmatch(name)
    return f"{kubelet[2]}/{kubelet[1]}" if kubelet else name


def namespace_paths(detail: Mapping, proc: str = "/proc") -> list[str]:
    """Where an inspected container's network namespace can be opened."""
    paths = []
    sandbox = (detail.get("NetworkSettings") or {}).get("SandboxKey")
    if isinstance(sandbox, str) and sandbox:
        paths.append(sandbox)
    pid = (detail.get("State") or {}).get("Pid")
    if isinstance(pid, int) and pid > 0:
        paths.append(f"{proc}/{pid}/ns/net")
    return paths


# --- names from conmon -----------------------------------------------------------------------

def conmon_container_names(holders: Mapping[NsKey, Iterable[int]], proc: str = "/proc") -> dict[NsKey, str]:
    """{namespace: name} for namespaces whose first processes include a conmon's child."""
    names = {}
    for key, pids in holders.items():
        for pid in sorted(pids)[:CONMON_PIDS_CHECKED]:
            name = _conmon_name(proc, _parent(proc, pid))
            if name:
                names[key] = name
                break
    return names


def _parent(proc: str, pid: int) -> int | None:
    try:
        with open(f"{proc}/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _conmon_name(proc: str, pid: int | None) -> str | None:
    if not pid or pid <= 1:
        return None
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as fh:
            argv = fh.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return None
    if not argv or os.path.basename(argv[0]) != "conmon":
        return None
    for flag, value in zip(argv, argv[1:]):
        if flag in ("-n", "--name") and value:
            return pod_or_container(value)
    return None
