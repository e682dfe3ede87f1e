"""The agent's pure parts: which deltas a resuming client missed, and the metric values."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridgescope.collector.doctor.finding import Finding
from bridgescope.collector.rules.reach import ForwardReach, Verdict
from bridgescope.webui.fleet import metrics
from bridgescope.webui.fleet.agent import DeltaHistory, finding_json, forward_body, missed


def deltas(*versions: int) -> tuple[dict, ...]:
    return tuple({"type": "delta", "version": v} for v in versions)


def test_missed_gives_exactly_the_deltas_after_the_last_seen():
    kept = deltas(4, 5, 6, 7)
    assert [d["version"] for d in missed(kept, 3, 5, 7)] == [6, 7]
    assert missed(kept, 3, 7, 7) == []  # up to date
    assert [d["version"] for d in missed(kept, 3, 3, 6)] == [4, 5, 6]


def test_missed_wants_a_fresh_graph_when_a_delta_is_gone():
    assert missed(deltas(5, 6, 7), 3, 3, 7) is None  # 4 fell out of the history
    assert missed(deltas(4, 5), 3, 2, 5) is None  # before the graph the history started from
    assert missed(deltas(4, 5), 3, 9, 5) is None  # from the future: the agent was restarted
    assert missed(deltas(4, 6), 3, 3, 6) is None  # a gap


def test_the_history_keeps_the_last_deltas_and_restarts_on_a_graph():
    history = DeltaHistory(keep=3)
    history.record({"type": "graph", "version": 2, "elements": []})
    for v in range(3, 8):
        history.record({"type": "delta", "version": v})
    assert [d["version"] for d in history.since(4, 7, wait=0)] == [5, 6, 7]
    assert history.since(3, 7, wait=0) is None  # 4 is no longer kept
    history.record({"type": "doctor", "counts": {}})  # not a topology event: ignored
    history.record({"type": "graph", "version": 9, "elements": []})  # the Watcher started over
    assert history.since(7, 9, wait=0) is None
    assert history.since(9, 9, wait=0) == []
    assert history.since(9, 10, wait=0.05) is None  # not recorded yet: a graph is safer


@pytest.mark.parametrize("body,ok", [
    ({"target": "web", "mapping": "8080:80"}, True),
    ({"target": "web", "mapping": "8080:80", "actor": "alice"}, True),
    ({"target": "web", "mapping": "8080:80", "actor": None}, True),
    (None, False), ([], False), ({"target": "web"}, False), ({"target": "", "mapping": "1:1"}, False),
    ({"target": "web", "mapping": "8080:80", "dry_run": True}, False),
    ({"target": 1, "mapping": "8080:80"}, False),
])
def test_forward_bodies(body, ok):
    if ok:
        assert forward_body(body)[:2] == ("web", "8080:80")
    else:
        with pytest.raises(ValueError):
            forward_body(body)


def test_a_finding_as_the_api_sends_it():
    f = Finding("ip-forward-off", "error", ("ns-1",), "forwarding is off", "why", ("sysctl -w a=1", "b"))
    assert finding_json(f) == {"id": "ip-forward-off", "severity": "error", "title": "forwarding is off",
                               "objects": ["ns-1"], "fix": "sysctl -w a=1\nb"}
    assert finding_json(Finding("x", "info", (), "t", "e", ()))["fix"] is None


def reach(owner: str, *outcomes: str) -> ForwardReach:
    return ForwardReach(SimpleNamespace(owner=owner, host_ip=None), "pf",
                        tuple(Verdict("outside", o, "") for o in outcomes), None)


def test_a_port_bound_to_one_address_is_judged_by_those_it_is_published_for():
    """`-p 127.0.0.1:8080:80` is refused from outside on purpose, and a forward bound to the
    uplink's address from 127.0.0.1: the alert must not fire for them."""
    def bound(host_ip: str, **outcomes: str) -> ForwardReach:
        return ForwardReach(SimpleNamespace(owner="docker", host_ip=host_ip), "pf",
                            tuple(Verdict(source, o, "") for source, o in outcomes.items()), None)
    assert metrics.reachable(bound("127.0.0.1", outside="refused", host="refused", container="timeout",
                                   loopback="reachable")) == "true"
    assert metrics.reachable(bound("127.0.0.1", outside="refused", loopback="timeout")) == "false"
    assert metrics.reachable(bound("192.0.2.10", outside="reachable", host="reachable", container="reachable",
                                   loopback="refused")) == "true"
    assert metrics.reachable(bound("0.0.0.0", outside="reachable", loopback="refused")) == "false"


def test_timings_are_a_histogram():
    t = metrics.Timing((0.1, 1.0)).observe(0.05).observe(0.1).observe(0.5).observe(3)
    assert t.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert t.total == 3.65
    assert metrics.Timing((0.1,)).cumulative() == [("0.1", 0), ("+Inf", 0)]


def test_metric_values():
    snap = SimpleNamespace(namespaces=[1, 2, 3])
    findings = [Finding("link-down", "error", (), "t", "e", ()), Finding("link-down", "error", (), "t", "e", ()),
                Finding("orphan-rule", "warning", (), "t", "e", ())]
    forwards = [reach("docker", "reachable", "reachable"), reach("docker", "reachable", "refused"),
                reach("bridgescope", "timeout"), reach("cni", "unknown"), reach("cni")]
    timings = metrics.Timings(metrics.Timing((1.0,)).observe(0.5), metrics.Timing((0.01,)).observe(0.2))
    text = metrics.exposition(metrics.families(snap, findings, forwards, timings, name="node-1",
                                               version="0.1.0")).decode()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(text) for s in f.samples}
    assert got[("bridgescope_namespaces", ())] == 3
    assert got[("bridgescope_forwards", (("owner", "docker"), ("reachable", "true")))] == 1
    assert got[("bridgescope_forwards", (("owner", "docker"), ("reachable", "false")))] == 1
    assert got[("bridgescope_forwards", (("owner", "bridgescope"), ("reachable", "false")))] == 1
    assert got[("bridgescope_forwards", (("owner", "cni"), ("reachable", "unknown")))] == 2
    assert got[("bridgescope_findings", (("id", "link-down"), ("severity", "error")))] == 2
    assert got[("bridgescope_findings", (("id", "orphan-rule"), ("severity", "warning")))] == 1
    assert got[("bridgescope_collector_seconds_bucket", (("le", "1.0"),))] == 1
    assert got[("bridgescope_delta_seconds_bucket", (("le", "0.01"),))] == 0
    assert got[("bridgescope_delta_seconds_count", ())] == 1
    assert got[("bridgescope_info", (("name", "node-1"), ("version", "0.1.0")))] == 1
