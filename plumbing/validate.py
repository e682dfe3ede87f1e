"""Input checks and Docker `-p` parsing: pure functions from user strings to typed values.

Every failure raises ValidationError naming the form field, before anything touches the kernel.
The forms, the JSON API and the CLI all check a concept through the one function here, so
a value one of them refuses is refused by all three with the same words.
"""
from __future__ import annotations

import ipaddress
import string
from collections.abc import Iterable
from typing import Any

from bridgescope.plumbing.errors import ValidationError
from bridgescope.plumbing.state import Forward

IFNAMSIZ = 15  # the kernel's interface-name limit, without the NUL
PROTOCOLS = ("tcp", "udp", "sctp")  # what Docker publishes
# Ports one request may publish. Each port becomes four firewall rules and a line of preview;
# a cap keeps a preview typed into a form (or a stray `1-65535`) answered in well under a second.
MAX_PORTS = 1000
PORT_RANGE = "1-65535 (a port is a number from 1 to 65535)"
MAX_SPEC = 64  # `255.255.255.255:65535-65535:65535-65535/sctp` is 45 characters
NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
# Ranges no bridge subnet may touch: no host can use an address in them as a gateway or a
# container address (RFC 1122 "this network", loopback, link-local, multicast, reserved,
# which includes the limited broadcast 255.255.255.255).
THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")
RESERVED = ipaddress.IPv4Network("240.0.0.0/4")
SPECIAL_RANGES = (
    (THIS_NETWORK, "'this network' (0.0.0.0/8)"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback (127.0.0.0/8)"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local (169.254.0.0/16)"),
    (MULTICAST, "multicast (224.0.0.0/4)"),
    (RESERVED, "reserved (240.0.0.0/4, with the broadcast address)"),
)


def shown(value: Any, limit: int = 40) -> str:
    """A value quoted for an error message: one line, never longer than `limit` characters
    (a message is shown next to a field, printed on one line and written to the audit log)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def text(value: Any, field: str) -> str:
    """JSON hands over numbers, lists and nulls as readily as strings: refuse them by name."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, not {type(value).__name__} {shown(value)}")
    return value


REF_CHARS = NAME_CHARS | frozenset("/:")


def container_ref(value: Any, field: str = "container") -> str:
    """A container by engine name or id (Docker's names may exceed an interface name's 15
    bytes), namespace name or path, or IP: printable, no blanks, bounded."""
    text(value, field)
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > 255 or not REF_CHARS.issuperset(value) or value[0] in "-.":
        raise ValidationError(field, f"{shown(value)} is not a container name, id, namespace or IP")
    return value


def name(value: Any, field: str = "name") -> str:
    """Names become interface and namespace names and are shown in commands to paste:
    ASCII letters, digits, '_', '.', '-', at most 15 bytes, not starting with '-' (it would
    read as an option) or '.' (hidden and special names)."""
    text(value, field)
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value.encode()) > IFNAMSIZ:
        raise ValidationError(field, f"{shown(value)} is longer than {IFNAMSIZ} bytes "
                                     "(the kernel's limit for interface names)")
    if "/" in value or any(c.isspace() for c in value):
        raise ValidationError(field, f"{shown(value)} must not contain '/' or blanks")
    if not NAME_CHARS.issuperset(value):
        raise ValidationError(field, f"{shown(value)} may only use ASCII letters, digits, "
                                     "'_', '.' and '-'")
    if value[0] in "-.":
        raise ValidationError(field, f"{shown(value)} must not start with '-' or '.'")
    return value


def subnet(value: Any, field: str = "subnet") -> ipaddress.IPv4Network:
    text(value, field)
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as err:
        raise ValidationError(field, f"{shown(value)} is not an IPv4 network in CIDR form "
                                     f"like 172.18.0.0/16 ({shown(str(err), 80)})") from None
    if net.prefixlen > 30:
        raise ValidationError(field, f"{net} leaves no room for a gateway and a container "
                                     "(use /30 or larger)")
    for special, what in SPECIAL_RANGES:
        if net.overlaps(special):
            raise ValidationError(field, f"{net} overlaps the {what} range, which is not usable "
                                         "for containers")
    return net


def address(value: Any, field: str = "ip") -> ipaddress.IPv4Address:
    text(value, field)
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValidationError(field, f"{shown(value)} is not an IPv4 address") from None


def host_in(net: ipaddress.IPv4Network, value: Any, field: str) -> ipaddress.IPv4Address:
    """An address usable by a host on `net`: inside it, not its network or broadcast address."""
    ip = address(value, field)
    if ip not in net:
        raise ValidationError(field, f"{ip} is not inside {net}")
    if ip in (net.network_address, net.broadcast_address):
        raise ValidationError(field, f"{ip} is the network or broadcast address of {net}")
    return ip


def host_ip(value: Any, field: str = "host_ip") -> str | None:
    """The host address a port is published on: None for any address (empty or 0.0.0.0),
    otherwise one unicast address (127.0.0.1 publishes on the host's loopback)."""
    if value is None or value == "":
        return None
    ip = address(value, field)
    if ip.is_unspecified:
        return None
    if any(ip in r for r in (THIS_NETWORK, MULTICAST, RESERVED)):
        raise ValidationError(field, f"{ip} is not a unicast address of this host: publish on "
                                     "one of its addresses, 127.0.0.1, or leave it empty for any")
    return str(ip)


def port(value: Any, field: str) -> int:
    """ASCII digits only: int() would also take '²' (a TypeError later), '٨٠' or '9_408'."""
    if isinstance(value, int) and not isinstance(value, bool):
        num = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        if len(value) > 5:
            raise ValidationError(field, f"{shown(value)} is outside {PORT_RANGE}")
        num = int(value)
    else:
        raise ValidationError(field, f"{shown(value)} is not a port number: ASCII digits, "
                                     "from 1 to 65535")
    if not 1 <= num <= 65535:
        raise ValidationError(field, f"{num} is outside {PORT_RANGE}")
    return num


def protocol(value: Any, field: str = "protocol") -> str:
    text(value, field)
    proto = value.lower() if value.isascii() else value
    if proto not in PROTOCOLS:
        raise ValidationError(field, f"{shown(value)} is not one of {', '.join(PROTOCOLS)}")
    return proto


def _port_range(text: str, field: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    start = port(lo, field)
    end = port(hi, field) if sep else start
    if end < start:
        raise ValidationError(field, f"range {text} ends before it starts")
    if end - start + 1 > MAX_PORTS:
        raise ValidationError(field, f"range {text} has {end - start + 1} ports; one request "
                                     f"may publish at most {MAX_PORTS}")
    return start, end


def _split_spec(text: str) -> tuple[str | None, str, str]:
    """`[IP:]HOST:CONT` -> (ip, host, cont); host first, as Docker's parsePortSpec."""
    parts = text.rsplit(":", 2)
    if len(parts) == 3:
        ip = parts[0].strip("[]")
        return ip or None, parts[1], parts[2]
    if len(parts) == 2:
        return None, parts[0], parts[1]
    raise ValidationError("spec", f"{shown(text)} needs a host port: use HOSTPORT:CONTAINERPORT "
                                  "(host first, as in docker run -p 8080:80)")


def port_spec(spec: Any) -> tuple[Forward, ...]:
    """Docker `-p [IP:]HOST[-END]:CONT[-END][/proto]`, expanded into one mapping per port."""
    text(spec, "spec")
    if len(spec) > MAX_SPEC:
        raise ValidationError("spec", f"{shown(spec)} is longer than {MAX_SPEC} characters")
    body, _, proto = spec.strip().partition("/")
    proto = protocol(proto or "tcp")
    ip_text, host_text, cont_text = _split_spec(body)
    ip = host_ip(ip_text)
    if not host_text:
        raise ValidationError("host_port", f"{shown(spec)} has an empty host port")
    h0, h1 = _port_range(host_text, "host_port")
    c0, c1 = _port_range(cont_text, "container_port")
    if c1 - c0 != h1 - h0:
        if c0 == c1:
            # Docker: a host range with one container port means "pick one free host port from
            # the range"; bridgescope has no allocator, so it asks for an explicit port.
            raise ValidationError("host_port", f"{host_text} is a range for one container port; "
                                               "give one host port")
        raise ValidationError("spec", "invalid ranges specified for container and host ports "
                                      f"({host_text} vs {cont_text})")
    return tuple(Forward(proto, h, c0 + (h - h0), ip) for h in range(h0, h1 + 1))


def port_specs(specs: Iterable[Any]) -> tuple[Forward, ...]:
    """Several `-p` specs of one request: at most MAX_PORTS ports in all, and no host port
    given twice (the same port on any address and on one address collide, as in the kernel).
    Linear: each spec is checked against an index of the ports seen so far."""
    if isinstance(specs, (str, bytes)) or not isinstance(specs, Iterable):
        raise ValidationError("ports", 'must be a list of specs like "8080:80/tcp"')
    out: list[Forward] = []
    seen: dict[tuple[str, int], list[str | None]] = {}
    for spec in specs:
        mappings = port_spec(spec)
        if len(out) + len(mappings) > MAX_PORTS:
            raise ValidationError("host_port", f"more than {MAX_PORTS} ports in one request; "
                                               "publish them in several")
        for m in mappings:
            ips = seen.setdefault((m.proto, m.host_port), [])
            if any(ip is None or m.host_ip is None or ip == m.host_ip for ip in ips):
                raise ValidationError("spec", f"host port {m.host_port}/{m.proto} is given twice")
            ips.append(m.host_ip)
        out += mappings
    return tuple(out)


def gateway_for(net: ipaddress.IPv4Network, value: str | None) -> ipaddress.IPv4Address:
    """Docker's default gateway is the first host address of the subnet."""
    if value is None:
        return net.network_address + 1
    return host_in(net, value, "gateway")
