"""RouteLookup against `ip route get` in a throwaway namespace: the same answers, the
kernel's words when there is no route, and a forwarded packet asked by its input interface."""
from __future__ import annotations

import json
import subprocess

import pytest
from conftest import sh

from bridgescope.collector.kernel.routelookup import RouteLookup

pytestmark = pytest.mark.kernel


def ip_route_get(ns: str, *query: str) -> dict | str:
    """`ip -j route get`'s answer, or its error text."""
    done = subprocess.run(["ip", "-n", ns, "-j", "route", "get", *query], capture_output=True, text=True)
    if done.returncode:
        return done.stderr.strip().rpartition(": ")[2]
    return json.loads(done.stdout)[0]


def ifindex(ns: str, name: str) -> int:
    return json.loads(subprocess.run(["ip", "-n", ns, "-j", "link", "show", name], capture_output=True,
                                     text=True, check=True).stdout)[0]["ifindex"]


@pytest.fixture
def router(netns):
    ns, other = netns("r"), netns("peer")
    sh("ip", "-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "p0", "netns", other)
    sh("ip", "-n", ns, "link", "add", "br9", "type", "veth", "peer", "name", "p9", "netns", other)
    sh("ip", "-n", other, "link", "set", "p9", "up")
    for dev, cidr in (("up0", "10.1.0.1/24"), ("br9", "10.2.0.1/24")):
        sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", other, "link", "set", "p0", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", "10.1.0.254")
    return ns, other


def test_the_kernels_answers_as_ip_route_get_gives_them(router):
    ns, other = router
    with RouteLookup({"r": f"/run/netns/{ns}", "peer": f"/run/netns/{other}"}) as lookup:
        for dst in ("10.1.0.7", "203.0.113.9", "10.1.0.1", "10.2.0.5"):
            got, want = lookup("r", dst), ip_route_get(ns, dst)
            assert got.type == want.get("type", "unicast"), (dst, got, want)
            assert got.oif == ifindex(ns, want["dev"]) and got.gateway == want.get("gateway"), (dst, got, want)
            assert got.prefsrc == want.get("prefsrc"), (dst, got, want)
        # the peer has no route beyond its own link: the kernel's words
        assert lookup("peer", "203.0.113.9").type == "error"
        assert lookup("peer", "203.0.113.9").error == ip_route_get(other, "203.0.113.9") == "Network is unreachable"
        # a packet arriving on br9 for beyond the host: forwarding is off, so no forward route
        sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=ns)
        off = lookup("r", "203.0.113.9", src="10.2.0.5", iif=ifindex(ns, "br9"))
        assert (off.type, off.error) == ("error", ip_route_get(ns, "203.0.113.9", "from", "10.2.0.5", "iif", "br9"))
        assert off.error == "No route to host"
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)
        on = lookup("r", "203.0.113.9", src="10.2.0.5", iif=ifindex(ns, "br9"))
        want = ip_route_get(ns, "203.0.113.9", "from", "10.2.0.5", "iif", "br9")
        assert (on.type, on.oif, on.gateway) == ("unicast", ifindex(ns, "up0"), want["gateway"])
