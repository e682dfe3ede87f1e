"""The `bridgescope` command line: one parser, sub-commands registered by their own modules.

Each cli_*.py module owns its sub-commands (`register(subparsers)` adds them and sets
`func`); this file only wires them together and turns errors into one line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bridgescope.collector.errors import BridgescopeError

# Sub-command -> (module that registers it, its line in --help), in --help order. Only the
# module of the command being run is imported: `--help` and `snapshot` must not pay for
# flask, the plumbing or pyroute2. tests/test_cli_startup.py keeps the lines equal to the
# modules' own help.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("bridgescope.webui.cli_serve", "serve the live dashboard"),
    "snapshot": ("bridgescope.webui.cli_snapshot",
                 "print every namespace, bridge, veth pair, route and NAT rule once"),
    "network": ("bridgescope.webui.cli_plumbing", "create or remove a bridge network"),
    "container": ("bridgescope.webui.cli_plumbing", "create, remove or run a command in a container"),
    "forward": ("bridgescope.webui.cli_plumbing", "publish a container port on the host"),
    "lab": ("bridgescope.webui.cli_plumbing", "the sandbox lab: a whole demo host in namespaces"),
    "restore": ("bridgescope.webui.cli_plumbing",
                "re-apply the saved networks, containers and forwards (after a reboot) and clean up leftovers"),
    "doctor": ("bridgescope.webui.cli_doctor",
               "find what is broken in the host's container networking, and the fix"),
    "agent": ("bridgescope.webui.cli_agent",
              "serve one host's topology, doctor and metrics to a fleet dashboard (bearer-token API)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for `command` (its module registers it), or, without one, the listing."""
    parser = argparse.ArgumentParser(
        prog="bridgescope",
        description="See and change a Linux host's container networking: bridges, veth pairs, "
        "namespaces, routes, MASQUERADE and DNAT port forwards.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command][0]).register(sub)
    else:
        for name, (_, text) in COMMANDS.items():
            sub.add_parser(name, help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BridgescopeError as err:
        print(f"bridgescope: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bridgescope: interrupted", file=sys.stderr)
        return 130
    except PermissionError as err:
        print(f"bridgescope: permission denied ({err.strerror}): run as root or with "
              "CAP_NET_ADMIN and CAP_SYS_ADMIN", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
