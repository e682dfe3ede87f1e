"""The audit log: JSON lines on disk, newest first in memory, secrets never written."""
from __future__ import annotations

import json

from bridgescope.webui.audit import AuditLog, scrub


def test_entries_are_json_lines_and_survive_a_restart(tmp_path):
    path = tmp_path / "logs" / "audit.jsonl"
    log = AuditLog(path)
    log.record("127.0.0.1", {"action": "add_forward", "args": {"spec": "8080:80"}}, ["iptables -t nat ..."], "ok: added")
    log.record("127.0.0.1", {"action": "remove_network"}, [], "error: no network named x", ok=False)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [set(line) for line in lines] == [{"time", "client", "request", "commands", "result", "ok"}] * 2
    assert lines[0]["commands"] == ["iptables -t nat ..."] and lines[1]["ok"] is False
    again = AuditLog(path)
    assert [e.request["action"] for e in again.recent()] == ["remove_network", "add_forward"]
    assert again.recent(1)[0].when.endswith("UTC")


def test_a_damaged_line_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"time": 1, "client": "c", "request": {}, "commands": [], "result": "ok"}\nnot json\n{"time": 2}\n')
    assert [e.time for e in AuditLog(path).recent()] == [1]


def test_secrets_are_scrubbed_and_memory_only_logs_work():
    assert scrub([("csrf_token", "x"), ("token", "y"), ("name", "n")]) == {"name": "n"}
    log = AuditLog(None, keep=2)
    for i in range(3):
        log.record("c", {"i": i}, [], "ok")
    assert [e.request["i"] for e in log.recent()] == [2, 1]
