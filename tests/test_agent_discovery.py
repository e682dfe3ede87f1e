"""Discovery against a fake Kubernetes API server: EndpointSlice list + watch, as the API sends them.

The server is a few lines of http.server on 127.0.0.1 speaking the list and watch protocol
(a JSON list with its resourceVersion; a watch stream of one JSON event per line, BOOKMARKs,
and ERROR 410 when the version it starts from is too old). Every object it serves is checked
against the Kubernetes schemas (kubernetes-validate, offline, strict) first, so the test
speaks the API's own shapes, not ones made up to fit the code.
"""
from __future__ import annotations

import copy
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest

from bridgescope.webui.fleet import discovery
from bridgescope.webui.fleet.discovery import Agent, ApiAccess, agents_of, apply_event

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


# ---- pure --------------------------------------------------------------------------------

def test_agents_are_the_ready_endpoints_named_by_node():
    slices = {
        "a": endpoint_slice("a", endpoint("10.0.0.1", "node-a", "agent-1"),
                            endpoint("10.0.0.2", "node-b", "agent-2", ready=False),
                            endpoint("10.0.0.3", None, "agent-3", ready=None)),
        "b": endpoint_slice("b", endpoint("fd00::4", "node-d", "agent-4"), address_type="IPv6"),
    }
    assert agents_of(slices) == (Agent("agent-3", "https://10.0.0.3:9477"),
                                 Agent("node-a", "https://10.0.0.1:9477"),
                                 Agent("node-d", "https://[fd00::4]:9477"))
    assert agents_of({}) == ()
    assert agents_of(slices, port_name="metrics") == ()


def test_watch_events_update_the_slices():
    slices: dict = {}
    one = endpoint_slice("one", endpoint("10.0.0.1", "node-a", "agent-1"))
    assert apply_event(slices, {"type": "ADDED", "object": {**one, "metadata": {**one["metadata"],
                                                                                "resourceVersion": "7"}}}) == "7"
    assert set(slices) == {"one"}
    assert apply_event(slices, {"type": "BOOKMARK", "object": {"kind": "EndpointSlice",
                                                               "apiVersion": "discovery.k8s.io/v1",
                                                               "metadata": {"resourceVersion": "9"}}}) == "9"
    assert set(slices) == {"one"}
    apply_event(slices, {"type": "DELETED", "object": one})
    assert slices == {}
    with pytest.raises(discovery.Gone):
        apply_event(slices, {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                         "reason": "Expired", "code": 410,
                                                         "message": "too old resource version"}})


# ---- the fake API server -----------------------------------------------------------------

class FakeApi:
    def __init__(self) -> None:
        self.slices: dict[str, dict] = {}
        self.rv = 100
        self.oldest = 0  # a watch from a version below this gets ERROR 410
        self.watches: list[queue.Queue] = []
        self.lists = 0
        self.watched_from: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

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
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
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


@pytest.fixture
def fake() -> FakeApi:
    api = FakeApi()
    yield api
    api.close()


class Seen:
    """What on_change was called with, in order."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()

    def __call__(self, agents) -> None:
        self.q.put(agents)

    def next(self, timeout: float = 10.0) -> tuple[str, ...]:
        return tuple(a.name for a in self.q.get(timeout=timeout))

    def quiet(self, wait: float = 0.5) -> bool:
        time.sleep(wait)
        return self.q.empty()


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_agents_join_and_leave(fake):
    fake.change("ADDED", endpoint_slice("agents-1", endpoint("10.0.0.1", "node-a", "agent-1")))
    seen = Seen()
    follower = discovery.follow(SERVICE, NS, seen, api=ApiAccess(fake.base, TOKEN))
    try:
        assert seen.next() == ("node-a",)
        wait_for(lambda: fake.watches)
        fake.change("ADDED", endpoint_slice("agents-2", endpoint("10.0.0.2", "node-b", "agent-2")))
        assert seen.next() == ("node-a", "node-b")
        fake.change("MODIFIED", endpoint_slice("agents-1", endpoint("10.0.0.1", "node-a", "agent-1", ready=False)))
        assert seen.next() == ("node-b",)
        fake.change("MODIFIED", endpoint_slice("agents-2", endpoint("10.0.0.2", "node-b", "agent-2")))
        assert seen.quiet()  # the same agents: no call
        fake.change("DELETED", fake.slices["agents-2"])
        assert seen.next() == ()
        assert fake.lists == 1
    finally:
        follower.stop()


def test_a_bookmark_moves_the_watch_on_and_a_closed_watch_is_resumed(fake):
    fake.change("ADDED", endpoint_slice("agents-1", endpoint("10.0.0.1", "node-a", "agent-1")))
    seen = Seen()
    follower = discovery.follow(SERVICE, NS, seen, api=ApiAccess(fake.base, TOKEN))
    try:
        assert seen.next() == ("node-a",)
        wait_for(lambda: fake.watches)
        fake.send({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                                  "metadata": {"resourceVersion": "150"}}})
        fake.send(None)  # the server ends the watch (its timeoutSeconds)
        wait_for(lambda: len(fake.watched_from) == 2)
        assert fake.watched_from == [str(101), "150"]
        assert seen.quiet() and fake.lists == 1
    finally:
        follower.stop()


def test_410_gone_makes_it_list_again(fake):
    fake.change("ADDED", endpoint_slice("agents-1", endpoint("10.0.0.1", "node-a", "agent-1")))
    seen = Seen()
    follower = discovery.follow(SERVICE, NS, seen, api=ApiAccess(fake.base, TOKEN))
    try:
        assert seen.next() == ("node-a",)
        wait_for(lambda: fake.watches)
        # Changes the watch never announced (compacted away), then the expiry.
        fake.change("ADDED", endpoint_slice("agents-3", endpoint("10.0.0.3", "node-c", "agent-3")), announce=False)
        fake.expire()
        assert seen.next() == ("node-a", "node-c")
        assert fake.lists == 2
        wait_for(lambda: len(fake.watched_from) == 2)
        assert int(fake.watched_from[-1]) == fake.oldest  # from the new list's version
    finally:
        follower.stop()


def test_a_watch_refused_with_410_status_lists_again(fake):
    fake.change("ADDED", endpoint_slice("agents-1", endpoint("10.0.0.1", "node-a", "agent-1")))
    fake.oldest = 10**9  # every watch is too old: ERROR 410 at once, every time
    seen = Seen()
    follower = discovery.follow(SERVICE, NS, seen, api=ApiAccess(fake.base, TOKEN))
    try:
        assert seen.next() == ("node-a",)
        wait_for(lambda: fake.lists >= 3)
    finally:
        follower.stop()


def test_a_wrong_token_is_retried_with_a_pause(fake):
    seen = Seen()
    follower = discovery.follow(SERVICE, NS, seen, api=ApiAccess(fake.base, "wrong"))
    try:
        assert seen.quiet(1.5)
        assert fake.lists == 0
    finally:
        follower.stop()


def test_in_cluster_access_reads_the_service_account(tmp_path):
    (tmp_path / "token").write_text("abc\n")
    (tmp_path / "namespace").write_text("bridgescope")
    (tmp_path / "ca.crt").write_text("")
    access = ApiAccess.in_cluster(tmp_path, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert access == ApiAccess("https://[fd00::1]:6443", "abc", str(tmp_path / "ca.crt"), "bridgescope")
    with pytest.raises(RuntimeError):
        ApiAccess.in_cluster(tmp_path, {})
