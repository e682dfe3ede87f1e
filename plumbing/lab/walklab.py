"""The walk lab: the guided walk's commands, run for real inside throwaway namespaces.

  <P>-client (198.51.100.2) --- <P>-inet (router, "internet" 203.0.113.10:80) --- <P>-host (198.18.0.2)

The host starts with nothing but its uplink; each walk step adds what Docker adds. Progress
is kept in a small JSON file under the state directory, so a second, read-only dashboard
(attendees) shows the same progress. `reset` removes every namespace and process of the lab
and builds the bare host again; `down` leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bridgescope.collector.kernel import tools
from bridgescope.plumbing import netns
from bridgescope.plumbing.errors import PlumbingError, ValidationError
from bridgescope.plumbing.lab import sandbox as lab
from bridgescope.plumbing.lab.walk import Command, WalkNames, WalkStep, step_index, steps
from bridgescope.plumbing.state import state_dir

DEFAULT_PREFIX = "bswalk"
# Wired like the sandbox lab, so it has the sandbox lab's addresses.
HOST_UPLINK, INTERNET = lab.HOST_UPLINK, lab.INTERNET
TIMEOUT = 15.0


@dataclass(frozen=True)
class Ran:
    command: str
    ok: bool
    output: str  # the tool's own words (stderr on failure)


@dataclass(frozen=True)
class Outcome:
    step: str
    action: str  # "apply", "wrong", "fix"
    ran: tuple[Ran, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.ran)


class WalkLab:
    def __init__(self, prefix: str = DEFAULT_PREFIX):
        if not prefix or not prefix.replace("-", "").isalnum() or len(prefix) > 20:
            raise ValidationError("prefix", f"{prefix!r} is not a usable lab prefix "
                                  "(letters, digits and '-', at most 20)")
        self.names = WalkNames(prefix)
        self.steps: tuple[WalkStep, ...] = steps(self.names, python=sys.executable)

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def progress_file(self) -> Path:
        return state_dir() / f"walk-{self.names.prefix}.json"

    def is_up(self) -> bool:
        return netns.exists(self.names.host)

    def up(self) -> tuple[str, ...]:
        """Build the bare host (uplink, fake internet, client); idempotent. Returns the
        commands that do what was done (for the audit log)."""
        if self.is_up():
            return ()
        try:
            done = self._base()
        except BaseException:
            self.down()
            raise
        self._save({})
        return done

    def down(self) -> tuple[str, ...]:
        """Remove every namespace and process of the lab; returns the equivalent commands."""
        done: list[str] = []
        for name in self.names.all():
            if netns.exists(name):
                pids = netns.destroy(name)
                done += [f"kill -KILL {' '.join(map(str, pids))}"] if pids else []
                done.append(f"ip netns del {name}")
        self.progress_file.unlink(missing_ok=True)
        return tuple(done)

    def reset(self) -> tuple[str, ...]:
        return self.down() + self.up()

    def _base(self) -> tuple[str, ...]:
        """The bare host with its uplink, the fake internet and a client: the sandbox lab's."""
        n = self.names
        lab.wire_uplinks(n.host, n.inet, n.client)
        started = _start_server(n.inet, lab.echo_server("internet", 80), 80)
        return lab.uplink_commands(n.host, n.inet, n.client) + ((started,) if started else ())

    # --- progress -------------------------------------------------------------------------

    def progress(self) -> dict[str, str]:
        try:
            saved = json.loads(self.progress_file.read_text())
        except (OSError, ValueError):
            saved = {}
        return {s.key: saved.get(s.key, "pending") for s in self.steps}

    def _save(self, status: dict[str, str]) -> None:
        self.progress_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.progress_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.progress_file)

    def next_step(self) -> str | None:
        status = self.progress()
        return next((s.key for s in self.steps if status[s.key] in ("pending", "failed")), None)

    # --- actions --------------------------------------------------------------------------

    def apply(self, key: str) -> Outcome:
        step = self._ready(key, allow={"pending", "failed"})
        return self._run(step, "apply", step.commands, "done")

    def wrong_turn(self, key: str) -> Outcome:
        step = self._ready(key, allow={"pending", "failed"})
        if step.wrong_turn is None:
            raise ValidationError("step", f"step {step.title!r} has no wrong turn to take")
        return self._run(step, "wrong", step.wrong_turn.commands, "wrong")

    def fix(self, key: str) -> Outcome:
        step = self._ready(key, allow={"wrong"})
        return self._run(step, "fix", step.wrong_turn.fix, "done")

    def _ready(self, key: str, allow: set[str]) -> WalkStep:
        if not self.is_up():
            raise ValidationError("step", "the walk lab is not running: reset it first")
        try:
            index = step_index(self.steps, key)
        except KeyError:
            raise ValidationError("step", f"there is no walk step called {key!r}") from None
        status = self.progress()
        step = self.steps[index]
        if status[key] not in allow:
            raise ValidationError("step", f"step {step.title!r} is {status[key]}; "
                                  f"that action needs it to be {' or '.join(sorted(allow))}")
        missing = next((s for s in self.steps[:index] if status[s.key] in ("pending", "failed")), None)
        if missing is not None:
            raise ValidationError("step", f"do step {missing.title!r} first")
        return step

    def _run(self, step: WalkStep, action: str, commands: tuple[Command, ...], success: str) -> Outcome:
        ran = []
        for command in commands:
            result = self._one(command)
            ran.append(result)
            if not result.ok:
                break
        outcome = Outcome(step.key, action, tuple(ran))
        status = self.progress()
        status[step.key] = success if outcome.ok else "failed"
        self._save(status)
        return outcome

    def _one(self, command: Command) -> Ran:
        # nsenter --net, not `ip netns exec`: the latter also makes a private mount namespace,
        # where `ip netns add` would bind its new namespace out of everyone else's sight; for
        # the same reason, when we run in such a namespace ourselves, the host's mounts are used
        argv = tools.nsenter(str(netns.NETNS_DIR / self.names.host), command.argv,
                             mount=netns.pin_mounts())
        if command.background:
            ns = command.argv[3] if command.argv[:3] == ("ip", "netns", "exec") else self.names.host
            try:
                _start_server(ns, list(command.argv[4:]), int(command.argv[-1]))
            except PlumbingError as err:
                return Ran(command.text, False, str(err))
            return Ran(command.text, True, "listening")
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                                 env=tools.ENV)
        except subprocess.TimeoutExpired:
            return Ran(command.text, False, f"no answer within {TIMEOUT:.0f} s")
        words = (res.stderr or res.stdout).strip()
        return Ran(command.text, res.returncode == 0, words)


def _start_server(ns: str, argv: list[str], port: int) -> str | None:
    """A detached server inside namespace ns; returns once it listens (or raises), with the
    command line started (None: something listened already)."""
    if not netns.exists(ns):
        raise PlumbingError(f"start {argv[-2]}", f"namespace {ns} does not exist")
    return lab.start_listening(str(netns.NETNS_DIR / ns), argv, port, f"start {argv[-2]}")
