"""Command lines a person can paste: the one formatter for every command bridgescope shows.

Previews, the details panels, the guided walk and the doctor's fixes all show commands here,
so they quote alike (shlex: a rule comment such as `bridgescope:fwd/web/tcp/*/8080` holds a
glob character and is quoted) and address a namespace alike (`ip -n NAME` where `ip` takes
it, `ip netns exec NAME` for anything else). Pure.
"""
from __future__ import annotations

import shlex
from collections.abc import Sequence


def line(argv: Sequence[str], *, stdin: str | None = None, background: bool = False) -> str:
    """argv as a shell line; a one-word argv starting with '#' stays a comment, `stdin` is
    given as a here-document, `background` runs it with `&`."""
    if len(argv) == 1 and argv[0].startswith("#"):
        return argv[0]
    text = shlex.join(argv)
    if stdin is not None:
        text += f" <<'EOF'\n{stdin}EOF"
    return text + (" &" if background else "")


def in_netns(name: str | None, argv: Sequence[str], *, stdin: str | None = None) -> str:
    """argv run inside the ip-netns namespace `name` (None: where the shell is)."""
    if name is None or (len(argv) == 1 and argv[0].startswith("#")):
        return line(argv, stdin=stdin)
    if argv and argv[0] == "ip":
        return line(("ip", "-n", name, *argv[1:]), stdin=stdin)
    return line(("ip", "netns", "exec", name, *argv), stdin=stdin)


def in_nsfs(path: str, argv: Sequence[str]) -> str:
    """argv run inside the namespace behind an nsfs path that has no ip-netns name."""
    return line(("nsenter", f"--net={path}", *argv))


def in_pid_netns(pid: int, argv: Sequence[str]) -> str:
    """argv run inside the network namespace of process `pid`."""
    return line(("nsenter", "-t", str(pid), "-n", *argv))
