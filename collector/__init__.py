"""Read side: kernel -> one immutable Snapshot, and everything computed from it.

kernel/    the edge: namespaces, raw rtnetlink sockets, veth pairing, engine names, route
           lookups, the one way into a namespace (setns), tool paths, collect()
firewall/  iptables-legacy / iptables-nft / nftables readers and parsers, owners, docker-proxy
rules/     one rule model, matcher and evaluator for every backend; NAT interpretation
doctor/    findings: links, addresses, routes, sysctls, NAT and filter rules
live/      the Watcher (events -> re-reads -> deltas) and the subscriber fan-out
render/    JSON / dot / tree export, Cytoscape elements with positions
model      the Snapshot and its parts (plain frozen dataclasses)
hostview   the host as the doctor and the graph see it: bridges and what hangs off them
packetpath one packet traced through routes, bridges and rules
"""
