"""The two ways a plumbing command fails: the input was wrong, or a kernel step was refused."""
from __future__ import annotations

from bridgescope.collector.errors import BridgescopeError


class ValidationError(BridgescopeError):
    """Bad input; `field` names the form field so the web UI can mark it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class PlumbingError(BridgescopeError):
    """A step failed; everything done before it was undone."""

    def __init__(self, step: str, message: str):
        super().__init__(f"{step} failed: {message} (nothing was changed)")
        self.step = step
        self.message = message
