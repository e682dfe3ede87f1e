"""Python children cannot be hijacked: a `bridgescope/` planted in the directory bridgescope
was started from, or on PYTHONPATH, never runs as root in the lab's servers or the legacy
firewall worker; every other tool is named by an absolute path."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RUN_PREFIX, sh

from bridgescope.collector.kernel import tools
from bridgescope.plumbing.lab import sandbox as lab
from bridgescope.plumbing.lab import walklab

PLANTED = ("import pathlib, sys\n"
           "pathlib.Path({marker!r}).write_text(' '.join(sys.argv))\n")


def plant(root: Path, marker: Path) -> None:
    """A complete fake bridgescope package whose echo_server and legacy worker only leave a
    marker file."""
    pkg = root / "bridgescope" / "plumbing"
    pkg.mkdir(parents=True)
    (root / "bridgescope" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    for module in ("echo_server", "legacy"):
        (pkg / f"{module}.py").write_text(PLANTED.format(marker=str(marker)))


@pytest.fixture
def planted(tmp_path):
    """(cwd, env, markers): a working directory and a PYTHONPATH that both hold a planted
    package. bridgescope itself starts isolated, as the console script in effect does (its
    sys.path starts at the venv's bin, and sudo drops PYTHONPATH); its children inherit the
    planted working directory and environment."""
    markers = {"cwd": tmp_path / "ran-from-cwd", "pythonpath": tmp_path / "ran-from-pythonpath"}
    for where, marker in markers.items():
        plant(tmp_path / where, marker)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pythonpath")}
    return tmp_path / "cwd", env, markers


def run_bridgescope(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_python_children_are_isolated_and_tools_absolute():
    argv = lab.echo_server("web", 80)
    assert argv[:3] == [sys.executable, "-I", "-m"]
    entered = tools.nsenter("/run/netns/x", ["ip", "link"])
    assert entered[0] == "/usr/bin/nsenter" and entered[-2] == tools.tool("ip")
    assert os.path.isabs(tools.tool("ip")) and tools.ENV["PATH"] == tools.SAFE_PATH
    server = next(s for s in walklab.WalkLab("x").steps if s.key == "server")
    assert " -I -m bridgescope.plumbing.lab.echo_server web 80 &" in server.commands[0].text


@pytest.mark.kernel
def test_planted_echo_server_never_runs_in_the_walk_lab(planted):
    cwd, env, markers = planted
    prefix = f"{RUN_PREFIX}i{secrets.token_hex(1)}"
    up = run_bridgescope(f"from bridgescope.plumbing.lab.walklab import WalkLab; WalkLab({prefix!r}).up()",
                         cwd, env)
    try:
        assert up.returncode == 0, up.stderr
        assert not markers["cwd"].exists() and not markers["pythonpath"].exists()
        # the real server answers: the installed echo_server, not the planted one
        reply = sh("curl", "-s", "-m", "5", f"http://{walklab.INTERNET}/", ns=f"{prefix}-client")
        assert reply.stdout.strip() == f"internet saw {lab.CLIENT_UPLINK}"
    finally:
        walklab.WalkLab(prefix).down()


@pytest.mark.kernel
def test_planted_legacy_worker_never_runs(planted, netns):
    cwd, env, markers = planted
    ns = netns("legacy")
    code = ("from bridgescope.plumbing import legacy; from bridgescope.plumbing.rules import Change; "
            f"legacy.apply('/run/netns/{ns}', Change(new_chains=(('filter', 'BRIDGESCOPE-ISO'),)))")
    done = run_bridgescope(code, cwd, env)
    assert done.returncode == 0, done.stderr
    assert not markers["cwd"].exists() and not markers["pythonpath"].exists()
    assert ":BRIDGESCOPE-ISO" in sh("iptables-legacy-save", "-t", "filter", ns=ns).stdout
