"""nf_tables over raw netlink: the table list equals `nft list tables`, the generation counts commits."""
import threading

import pytest
from conftest import sh

from bridgescope.collector.firewall import nftinfo
from bridgescope.collector.kernel.setns import inside

pytestmark = pytest.mark.kernel


def in_ns(ns: str, fn):
    """Run fn on a thread inside ns (setns moves only that thread)."""
    box = {}

    def run():
        with inside(f"/run/netns/{ns}"):
            box["value"] = fn()
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return box["value"]


def nft_tables(ns: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in sh("nft", "list", "tables", ns=ns).stdout.splitlines()]


def test_an_empty_namespace_has_no_tables(netns):
    ns = netns("empty")
    assert in_ns(ns, nftinfo.tables_here) == [] == nft_tables(ns)


def test_tables_match_nft_list_tables_for_every_family(netns):
    ns = netns("tables")
    sh("nft", "add", "table", "inet", "firewalld", ns=ns)
    sh("nft", "add", "table", "bridge", "filter", ns=ns)
    sh("iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE", ns=ns)
    sh("ip6tables-nft", "-A", "FORWARD", "-j", "ACCEPT", ns=ns)
    assert sorted(in_ns(ns, nftinfo.tables_here)) == sorted(nft_tables(ns))
    assert {"inet firewalld", "bridge filter", "ip nat", "ip6 filter"} <= set(nft_tables(ns))


def test_the_generation_moves_with_each_commit_and_only_then(netns):
    ns = netns("gen")
    before = in_ns(ns, nftinfo.generation_here)
    assert in_ns(ns, nftinfo.generation_here) == before
    sh("nft", "add", "table", "ip", "t1", ns=ns)
    sh("nft", "add", "table", "ip", "t2", ns=ns)
    assert in_ns(ns, nftinfo.generation_here) == before + 2
