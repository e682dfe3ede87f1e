"""Discovery against a fake Kubernetes API server (tests/fake_kube.py): EndpointSlice list +
watch, as the API sends them; the pure parts on the same objects."""
from __future__ import annotations

import queue
import time

import pytest
from fake_kube import NS, SERVICE, TOKEN, FakeApi, endpoint, endpoint_slice

from bridgescope.collector.errors import BridgescopeError
from bridgescope.webui.fleet import discovery
from bridgescope.webui.fleet.discovery import ApiAccess, FoundAgent, agents_of, apply_event

# ---- pure --------------------------------------------------------------------------------

def test_agents_are_the_ready_endpoints_named_by_node():
    slices = {
        "a": endpoint_slice("a", endpoint("10.0.0.1", "node-a", "agent-1"),
                            endpoint("10.0.0.2", "node-b", "agent-2", ready=False),
                            endpoint("10.0.0.3", None, "agent-3", ready=None)),
        "b": endpoint_slice("b", endpoint("fd00::4", "node-d", "agent-4"), address_type="IPv6"),
    }
    assert agents_of(slices) == (FoundAgent("agent-3", "https://10.0.0.3:9477"),
                                 FoundAgent("node-a", "https://10.0.0.1:9477"),
                                 FoundAgent("node-d", "https://[fd00::4]:9477"))
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
    assert access == ApiAccess("https://[fd00::1]:6443", "abc", str(tmp_path / "ca.crt"), "bridgescope",
                               str(tmp_path / "token"))
    (tmp_path / "token").write_text("rotated\n")
    assert access.bearer() == "rotated"
    with pytest.raises(BridgescopeError, match="KUBERNETES_SERVICE_HOST"):
        ApiAccess.in_cluster(tmp_path, {})
    (tmp_path / "token").unlink()
    with pytest.raises(BridgescopeError, match="token"):
        ApiAccess.in_cluster(tmp_path, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
