"""The guided walk: one container's networking, built step by step the way Docker does it.

Pure data. Each step has its exact commands (what a person would type on the host), why it is
needed, and for three steps the seed blog recipe's wrong turn (docs/blog-recipe.md) with what
breaks, the doctor finding it produces, and the fix. `walklab` runs these commands inside a
throwaway lab; nothing here touches the kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

from bridgescope.collector import shell

BRIDGE, GATEWAY, SUBNET = "docker0", "172.17.0.1", "172.17.0.0/16"
CONTAINER_IP, PREFIXLEN = "172.17.0.2", 16
HOST_PORT, CONTAINER_PORT = 8080, 80
HOST_VETH = "vethweb0"  # Docker: "veth" + 7 random characters


@dataclass(frozen=True)
class WalkNames:
    """The walk lab's namespaces: <prefix>-host (the host), -inet, -client, -web (the container)."""
    prefix: str

    @property
    def host(self) -> str:
        return f"{self.prefix}-host"

    @property
    def inet(self) -> str:
        return f"{self.prefix}-inet"

    @property
    def client(self) -> str:
        return f"{self.prefix}-client"

    @property
    def container(self) -> str:
        return f"{self.prefix}-web"

    def all(self) -> tuple[str, ...]:
        return (self.container, self.client, self.inet, self.host)


@dataclass(frozen=True)
class Command:
    """argv as typed on the host (the lab runs it inside the host namespace)."""
    argv: tuple[str, ...]
    background: bool = False  # a long-running program (the container's server)

    @property
    def text(self) -> str:
        return shell.line(self.argv, background=self.background)


@dataclass(frozen=True)
class WrongTurn:
    commands: tuple[Command, ...]
    mistake: str  # what is wrong with it
    breaks: str  # what the user sees
    finding: str  # the doctor id that names it
    fix: tuple[Command, ...]


@dataclass(frozen=True)
class WalkStep:
    key: str
    title: str
    commands: tuple[Command, ...]
    why: str
    wrong_turn: WrongTurn | None = None
    # doctor findings that only say this step is not done yet (the walk shows them greyed as
    # "not built yet" until it is, instead of as errors)
    settles: tuple[str, ...] = ()


def _c(*argv: str, background: bool = False) -> Command:
    return Command(tuple(argv), background)


def steps(names: WalkNames, python: str = "python3") -> tuple[WalkStep, ...]:
    ctr = names.container
    cidr = f"{CONTAINER_IP}/{PREFIXLEN}"
    masq = ("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", SUBNET, "!", "-o", BRIDGE,
            "-j", "MASQUERADE")
    dnat = ("iptables", "-t", "nat", "-A", "DOCKER", "!", "-i", BRIDGE, "-p", "tcp", "-m", "tcp",
            "--dport", str(HOST_PORT), "-j", "DNAT", "--to-destination",
            f"{CONTAINER_IP}:{CONTAINER_PORT}")
    jumps = (_c("iptables", "-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type",
                "LOCAL", "-j", "DOCKER"),
             _c("iptables", "-t", "nat", "-A", "OUTPUT", "!", "-d", "127.0.0.0/8", "-m",
                "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"))
    return (
        WalkStep("bridge", "Create the bridge", (_c("ip", "link", "add", BRIDGE, "type", "bridge"),),
             "A bridge is a virtual switch inside the host: every container's virtual cable "
             "plugs into it. Docker creates docker0 once, when the daemon starts."),
        WalkStep("gateway", "Give the bridge the gateway address",
             (_c("ip", "addr", "add", f"{GATEWAY}/{PREFIXLEN}", "dev", BRIDGE),),
             "The bridge's own address is the containers' gateway. Because it carries the "
             f"prefix /{PREFIXLEN}, the kernel also adds the route {SUBNET} dev {BRIDGE}: the "
             "host now knows the whole container network is behind the bridge."),
        WalkStep("bridge-up", "Bring the bridge up", (_c("ip", "link", "set", BRIDGE, "up"),),
             "New links start down, and a down bridge switches nothing. The blog recipe "
             "forgets this; Docker sets the bridge up as the last step of creating it.",
             settles=("link-down",)),
        WalkStep("netns", "Create the container's network namespace",
             (_c("ip", "netns", "add", ctr), _c("ip", "-n", ctr, "link", "set", "lo", "up")),
             "A network namespace is the container's own, empty network stack: its own "
             "interfaces, addresses, routes and firewall. It starts with only lo (down); "
             "Docker sets lo up so programs inside can talk to 127.0.0.1."),
        WalkStep("veth", "Create the veth pair, one end inside the container",
             (_c("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", "eth0",
                 "netns", ctr),),
             "A veth pair is a virtual cable: what goes in one end comes out of the other. "
             "Docker creates the peer directly inside the namespace and names it eth0 there, so "
             "no 'eth0' ever exists in the host (the blog's `ip link add eth0 ...` fails on "
             "any host that already has an eth0)."),
        WalkStep("attach", "Plug the host end into the bridge",
             (_c("ip", "link", "set", HOST_VETH, "master", BRIDGE),),
             "Making the bridge the veth's master turns it into a bridge port: frames from "
             "the container now reach the switch, and the graph shows the new port."),
        WalkStep("up", "Set both ends of the cable up",
             (_c("ip", "link", "set", HOST_VETH, "up"), _c("ip", "-n", ctr, "link", "set", "eth0", "up")),
             "Both ends of a new veth pair are down. A link is only usable when both ends are "
             "up - the blog never sets either; Docker sets the host end up last, once the "
             "firewall rules for the container exist.",
             settles=("link-down",)),
        WalkStep("address", "Give the container its address - with the prefix length",
             (_c("ip", "-n", ctr, "addr", "add", cidr, "dev", "eth0"),),
             f"{cidr} means: my address is {CONTAINER_IP} and the whole {SUBNET} is reachable "
             "directly on eth0 - including the gateway.",
             WrongTurn((_c("ip", "-n", ctr, "addr", "add", CONTAINER_IP, "dev", "eth0"),),
                       "The blog adds the address without a prefix length, and the kernel makes "
                       f"it {CONTAINER_IP}/32: a network of one address.",
                       f"The gateway {GATEWAY} is now off-link: the next step fails with "
                       "'Nexthop has invalid gateway' and the container reaches nothing.",
                       "addr-no-prefix",
                       (_c("ip", "-n", ctr, "addr", "del", f"{CONTAINER_IP}/32", "dev", "eth0"),
                        _c("ip", "-n", ctr, "addr", "add", cidr, "dev", "eth0")))),
        WalkStep("route", "Add the default route via the gateway",
             (_c("ip", "-n", ctr, "route", "add", "default", "via", GATEWAY),),
             "Everything that is not on the container's own network goes to the gateway, "
             "the bridge's address in the host. Docker checks that the gateway is directly "
             "reachable first - which is exactly what a /32 address breaks.",
             settles=("no-default-route",)),
        WalkStep("forwarding", "Let the host route packets",
             (_c("sysctl", "-w", "net.ipv4.ip_forward=1"),),
             "By default Linux does not pass packets from one interface to another. The "
             "container's packets arrive on docker0 and must leave through the uplink: the "
             "host has to act as a router. Docker switches this on (and then sets the FORWARD "
             "policy to DROP).",
             settles=("ip-forward-off",)),
        WalkStep("masquerade", "Masquerade the container network on the way out",
             (_c(*masq),),
             f"{CONTAINER_IP} is a private address the outside world cannot answer. MASQUERADE "
             "rewrites the source of packets leaving the host to the uplink's address (and "
             f"back for the replies). -s {SUBNET} covers every container on the bridge; "
             f"! -o {BRIDGE} leaves container-to-container traffic alone.",
             WrongTurn((_c("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", f"{CONTAINER_IP}/24",
                           "-j", "MASQUERADE"),),
                       f"The blog writes -s {CONTAINER_IP}/24: a host address with a network mask. "
                       "iptables stores it as 172.17.0.0/24 - a quarter of a percent of the "
                       "bridge's /16 - and without ! -o docker0.",
                       "This container (.2) still gets out, so it looks fine; the 257th "
                       "container does not, and traffic between containers gets masqueraded.",
                       "masquerade-mask-mismatch",
                       (_c("iptables", "-t", "nat", "-D", "POSTROUTING", "-s", "172.17.0.0/24",
                           "-j", "MASQUERADE"), _c(*masq))),
             settles=("masquerade-missing",)),
        WalkStep("server", "Start the container's program",
             (_c("ip", "netns", "exec", ctr, python, "-I", "-m", "bridgescope.plumbing.lab.echo_server",
                 "web", str(CONTAINER_PORT), background=True),),
             "A container is a process in these namespaces. This one is a tiny web server on "
             f"port {CONTAINER_PORT} that answers with the address it saw - so you can see "
             "NAT at work. (-I: Python's isolated mode, so only the installed bridgescope "
             "runs as root, never a bridgescope/ lying in the current directory.)"),
        WalkStep("publish", f"Publish port {HOST_PORT} -> {CONTAINER_PORT} (docker run -p {HOST_PORT}:{CONTAINER_PORT})",
             (_c("iptables", "-t", "nat", "-N", "DOCKER"),) + jumps + (_c(*dnat),),
             f"DNAT rewrites the destination of packets for the host's port {HOST_PORT} to "
             f"{CONTAINER_IP}:{CONTAINER_PORT}. Docker keeps its DNATs in its own chain and "
             "jumps there from PREROUTING (packets from outside) and OUTPUT (the host's own "
             "connections) for local destinations only. Note the order: host port first.",
             WrongTurn((_c("iptables", "-t", "nat", "-N", "DOCKER"), _c(*dnat)),
                       "The blog appends the DNAT to a DOCKER chain but never jumps to it "
                       "(and never creates it: it fails with 'No chain/target/match by that "
                       "name' on a fresh host).",
                       "No packet ever meets the rule: clients get 'connection refused' from "
                       "the host itself.",
                       "dnat-unreachable", jumps)),
        WalkStep("accept", "Accept the published port in FORWARD",
             (_c("iptables", "-A", "FORWARD", "-d", f"{CONTAINER_IP}/32", "!", "-i", BRIDGE, "-o",
                 BRIDGE, "-p", "tcp", "-m", "tcp", "--dport", str(CONTAINER_PORT), "-j", "ACCEPT"),
              _c("iptables", "-A", "FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "ACCEPT"),
              _c("iptables", "-A", "FORWARD", "-o", BRIDGE, "-m", "conntrack", "--ctstate",
                 "RELATED,ESTABLISHED", "-j", "ACCEPT")),
             "Forwarded packets also cross the filter table's FORWARD chain. Docker sets its "
             "policy to DROP and accepts exactly the published port, the containers' outgoing "
             "traffic and the replies. This lab's FORWARD policy is ACCEPT, so nothing changes "
             "today - on a Docker host these rules are what makes the port work."),
    )


def step_index(all_steps: tuple[WalkStep, ...], key: str) -> int:
    for i, step in enumerate(all_steps):
        if step.key == key:
            return i
    raise KeyError(key)
