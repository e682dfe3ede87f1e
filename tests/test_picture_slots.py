"""The picture's slots (where each bridge and container sits) survive a `serve` restart."""
from __future__ import annotations

import logging
import time

import pytest
import requests
import serve_process
from conftest import sh

from bridgescope.collector.render import slots as stored
from bridgescope.collector.render.slots import Slots

TOKEN = "slots-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_slots_written_are_read_back(tmp_path):
    path = tmp_path / "picture" / "slots.json"
    slots = {"h1": Slots((("br0", 3),), (("br0", "c1", 0), ("br0", "c2", 4)))}
    stored.write_slots(path, slots)
    assert stored.read_slots(path) == slots
    assert [p.name for p in path.parent.iterdir()] == ["slots.json"]  # no temporary left behind


def test_the_file_keeps_only_the_hosts_drawn_last(tmp_path):
    path = tmp_path / "slots.json"
    most = stored.MAX_STORED_HOSTS
    stored.write_slots(path, {f"h{i}": Slots((("br0", 2),)) for i in range(most + 5)})
    kept = stored.read_slots(path)
    assert len(kept) == most and "h0" not in kept and f"h{most + 4}" in kept


@pytest.mark.parametrize("text", ["{not json", '{"hosts": {"h": {"bridges": [["br0"]], "cells": []}}}',
                                  '{"hosts": {"h": {"bridges": [["br0", -2]], "cells": []}}}', "[]"])
def test_a_damaged_file_is_ignored_with_a_warning(tmp_path, caplog, text):
    path = tmp_path / "slots.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        assert stored.read_slots(path) == {}
    assert "ignoring" in caplog.text and str(path) in caplog.text
    assert stored.read_slots(tmp_path / "missing.json") == {}


# ---- a real server, restarted ----------------------------------------------------------------

def add_container(host: str, ns: str, i: int) -> None:
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", host, "-batch", "-", input=f"link add vs{i} type veth peer name eth0 netns {ns}\n"
       f"link set vs{i} master br0 up\n")
    sh("ip", "-n", ns, "-batch", "-", input=f"link set lo up\nlink set eth0 up\naddr add 10.99.0.{10 + i}/16 dev eth0\n")


def boxes(base: str) -> dict[str, dict]:
    """Container boxes (namespaces under a bridge) by label -> position."""
    elements = requests.get(base + "/api/graph", headers=AUTH, timeout=30).json()
    bridges = {e["data"]["id"] for e in elements if e["data"].get("kind") == "bridge"}
    return {e["data"]["label"]: e["position"] for e in elements
            if e["data"].get("kind") == "namespace" and e["data"].get("parent") in bridges}


def wait_for(base: str, labels: set[str], timeout: float = 240) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = boxes(base)
        if set(found) == labels:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"the graph never showed exactly {sorted(labels)}: {sorted(found)}")
        time.sleep(0.2)


def serve(host: str, state, log):
    port = serve_process.free_port()
    with log.open("a") as out:
        proc = serve_process.start(host, port, args=("--audit-log", str(state / "audit.jsonl")), output=out,
                                   env={"BRIDGESCOPE_TOKEN": TOKEN, "BRIDGESCOPE_STATE_DIR": str(state)})
    base = f"http://127.0.0.1:{port}"
    try:
        serve_process.wait_until_answering(proc, base + "/api/graph", headers=AUTH, timeout=300, log=log)
    except BaseException:
        serve_process.stop(proc)
        raise
    return proc, base


@pytest.mark.kernel
def test_positions_survive_a_restart_after_containers_came_and_went_out_of_order(netns, tmp_path):
    host = netns("host")
    sh("ip", "-n", host, "-batch", "-", input="link add br0 type bridge\naddr add 10.99.0.1/16 dev br0\nlink set br0 up\n")
    names = {k: f"{host[:-len('-host')]}-s{k}" for k in range(1, 5)}
    made = []
    try:
        for k in (1, 2, 3):
            add_container(host, names[k], k)
            made.append(names[k])
        state, log = tmp_path / "state", tmp_path / "serve.log"
        proc, base = serve(host, state, log)
        try:
            wait_for(base, {names[1], names[2], names[3]})
            # s1 leaves, s4 takes the free cell, s1 comes back to another one: no longer name order
            sh("ip", "netns", "del", names[1])
            made.remove(names[1])
            wait_for(base, {names[2], names[3]})
            add_container(host, names[4], 4)
            made.append(names[4])
            wait_for(base, {names[2], names[3], names[4]})
            add_container(host, names[1], 5)  # a new veth: the old one goes with its namespace, lazily
            made.append(names[1])
            before = wait_for(base, set(names.values()))
        finally:
            serve_process.stop(proc)
        assert before[names[4]]["x"] < before[names[1]]["x"] or before[names[4]]["y"] < before[names[1]]["y"]
        proc, base = serve(host, state, log)
        try:
            assert wait_for(base, set(names.values())) == before
        finally:
            serve_process.stop(proc)
        stored = (state / "picture" / "slots.json").read_text()
        assert all(name in stored for name in names.values())
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)
