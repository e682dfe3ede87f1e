"""Input checks and Docker -p parsing (pure, no root needed)."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from bridgescope.plumbing import validate
from bridgescope.plumbing.errors import ValidationError
from bridgescope.plumbing.validate import PortMapping


@pytest.mark.parametrize("good", ["br0", "docker0", "a", "x" * 15, "my-net_1.2"])
def test_names_accepted(good):
    assert validate.name(good) == good


@pytest.mark.parametrize("bad, words", [
    ("x" * 16, "longer than 15 bytes"),
    ("é" * 8, "longer than 15 bytes"),  # 16 bytes in UTF-8, 8 characters
    ("a/b", "'/'"),
    ("a b", "'/' or blanks"),
    ("", "empty"),
    ("..", "'/'"),
    ("br;0", "letters, digits"),
])
def test_names_rejected_with_field_and_reason(bad, words):
    with pytest.raises(ValidationError) as err:
        validate.name(bad, "container")
    assert err.value.field == "container"
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_subnet_must_be_a_network_address():
    assert validate.subnet("172.18.0.0/16") == ipaddress.IPv4Network("172.18.0.0/16")
    for bad in ("172.18.0.1/16", "172.18.0.0/33", "nonsense", "10.0.0.0/31", "127.0.0.0/8",
                "224.0.0.0/4"):
        with pytest.raises(ValidationError) as err:
            validate.subnet(bad)
        assert err.value.field == "subnet"


def test_gateway_defaults_to_first_address_and_must_be_inside():
    net = validate.subnet("10.10.0.0/24")
    assert str(validate.gateway_for(net, None)) == "10.10.0.1"
    assert str(validate.gateway_for(net, "10.10.0.254")) == "10.10.0.254"
    for bad in ("10.10.1.1", "10.10.0.0", "10.10.0.255", "x"):
        with pytest.raises(ValidationError) as err:
            validate.gateway_for(net, bad)
        assert err.value.field == "gateway"


@pytest.mark.parametrize("spec, expected", [
    ("8080:80", (PortMapping("tcp", 8080, 80),)),
    ("8080:80/udp", (PortMapping("udp", 8080, 80),)),
    ("127.0.0.1:8080:80", (PortMapping("tcp", 8080, 80, "127.0.0.1"),)),
    ("0.0.0.0:8080:80/tcp", (PortMapping("tcp", 8080, 80),)),
    ("8000-8002:80-82", (PortMapping("tcp", 8000, 80), PortMapping("tcp", 8001, 81),
                         PortMapping("tcp", 8002, 82))),
    ("1:65535", (PortMapping("tcp", 1, 65535),)),
])
def test_port_specs_are_host_first_and_ranges_expand_per_port(spec, expected):
    assert validate.port_spec(spec) == expected


@pytest.mark.parametrize("spec, field", [
    ("0:80", "host_port"),
    ("65536:80", "host_port"),
    ("8080:0", "container_port"),
    ("8080:65536", "container_port"),
    ("80", "spec"),
    ("8080:80/icmp", "protocol"),
    ("300.1.1.1:8080:80", "host_ip"),
    ("8000-8001:80-82", "spec"),  # Docker: invalid ranges for container and host ports
    ("8000-8010:80", "host_port"),
    ("8010-8000:80-90", "host_port"),
    ("x:80", "host_port"),
    (":80", "host_port"),
])
def test_bad_port_specs_name_the_field(spec, field):
    with pytest.raises(ValidationError) as err:
        validate.port_spec(spec)
    assert err.value.field == field


@given(st.integers(1, 65535), st.integers(1, 65535), st.sampled_from(["tcp", "udp"]))
def test_spec_roundtrip(host, cont, proto):
    (m,) = validate.port_spec(f"{host}:{cont}/{proto}")
    assert validate.port_spec(m.spec()) == (m,)
