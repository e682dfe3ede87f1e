"""Pure tests of the exporters: JSON contract, dot clusters, the tree. No root needed."""
from __future__ import annotations

import dataclasses
import json

from test_graph import topology

from bridgescope.collector.model import Route, Rule
from bridgescope.collector.render.export import to_dot, to_json, to_tree


def snapshot():
    snap = topology()
    rule = Rule("ns-1", "nft", 4, "nat", "POSTROUTING", "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
                owner="docker", matches=(("-s", ("172.17.0.0/16",), False), ("-o", ("docker0",), True)),
                target="MASQUERADE")
    routes = (Route("ns-10", "default", "172.17.0.1", "eth0", "ns-10/if2"),)
    return dataclasses.replace(snap, rules=(rule,), routes=routes, warnings=("split brain in ns-1",))


def test_json_contract_keys_and_types():
    doc = json.loads(json.dumps(to_json(snapshot())))  # JSON-ready all the way down
    assert {"namespaces", "interfaces", "routes", "rules", "port_forwards", "masquerades", "warnings"} <= set(doc)
    ns = doc["namespaces"][0]
    assert {"id", "name", "paths", "is_host"} <= set(ns) and ns["is_host"] is True
    iface = next(i for i in doc["interfaces"] if i["id"] == "ns-1/if3")
    assert {k: iface[k] for k in ("netns", "name", "ifindex", "kind", "state", "mtu", "master", "peer")} == {
        "netns": "ns-1", "name": "veth0", "ifindex": 3, "kind": "veth", "state": "up", "mtu": 1500,
        "master": "ns-1/if2", "peer": "ns-10/if2"}
    assert {k: doc["routes"][0][k] for k in ("netns", "dst", "gateway", "dev")} == {
        "netns": "ns-10", "dst": "default", "gateway": "172.17.0.1", "dev": "eth0"}
    rule = doc["rules"][0]
    assert {k: rule[k] for k in ("netns", "backend", "table", "chain", "owner", "packets", "bytes")} == {
        "netns": "ns-1", "backend": "nft", "table": "nat", "chain": "POSTROUTING", "owner": "docker",
        "packets": 0, "bytes": 0}
    assert rule["matches"][1] == {"option": "-o", "args": ["docker0"], "negated": True}
    pf = doc["port_forwards"][0]
    assert {k: pf[k] for k in ("netns", "proto", "host_ip", "host_port", "to_ip", "to_port", "owner", "backend",
                               "container")} == {"netns": "ns-1", "proto": "tcp", "host_ip": None, "host_port": 8080,
                                                 "to_ip": "172.17.0.2", "to_port": 80, "owner": "docker",
                                                 "backend": "nft", "container": "ns-10"}
    m = doc["masquerades"][0]
    assert (m["source"], m["out_not"], m["owner"], m["backend"]) == ("172.17.0.0/16", "docker0", "docker", "nft")
    assert doc["warnings"] == ["split brain in ns-1"]


def test_json_is_deterministic():
    """The same snapshot gives the same bytes in every process: nothing in it follows the
    order of a set or dict of strings, which changes with the interpreter's hash seed."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    program = (f"import json, sys; sys.path.insert(0, {here!r}); from test_export import snapshot, to_json; "
               "print(json.dumps(to_json(snapshot())))")
    outputs = {subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert outputs == {json.dumps(to_json(snapshot())) + "\n"}


def test_dot_has_one_cluster_per_namespace_and_each_veth_once():
    dot = to_dot(snapshot())
    assert dot.startswith("graph bridgescope {") and dot.rstrip().endswith("}")
    assert dot.count("subgraph cluster_") == 3
    assert dot.count('"ns-1/if3" -- "ns-10/if2"') == 1 and '"ns-10/if2" -- "ns-1/if3"' not in dot
    assert '"ns-1/if3" -- "ns-1/if2" [style=dashed]' in dot
    assert 'label="host (host)"' in dot


def test_dot_escapes_quotes_in_names():
    snap = snapshot()
    odd = dataclasses.replace(snap.namespaces[1], name='we"ird')
    dot = to_dot(dataclasses.replace(snap, namespaces=(snap.namespaces[0], odd, snap.namespaces[2])))
    assert 'label="we\\"ird"' in dot


def test_tree_bridge_then_ports_then_peers():
    tree = to_tree(snapshot()).splitlines()
    assert tree[0].startswith("host  [host]")
    bridge = next(n for n, line in enumerate(tree) if line.strip().startswith("docker0 bridge up 172.17.0.1/16"))
    assert tree[bridge + 1].strip() == "└ veth0 veth up  ⇄ eth0@c000 172.17.0.2/16"
    assert "  route default via 172.17.0.1 dev eth0" in tree
    assert "forward tcp *:8080 → 172.17.0.2:80 (c000, docker, in host)" in tree
    assert "masquerade 172.17.0.0/16 ! -o docker0 (docker, in host)" in tree
    assert tree[-1] == "warning: split brain in ns-1"
