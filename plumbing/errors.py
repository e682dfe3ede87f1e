"""The two ways a plumbing command fails: the input was wrong, or a kernel step was refused."""
from __future__ import annotations

from bridgescope.collector.errors import BridgescopeError


class ValidationError(BridgescopeError):
    """Bad input; `field` names the form field so the web UI can mark it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownContainer(ValidationError):
    """No container by that name here, or the one known is gone (an API answers 404)."""

    def __init__(self, message: str):
        super().__init__("container", message)


class PlumbingError(BridgescopeError):
    """A step failed; everything done before it was undone.

    `commands` are the equivalent commands of the steps that ran (the failing one last), so the
    audit log shows what was tried and taken back; `undone` is False when some undo failed too
    (the change's journal entry then stays, and the next command rolls the rest back)."""

    def __init__(self, step: str, message: str, *, commands: tuple[str, ...] = (),
                 undone: bool = True):
        super().__init__(f"{step} failed: {message} (nothing was changed)")
        self.step = step
        self.message = message
        self.commands = commands
        self.undone = undone
