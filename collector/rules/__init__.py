"""One rule engine for every firewall backend (iptables-legacy, iptables-nft, nftables).

model: the shared rule model - option aliases, value parsers, the rule set with each hook's
base chains in priority order. matcher: does a rule match a packet (three-valued).
evaluator: a packet through a chain, a base chain, and every base chain of a hook.
access: what the doctor reads off single rules. NAT interpretation, reachability, the
packet path and the doctor all go through these; none parses a rule on its own.
"""
