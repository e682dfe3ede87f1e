"""Shared fixtures: throwaway network namespaces that are removed even when a test fails.

Every kernel object a test makes carries this run's prefix (`bst` + 5 hex digits), so two
test runs on one machine never touch each other's objects and a sweep at the end of the
session can find anything a crashed test left behind.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

RUN_PREFIX = "bst" + secrets.token_hex(3)[:5]
IS_ROOT = os.geteuid() == 0
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (creates network namespaces)")
    for item in items:
        if "kernel" in item.keywords or "browser" in item.keywords:
            item.add_marker(skip)


def sh(*argv: str, ns: str | None = None, check: bool = True, input: str | None = None,
       timeout: float = 30) -> subprocess.CompletedProcess:
    """Run argv (never a shell string), optionally inside `ip netns exec NS`."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    res = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _pids_in(ns: str) -> list[int]:
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split()]


def delete_netns(ns: str) -> None:
    for pid in _pids_in(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def sweep(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with prefix; returns what was removed."""
    gone = []
    for entry in sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []:
        if entry.startswith(prefix):
            delete_netns(entry)
            gone.append(entry)
    return gone


@pytest.fixture(scope="session", autouse=True)
def _state_dir_outside_the_host(tmp_path_factory) -> Iterator[None]:
    """No test writes bridgescope state to /var/lib/bridgescope; tests may still point it
    somewhere else of their own (monkeypatch wins for their duration)."""
    old = os.environ.get("BRIDGESCOPE_STATE_DIR")
    os.environ["BRIDGESCOPE_STATE_DIR"] = str(tmp_path_factory.mktemp("bridgescope-state"))
    yield
    if old is None:
        os.environ.pop("BRIDGESCOPE_STATE_DIR", None)
    else:
        os.environ["BRIDGESCOPE_STATE_DIR"] = old


@pytest.fixture(scope="session")
def run_prefix() -> str:
    return RUN_PREFIX


@pytest.fixture
def netns(request) -> Iterator[Callable[[str], str]]:
    """Factory: netns("host") creates `<prefix>-host` (lo up) and returns its name."""
    made: list[str] = []
    test_tag = secrets.token_hex(2)

    def make(suffix: str) -> str:
        name = f"{RUN_PREFIX}{test_tag}-{suffix}"
        sh("ip", "netns", "add", name)
        made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in reversed(made):
        delete_netns(name)


@pytest.fixture(scope="session", autouse=True)
def _sweep_after_session() -> Iterator[None]:
    yield
    if IS_ROOT:
        left = sweep(RUN_PREFIX)
        if left:
            print(f"\nconftest: removed namespaces a test left behind: {left}", file=sys.stderr)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@pytest.fixture(scope="session")
def engines_confined() -> Iterator[None]:
    """No engine process runs in this (the host's) network namespace, before or after the engine
    tests: theirs must stay in the namespaces they made."""
    from engines import RUN_CONTAINERD, engine_processes_here, remove_empty_dirs

    before = engine_processes_here()
    assert not before, f"engine processes already run in the host namespace: {before}"
    made_run = not os.path.exists(RUN_CONTAINERD)
    yield
    if made_run:  # the engines' shims made it: what they left empty goes
        remove_empty_dirs(RUN_CONTAINERD)
    after = engine_processes_here()
    assert not after, f"engine processes left running in the host namespace: {after}"


@contextmanager
def sandbox_lab(run_prefix: str) -> Iterator:
    """The sandbox lab under a prefix of its own; taken down after, also when the test failed."""
    from bridgescope.plumbing.lab.sandbox import lab_down, lab_up

    prefix = f"{run_prefix}{secrets.token_hex(2)}"
    try:
        yield lab_up(prefix)
    finally:
        lab_down(prefix)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright, one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        try:
            yield b
        finally:
            b.close()
