"""Doctor checks on NAT and filter rules (docs/doctor.md).

They read the interpreted view (port forwards, masquerades) the firewall collector built and,
where that is not enough, the parsed rules themselves. forward-blocked runs the blocked
packet through the shared evaluator (rules/evaluator.py) to name the table, backend and rule
or policy that drops it, and addresses its fix to that backend. Docker (<=27, 28.x, 29.x, the nftables
backend), CNI, Podman and bridgescope layouts are all healthy here: every check accepts each
project's own way of doing the same thing.
"""
from __future__ import annotations

from collections import defaultdict
from ipaddress import IPv4Address, IPv4Network

from bridgescope.collector import shell
from bridgescope.collector.doctor.finding import Finding
from bridgescope.collector.firewall.owners import BRIDGESCOPE_TAG
from bridgescope.collector.firewall.savefmt import tokenize
from bridgescope.collector.hostview import Attachment, BridgeNet, HostView, in_ns, ipv4_addresses, netns_name
from bridgescope.collector.kernel.listeners import ListenerRead
from bridgescope.collector.model import Masquerade, Namespace, PortForward, Rule, portforward_id
from bridgescope.collector.rules import access
from bridgescope.collector.rules.evaluator import DROP, HookRun, describe
from bridgescope.collector.rules.matcher import Packet
from bridgescope.collector.rules.model import Base, nft_family
from bridgescope.collector.rules.nat import forward_packet, forward_verdict
from bridgescope.collector.rules.reach import HOST, LOOPBACK, OUTSIDE, SOURCE_LABELS, forward_reach

# The tool that writes to each iptables backend and family. `iptables` is the nft one on
# current distributions; a legacy table is named as such, or the fix lands in the other half.
_IPTABLES = {("legacy", 4): "iptables-legacy", ("legacy", 6): "ip6tables-legacy",
             ("nft", 4): "iptables", ("nft", 6): "ip6tables"}


# --- small lookups ----------------------------------------------------------------------

def host_rules(view: HostView) -> tuple[Rule, ...]:
    host_id = view.host.id if view.host else None
    return tuple(r for r in view.snap.rules if r.netns == host_id and r.family == 4)


def host_forwards(view: HostView) -> tuple[PortForward, ...]:
    host_id = view.host.id if view.host else None
    return tuple(p for p in view.snap.port_forwards if p.netns == host_id)


def rule_of(view: HostView, netns: str, chain: str | None, text: str | None) -> Rule | None:
    """The parsed rule behind an interpreted forward or masquerade."""
    return view.rule(netns, chain, text)


def pf_objects(view: HostView, pf: PortForward) -> tuple[str, ...]:
    ids = [portforward_id(pf)]
    owner = view.owner_of_address(IPv4Address(pf.to_ip)) if _is_v4(pf.to_ip) else None
    if owner is not None:
        ids.append(owner.id)
    return tuple(ids)


def attachment_with(view: HostView, addr: IPv4Address) -> Attachment | None:
    return view.attachment_with(addr)


def _is_v4(text: str) -> bool:
    try:
        IPv4Address(text)
        return True
    except ValueError:
        return False


def delete_command(ns: Namespace | None, rule: Rule) -> str:
    """A command line that removes exactly this rule from its backend and family."""
    if rule.backend == "nftables":
        return in_ns(ns, "nft", "delete", "rule", nft_family(rule.family), rule.table, rule.chain,
                     "handle", str(rule.handle))
    # the saved line's own tokens (quotes and escapes undone), quoted again for a shell: a
    # comment holding `$(...)` must not run when the fix is pasted
    tokens = tokenize(rule.text)[0]
    spec = tokens[2:] if tokens[:1] == ["-A"] else tokens
    return in_ns(ns, iptables_tool(rule.backend, rule.family), "-t", rule.table, "-D", rule.chain, *spec)


def iptables_tool(backend: str, family: int = 4) -> str:
    return _IPTABLES.get((backend, family), "ip6tables" if family == 6 else "iptables")


def iptables(ns: Namespace | None, *argv: str, backend: str = "nft") -> str:
    return in_ns(ns, iptables_tool(backend), *argv)


def iptables_backend(view: HostView, table: str) -> str:
    """Where a new IPv4 rule of `table` belongs on this host: the iptables backend that
    already holds Docker's rules there (its chains are what a jump must reach), else the
    one holding most; a host with none gets `iptables`, the nft one."""
    counts: dict[str, int] = defaultdict(int)
    for rule in host_rules(view):
        if rule.table == table and rule.backend in ("legacy", "nft"):
            counts[rule.backend] += 1
            if rule.owner == "docker":
                return rule.backend
    return max(counts, key=counts.__getitem__) if counts else "nft"


# --- masquerade --------------------------------------------------------------------------

def _outbound(view: HostView, m: Masquerade, net: BridgeNet) -> bool:
    """Does m apply to traffic leaving the bridge's subnet for the outside world?"""
    if m.out == net.bridge.name or (m.destination and not m.dest_not):
        return False
    rule = rule_of(view, m.netns, m.chain, m.rule_text)
    # hairpin / port-forward helpers are not the outbound masquerade
    return rule is None or not (access.option(rule, "--mark") or access.option(rule, "--src-type"))


def _source(m: Masquerade) -> IPv4Network | None:
    try:
        return IPv4Network(m.source, strict=False) if m.source else IPv4Network("0.0.0.0/0")
    except ValueError:
        return None


def masquerade(view: HostView) -> tuple[Finding, ...]:
    host = view.host
    masqs = [m for m in view.snap.masquerades if host and m.netns == host.id]
    out = []
    for net in view.bridges:
        if not net.attachments:
            continue
        for gateway in net.gateways:
            out.extend(_masquerade_for(view, net, gateway.network,
                                       [m for m in masqs if _outbound(view, m, net)]))
    return tuple(out)


def _masquerade_for(view: HostView, net: BridgeNet, subnet: IPv4Network,
                    masqs: list[Masquerade]) -> list[Finding]:
    host = view.host
    sources = [(m, s) for m in masqs if (s := _source(m)) is not None]
    if any(subnet.subnet_of(s) for _, s in sources):
        return []
    members = [a.ip for att in net.attachments for a in ipv4_addresses(att.inner) if a.ip in subnet]
    # CNI and Podman masquerade per container address: fine as long as every member is covered
    all_covered = bool(members) and all(any(ip in s for _, s in sources) for ip in members)
    # a /32 is a per-container rule: covered above when its container exists, orphan-rule if not
    partial = [(m, s) for m, s in sources if s.overlaps(subnet) and s.prefixlen < 32]
    if partial:
        m, s = partial[0]
        rule = rule_of(view, m.netns, m.chain, m.rule_text)
        fix = ((delete_command(host, rule),) if rule else ()) + (
            _masquerade_command(view, rule, str(subnet), net.bridge.name),)
        return [Finding(
            "masquerade-mask-mismatch", "warning" if all_covered else "error",
            (net.bridge.id,), f"MASQUERADE covers {s}, the bridge {net.bridge.name} has {subnet}",
            f"The source match {s} covers only part of the bridge's network {subnet}: containers "
            f"outside it leave with their private address and get no answer. A host address "
            f"with a network mask (-s 172.17.0.2/24) is stored as its network (172.17.0.0/24). "
            f"Docker matches the whole subnet: -s {subnet} ! -o {net.bridge.name}.", fix)]
    if all_covered:
        return []
    return [Finding(
        "masquerade-missing", "error", (net.bridge.id,),
        f"no MASQUERADE for {subnet} ({net.bridge.name})",
        f"Nothing rewrites the source of packets from {subnet} leaving the host, so they go out "
        "with a private address the outside world cannot answer: containers have no internet.",
        (_masquerade_command(view, None, str(subnet), net.bridge.name),))]


def _masquerade_command(view: HostView, beside: Rule | None, source: str, bridge: str) -> str:
    """Docker's MASQUERADE (-s SUBNET ! -o BRIDGE), written where `beside` (a rule it
    replaces) lives: the same nftables chain, or the same iptables backend."""
    if beside is not None and beside.backend == "nftables":
        return in_ns(view.host, "nft", "add", "rule", nft_family(beside.family), beside.table,
                     beside.chain, "ip", "saddr", source, "oifname", "!=", f'"{bridge}"', "masquerade")
    backend = beside.backend if beside is not None else iptables_backend(view, "nat")
    return iptables(view.host, "-t", "nat", "-A", "POSTROUTING", "-s", source, "!", "-o", bridge,
                    "-j", "MASQUERADE", backend=backend)


def masquerade_bridge_traffic(view: HostView) -> tuple[Finding, ...]:
    """A MASQUERADE without `! -o bridge` also rewrites container-to-container traffic - which
    only meets iptables when bridge netfilter is on."""
    host = view.host
    if host is None or host.sysctl("net.bridge.bridge-nf-call-iptables") != "1":
        return ()
    out = []
    for net in view.bridges:
        if not net.attachments:
            continue
        for m in view.snap.masquerades:
            if m.netns != host.id or not _catches_bridge(view, m, net):
                continue
            rule = rule_of(view, m.netns, m.chain, m.rule_text)
            fixed = _masquerade_command(view, rule, m.source or "0.0.0.0/0", net.bridge.name)
            out.append(Finding(
                "masquerade-bridge-traffic", "warning", (net.bridge.id,),
                f"MASQUERADE for {m.source or 'any source'} also rewrites traffic inside {net.bridge.name}",
                f"The rule has no '! -o {net.bridge.name}', and bridge netfilter passes traffic "
                f"between containers on {net.bridge.name} through iptables: a container sees its "
                f"neighbours' connections coming from the gateway instead of their own addresses. "
                f"Docker writes -s SUBNET ! -o {net.bridge.name}.",
                ((delete_command(host, rule),) if rule else ()) + (fixed,)))
    return tuple(out)


def _catches_bridge(view: HostView, m: Masquerade, net: BridgeNet) -> bool:
    if m.out_not or m.out or (m.destination and not m.dest_not) or m.to_source:
        return False
    src = _source(m)
    # a source that only partly covers the subnet is masquerade-mask-mismatch, whose fix
    # (Docker's rule) also adds the missing `! -o`: one cause, one finding
    if src is None or not any(n.subnet_of(src) for n in net.networks()):
        return False
    rule = rule_of(view, m.netns, m.chain, m.rule_text)
    if rule is None or not _outbound(view, m, net):
        return False
    # CNI and Podman return early for destinations inside the subnet (-d SUBNET -j ACCEPT)
    return not any(r.position < rule.position and (r.target or "").upper() in ("ACCEPT", "RETURN")
                   and (d := access.network(r, "-d")) and not d[1]
                   and any(n.subnet_of(d[0]) for n in net.networks())
                   for r in view.snap.rules
                   if r.netns == rule.netns and r.table == rule.table and r.chain == rule.chain)


# --- DNAT port forwards ------------------------------------------------------------------

def dnat_unreachable(view: HostView, listeners: ListenerRead | None = None) -> tuple[Finding, ...]:
    """A forward whose first packet no DNAT catches, in the reachability verdict's own words
    (rules/reach.py, as the panels show it): from outside (from 127.0.0.1 for a forward bound
    there), an error; from the host itself only, a warning."""
    out = []
    for pf in host_forwards(view):
        if pf.via != "dnat":
            continue
        chain = pf.chain or "DOCKER"
        fr = forward_reach(view, pf, listeners)
        bound = _loopback(pf.host_ip)
        first = fr.verdict(LOOPBACK if bound else OUTSIDE)
        if first is not None and first.cause == "nat-unreached":
            jumps = _jumps_to(view, pf, chain, bound)
            out.append(Finding(
                "dnat-unreachable", "error", pf_objects(view, pf),
                f"DNAT for port {pf.host_port} sits in chain {chain}, which no packet to the port reaches",
                f"The rule rewriting port {pf.host_port} to {pf.to_ip}:{pf.to_port} is in chain "
                f"{chain}; from {SOURCE_LABELS[first.source]} it is {first.reason}.", jumps))
            continue
        # (a forward bound to 127.0.0.1 is for the host itself; Docker serves it with
        # docker-proxy, since its OUTPUT jump skips 127.0.0.0/8 on purpose)
        own = fr.verdict(HOST)
        if own is not None and own.cause == "nat-unreached" and chain != "PREROUTING" and not bound:
            out.append(Finding(
                "dnat-not-from-host", "warning", pf_objects(view, pf),
                f"port {pf.host_port} is forwarded for other machines, not for the host itself",
                f"Connections made on the host to its own address and port {pf.host_port} are "
                f"{own.reason}.", _jumps_to(view, pf, chain, bound, hooks=("output",))))
    return tuple(out)


def _jumps_to(view: HostView, pf: PortForward, chain: str, bound: bool,
              hooks: tuple[str, ...] = ("prerouting", "output")) -> tuple[str, ...]:
    """The jumps that lead a forward's packets to the chain holding its DNAT, in the backend
    (and, for nftables, the table) that holds that chain: a jump cannot cross either."""
    host = view.host
    if pf.backend == "nftables":
        return _nft_jumps(view, pf, chain, ("output",) if bound else hooks)
    if bound:
        return (iptables(host, "-t", "nat", "-A", "OUTPUT", "-d", pf.host_ip, "-m",
                         "addrtype", "--dst-type", "LOCAL", "-j", chain, backend=pf.backend),)
    out = []
    if "prerouting" in hooks:
        out.append(iptables(host, "-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type",
                            "LOCAL", "-j", chain, backend=pf.backend))
    if "output" in hooks:
        out.append(iptables(host, "-t", "nat", "-A", "OUTPUT", "!", "-d", "127.0.0.0/8", "-m", "addrtype",
                            "--dst-type", "LOCAL", "-j", chain, backend=pf.backend))
    return tuple(out)


def _nft_jumps(view: HostView, pf: PortForward, chain: str, hooks: tuple[str, ...]) -> tuple[str, ...]:
    """`nft add rule FAMILY TABLE BASE fib daddr type local jump CHAIN` for the table's nat base
    chain on each hook; none where the table has no such base chain to add it to."""
    rule = rule_of(view, pf.netns, pf.chain, pf.rule_text)
    if rule is None:
        return ()
    out = []
    for hook in hooks:
        for base in view.ruleset.bases(pf.netns, hook):
            c = base.chain
            if c.backend == "nftables" and c.table == rule.table and c.family == rule.family and base.is_nat:
                out.append(in_ns(view.host, "nft", "add", "rule", nft_family(c.family), c.table, c.name,
                                 "fib", "daddr", "type", "local", "jump", chain))
                break
    return tuple(out)


def _unreached(view: HostView, pf: PortForward) -> bool:
    """No DNAT catches the forward's first packet (dnat-unreachable says so)."""
    first = forward_reach(view, pf, None).verdict(LOOPBACK if _loopback(pf.host_ip) else OUTSIDE)
    return first is not None and first.cause == "nat-unreached"


def nothing_listens(view: HostView, listeners: ListenerRead) -> tuple[Finding, ...]:
    """A published port whose container runs nothing on the destination port: the verdicts
    (rules/reach.py) say refused for that reason, so connections are refused."""
    out = []
    seen: set[str] = set()
    for pf in host_forwards(view):
        if pf.via != "dnat" or pf.container is None:
            continue
        fr = forward_reach(view, pf, listeners)
        if fr.id in seen or fr.listening is not False:
            continue
        seen.add(fr.id)
        ns = view.snap.namespace(pf.container)
        name = ns.name if ns else pf.container
        out.append(Finding(
            "nothing-listens", "warning", pf_objects(view, pf),
            f"nothing listens on {pf.proto}/{pf.to_port} in {name}: port {pf.host_port} is refused",
            f"The forward sends port {pf.host_port} to {pf.to_ip}:{pf.to_port}, and the packets get "
            f"there, but no program in {name} listens on {pf.proto}/{pf.to_port}, so the kernel "
            "answers with a reset: clients see \"connection refused\". Start the container's "
            "program (listening on 0.0.0.0 or its address), or point the forward at its port.",
            (in_ns(ns, "ss", "-ltnup"),)))
    return tuple(out)


def _loopback(addr: str | None) -> bool:
    return bool(addr) and _is_v4(addr) and IPv4Address(addr).is_loopback


def loopback_port_exposed(view: HostView) -> tuple[Finding, ...]:
    """A port published on 127.0.0.1 that the LAN can reach: the DNAT
    rewrites before routing, so nothing stops a neighbour sending to 127.0.0.1 via this
    host - unless a raw PREROUTING rule drops such packets that did not come in on lo."""
    host = view.host
    out = []
    raw = [r for r in host_rules(view) if r.table == "raw" and (r.target or "").upper() == "DROP"]
    for pf in host_forwards(view):
        if pf.via != "dnat" or not _loopback(pf.host_ip) or any(_guards(r, pf) for r in raw):
            continue
        out.append(Finding(
            "loopback-port-exposed", "warning", pf_objects(view, pf),
            f"port {pf.host_port} published on {pf.host_ip} is reachable from the network",
            f"The DNAT for {pf.host_ip}:{pf.host_port} also rewrites packets that a neighbour "
            f"sends to {pf.host_ip} through this host's network interface, so the container's "
            "port is open to the LAN although it looks bound to localhost (Docker before 28.0, "
            "moby#45610). Docker 28 adds a raw-table DROP for it.",
            (iptables(host, "-t", "raw", "-A", "PREROUTING", "-d", f"{pf.host_ip}/32", "!", "-i", "lo",
                      "-p", pf.proto, "-m", pf.proto, "--dport", str(pf.host_port), "-j", "DROP",
                      backend=_iptables_of(view, pf)),)))
    return tuple(out)


def _iptables_of(view: HostView, pf: PortForward) -> str:
    """The iptables backend a rule for pf goes to: its DNAT's, when that is iptables."""
    return pf.backend if pf.backend in ("legacy", "nft") else iptables_backend(view, "nat")


def _guards(rule: Rule, pf: PortForward) -> bool:
    dst, iif = access.network(rule, "-d"), access.interface(rule, "-i")
    port = access.option(rule, "--dport")
    return (dst is not None and not dst[1] and IPv4Address(pf.host_ip) in dst[0]
            and iif == ("lo", True) and (port is None or port[0] == (str(pf.host_port),)))


def _forward_run(view: HostView, pf: PortForward) -> HookRun:
    """The published port's first packet through the forward hook, as nat.interpret ran it."""
    net = view.bridge_of_address(IPv4Address(pf.to_ip)) if _is_v4(pf.to_ip) else None
    bridges = frozenset(n.bridge.name for n in view.bridges)
    packet = forward_packet(pf, rule_of(view, pf.netns, pf.chain, pf.rule_text),
                            net.bridge.name if net else None, bridges)
    return forward_verdict(view.ruleset, pf.netns, packet)


def _outbound_run(view: HostView, net: BridgeNet) -> HookRun | None:
    """A container's first packet to somewhere beyond the host through the forward hook."""
    src = next((str(a.ip) for att in net.attachments for a in ipv4_addresses(att.inner)), None)
    if view.host is None or src is None:
        return None
    bridges = frozenset(n.bridge.name for n in view.bridges)
    packet = Packet(4, None, None, None, src=src, iif=net.bridge.name, oif=view.uplink(),
                    not_oif=bridges, bridges=bridges)
    return forward_verdict(view.ruleset, view.host.id, packet)


def _policy_elsewhere(run: HookRun) -> Base | None:
    """The base chain whose DROP policy decides although another table accepts the packet:
    an ACCEPT ends the walk through its own base chain only."""
    if run.verdict != DROP or run.decider is None or run.decider[1] is not None:
        return None
    return run.decider[0] if run.accepted_elsewhere() else None


def _policy_fix(ns: Namespace | None, base: Base) -> str:
    chain = base.chain
    if chain.backend == "nftables":
        return in_ns(ns, "nft", "chain", nft_family(chain.family), chain.table, chain.name,
                     "{ policy accept; }")
    return in_ns(ns, iptables_tool(chain.backend, chain.family), "-P", chain.name, "ACCEPT")


def _policy_finding(view: HostView, base: Base, run: HookRun, objects: tuple[str, ...]) -> Finding:
    others = ", ".join(describe(b) for b in run.accepted_elsewhere())
    return Finding(
        "forward-blocked", "error", objects,
        f"{describe(base)} has policy DROP: it drops forwarded traffic other tables accept",
        f"Forwarded packets pass every base chain on the forward hook, of every backend. "
        f"{others[0].upper() + others[1:]} accepts them, but an ACCEPT ends the packet's walk "
        f"through its own chain only; then {describe(base)} has no rule for them and its "
        "policy DROP drops them, and a drop anywhere is final: published ports time out and "
        "containers reach nothing beyond the host. Adding accepts to the other table does not "
        "help; the policy of this one decides.",
        (_policy_fix(view.host, base),))


def _drop_where(run: HookRun | None) -> str:
    """Which table (and rule) dropped, in words, when the evaluator can tell."""
    if run is None or run.verdict != DROP or run.decider is None:
        return "the filter FORWARD path"
    base, rule = run.decider
    return describe(base) + (f" (its rule `{rule.text}`)" if rule is not None else " (its policy DROP)")


def _accept_command(view: HostView, run: HookRun | None, spec: tuple[str, ...],
                    nft_spec: tuple[str, ...]) -> str:
    """An ACCEPT put first in the base chain that dropped, in its own backend: `iptables -I
    FORWARD SPEC -j ACCEPT`, or `nft insert rule ... accept` for an nftables chain (an
    appended accept would come after the rule that drops)."""
    base = run.decider[0] if run is not None and run.decider else None
    if base is not None and base.chain.backend == "nftables":
        c = base.chain
        return in_ns(view.host, "nft", "insert", "rule", nft_family(c.family), c.table, c.name,
                     *nft_spec, "accept")
    backend = base.chain.backend if base is not None else iptables_backend(view, "filter")
    chain = base.chain.name if base is not None else "FORWARD"
    return in_ns(view.host, iptables_tool(backend), "-I", chain, *spec, "-j", "ACCEPT")


def _nft_oif(bridge: BridgeNet | None) -> tuple[str, ...]:
    return ("oifname", f'"{bridge.bridge.name}"') if bridge else ()


def forward_blocked(view: HostView) -> tuple[Finding, ...]:
    out: list[Finding] = []
    by_policy: dict[tuple, tuple[Base, HookRun, list[str]]] = {}  # one cause, one finding

    def blocked_by_policy(run: HookRun | None, objects: tuple[str, ...]) -> bool:
        base = _policy_elsewhere(run) if run is not None else None
        if base is None:
            return False
        key = (base.key, base.chain.name)
        by_policy.setdefault(key, (base, run, []))[2].extend(objects)
        return True

    for pf in host_forwards(view):
        if pf.forward_accept is not False or _unreached(view, pf):
            continue
        run = _forward_run(view, pf)
        if blocked_by_policy(run, pf_objects(view, pf)):
            continue
        bridge = view.bridge_of_address(IPv4Address(pf.to_ip)) if _is_v4(pf.to_ip) else None
        oif = ("-o", bridge.bridge.name) if bridge else ()
        out.append(Finding(
            "forward-blocked", "error", pf_objects(view, pf),
            f"the FORWARD chain drops port {pf.host_port}'s traffic to {pf.to_ip}:{pf.to_port}",
            f"The DNAT rewrites the packet, but {_drop_where(run)} has no ACCEPT for "
            f"{pf.to_ip} port {pf.to_port} and drops it, so the connection times out "
            "(it is not refused). Docker pairs each DNAT with such an ACCEPT.",
            (_accept_command(view, run, ("-d", f"{pf.to_ip}/32", *oif, "-p", pf.proto, "-m", pf.proto,
                                         "--dport", str(pf.to_port)),
                             ("ip", "daddr", pf.to_ip, *_nft_oif(bridge), pf.proto, "dport",
                              str(pf.to_port))),)))
    for net in view.bridges:
        run = _outbound_run(view, net) if net.attachments else None
        if run is None or run.verdict != DROP or blocked_by_policy(run, (net.bridge.id,)):
            continue
        br = net.bridge.name
        out.append(Finding(
            "forward-blocked", "error", (net.bridge.id,),
            f"nothing accepts traffic from {br} on its way out: the FORWARD path drops it",
            f"Packets from {br}'s containers to anywhere beyond the host are dropped by "
            f"{_drop_where(run)}, so containers have no outside access. Docker accepts "
            f"-i {br} (and replies with a conntrack rule).",
            (_accept_command(view, run, ("-i", br, "!", "-o", br),
                             ("iifname", f'"{br}"', "oifname", "!=", f'"{br}"')),
             _accept_command(view, run, ("-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"),
                             ("oifname", f'"{br}"', "ct", "state", "related,established")))))
    for base, run, objects in by_policy.values():
        out.append(_policy_finding(view, base, run, tuple(dict.fromkeys(objects))))
    return tuple(out)


# --- bridge-level netfilter: hairpin and br_netfilter --------------------------------------

def _proxyless(rule: Rule | None, bridge: str) -> bool:
    """A DNAT that also catches traffic coming from the bridge (no `! -i bridge`)."""
    return rule is not None and access.interface(rule, "-i") != (bridge, True)


def hairpin_off(view: HostView) -> tuple[Finding, ...]:
    host = view.host
    if host is None or host.sysctl("net.bridge.bridge-nf-call-iptables") != "1":
        return ()  # without bridge netfilter, DNAT back into the bridge is routed, not hairpinned
    out = []
    for pf in host_forwards(view):
        att = attachment_with(view, IPv4Address(pf.to_ip)) if _is_v4(pf.to_ip) else None
        rule = rule_of(view, pf.netns, pf.chain, pf.rule_text)
        if att is None or att.port.hairpin is not False or not _proxyless(rule, att.bridge.name):
            continue
        out.append(Finding(
            "hairpin-off", "warning", (att.port.id,) + pf_objects(view, pf),
            f"{att.namespace.name} cannot reach its own published port {pf.host_port}",
            f"The DNAT also applies to traffic from {att.bridge.name}, so when the container "
            f"connects to the host's port {pf.host_port} the bridge must send the frame back out "
            f"of the port it came in on - which it refuses while hairpin mode is off on "
            f"{att.port.name}: the connection times out.",
            (in_ns(host, "ip", "link", "set", att.port.name, "type", "bridge_slave", "hairpin", "on"),
             iptables(host, "-t", "nat", "-A", "POSTROUTING", "-s", f"{pf.to_ip}/32", "-d",
                      f"{pf.to_ip}/32", "-p", pf.proto, "-m", pf.proto, "--dport",
                      str(pf.to_port), "-j", "MASQUERADE", backend=_iptables_of(view, pf)))))
    return tuple(out)


def br_netfilter_off(view: HostView) -> tuple[Finding, ...]:
    host = view.host
    if host is None or host.sysctl("net.bridge.bridge-nf-call-iptables") != "0":
        return ()
    rules = host_rules(view)
    proxyless = _proxyless_targets(view)
    needs = [r for r in rules if _icc_drop(r, view) or _own_port_masquerade(r, proxyless)]
    if not needs:
        return ()
    bridges = tuple(n.bridge.id for n in view.bridges if n.attachments)
    return (Finding(
        "br-netfilter-off", "error", (host.id,) + bridges,
        "bridge netfilter is off, but the rules rely on it",
        "net.bridge.bridge-nf-call-iptables is 0, so traffic between containers on the same "
        f"bridge never meets iptables: rules like \"{needs[0].text}\" do nothing (icc=false "
        "does not isolate, and a container reaching a neighbour's published port times out). "
        "Docker loads br_netfilter for exactly these cases.",
        ("modprobe br_netfilter",
         in_ns(host, "sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1"))),)


def _icc_drop(rule: Rule, view: HostView) -> bool:
    if (rule.target or "").upper() != "DROP" or rule.table != "filter":
        return False
    i, o = access.interface(rule, "-i"), access.interface(rule, "-o")
    return any(i == o == (n.bridge.name, False) for n in view.bridges)


def _proxyless_targets(view: HostView) -> set[IPv4Address]:
    """Containers reached by a DNAT that also catches their own bridge's traffic."""
    out = set()
    for pf in host_forwards(view):
        att = attachment_with(view, IPv4Address(pf.to_ip)) if _is_v4(pf.to_ip) else None
        if att is not None and _proxyless(rule_of(view, pf.netns, pf.chain, pf.rule_text),
                                          att.bridge.name):
            out.add(IPv4Address(pf.to_ip))
    return out


def _own_port_masquerade(rule: Rule, members: set[IPv4Address]) -> bool:
    """Docker's proxy-less hairpin rule -s C/32 -d C/32 -j MASQUERADE, for a proxy-less DNAT
    (Docker <= 27 also adds it when docker-proxy handles hairpin, and then it needs nothing)."""
    if (rule.target or "").upper() != "MASQUERADE":
        return False
    s, d = access.network(rule, "-s"), access.network(rule, "-d")
    return bool(s and d and s == d and s[0].prefixlen == 32 and s[0].network_address in members)


# --- rule hygiene ------------------------------------------------------------------------

def split_brain(view: HostView) -> tuple[Finding, ...]:
    backends: dict[str, set[str]] = {}
    legacy_tables: dict[str, set[str]] = {}
    for r in view.snap.rules:
        if r.family == 4:
            backends.setdefault(r.netns, set()).add(r.backend)
            if r.backend == "legacy":
                legacy_tables.setdefault(r.netns, set()).add(r.table)
    out = []
    for ns in ((view.host,) if view.host else ()) + view.containers():
        if {"legacy", "nft"} <= backends.get(ns.id, set()):
            tables = sorted(legacy_tables[ns.id])
            out.append(Finding(
                "split-brain", "error", (ns.id,),
                f"{ns.name} has rules in both iptables-legacy and iptables-nft",
                "Two programs wrote rules through different iptables backends. The kernel runs "
                "both sets at the same hooks and priorities, in the order the tables were "
                "registered (no listing shows it), and each tool sees only its own half: an "
                "ACCEPT in one does not save a packet the other drops, and rules \"exist\" "
                "yet do nothing.",
                (in_ns(ns, "iptables-legacy-save") + " > legacy.rules",
                 in_ns(ns, "iptables-nft-restore", "--noflush") + " < legacy.rules")
                + tuple(f"{in_ns(ns, 'iptables-legacy', '-t', t, '-F')} && "
                        f"{in_ns(ns, 'iptables-legacy', '-t', t, '-X')}" for t in tables)))
    return tuple(out)


def duplicate_rule(view: HostView) -> tuple[Finding, ...]:
    scope = {ns.id: ns for ns in ((view.host,) if view.host else ()) + view.containers()}
    copies: dict[tuple, list[Rule]] = defaultdict(list)
    for r in view.snap.rules:
        if r.netns in scope:
            copies[(r.netns, r.backend, r.family, r.table, r.chain, access.normalized_text(r))].append(r)
    out = []
    for rules in copies.values():
        if len(rules) < 2:
            continue
        rule, ns = rules[0], scope[rules[0].netns]
        out.append(Finding(
            "duplicate-rule", "warning", (ns.id,),
            f"rule in {rule.table}/{rule.chain} appears {len(rules)} times",
            f"\"{rule.text}\" is installed {len(rules)} times. Only the first copy ever "
            "matches; the others are leftovers of a script that appended without checking "
            "(iptables -C) first, and deleting \"the\" rule later leaves a copy behind.",
            _delete_copies(ns, rules)))
    return tuple(out)


def _delete_copies(ns: Namespace, rules: list[Rule]) -> tuple[str, ...]:
    """Every copy but the first: by its own handle in nftables; in iptables `-D` removes
    the first copy it finds, so the same line once per extra copy."""
    if rules[0].backend == "nftables":
        return tuple(delete_command(ns, r) for r in rules[1:])
    return (delete_command(ns, rules[0]),) * (len(rules) - 1)


_OBJECT_KINDS = ("net/", "ctr/", "fwd/")


def orphan_rule(view: HostView, owned: frozenset[str] | None = None) -> tuple[Finding, ...]:
    """Rules left behind: pointing at an address nobody has any more, or (when the caller
    knows which objects bridgescope's saved state owns) tagged for an object it does not."""
    unowned = _unowned_tagged(view, owned) if owned is not None else {}
    out = list(_unowned_findings(view, unowned))
    seen = {id(r) for rules in unowned.values() for r in rules}
    host = view.host
    for rule in host_rules(view):
        if id(rule) in seen:
            continue
        addr = _dangling_address(view, rule)
        if addr is None:
            continue
        net = view.bridge_of_address(addr)
        out.append(Finding(
            "orphan-rule", "warning", (net.bridge.id,) if net else (),
            f"rule in {rule.table}/{rule.chain} points at {addr}, which no interface has",
            f"\"{rule.text}\" refers to {addr} on {net.bridge.name if net else 'a bridge'}'s "
            "network, but no container has that address any more: a leftover of a container "
            "that was removed without its rules (and a trap for the next container to get "
            "that address).",
            (delete_command(host, rule),)))
    return tuple(out)


def _unowned_tagged(view: HostView, owned: frozenset[str]) -> dict[str, list[Rule]]:
    """Tag -> rules of ours (comment `bridgescope:<kind>/<name>`) that no saved state owns."""
    out: dict[str, list[Rule]] = {}
    for rule in host_rules(view):
        tag = (rule.comment or "")[len(BRIDGESCOPE_TAG):] if (rule.comment or "").startswith(BRIDGESCOPE_TAG) else ""
        if tag.startswith(_OBJECT_KINDS) and tag not in owned:
            out.setdefault(tag, []).append(rule)
    return out


def _unowned_findings(view: HostView, unowned: dict[str, list[Rule]]) -> tuple[Finding, ...]:
    host = view.host
    out = []
    for tag, rules in sorted(unowned.items()):
        texts = {r.text for r in rules}
        pf = next((p for p in host_forwards(view) if p.rule_text in texts), None)
        acts = (f" (port {pf.host_port}/{pf.proto} still goes to {pf.to_ip}:{pf.to_port})"
                if pf else "")
        out.append(Finding(
            "orphan-rule", "warning", pf_objects(view, pf) if pf else ((host.id,) if host else ()),
            f"{len(rules)} rule{'s' if len(rules) != 1 else ''} tagged {BRIDGESCOPE_TAG}{tag} that no saved "
            "bridgescope state owns",
            f"The rules tagged {BRIDGESCOPE_TAG}{tag} are in the kernel, but bridgescope's saved state has "
            "no such object: a change was interrupted after the kernel changed and before it "
            f"was recorded. They still act{acts}, bridgescope does not know them, and a new "
            "forward on the same port would be shadowed by them. `bridgescope restore` "
            "removes them.",
            (_restore_command(host),) + tuple(delete_command(host, r) for r in rules)))
    return tuple(out)


def _restore_command(host: Namespace | None) -> str:
    name = netns_name(host) if host else None
    return shell.line(("bridgescope", "restore", *(("--netns", name) if name else ())))


def _dangling_address(view: HostView, rule: Rule) -> IPv4Address | None:
    candidates = []
    dnat = access.dnat_destination(rule) if (rule.target or "").upper() == "DNAT" else None
    if dnat is not None:
        candidates.append(dnat[0])
    for name in ("-s", "-d"):
        found = access.network(rule, name)
        if found and not found[1] and found[0].prefixlen == 32:
            candidates.append(found[0].network_address)
    for addr in candidates:
        if view.bridge_of_address(addr) is not None and view.owner_of_address(addr) is None:
            return addr
    return None
