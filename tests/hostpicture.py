"""A host namespace's network configuration as one comparable value: what a plumbing change may
touch (links, IPv4 addresses and routes, firewall rules of every backend, sysctls, the
namespaces made for its containers). Tests and the soak benchmark compare it before and after.
"""
from __future__ import annotations

import json
import os
import subprocess


def sh(*argv: str, ns: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          check=True, timeout=30)


def save_lines(text: str) -> list[str]:
    """Rules, user chains and non-default policies; counters and comments dropped."""
    out = []
    for line in text.splitlines():
        if line.startswith(("-A", "*")):
            out.append(line)
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if policy not in ("ACCEPT",):
                out.append(f":{name} {policy}")
    return [l for l in out if not l.startswith("*")]


def picture(ns: str) -> dict:
    """Everything a plumbing change may touch in the host namespace, comparable by ==."""
    links = json.loads(sh("ip", "-j", "-d", "link", "show", ns=ns).stdout)
    # IPv4 only: bridgescope plumbs IPv4, and IPv6 link-local addresses appear whenever DAD ends.
    addrs = json.loads(sh("ip", "-4", "-j", "addr", "show", ns=ns).stdout)
    routes = json.loads(sh("ip", "-4", "-j", "route", "show", "table", "all", ns=ns).stdout)
    legacy_names = sh("cat", "/proc/net/ip_tables_names", ns=ns).stdout.split()
    native = [l for l in sh("nft", "list", "tables", ns=ns).stdout.splitlines()
              if l.split()[-1] not in ("filter", "nat", "raw", "mangle", "security")]
    sysctls = sh("sysctl", "-a", "-r", r"^net\.ipv4\.(ip_forward$|conf\.(all|default|lo|uplink|br0)\.)",
                 ns=ns).stdout
    return {
        # admin state, not operstate: a bridge's carrier follows its ports asynchronously
        "links": sorted((l["ifname"], l.get("linkinfo", {}).get("info_kind"), "UP" in l["flags"],
                         l.get("ifalias"), l["mtu"]) for l in links),
        "addrs": sorted((a["ifname"], i["local"], i["prefixlen"])
                        for a in addrs for i in a.get("addr_info", [])),
        "routes": sorted(json.dumps({k: v for k, v in r.items() if k != "flags"}, sort_keys=True)
                         for r in routes),  # "linkdown" follows carrier, not configuration
        "nft": save_lines(sh("iptables-nft-save", ns=ns).stdout),
        "legacy": save_lines(sh("iptables-legacy-save", ns=ns).stdout) if legacy_names else [],
        "native": native,
        "sysctls": sysctls,
        "netns": sorted(e for e in os.listdir("/run/netns") if e.startswith(ns + "-")),
    }
