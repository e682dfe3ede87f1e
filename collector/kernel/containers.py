"""Container names from a Docker or Podman engine, when its unix socket answers.

Optional by design: no engine, a dead socket or a garbled answer all mean "no names", never
an error. Docker's list endpoint carries no namespace facts, so each running container is
inspected once for its SandboxKey (the nsfs bind mount) and State.Pid; both are matched to a
namespace by (st_dev, st_ino), which survives /var/run vs /run spellings.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterable, Mapping
from urllib.parse import quote

ENGINE_SOCKETS = ("/run/docker.sock", "/run/podman/podman.sock")
TIMEOUT = 0.5

NsKey = tuple[int, int]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=TIMEOUT)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(self._path)
        self.sock = sock


def engine_get(socket_path: str, url: str) -> object:
    """GET url from the engine API on a unix socket; JSON decoded. Raises OSError/ValueError."""
    conn = _UnixHTTPConnection(socket_path)
    try:
        conn.request("GET", url, headers={"Host": "docker"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"engine answered {resp.status} for {url}")
        return json.loads(body)
    except http.client.HTTPException as err:
        raise OSError(str(err)) from err
    finally:
        conn.close()


def engine_container_names(sockets: Iterable[str] = ENGINE_SOCKETS, *,
                           proc: str = "/proc") -> dict[NsKey, str]:
    """{namespace (dev, ino): container name} from every engine that answers."""
    names: dict[NsKey, str] = {}
    for path in sockets:
        if not os.path.exists(path):
            continue
        try:
            listing = engine_get(path, "/containers/json")
            for summary in listing if isinstance(listing, list) else ():
                names.update(_container_keys(path, summary, proc))
        except (OSError, ValueError):
            continue
    return names


def _container_keys(socket_path: str, summary: Mapping, proc: str) -> dict[NsKey, str]:
    name = container_name(summary)
    cid = summary.get("Id")
    if not name or not isinstance(cid, str):
        return {}
    try:
        detail = engine_get(socket_path, f"/containers/{quote(cid, safe='')}/json")
    except (OSError, ValueError):
        return {}
    if not isinstance(detail, dict):
        return {}
    keys = {}
    for path in namespace_paths(detail, proc):
        try:
            st = os.stat(path)
        except OSError:
            continue
        keys[(st.st_dev, st.st_ino)] = name
    return keys


def container_name(summary: Mapping) -> str | None:
    names = summary.get("Names")
    if isinstance(names, list) and names and isinstance(names[0], str):
        return names[0].lstrip("/") or None
    return None


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
