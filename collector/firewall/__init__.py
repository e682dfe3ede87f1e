"""Firewall readers: iptables-legacy, iptables-nft and native nftables, one rule model.

`scan` is the entry point the snapshot calls: it dumps every namespace that has tables
(readers, the only part that touches the kernel, a few namespaces at a time) and hands the
text to `assemble`, a pure function that parses, attributes owners and flags split brains.
"""
from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from bridgescope.collector.errors import BridgescopeError
from bridgescope.collector.firewall import proxy
from bridgescope.collector.model import Chain, PortForward, Rule, no_cycle_collection

if TYPE_CHECKING:
    from bridgescope.collector.firewall.readers import NamespaceDump
# The readers and parsers are imported where they are used: a snapshot whose namespaces have
# no tables at all (bare) needs none of them, and they are most of the CLI's import time.

# Each namespace costs ~3 short processes; beyond a few workers the 2-4 CPUs of a typical
# host are saturated and more threads only add contention.
WORKERS = min(8, (os.cpu_count() or 2) * 2)


@dataclass(frozen=True)
class FirewallScan:
    rules: tuple[Rule, ...] = ()
    chains: tuple[Chain, ...] = ()
    warnings: tuple[str, ...] = ()
    # docker-proxy listeners (via="proxy"), for nat.interpret(..., proxies=...)
    proxies: tuple[PortForward, ...] = ()


def scan(namespaces: Mapping[str, str], *, reuse: bool = False, bare: Collection[str] = ()) -> FirewallScan:
    """Read every backend in each namespace ({namespace id: nsfs path}) into one model;
    `reuse`: readers.dump_namespace's (for a caller that holds the namespaces open); `bare`:
    namespaces the caller saw without any table (readers.has_tables_here), whose dump would be
    empty: only their docker-proxy listeners are looked for."""
    items = sorted((ns_id, path) for ns_id, path in namespaces.items() if ns_id not in bare)
    if not items:
        return FirewallScan(proxies=proxy.listeners(namespaces))
    from concurrent.futures import ThreadPoolExecutor

    from bridgescope.collector.firewall import readers

    with ThreadPoolExecutor(max_workers=max(1, min(WORKERS, len(items))) + 1,
                            thread_name_prefix="bridgescope-fw") as pool:
        proxies = pool.submit(proxy.listeners, namespaces)  # /proc walk, meanwhile
        dumps = list(pool.map(lambda item: readers.dump_namespace(*item, reuse=reuse), items))
        result = assemble(dumps)
        return FirewallScan(result.rules, result.chains, result.warnings, proxies.result())


def assemble(dumps: Iterable[NamespaceDump]) -> FirewallScan:
    """Pure: parse the tool output of each namespace, attribute owners, flag split brains."""
    rules: list[Rule] = []
    chains: list[Chain] = []
    warnings: list[str] = []
    with no_cycle_collection():
        for dump in dumps:
            one = assemble_namespace(dump)
            rules.extend(one.rules)
            chains.extend(one.chains)
            warnings.extend(one.warnings)
    return FirewallScan(tuple(rules), tuple(chains), tuple(warnings))


@lru_cache(maxsize=512)
def assemble_namespace(dump: NamespaceDump) -> FirewallScan:
    """One namespace (owners and split brains never span namespaces).

    Cached on the exact tool output: the watcher re-reads namespaces whose rules (and
    counters) did not change, and then this costs one string comparison.
    """
    from bridgescope.collector.firewall import nftjson, owners, savefmt

    rules: list[Rule] = []
    chains: list[Chain] = []
    warnings: list[str] = list(dump.problems)
    for save in dump.saves:
        try:
            got_rules, got_chains = savefmt.parse_save(save.text, netns=dump.netns,
                                                       backend=save.backend, family=save.family)
        except BridgescopeError as err:
            warnings.append(str(err))
            continue
        rules.extend(got_rules)
        chains.extend(got_chains)
    for table_json in dump.nft_json:
        try:
            got_rules, got_chains = nftjson.parse_ruleset(table_json, netns=dump.netns)
        except BridgescopeError as err:
            warnings.append(str(err))
        else:
            rules.extend(got_rules)
            chains.extend(got_chains)
    attributed = owners.attribute(rules)
    warnings.extend(owners.split_brain_warnings(attributed))
    return FirewallScan(attributed, tuple(chains), tuple(warnings))
