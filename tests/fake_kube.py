"""A fake Kubernetes API server for the discovery tests: EndpointSlice list + watch, as the API sends them.

A few lines of http.server on 127.0.0.1 speaking the list and watch protocol (a JSON list with
its resourceVersion; a watch stream of one JSON event per line, BOOKMARKs, and ERROR 410 when
the version it starts from is too old), over plain HTTP or, given a certificate, over TLS as a
real API server is reached from a pod. Every object it serves is checked against the
Kubernetes schemas (kubernetes-validate, offline, strict) first, so the tests speak the API's
own shapes, not ones made up to fit the code.
"""
from __future__ import annotations

import copy
import json
import os
import queue
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate

from bridgescope.webui.fleet.discovery import SERVICE_ACCOUNT

K8S_VERSION = "1.37"
NS, SERVICE, TOKEN = "bridgescope", "bridgescope-agents", "sa-token"


def endpoint(ip: str, node: str | None, pod: str, ready: bool | None = True) -> dict:
    ep: dict = {"addresses": [ip], "targetRef": {"kind": "Pod", "name": pod, "namespace": NS,
                                                 "uid": f"uid-{pod}"}}
    if ready is not None:
        ep["conditions"] = {"ready": ready, "serving": ready, "terminating": not ready}
    if node:
        ep["nodeName"] = node
    return ep


def endpoint_slice(name: str, *endpoints: dict, address_type: str = "IPv4", port: int = 9477) -> dict:
    obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": NS, "resourceVersion": "1",
                        "labels": {"kubernetes.io/service-name": SERVICE,
                                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": SERVICE,
                                             "uid": "uid-svc", "controller": True,
                                             "blockOwnerDeletion": True}]},
           "addressType": address_type,
           "ports": [{"name": "api", "port": port, "protocol": "TCP"}],
           "endpoints": list(endpoints)}
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return obj


class _TlsServer(ThreadingHTTPServer):
    """Each connection's handshake in its own handler thread, so a stalled client holds only that."""

    def __init__(self, address, handler, context: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.context = context

    def finish_request(self, request, client_address) -> None:
        try:
            request = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that gave up on the handshake (or did not trust us)
        super().finish_request(request, client_address)


class FakeApi:
    """tls: (certificate, key) PEM files to serve HTTPS with; without, plain HTTP."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.slices: dict[str, dict] = {}
        self.rv = 100
        self.oldest = 0  # a watch from a version below this gets ERROR 410
        self.watches: list[queue.Queue] = []
        self.token = TOKEN  # the one bearer token it accepts (a test may rotate it)
        self.lists = 0
        self.watched_from: list[str] = []
        self.lock = threading.Lock()
        if tls is None:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server = _TlsServer(("127.0.0.1", 0), self._handler(), context)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        with self.lock:
            for q in self.watches:
                q.put(None)
        self.server.shutdown()
        self.server.server_close()

    def _stamp(self, obj: dict) -> dict:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return obj

    def change(self, kind: str, obj: dict, *, announce: bool = True) -> None:
        with self.lock:
            obj = self._stamp(obj)
            if kind == "DELETED":
                self.slices.pop(obj["metadata"]["name"], None)
            else:
                self.slices[obj["metadata"]["name"]] = obj
            if announce:
                for q in self.watches:
                    q.put({"type": kind, "object": obj})

    def send(self, event: dict | None) -> None:
        with self.lock:
            for q in self.watches:
                q.put(event)

    def expire(self) -> None:
        """Compaction: every version before the current one is too old; open watches get
        ERROR 410."""
        with self.lock:
            self.oldest = self.rv
            for q in self.watches:
                q.put(gone_event())

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self._json(401, {"kind": "Status", "code": 401})
                if parts.path != f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices" or \
                        query.get("labelSelector") != f"kubernetes.io/service-name={SERVICE}":
                    return self._json(404, {"kind": "Status", "code": 404})
                if query.get("watch") in ("1", "true"):
                    return self._watch(query)
                with api.lock:
                    api.lists += 1
                    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                            "metadata": {"resourceVersion": str(api.rv)},
                            "items": list(api.slices.values())}
                self._json(200, body)

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _watch(self, query: dict) -> None:
                assert query.get("allowWatchBookmarks") == "true"
                q: queue.Queue = queue.Queue()
                with api.lock:
                    api.watched_from.append(query["resourceVersion"])
                    if int(query["resourceVersion"]) < api.oldest:
                        q.put(gone_event())
                    api.watches.append(q)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()  # HTTP/1.0: the stream ends when we close
                try:
                    while True:
                        event = q.get()
                        if event is None:
                            return
                        self.wfile.write(json.dumps(event).encode() + b"\n")
                        self.wfile.flush()
                        if event["type"] == "ERROR":
                            return
                finally:
                    with api.lock:
                        api.watches.remove(q)

        return Handler


def gone_event() -> dict:
    return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                       "status": "Failure", "reason": "Expired", "code": 410,
                                       "message": "too old resource version"}}




# ---- the service account as a pod sees it ---------------------------------------------------

def as_pod(account: Path) -> list[str]:
    """The argv prefix that runs a command in a mount namespace of its own where `account` (a
    directory with token, ca.crt and namespace) is the pod's service account directory. The
    host's mounts and directories stay as they were; the namespace ends with the command."""
    return ["/usr/bin/unshare", "--mount", "--propagation", "private",
            sys.executable, "-I", str(Path(__file__).resolve()), str(account)]


def _mount_account(account: Path) -> None:
    """Inside as_pod's namespace only: bind `account` at SERVICE_ACCOUNT. Where that path
    does not exist a tmpfs over its deepest existing ancestor makes room, since a directory
    made there would land on the host's own file system."""
    if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
        raise SystemExit("fake_kube: refusing to mount in the mount namespace of the test that started us")
    target = Path(os.path.realpath(SERVICE_ACCOUNT))
    base = target
    while not base.exists():
        base = base.parent
    if base != target:
        if base == Path("/") or account.resolve().is_relative_to(base):
            raise SystemExit(f"fake_kube: a tmpfs on {base} would hide too much")
        subprocess.run(["/usr/bin/mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "tmpfs", str(base)], check=True)
        target.mkdir(parents=True)
    subprocess.run(["/usr/bin/mount", "--bind", "-o", "ro", str(account), str(target)], check=True)


if __name__ == "__main__":  # as_pod's second half: mount, then become the command (same PID)
    _mount_account(Path(sys.argv[1]))
    os.execv(sys.argv[2], sys.argv[2:])
