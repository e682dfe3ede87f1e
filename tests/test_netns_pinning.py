"""Namespaces bridgescope creates stay pinned after the command exits, whatever mount namespace
it ran in: under `ip netns exec HOST` (a private mount namespace, /run/netns a slave there) a
container used to vanish with the command, its veth left NO-CARRIER on the bridge."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import sh

from bridgescope.plumbing.netns import Propagation, netns_dir_propagation

pytestmark = pytest.mark.kernel

CLI = [sys.executable, "-I", "-m", "bridgescope.webui.cli"]


def bridgescope(*args: str, ns: str | None = None) -> subprocess.CompletedProcess:
    """The CLI, under `ip netns exec ns` when given (as the README allows)."""
    return sh(*CLI, *args, ns=ns, timeout=120)


def test_container_made_under_ip_netns_exec_outlives_the_command(netns):
    host = netns("pin")
    ctr_ns = f"{host}-web"
    try:
        bridgescope("network", "create", "pinnet", "--subnet", "10.231.0.0/24", ns=host)
        bridgescope("container", "create", "web", "--network", "pinnet", ns=host)
        # the command has exited: its private mount namespace is gone, the container is not
        assert ctr_ns in os.listdir("/run/netns")
        assert "10.231.0.2/24" in sh("ip", "-n", ctr_ns, "-br", "addr").stdout
        veth = sh("ip", "-n", host, "-br", "link", "show", "master", "pinnet").stdout
        assert veth.strip() and "NO-CARRIER" not in veth and " UP " in veth
        inside = bridgescope("container", "exec", "web", "--netns", host, "--", "ip", "-br", "addr")
        assert "10.231.0.2/24" in inside.stdout
        # the cable works: the host answers a connection to a closed port (curl exit 7,
        # refused) instead of never hearing it (exit 28, timeout)
        knock = sh("curl", "-s", "-m", "5", "http://10.231.0.1:9/", ns=ctr_ns, check=False)
        assert knock.returncode == 7, knock.stderr
        # removing under `ip netns exec` unpins it for everyone too
        bridgescope("container", "rm", "web", ns=host)
        assert ctr_ns not in os.listdir("/run/netns")
    finally:
        sh("ip", "netns", "del", ctr_ns, check=False)


def test_refused_with_nothing_left_when_the_hosts_mounts_cannot_be_found(netns):
    """A private mount namespace whose master no visible process holds (here: a fresh pid
    namespace with its own /proc): one line saying to use --netns, and nothing changed."""
    host = netns("lost")
    bridgescope("network", "create", "lostnet", "--subnet", "10.232.0.0/24", "--netns", host)
    hidden = ["unshare", "--mount", "--propagation", "slave", "--pid", "--fork", "--mount-proc"]
    res = subprocess.run([*hidden, *CLI, "container", "create", "web", "--network", "lostnet",
                          "--netns", host], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "private mount namespace" in res.stderr and "--netns" in res.stderr
    assert f"{host}-web" not in os.listdir("/run/netns")
    assert sh("ip", "-n", host, "-br", "link", "show", "master", "lostnet").stdout.strip() == ""
    listed = bridgescope("snapshot", "--json", "--netns", host).stdout
    assert f"{host}-web" not in listed


@pytest.mark.parametrize("line,expected", [
    ("45 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw", Propagation(1, None)),
    ("70 48 254:0 /run/netns /run/netns rw,relatime master:1 - ext4 /dev/vda rw", Propagation(None, 1)),
    ("70 48 254:0 /run/netns /run/netns rw shared:7 master:1 - ext4 /dev/vda rw", Propagation(7, 1)),
    ("70 48 254:0 /run/netns /run/netns rw - ext4 /dev/vda rw", Propagation(None, None)),
    ("70 48 254:0 /run /run rw shared:3 - tmpfs tmpfs rw", None),
])
def test_netns_dir_propagation(line, expected):
    assert netns_dir_propagation(line) == expected
