"""All-or-nothing: a command is a list of steps, each with its undo.

Running stops at the first failure, undoes what was done in reverse order and raises one
PlumbingError naming the step in plain words. A dry run only lists the teaching commands.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bridgescope.collector.errors import BridgescopeError
from bridgescope.plumbing.errors import PlumbingError

Action = Callable[[], None]

# Tests set this to a step description to prove that a failure there leaves nothing behind.
FAIL_AT_ENV = "BRIDGESCOPE_FAIL_AT_STEP"
# Tests and the soak bench set this to a crash point ("step N": before the plan's step N,
# "save": after the last step, "clear": after the state save) to kill -9 this very process
# there and prove that the journal's recovery repairs whatever such a crash leaves.
CRASH_AT_ENV = "BRIDGESCOPE_CRASH_AT"


@dataclass(frozen=True)
class Step:
    what: str  # plain words: "attach veth1a2b3c4 to bridge br0"
    do: Action
    undo: Action | None = None
    commands: tuple[str, ...] = field(default=())  # equivalent ip/iptables commands


def commands_of(steps: Sequence[Step]) -> tuple[str, ...]:
    return tuple(c for s in steps for c in s.commands)


def _describe(err: BaseException) -> str:
    if isinstance(err, PlumbingError):
        return err.message
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def crash_point(name: str) -> None:
    """Die here, as kill -9 would, when the crash test asks for this point."""
    if os.environ.get(CRASH_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def run(steps: Sequence[Step]) -> None:
    done: list[Step] = []
    fail_at = os.environ.get(FAIL_AT_ENV)
    for index, step in enumerate(steps):
        try:
            crash_point(f"step {index}")
            if fail_at and fail_at in step.what:
                raise PlumbingError(step.what, "injected failure")
            step.do()
        except BaseException as err:
            problems = _rollback(done)
            note = f"; could not undo: {'; '.join(problems)}" if problems else ""
            if isinstance(err, BridgescopeError) and not isinstance(err, PlumbingError):
                err.commands = commands_of(done + [step])  # type: ignore[attr-defined]
                err.undone = not problems  # type: ignore[attr-defined]
                raise
            raise PlumbingError(step.what, _describe(err) + note,
                                commands=commands_of(done + [step]), undone=not problems) from err
        done.append(step)


def _rollback(done: list[Step]) -> list[str]:
    problems = []
    for step in reversed(done):
        if step.undo is None:
            continue
        try:
            step.undo()
        except Exception as err:
            problems.append(f"{step.what} ({_describe(err)})")
    return problems
