"""Input checks and Docker `-p` parsing: pure functions from user strings to typed values.

Every failure raises ValidationError naming the form field, before anything touches the kernel.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bridgescope.plumbing.errors import ValidationError

IFNAMSIZ = 15  # the kernel's interface-name limit, without the NUL
PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass(frozen=True)
class PortMapping:
    """One published port, as Docker expands a `-p` spec (ranges become one per port)."""
    proto: str
    host_port: int
    container_port: int
    host_ip: str | None = None  # None: every local address

    @property
    def key(self) -> str:
        """Stable id of the binding, used in rule comments and state."""
        return f"{self.proto}/{self.host_ip or '*'}/{self.host_port}"

    def spec(self) -> str:
        ip = f"{self.host_ip}:" if self.host_ip else ""
        return f"{ip}{self.host_port}:{self.container_port}/{self.proto}"


def name(value: str, field: str = "name") -> str:
    """Names become interface names and namespace names: <=15 bytes, no '/', no blanks."""
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value.encode()) > IFNAMSIZ:
        raise ValidationError(field, f"{value!r} is longer than {IFNAMSIZ} bytes "
                                     "(the kernel's limit for interface names)")
    if "/" in value or any(c.isspace() for c in value) or value in (".", ".."):
        raise ValidationError(field, f"{value!r} must not contain '/' or blanks")
    if not all(c.isalnum() or c in "-_." for c in value):
        raise ValidationError(field, f"{value!r} may only use letters, digits, '-', '_' and '.'")
    return value


def subnet(value: str, field: str = "subnet") -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as err:
        raise ValidationError(field, f"{value!r} is not an IPv4 network in CIDR form "
                                     f"like 172.18.0.0/16 ({err})") from None
    if net.prefixlen > 30:
        raise ValidationError(field, f"{value} leaves no room for a gateway and a container "
                                     "(use /30 or larger)")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified:
        raise ValidationError(field, f"{value} is a special-purpose range, not usable for containers")
    return net


def address(value: str, field: str = "ip") -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValidationError(field, f"{value!r} is not an IPv4 address") from None


def host_in(net: ipaddress.IPv4Network, value: str, field: str) -> ipaddress.IPv4Address:
    """An address usable by a host on `net`: inside it, not its network or broadcast address."""
    ip = address(value, field)
    if ip not in net:
        raise ValidationError(field, f"{ip} is not inside {net}")
    if ip in (net.network_address, net.broadcast_address):
        raise ValidationError(field, f"{ip} is the network or broadcast address of {net}")
    return ip


def port(value: str | int, field: str) -> int:
    try:
        num = int(value)
    except (TypeError, ValueError):
        raise ValidationError(field, f"{value!r} is not a port number") from None
    if not 1 <= num <= 65535:
        raise ValidationError(field, f"{num} is outside 1-65535")
    return num


def _port_range(text: str, field: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    start = port(lo, field)
    end = port(hi, field) if sep else start
    if end < start:
        raise ValidationError(field, f"range {text} ends before it starts")
    return start, end


def _split_spec(text: str) -> tuple[str | None, str, str]:
    """`[IP:]HOST:CONT` -> (ip, host, cont); host first, as Docker's parsePortSpec."""
    parts = text.rsplit(":", 2)
    if len(parts) == 3:
        ip = parts[0].strip("[]")
        return ip or None, parts[1], parts[2]
    if len(parts) == 2:
        return None, parts[0], parts[1]
    raise ValidationError("spec", f"{text!r} needs a host port: use HOSTPORT:CONTAINERPORT "
                                  "(host first, as in docker run -p 8080:80)")


def port_spec(text: str) -> tuple[PortMapping, ...]:
    """Docker `-p [IP:]HOST[-END]:CONT[-END][/proto]`, expanded into one mapping per port."""
    body, _, proto = text.strip().partition("/")
    proto = (proto or "tcp").lower()
    if proto not in PROTOCOLS:
        raise ValidationError("protocol", f"{proto!r} is not one of {', '.join(PROTOCOLS)}")
    ip_text, host_text, cont_text = _split_spec(body)
    host_ip = None
    if ip_text is not None:
        ip = address(ip_text, "host_ip")
        host_ip = None if ip.is_unspecified else str(ip)
    if not host_text:
        raise ValidationError("host_port", f"{text!r} has an empty host port")
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
    return tuple(PortMapping(proto, h, c0 + (h - h0), host_ip) for h in range(h0, h1 + 1))


def gateway_for(net: ipaddress.IPv4Network, value: str | None) -> ipaddress.IPv4Address:
    """Docker's default gateway is the first host address of the subnet."""
    if value is None:
        return net.network_address + 1
    return host_in(net, value, "gateway")
