"""The `bridgescope` command line: one parser, sub-commands registered by their own modules.

Each cli_*.py module owns its sub-commands (`register(subparsers)` adds them and sets
`func`); this file only wires them together and turns errors into one line on stderr.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bridgescope.collector.errors import BridgescopeError

# Modules that add sub-commands, in the order they appear in --help.
_COMMAND_MODULES = (
    "bridgescope.webui.cli_serve",
    "bridgescope.webui.cli_snapshot",
    "bridgescope.webui.cli_plumbing",
    "bridgescope.webui.cli_doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridgescope",
        description="See and change a Linux host's container networking: bridges, veth pairs, "
        "namespaces, routes, MASQUERADE and DNAT port forwards.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
