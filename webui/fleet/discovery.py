"""Finding the agents in a Kubernetes cluster: the EndpointSlices of their headless Service.

The dashboard's pod asks the API server with its own service account (read-only RBAC on
endpointslices in its namespace, nothing else): it lists the Service's slices, then watches
them from the list's resourceVersion. An expired resourceVersion (410 Gone, as a status or
as an ERROR event) means a fresh list; any other failure a fresh list after a growing pause.
Every time the set of ready agents changes, `on_change` gets the whole new set.

`agents_of` (pure) turns the slices into agents: one per ready endpoint, named by its node
(an agent runs on every node, so the node is the host) or else its pod, at https://IP:PORT.
Stdlib only (http.client, ssl): no Kubernetes client library for one list and one watch.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from bridgescope.collector.errors import BridgescopeError

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_SECONDS = 300  # the server ends a watch after this long; we then watch again from there
READ_TIMEOUT = WATCH_SECONDS + 60  # bookmarks come about every minute; silence longer is a dead link
BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


@dataclass(frozen=True)
class FoundAgent:
    name: str  # the node's name (nodeName of the endpoint), else the pod's name
    url: str  # "https://IP:PORT" (IPv6 in brackets)


@dataclass(frozen=True)
class ApiAccess:
    """Where the API server is and how to prove who we are."""
    base: str  # "https://10.96.0.1:443" (tests: "http://127.0.0.1:PORT")
    token: str
    ca: str | None = None  # PEM file the server's certificate is checked against
    namespace: str | None = None  # the pod's own namespace
    token_file: str | None = None  # read again for every request: the kubelet rotates the token in place

    def bearer(self) -> str:
        """The token as it is now (the file's, while it reads; else the one first read)."""
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip() or self.token
            except OSError:
                pass
        return self.token

    @classmethod
    def in_cluster(cls, root: Path = SERVICE_ACCOUNT, environ: Mapping[str, str] | None = None) -> ApiAccess:
        """The pod's own access; BridgescopeError outside a pod or without its service account."""
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise BridgescopeError("--kubernetes-agents: not in a Kubernetes pod (KUBERNETES_SERVICE_HOST is not set)")
        shown = f"[{host}]" if ":" in host else host
        ns_file = root / "namespace"
        try:
            token = (root / "token").read_text().strip()
        except OSError as err:
            raise BridgescopeError(f"--kubernetes-agents: cannot read the pod's service account token "
                                   f"{root / 'token'}: {err.strerror}") from None
        return cls(f"https://{shown}:{port}", token, str(root / "ca.crt"),
                   ns_file.read_text().strip() if ns_file.exists() else None, str(root / "token"))


class Gone(Exception):
    """The resourceVersion we watch from is too old: list again."""


# ---- pure: slices -> agents ---------------------------------------------------------------

def _url(address: str, port: int) -> str:
    try:
        shown = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        shown = address
    return f"https://{shown}:{port}"


def _port(slice_: Mapping, port_name: str | None) -> int | None:
    ports = [p for p in slice_.get("ports") or () if p.get("port") is not None]
    named = [p for p in ports if p.get("name") == port_name] if port_name else ports
    return int(named[0]["port"]) if named else None


def agents_of(slices: Mapping[str, Mapping], port_name: str | None = None) -> tuple[FoundAgent, ...]:
    """Every ready endpoint of the slices (a missing `ready` counts as ready, as the API says
    consumers should read it), sorted by name; the first address of an endpoint is its own."""
    found: dict[str, FoundAgent] = {}
    for slice_ in slices.values():
        port = _port(slice_, port_name)
        if port is None:
            continue
        for ep in slice_.get("endpoints") or ():
            if (ep.get("conditions") or {}).get("ready") is False or not ep.get("addresses"):
                continue
            address = ep["addresses"][0]
            name = ep.get("nodeName") or (ep.get("targetRef") or {}).get("name") or address
            found.setdefault(name, FoundAgent(name, _url(address, port)))
    return tuple(sorted(found.values(), key=lambda a: a.name))


def apply_event(slices: dict[str, Mapping], event: Mapping) -> str | None:
    """One watch event into `slices` (by slice name); returns the resourceVersion to go on
    from. Raises Gone for an expired version, RuntimeError for another ERROR."""
    kind, obj = event.get("type"), event.get("object") or {}
    if kind == "ERROR":
        if obj.get("code") == 410:
            raise Gone(obj.get("message", "410 Gone"))
        raise RuntimeError(f"watch error: {obj.get('message') or obj}")
    meta = obj.get("metadata") or {}
    if kind in ("ADDED", "MODIFIED"):
        slices[meta["name"]] = obj
    elif kind == "DELETED":
        slices.pop(meta.get("name"), None)
    return meta.get("resourceVersion")


# ---- the API calls --------------------------------------------------------------------------

class Api:
    def __init__(self, access: ApiAccess):
        self.access = access
        parts = urlsplit(access.base)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port or (443 if self._https else 80)
        self._ctx = ssl.create_default_context(cafile=access.ca) if self._https else None
        self._conn: http.client.HTTPConnection | None = None
        self._sock: socket.socket | None = None

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ctx)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _get(self, path: str, timeout: float) -> http.client.HTTPResponse:
        conn = self._connect(timeout)
        conn.connect()
        self._conn, self._sock = conn, conn.sock  # the response keeps reading this socket
        conn.request("GET", path, headers={"Authorization": f"Bearer {self.access.bearer()}",
                                           "Accept": "application/json"})
        resp = conn.getresponse()
        if resp.status == 410:
            raise Gone(resp.read(4096).decode(errors="replace"))
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {resp.read(512).decode(errors='replace')}")
        return resp

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.close()

    def interrupt(self) -> None:
        """End a watch blocked in a read from another thread (close() alone does not wake it)."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.close()

    def list(self, path: str) -> tuple[dict[str, Mapping], str]:
        resp = self._get(path, timeout=30)
        try:
            body = json.loads(resp.read())
        finally:
            self.close()
        slices = {item["metadata"]["name"]: item for item in body.get("items") or ()}
        return slices, (body.get("metadata") or {}).get("resourceVersion", "")

    def watch(self, path: str) -> Iterator[dict]:
        """The events of one watch, until the server ends it."""
        resp = self._get(path, timeout=READ_TIMEOUT)
        try:
            for line in resp:
                if line.strip():
                    yield json.loads(line)
        finally:
            self.close()


def slices_path(namespace: str, service: str) -> str:
    selector = quote(f"kubernetes.io/service-name={service}", safe="")
    return f"/apis/discovery.k8s.io/v1/namespaces/{quote(namespace, safe='')}/endpointslices?labelSelector={selector}"


# ---- the follower ---------------------------------------------------------------------------

class Follower:
    """The thread that lists, watches, and calls on_change with each new set of agents."""

    def __init__(self, service: str, namespace: str, on_change: Callable[[tuple[FoundAgent, ...]], None],
                 api: ApiAccess, port_name: str | None = None):
        self._path = slices_path(namespace, service)
        self._on_change = on_change
        self._api = Api(api)
        self._port_name = port_name
        self._stop = threading.Event()
        self._last: tuple[FoundAgent, ...] | None = None
        self.lists = 0  # how many times it listed (a relist after 410 shows here)
        self._thread = threading.Thread(target=self._run, name="bridgescope-discovery", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._api.interrupt()
        self._thread.join(timeout=5)

    def _publish(self, slices: Mapping[str, Mapping]) -> None:
        agents = agents_of(slices, self._port_name)
        if agents != self._last:
            self._last = agents
            self._on_change(agents)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                slices, version = self._api.list(self._path)
                self.lists += 1
                self._publish(slices)
                failures = 0
                while not self._stop.is_set():
                    version = self._watch(slices, version)
            except Gone:
                log.info("discovery: the watch expired (410 Gone); listing again")
                continue
            except Exception as err:  # the API server restarting, a network blip: try again
                if self._stop.is_set():
                    return
                pause = BACKOFF[min(failures, len(BACKOFF) - 1)]
                failures += 1
                log.warning("discovery: %s; again in %.0f s", err, pause)
                self._stop.wait(pause)

    def _watch(self, slices: dict[str, Mapping], version: str) -> str:
        path = (f"{self._path}&watch=1&resourceVersion={quote(version, safe='')}"
                f"&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}")
        for event in self._api.watch(path):
            version = apply_event(slices, event) or version
            if event.get("type") != "BOOKMARK":
                self._publish(slices)
        return version


def follow(service: str, namespace: str, on_change: Callable[[tuple[FoundAgent, ...]], None],
           *, api: ApiAccess | None = None, port_name: str | None = None) -> Follower:
    """Follow the agents behind the headless Service `service` in `namespace` (see the
    module's text); returns the running Follower (stop() ends it)."""
    return Follower(service, namespace, on_change, api or ApiAccess.in_cluster(), port_name).start()
