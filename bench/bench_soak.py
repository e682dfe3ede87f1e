"""Soak: create container -> add forward -> remove it, over and over, with kill -9 at random
points and a restart (recovery) after each kill; the kernel and the state must never drift.

Each change runs in a forked child, as a `bridgescope` command would. In a random share of the
cycles one of the three changes is killed with SIGKILL: either at a crash point inside the
change (before a step of its plan, after the last step, after the state save: the
BRIDGESCOPE_CRASH_AT hook) or from outside after a random delay. A restart then runs the
recovery (what every command, `serve` and `restore` do first) and the cycle goes on from the
change that was killed, if recovery rolled it back.

After one warm-up cycle the host's picture is taken (links, IPv4 addresses, routes, firewall
rules of both iptables backends and native nftables, sysctls, container namespaces) with the
saved state; after every --check-every cycles both must be equal to it. Drift = checks that
found a difference (must be 0).

Run as root: .venv/bin/python bench/bench_soak.py [--cycles 1000] [--kill-rate 0.5] [--seed S]
Everything lives in a namespace named bssoak-<random> (and its containers' namespaces) and a
temporary state directory, removed at the end even on failure.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bridgescope.plumbing import api, journal, netns

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import hostpicture

from bridgescope.plumbing.steps import CRASH_AT_ENV

# Crash points of each change: "step N" for each step of its plan, then the two after it.
STEPS = {"create": 5, "forward": 1, "remove": 3}
SPEC = "8080:80"


def _points(change: str) -> list[str]:
    return [f"step {i}" for i in range(STEPS[change])] + ["save", "clear"]


def picture(host: str) -> dict:
    """Everything a change may touch, and the saved state and journal, comparable by ==."""
    return {**hostpicture.picture(host), "state": api.load_state(host),
            "journal": journal.pending(host) is not None}


def run_child(fn: Callable[[], object], crash_at: str | None, kill_after: float | None) -> bool:
    """Run fn in a forked child; True when the child died of SIGKILL."""
    pid = os.fork()
    if pid == 0:  # the child: one bridgescope command
        if crash_at:
            os.environ[CRASH_AT_ENV] = crash_at
        try:
            fn()
            os._exit(0)
        except BaseException as err:
            print(f"child failed: {err}", file=sys.stderr)
            os._exit(1)
    if kill_after is not None:
        time.sleep(kill_after)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return True
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"a change failed without being killed (status {status})")
    return False


def soak(host: str, cycles: int, kill_rate: float, check_every: int, rng: random.Random) -> dict:
    changes: dict[str, tuple[Callable[[], object], Callable[[], bool]]] = {
        "create": (lambda: api.create_container("c", "br0", host=host),
                   lambda: api.load_state(host).container("c") is not None),
        "forward": (lambda: api.add_forward("c", SPEC, host=host),
                    lambda: bool(api.load_state(host).forwards)),
        "remove": (lambda: api.remove_container("c", host=host),
                   lambda: api.load_state(host).container("c") is None),
    }
    kills = external = recovered = drift = checks = 0
    cycle_time = check_time = 0.0
    reference = None
    for cycle in range(cycles + 1):  # cycle 0: the warm-up
        doomed = rng.randrange(3) if cycle and rng.random() < kill_rate else None
        start = time.perf_counter()
        for index, (name, (change, done)) in enumerate(changes.items()):
            crash_at = kill_after = None
            if index == doomed:
                if rng.random() < 0.5:
                    crash_at = rng.choice(_points(name))
                else:
                    kill_after = rng.uniform(0, 0.08)
            if run_child(change, crash_at, kill_after):
                kills += 1
                external += crash_at is None
                recovered += api.recover(host=host) is not None  # the restart
                if not done():
                    run_child(change, None, None)
            if not done():
                raise RuntimeError(f"cycle {cycle}: {name} did not take effect")
        cycle_time += time.perf_counter() - start if cycle else 0.0
        if cycle == 0:
            reference = picture(host)
        elif cycle % check_every == 0 or cycle == cycles:
            t = time.perf_counter()
            now = picture(host)
            check_time += time.perf_counter() - t
            checks += 1
            if now != reference:
                drift += 1
                diff = [k for k in reference if reference[k] != now[k]]
                print(f"cycle {cycle}: drift in {diff}", file=sys.stderr)
    return {"cycles": cycles, "kills": kills, "kills_from_outside": external,
            "recovered": recovered, "checks": checks, "drift": drift,
            "ms_per_cycle": round(1000 * cycle_time / max(cycles, 1), 1),
            "ms_per_check": round(1000 * check_time / max(checks, 1), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--kill-rate", type=float, default=0.5,
                        help="share of cycles in which one change is killed (default 0.5)")
    parser.add_argument("--check-every", type=int, default=1, metavar="N",
                        help="compare the kernel and the state with the reference every N cycles")
    parser.add_argument("--firewall", default="nft", choices=("nft", "legacy", "nftables"))
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    host = f"bssoak-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="bssoak-state-") as state_dir:
        os.environ["BRIDGESCOPE_STATE_DIR"] = state_dir
        os.environ.pop(CRASH_AT_ENV, None)
        netns.create(host)
        try:
            api.create_network("br0", "10.77.0.0/24", host=host, firewall=args.firewall)
            result = soak(host, args.cycles, args.kill_rate, args.check_every, random.Random(seed))
        finally:
            for entry in sorted(os.listdir("/run/netns")):
                if entry == host or entry.startswith(host + "-"):
                    netns.destroy(entry)
    print(json.dumps({"seed": seed, "firewall": args.firewall, **result}))
    return 1 if result["drift"] else 0


if __name__ == "__main__":
    sys.exit(main())
