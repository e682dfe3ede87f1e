"""A large, varied firewall corpus and a compact fingerprint of how it reads.

The corpus: every reference listing (iptables-save text in both iptables backends, nft JSON),
and a generated namespace of a few thousand iptables-save rules drawn by a seeded random
walk over the syntax the parser has to get right (negations, quotes with escapes and blanks,
counters before the rule and as `-c`, gotos, unknown modules and targets, port ranges and
lists, IPv6 destinations, Docker/CNI/Kubernetes chains and comments, jumps between chains).

The fingerprint: one short digest per rule, chain, warning, port forward and masquerade, in
order, so a golden file made once stays small and a difference names the item that changed.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import astuple
from pathlib import Path

from bridgescope.collector.firewall import assemble
from bridgescope.collector.firewall.readers import NamespaceDump, SaveText
from bridgescope.collector.model import Interface
from bridgescope.collector.rules.nat import interpret

DATA = Path(__file__).parent / "data" / "firewall"
GOLDEN = DATA / "corpus.golden"
GENERATED = 3000

_BRIDGES = ["docker0", "br-0123456789ab", "br-bench", "cni0", "podman0", "eth0", "lo"]
_CHAINS = {"nat": ["DOCKER", "BENCH", "CNI-HOSTPORT-DNAT", "CNI-DN-1a2b", "KUBE-SERVICES",
                   "KUBE-SEP-XYZ", "NETAVARK-HOSTPORT-DNAT", "BRIDGESCOPE-DNAT", "ORPHAN"],
           "filter": ["DOCKER", "DOCKER-FORWARD", "DOCKER-USER", "DOCKER_OUTPUT", "CNI-FORWARD",
                      "KUBE-FORWARD", "CUSTOM"],
           "raw": ["CUSTOM"]}
_BUILTIN = {"nat": ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            "filter": ["INPUT", "FORWARD", "OUTPUT"], "raw": ["PREROUTING", "OUTPUT"]}
_COMMENTS = ['"bench:r{n}"', '"bridgescope:fwd/c{n}/tcp/*/9{n}"', '"kubernetes service {n}"',
             '"CNI portfwd requirements"', '"dnat name: \\"net{n}\\" id: \\"c0ffee{n}\\""',
             '"netavark portmap"', 'plain{n}', '"two words {n}"', '"back\\\\slash {n}"', '""']


def corpus() -> list[NamespaceDump]:
    """Every reference listing in each iptables backend, nft JSON, and the generated one."""
    dumps = []
    for n, path in enumerate(sorted(DATA.glob("*.rules"))):
        family = 6 if "ipv6" in path.name else 4
        text = path.read_text()
        dumps.append(NamespaceDump(f"ns-ref{n}", (SaveText("nft", family, text),)))
        dumps.append(NamespaceDump(f"ns-leg{n}", (SaveText("legacy", family, text),)))
    for n, path in enumerate(sorted(DATA.glob("*.json"))):
        dumps.append(NamespaceDump(f"ns-json{n}", (), (path.read_text(),)))
    dumps.append(NamespaceDump("ns-gen", (SaveText("nft", 4, generated(GENERATED)),
                                          SaveText("legacy", 4, generated(GENERATED // 10, seed=2)))))
    return dumps


def interfaces() -> tuple[Interface, ...]:
    """docker0 and br-bench in ns-gen with one container each, so forwards resolve."""
    out: list[Interface] = []
    for n, (bridge, gateway, address) in enumerate([("docker0", "172.17.0.1/16", "172.17.0.2/16"),
                                                    ("br-bench", "10.99.0.254/16", "10.99.0.1/16")]):
        br, port, inside = f"ns-gen/if{10 + n}", f"ns-gen/if{20 + n}", f"ns-c{n}/if2"
        out += [Interface(id=br, netns="ns-gen", name=bridge, ifindex=10 + n, kind="bridge",
                          state="up", mtu=1500, mac=None, addresses=(gateway,)),
                Interface(id=port, netns="ns-gen", name=f"veth{n}", ifindex=20 + n, kind="veth",
                          state="up", mtu=1500, mac=None, master=br, peer=inside),
                Interface(id=inside, netns=f"ns-c{n}", name="eth0", ifindex=2, kind="veth",
                          state="up", mtu=1500, mac=None, addresses=(address,), peer=port)]
    return tuple(out)


def generated(count: int, seed: int = 1) -> str:
    """iptables-save text of `count` rules over nat, filter and raw."""
    pick = random.Random(seed)
    by_table: dict[str, list[str]] = {table: [] for table in _BUILTIN}
    for n in range(count):
        table = pick.choice(["nat", "nat", "nat", "filter", "raw"])
        chain = pick.choice(_BUILTIN[table] + _CHAINS[table])
        by_table[table].append(_rule(pick, n, table, chain))
    lines = []
    for table, rules in by_table.items():
        lines.append(f"*{table}")
        lines += [f":{c} {'DROP' if c == 'FORWARD' else 'ACCEPT'} [{n}:{n * 60}]"
                  for n, c in enumerate(_BUILTIN[table])]
        lines += [f":{c} - [0:0]" for c in _CHAINS[table]]
        if table == "nat":  # the usual entries, so most DNATs are reached
            lines += ["-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
                      "-A PREROUTING -j BENCH", "-A OUTPUT ! -d 127.0.0.0/8 -j DOCKER",
                      "-A PREROUTING -j CNI-HOSTPORT-DNAT", "-A CNI-HOSTPORT-DNAT -j CNI-DN-1a2b"]
        lines += rules
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _rule(pick: random.Random, n: int, table: str, chain: str) -> str:
    parts = [f"[{pick.randrange(50)}:{pick.randrange(5000)}]"] if pick.random() < 0.3 else []
    parts += ["-A", chain]
    if pick.random() < 0.5:
        parts += ["!"] * (pick.random() < 0.2) + [pick.choice(["-d", "--destination", "-s"]),
                                                  _address(pick, n)]
    if pick.random() < 0.5:
        parts += ["!"] * (pick.random() < 0.3) + [pick.choice(["-i", "-o"]), pick.choice(_BRIDGES)]
    proto = pick.choice(["tcp", "udp", None])
    if proto:
        parts += ["-p", proto]
        if pick.random() < 0.8:
            parts += [pick.choice([f"-m {proto} --dport {1000 + n}", f"-m {proto} ! --dport {n}",
                                   f"-m {proto} --dport {n}:{n + 9}", f"-m {proto} --sport 53",
                                   f"-m multiport --dports {n},{n + 100}:{n + 109}",
                                   f"-m {proto} --destination-port {n + 1}"])]
    for _ in range(pick.choice([0, 0, 1, 1, 2])):
        parts.append(pick.choice([
            "-m addrtype --dst-type LOCAL", "-m conntrack --ctstate RELATED,ESTABLISHED",
            "-m set --match-set docker-ext-bridges-v4 dst", "-m frob --wibble -1 x",
            f"-m mark --mark 0x{n:x}/0xffff", "-m comment --comment " +
            pick.choice(_COMMENTS).format(n=n), "-m state ! --state INVALID"]))
    if pick.random() < 0.1:
        parts += ["-c", str(n), str(n * 40)]
    if pick.random() < 0.95:
        parts += _target(pick, n, table, jumps=chain in _BUILTIN[table] and pick.random() < 0.1)
    return " ".join(parts)


def _address(pick: random.Random, n: int) -> str:
    a, b = divmod(n, 250)
    return pick.choice([f"198.51.{a}.{b + 1}/32", f"10.{a}.0.0/16", "127.0.0.0/8",
                        f"172.17.0.{b + 1}", "0.0.0.0/0", f"192.0.2.{b}/24"])


def _target(pick: random.Random, n: int, table: str, jumps: bool) -> list[str]:
    """Jumps only from built-in chains: paths stay short, as in real rule sets (the walk
    follows every path, so a random web of jumps between user chains explodes)."""
    if jumps:
        return [pick.choice(["-j", "-g"]), pick.choice(_CHAINS[table])]
    a, b = divmod(n, 250)
    choices = [["-j", "ACCEPT"], ["-j", "DROP"], ["-j", "RETURN"],
               ["-j", "LOG", "--log-prefix", '"-j DROP "', "--log-level", "4"],
               ["-j", "MARK", "--set-xmark", "0x4000/0x4000"], ["-j", "FROB", "!", "--x", "y"]]
    if table == "nat":
        choices += [["-j", "DNAT", "--to-destination", f"10.99.{a}.{b + 1}:80"]] * 6 + [
            ["-j", "DNAT", "--to-destination", f"172.17.0.2:{n % 60000 + 1}"],
            ["-j", "DNAT", "--to-destination", f"10.99.{a}.{b + 1}:80-89/8000"],
            ["-j", "DNAT", "--to-destination", "[fd00::2]:80"],
            ["-j", "DNAT", "--to-destination", "not-an-address"],
            ["-j", "MASQUERADE"], ["-j", "MASQUERADE", "--to-ports", "1024-65535"],
            ["-j", "SNAT", "--to-source", f"192.0.2.{b}"], ["-j", "REDIRECT", "--to-ports", "8080"]]
    return pick.choice(choices)


def fingerprint(dumps: list[NamespaceDump], with_interfaces: tuple[Interface, ...]) -> list[str]:
    """One line per rule, chain, warning, forward and masquerade: kind, index, digest."""
    scan = assemble(dumps)
    view = interpret(scan.rules, scan.chains, with_interfaces, ())
    lines = []
    for kind, items in (("rule", scan.rules), ("chain", scan.chains), ("warning", scan.warnings),
                        ("forward", view.port_forwards), ("masquerade", view.masquerades),
                        ("nat-warning", view.warnings)):
        lines += [f"{kind} {n} {_digest(item)}" for n, item in enumerate(items)]
    return lines


def _digest(item: object) -> str:
    value = item if isinstance(item, str) else astuple(item)
    return hashlib.blake2b(repr(value).encode(), digest_size=8).hexdigest()


if __name__ == "__main__":  # write the golden file from the code as it is now
    GOLDEN.write_text("\n".join(fingerprint(corpus(), interfaces())) + "\n")
