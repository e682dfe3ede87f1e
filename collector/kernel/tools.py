"""Starting other programs as root without letting the caller's surroundings choose them.

bridgescope runs as root, often from a directory or a shell someone else could have
prepared. So every tool is named by an absolute path found once on a fixed PATH, every
child gets a small fixed environment, and Python children run in isolated mode (-I: no
current or script directory on sys.path, no PYTHON* variables, no user site-packages), so
a planted `bridgescope/` next to the caller can never be what runs.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

# Where Debian keeps system tools; deliberately not the caller's PATH.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Everything a child gets: tools' messages stay in one language and format.
ENV: dict[str, str] = {"PATH": SAFE_PATH, "LC_ALL": "C.UTF-8"}

_found: dict[str, str] = {}


def tool(name: str) -> str:
    """The absolute path of a tool on SAFE_PATH. A missing tool keeps its bare name, so
    starting it fails as before (the fixed PATH is searched, never the caller's)."""
    if os.path.isabs(name):
        return name
    if name not in _found:
        path = shutil.which(name, path=SAFE_PATH)
        if path is None:
            return name  # not cached: it may be installed while we run
        _found[name] = path
    return _found[name]


def command(argv: Sequence[str]) -> list[str]:
    """argv with its program resolved to an absolute path."""
    return [tool(argv[0]), *argv[1:]] if argv else []


def python_module(module: str, *args: str) -> list[str]:
    """This interpreter running `module` in isolated mode (the installed package only)."""
    return [sys.executable, "-I", "-m", module, *args]


def nsenter(path: str, argv: Sequence[str], *, mount: str | None = None) -> list[str]:
    """argv run inside the network namespace at path (and the mount namespace at mount)."""
    ns = [f"--net={path}"] + ([f"--mount={mount}"] if mount else [])
    return [tool("nsenter"), *ns, "--", *command(argv)]
