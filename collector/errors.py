"""Errors every layer shares. The CLI prints str(err) as its one line on stderr."""


class BridgescopeError(Exception):
    """A failure the user can act on; the message is the whole story, in plain words."""


class NamespaceNotFound(BridgescopeError):
    def __init__(self, name: str):
        super().__init__(f"network namespace {name!r} does not exist (nothing was created)")
        self.name = name
