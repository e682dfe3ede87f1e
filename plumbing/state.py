"""Desired state: what bridgescope manages on one host namespace, persisted atomically.

One JSON file per managed host namespace under /var/lib/bridgescope/ (or $BRIDGESCOPE_STATE_DIR).
The kernel is changed first and the state written after (the commit point); the change's
intent is journaled before (plumbing/journal.py) and every kernel object carries a tag
(interface alias, rule comment), so anything a crash leaves between the two is found and undone.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from bridgescope.collector.firewall.owners import BRIDGESCOPE_TAG

DEFAULT_DIR = "/var/lib/bridgescope"
TAG = BRIDGESCOPE_TAG  # the comment prefix of every rule and link alias bridgescope makes


def state_dir() -> Path:
    return Path(os.environ.get("BRIDGESCOPE_STATE_DIR") or DEFAULT_DIR)


@dataclass(frozen=True)
class Network:
    name: str  # also the bridge's interface name
    subnet: str
    gateway: str
    masquerade: bool = True
    mtu: int = 1500

    @property
    def tag(self) -> str:
        return f"net/{self.name}"


@dataclass(frozen=True)
class Container:
    name: str
    network: str
    ip: str
    netns: str  # name under /run/netns
    veth: str  # host-side interface name

    @property
    def tag(self) -> str:
        return f"ctr/{self.name}"


@dataclass(frozen=True)
class Adopted:
    """A container bridgescope did not make (Docker's, Podman's, CNI's, anyone's) that has
    forwards of ours: who it is, so that the forward follows it when it restarts (engine id
    first, then its name, then its namespace), and where it is now."""
    name: str  # the engine's name, or the namespace's name: forwards refer to it
    ip: str
    bridge: str  # the host-side bridge its veth is a port of
    netns: str  # its namespace's path as found
    inode: int
    engine: str = ""  # docker | podman | "" (a namespace with no engine answering)
    engine_id: str = ""
    user_chain: str = ""  # the engine's documented chain for users' rules (DOCKER-USER)

    @property
    def tag(self) -> str:
        return f"adopt/{self.name}"


@dataclass(frozen=True)
class Forward:
    """One published port, as Docker expands a `-p` spec (a range becomes one per port): as
    parsed (container "") and, once bound to its container, as the state keeps it."""
    proto: str
    host_port: int
    container_port: int
    host_ip: str | None = None  # None: every local address
    container: str = ""

    @property
    def key(self) -> str:
        """Stable id of the binding, used in rule comments and state."""
        return f"{self.proto}/{self.host_ip or '*'}/{self.host_port}"

    @property
    def tag(self) -> str:
        return f"fwd/{self.container}/{self.key}"

    def spec(self) -> str:
        ip = f"{self.host_ip}:" if self.host_ip else ""
        return f"{ip}{self.host_port}:{self.container_port}/{self.proto}"

    def bound_to(self, container: str) -> Forward:
        return Forward(self.proto, self.host_port, self.container_port, self.host_ip, container)


@dataclass(frozen=True)
class State:
    host: str  # state key: the host namespace's name, or "host" for the real one
    backend: str | None = None  # firewall backend chosen when the first network was made
    networks: tuple[Network, ...] = ()
    containers: tuple[Container, ...] = ()
    forwards: tuple[Forward, ...] = ()
    # Sysctl values found before bridgescope changed them, so removing the last network
    # puts the host back as it was ("net.ipv4.ip_forward" -> "0").
    sysctls_before: tuple[tuple[str, str], ...] = ()
    adopted: tuple[Adopted, ...] = ()  # others' containers our forwards point at

    def network(self, name: str) -> Network | None:
        return next((n for n in self.networks if n.name == name), None)

    def container(self, name: str) -> Container | None:
        return next((c for c in self.containers if c.name == name), None)

    def adoptee(self, name: str) -> Adopted | None:
        return next((a for a in self.adopted if a.name == name), None)

    def forwards_of(self, container: str) -> tuple[Forward, ...]:
        return tuple(f for f in self.forwards if f.container == container)

    def containers_on(self, network: str) -> tuple[Container, ...]:
        return tuple(c for c in self.containers if c.network == network)

    def with_(self, **changes) -> State:
        return replace(self, **changes)

    def owned_tags(self) -> frozenset[str]:
        """The tags of every object this state owns (rules and interfaces carry them)."""
        return frozenset(o.tag for group in (self.networks, self.containers, self.forwards,
                                             self.adopted)
                         for o in group)


def to_dict(state: State) -> dict:
    """Plain data for JSON (by hand: dataclasses.asdict deep-copies and is slow at 5,000 forwards)."""
    return {
        "host": state.host,
        "backend": state.backend,
        "networks": [vars(n) for n in state.networks],
        "containers": [vars(c) for c in state.containers],
        # rows, not objects: thousands of forwards load ~10x faster
        "forwards": [[f.container, f.proto, f.host_port, f.container_port, f.host_ip]
                     for f in state.forwards],
        "sysctls_before": [list(kv) for kv in state.sysctls_before],
        "adopted": [vars(a) for a in state.adopted],
    }


def from_dict(data: dict) -> State:
    return State(
        host=data["host"],
        backend=data.get("backend"),
        networks=tuple(Network(**n) for n in data.get("networks", ())),
        containers=tuple(Container(**c) for c in data.get("containers", ())),
        forwards=tuple(Forward(**f) if isinstance(f, dict) else Forward(*f[1:], f[0])
                       for f in data.get("forwards", ())),
        sysctls_before=tuple(tuple(kv) for kv in data.get("sysctls_before", ())),
        adopted=tuple(Adopted(**a) for a in data.get("adopted", ())),
    )


def path_for(host: str) -> Path:
    return state_dir() / f"{host}.json"


def journal_path(host: str) -> Path:
    """The pending change's intent (plumbing/journal.py), beside the state."""
    return state_dir() / f".{host}.journal.json"


# A long-lived process (the web UI) re-reads the state on every change; parsing thousands of
# forwards costs ~10 ms, so the last state read or written is kept while the file on disk is
# the very same (same inode, size and mtime: every save is a rename of a new file).
_recent: dict[Path, tuple[tuple[int, int, int], State]] = {}


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def load(host: str) -> State:
    path = path_for(host)
    try:
        ident = _identity(path)
    except FileNotFoundError:
        return State(host=host)
    cached = _recent.get(path)
    if cached and cached[0] == ident:
        return cached[1]
    with open(path, encoding="utf-8") as fh:
        found = from_dict(json.load(fh))
    _recent[path] = (ident, found)
    return found


def save(state: State) -> None:
    """Write-then-rename in the same directory, fsynced: readers see the old or the new file."""
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = path_for(state.host)
    if not (state.networks or state.containers or state.forwards or state.adopted):
        forget(state.host)
        return
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{state.host}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(to_dict(state), separators=(",", ":")))  # C encoder, one write
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _recent[target] = (_identity(target), state)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def forget(host: str, *, lock: bool = False) -> None:
    """Nothing managed any more: remove the state and every cache kept beside it (lock=True,
    the host itself is gone: its lock and any pending intent too)."""
    directory = state_dir()
    _recent.pop(path_for(host), None)
    path_for(host).unlink(missing_ok=True)
    for extra in directory.glob(f".{host}.*") if directory.is_dir() else ():
        if not lock and extra.name.endswith((".lock", ".journal.json")):
            continue  # the lock stays, and a change emptying the state is done when its intent goes
        extra.unlink(missing_ok=True)


@contextmanager
def locked(host: str) -> Iterator[None]:
    """One change at a time per host namespace (the CLI and the web UI may race)."""
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / f".{host}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
