"""Checks on bridgescope's own port forwards, which the snapshot alone cannot tell apart from
anyone's: the caller (which may read the plumbing's state; the collector may not) passes them
in as `ForwardTarget`s. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from bridgescope.collector.doctor.finding import Finding
from bridgescope.collector.hostview import HostView, in_ns
from bridgescope.collector.kernel.listeners import Listener, ListenerRead


@dataclass(frozen=True)
class ForwardTarget:
    """One forward of bridgescope's: where it sends the host's port, to whom."""
    container: str  # the name `forward rm` takes
    ip: str
    bridge: str
    proto: str
    host_port: int
    container_port: int
    host_ip: str | None = None  # None: every local address
    adopted: bool = False  # a container bridgescope did not make

    @property
    def spec(self) -> str:
        head = f"{self.host_ip}:" if self.host_ip else ""
        return f"{head}{self.host_port}:{self.container_port}/{self.proto}"


def _here(view: HostView, t: ForwardTarget) -> bool:
    try:
        att = view.attachment_with(IPv4Address(t.ip))
    except ValueError:
        return False
    return att is not None and att.bridge.name == t.bridge


def target_gone(view: HostView, forwards: tuple[ForwardTarget, ...]) -> tuple[Finding, ...]:
    """An adopted container's forward whose container is no longer on its bridge: the DNAT
    sends the port to an address nobody holds, so connections time out."""
    out = []
    for t in forwards:
        if not t.adopted or _here(view, t):
            continue
        out.append(Finding(
            "forward-target-gone", "error", (),
            f"port {t.host_port} forwards to {t.container} ({t.ip} on {t.bridge}), which is gone",
            f"bridgescope forwards {t.proto}/{t.host_port} to {t.ip}:{t.container_port}, the "
            f"address {t.container} had on {t.bridge}, but no container on {t.bridge} holds it "
            "now: connections to the port time out. If the container was re-created, restore "
            "follows it (serve does so by itself); otherwise remove the forward.",
            ("bridgescope restore", f"bridgescope forward rm {t.container} {t.spec}")))
    return tuple(out)


def _takes(listener: Listener, t: ForwardTarget) -> bool:
    return listener.holds(t.proto, t.host_ip, t.host_port)


def port_taken(view: HostView, forwards: tuple[ForwardTarget, ...],
               listeners: ListenerRead) -> tuple[Finding, ...]:
    """A program in the host listening on a forward's host port. Our DNAT binds no port, so
    nothing stopped it; the DNAT catches connections from outside and the host's own ones
    alike (OUTPUT jumps for local addresses), so the program sees only what no DNAT
    catches."""
    host = view.host
    if host is None or not listeners.known(host.id):
        return ()
    out = []
    for t in forwards:
        taken = sorted((s for s in listeners.by_ns[host.id] if _takes(s, t)),
                       key=lambda s: s.address)
        if not taken:
            continue
        where = taken[0].address
        out.append(Finding(
            "port-taken", "warning", (host.id,),
            f"a process listens on {t.proto}/{t.host_port} on the host, which bridgescope "
            f"forwards to {t.container}:{t.container_port}",
            f"A program on the host listens on {where} port {t.host_port}/{t.proto}, the port "
            f"bridgescope forwards to {t.container} ({t.ip}:{t.container_port}). The forward is a "
            "DNAT rule and binds no port, so nothing kept the program from taking it; "
            "connections to the port, from other machines and from the host itself, still "
            "go to the container, and the program never sees them (with a forward bound to "
            "one address, it gets those to the host's other addresses). Stop or move the "
            "program, or move the forward to a free port.",
            (in_ns(host, "ss", f"-lnp{'t' if t.proto == 'tcp' else 'u'}", "sport", "=",
                   f":{t.host_port}"),
             f"bridgescope forward rm {t.container} {t.spec}")))
    return tuple(out)
