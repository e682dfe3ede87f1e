"""Sub-command `bridgescope snapshot [--json | --dot] [--netns NAME] [--engine-socket PATH]...`: one look."""
from __future__ import annotations

import argparse
import json
import sys

from bridgescope.collector.kernel.containers import choose_engine_sockets, unix_socket_path
from bridgescope.collector.kernel.snapshot import collect
from bridgescope.collector.render.export import to_dot, to_json, to_tree


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "snapshot", help="print every namespace, bridge, veth pair, route and NAT rule once",
        description="Scan every network namespace on the machine and print what the kernel has. "
        "Default output is a tree (bridge -> veth -> peer@namespace).")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the JSON document (stable ids)")
    fmt.add_argument("--dot", action="store_true", help="Graphviz dot, one cluster per namespace")
    parser.add_argument("--netns", metavar="NAME", default=None,
                        help="treat this namespace (name in /run/netns or nsfs path) as the host")
    parser.add_argument("--no-firewall", action="store_true",
                        help="skip reading iptables/nftables (faster where many namespaces hold rules; "
                             "those without any table cost one question each either way)")
    add_engine_socket_option(parser)
    parser.set_defaults(func=run)


def add_engine_socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine-socket", action="append", default=[], metavar="PATH",
                        type=_engine_socket,
                        help="a Docker or Podman API socket to ask for container names, or a containerd "
                             "socket for Kubernetes pods' (repeatable; DOCKER_HOST, CONTAINER_HOST and the "
                             "default sockets are asked too)")


def _engine_socket(value: str) -> str:
    path = unix_socket_path(value)
    if path is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a unix socket path (/path or unix:///path)")
    return path


def run(args: argparse.Namespace) -> int:
    choose_engine_sockets(args.engine_socket)
    snap = collect(args.netns, firewall=not args.no_firewall)
    if args.json:
        # indented for a person at a terminal; compact (C-encoded, 20x faster) into a pipe or file
        layout = {"indent": 2} if sys.stdout.isatty() else {"separators": (",", ":")}
        sys.stdout.write(json.dumps(to_json(snap), **layout))
        sys.stdout.write("\n")
    elif args.dot:
        sys.stdout.write(to_dot(snap))
    else:
        sys.stdout.write(to_tree(snap))
    return 0
