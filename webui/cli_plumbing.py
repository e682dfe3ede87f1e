"""Sub-commands that change the kernel: network, container, forward, lab, restore.

Each handler turns arguments into one plumbing API call and prints what it did (or, with
--dry-run, the equivalent ip/iptables commands); errors reach cli.main as one line.
"""
from __future__ import annotations

import argparse
import sys

from bridgescope.collector.kernel.containers import choose_engine_sockets
from bridgescope.plumbing import api, netns
from bridgescope.plumbing.backends import CHOICES
from bridgescope.plumbing.errors import ValidationError
from bridgescope.plumbing.lab import sandbox as lab
from bridgescope.plumbing.lab import walklab
from bridgescope.webui.cli_snapshot import add_engine_socket_option


def _common(p: argparse.ArgumentParser, *, mutating: bool = True) -> None:
    p.add_argument("--netns", metavar="NAME", default=None,
                   help="treat this network namespace as the host")
    if mutating:
        p.add_argument("--dry-run", action="store_true",
                       help="print the equivalent ip/iptables commands and change nothing")
        p.add_argument("--firewall", choices=CHOICES, default="auto",
                       help="firewall backend (default: the one the host already uses)")


def _kw(args: argparse.Namespace) -> dict:
    return {"host": args.netns, "firewall": args.firewall, "dry_run": args.dry_run}


def _report(result: api.Result, args: argparse.Namespace) -> int:
    if result.recovery:  # an interrupted earlier change, rolled back before this one
        print(result.recovery.summary, file=sys.stderr)
    if args.dry_run:
        for command in result.commands:
            print(command)
    print(result.summary, file=sys.stderr if args.dry_run else sys.stdout)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    _register_network(sub)
    _register_container(sub)
    _register_forward(sub)
    _register_lab(sub)
    p = sub.add_parser("restore", help="re-apply the saved networks, containers and forwards "
                                       "(after a reboot) and clean up leftovers")
    _common(p)
    p.set_defaults(func=lambda a: _report(api.restore(**_kw(a)), a))


def _register_network(sub: argparse._SubParsersAction) -> None:
    net = sub.add_parser("network", help="create or remove a bridge network").add_subparsers(
        dest="network_command", metavar="ACTION", required=True)
    p = net.add_parser("create", help="bridge + gateway + forwarding + MASQUERADE")
    p.add_argument("name")
    p.add_argument("--subnet", required=True, metavar="CIDR")
    p.add_argument("--gateway", metavar="IP")
    p.add_argument("--no-masquerade", dest="masquerade", action="store_false")
    _common(p)
    p.set_defaults(func=lambda a: _report(api.create_network(
        a.name, a.subnet, gateway=a.gateway, masquerade=a.masquerade, **_kw(a)), a))
    p = net.add_parser("rm", help="remove a network (refuses while containers are attached)")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="remove its containers too")
    _common(p)
    p.set_defaults(func=lambda a: _report(api.remove_network(a.name, force=a.force, **_kw(a)), a))


def _register_container(sub: argparse._SubParsersAction) -> None:
    ctr = sub.add_parser("container", help="create, remove or run a command in a container") \
        .add_subparsers(dest="container_command", metavar="ACTION", required=True)
    p = ctr.add_parser("create", help="netns + veth + address + default route (+ forwards)")
    p.add_argument("name")
    p.add_argument("--network", required=True)
    p.add_argument("--ip")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CONT[/tcp|udp|sctp]")
    _common(p)
    p.set_defaults(func=lambda a: _report(api.create_container(
        a.name, a.network, ip=a.ip, ports=a.publish, **_kw(a)), a))
    p = ctr.add_parser("rm", help="remove a container, its namespace and its forwards")
    p.add_argument("name")
    _common(p)
    p.set_defaults(func=lambda a: _report(api.remove_container(a.name, **_kw(a)), a))
    p = ctr.add_parser("exec", help="run a command inside a container: exec NAME -- CMD...")
    p.add_argument("name")
    _common(p, mutating=False)
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command, after --")
    p.set_defaults(func=_exec)


def _exec(args: argparse.Namespace) -> int:
    """argparse hands over everything after NAME; options may still precede the `--`."""
    rest, host = list(args.argv), args.netns
    while rest and rest[0] != "--":
        if rest[0] == "--netns" and len(rest) > 1:
            host, rest = rest[1], rest[2:]
        elif rest[0].startswith("--netns="):
            host, rest = rest[0].split("=", 1)[1], rest[1:]
        else:
            break
    cmd = rest[1:] if rest[:1] == ["--"] else rest
    return api.exec_in_container(args.name, cmd, host=host)


def _register_forward(sub: argparse._SubParsersAction) -> None:
    fwd = sub.add_parser("forward", help="publish a container port on the host") \
        .add_subparsers(dest="forward_command", metavar="ACTION", required=True)
    for action, fn, text in (("add", api.add_forward, "DNAT, FORWARD accept, hairpin, localhost"),
                             ("rm", api.remove_forward, "remove a published port")):
        p = fwd.add_parser(action, help=text)
        p.add_argument("container")
        p.add_argument("spec", metavar="[IP:]HOSTPORT:CONTAINERPORT[/tcp|udp|sctp]")
        _common(p)
        add_engine_socket_option(p)  # a container another engine runs is named through its API
        p.set_defaults(func=lambda a, fn=fn: _forward(fn, a))


def _forward(fn, args: argparse.Namespace) -> int:
    choose_engine_sockets(args.engine_socket)
    return _report(fn(args.container, args.spec, **_kw(args)), args)


def _register_lab(sub: argparse._SubParsersAction) -> None:
    labp = sub.add_parser("lab", help="the sandbox lab: a whole demo host in namespaces") \
        .add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    p = labp.add_parser("up", help="build (or complete) the lab")
    p.add_argument("--prefix", default=lab.DEFAULT_PREFIX)
    p.add_argument("--firewall", choices=CHOICES, default="auto")
    p.set_defaults(func=_lab_up)
    p = labp.add_parser("down", help="remove the lab completely (and the guided walk's lab)")
    p.add_argument("--prefix", default=None, help=f"the lab's prefix (default {lab.DEFAULT_PREFIX})")
    p.add_argument("--walk-prefix", default=None,
                   help="prefix of the guided walk's lab, removed too if it is up (default: "
                        f"{walklab.DEFAULT_PREFIX} without --prefix, else the same prefix)")
    p.set_defaults(func=_lab_down)


def _lab_down(args: argparse.Namespace) -> int:
    prefix = args.prefix or lab.DEFAULT_PREFIX
    lab.lab_down(prefix)
    print(f"lab {prefix} removed")
    # --prefix P names P's labs only: another prefix's walk lab is none of its business
    walk_prefix = args.walk_prefix or args.prefix or walklab.DEFAULT_PREFIX
    try:
        walk = walklab.WalkLab(walk_prefix)
    except ValidationError:
        if args.walk_prefix:
            raise
        return 0  # no walk lab can have this prefix
    if any(netns.exists(name) for name in walk.names.all()):
        walk.down()
        print(f"walk lab {walk_prefix} removed")
    return 0


def _lab_up(args: argparse.Namespace) -> int:
    info = lab.lab_up(args.prefix, firewall=args.firewall)
    print(info.describe())
    return 0
