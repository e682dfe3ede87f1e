"""Write side: bridges, containers, NAT and port forwards, done as Docker does.

api        the functions the CLI and the web forms call (validate -> plan steps -> run -> save)
validate   names, CIDRs, addresses, ports, Docker `-p` specs (pure)
ipam       next free address on a subnet (pure)
rules      desired state -> tagged BRIDGESCOPE-* rules -> iptables-restore / nft text (pure)
steps      all-or-nothing runner: steps with undo, rollback, one plain-words error
state      desired state per managed host namespace, persisted atomically
netns      entering, creating and removing namespaces safely (threads, never the caller)
links      netlink (pyroute2) operations: bridge, veth, addresses, routes
backends   firewall backend choice and apply (iptables-nft-restore, nft -f)
legacy     python-iptables worker process for legacy-only hosts
conflicts  who already uses a host port (foreign forwards, listeners)
journal    the write-ahead intent of a change, and recovery after a crash
lab/       the sandbox lab (sandbox), the guided walk (walk, walklab), the echo server and probe
"""
