"""Input checks and Docker -p parsing (pure, no root needed)."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridgescope.plumbing import validate
from bridgescope.plumbing.errors import ValidationError
from bridgescope.plumbing.state import Forward


@pytest.mark.parametrize("good", ["br0", "docker0", "a", "x" * 15, "my-net_1.2"])
def test_names_accepted(good):
    assert validate.name(good) == good


@pytest.mark.parametrize("bad, words", [
    ("x" * 16, "longer than 15 bytes"),
    ("é" * 8, "longer than 15 bytes"),  # 16 bytes in UTF-8, 8 characters
    ("a/b", "'/'"),
    ("a b", "'/' or blanks"),
    ("", "empty"),
    ("..", "must not start with"),
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
    ("8080:80", (Forward("tcp", 8080, 80),)),
    ("8080:80/udp", (Forward("udp", 8080, 80),)),
    ("127.0.0.1:8080:80", (Forward("tcp", 8080, 80, "127.0.0.1"),)),
    ("0.0.0.0:8080:80/tcp", (Forward("tcp", 8080, 80),)),
    ("8000-8002:80-82", (Forward("tcp", 8000, 80), Forward("tcp", 8001, 81),
                         Forward("tcp", 8002, 82))),
    ("1:65535", (Forward("tcp", 1, 65535),)),
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


# ---- one rule per concept, strict (issue: accepted when it should not be) ----------------------

@pytest.mark.parametrize("bad", ["--help", "-x", "-", ".hidden", "."])
def test_names_must_not_read_as_options_or_hidden_names(bad):
    """`network create -- --help` made a bridge whose printed commands no longer work pasted."""
    with pytest.raises(ValidationError, match="must not start with '-' or '.'"):
        validate.name(bad)


@pytest.mark.parametrize("bad", ["дocker0", "dоcker0", "br٠", "ｂｒ0", "bri\u0301dge"])
def test_names_are_ascii_only_so_look_alikes_cannot_pass(bad):
    with pytest.raises(ValidationError, match="ASCII letters"):
        validate.name(bad)


@pytest.mark.parametrize("value", [123, None, ["br0"], {"a": 1}, 1.5, True])
def test_every_check_refuses_non_strings_by_field_instead_of_crashing(value):
    for check, field in ((validate.name, "name"), (validate.subnet, "subnet"),
                         (validate.address, "ip"), (validate.protocol, "protocol")):
        with pytest.raises(ValidationError) as err:
            check(value, field)
        assert err.value.field == field and "must be a string" in err.value.message
    with pytest.raises(ValidationError):
        validate.port_spec(value)


@pytest.mark.parametrize("bad", ["0.0.0.0/8", "0.0.0.0/0", "128.0.0.0/1", "240.0.0.0/24",
                                 "255.255.255.0/30", "255.255.255.255/32", "224.1.0.0/16",
                                 "169.254.0.0/16", "127.1.0.0/16", "10.0.0.0/31", "10.0.0.0/32",
                                 "0.1.0.0/16"])
def test_subnets_that_cannot_hold_containers_are_refused(bad):
    with pytest.raises(ValidationError) as err:
        validate.subnet(bad)
    assert err.value.field == "subnet"


def test_a_slash_30_holds_its_gateway_and_one_container():
    net = validate.subnet("10.0.0.0/30")
    assert str(validate.gateway_for(net, None)) == "10.0.0.1"
    assert validate.host_in(net, "10.0.0.2", "ip")
    with pytest.raises(ValidationError):
        validate.host_in(net, "10.0.0.3", "ip")  # its broadcast address


@pytest.mark.parametrize("bad", ["255.255.255.255", "224.0.0.1", "239.1.2.3", "240.0.0.1",
                                 "0.1.2.3", "::1", "1.2.3", "1.2.3.4 ", "١.١.١.١"])
def test_host_ip_must_be_a_unicast_address(bad):
    with pytest.raises(ValidationError) as err:
        validate.host_ip(bad)
    assert err.value.field == "host_ip"
    with pytest.raises(ValidationError) as err:
        validate.port_spec(f"[{bad}]:8080:80" if ":" in bad else f"{bad}:8080:80")
    assert err.value.field == "host_ip"


def test_host_ip_any_and_loopback_as_today():
    assert validate.host_ip("") is None and validate.host_ip("0.0.0.0") is None
    assert validate.host_ip("127.0.0.1") == "127.0.0.1"
    assert validate.host_ip("192.0.2.7") == "192.0.2.7"


@pytest.mark.parametrize("bad", ["²", "9_408", "٨٠", "８０", "+80", "80 ", "0x50", "1e3", "", "-1",
                                 "065536", "99999999999999999999999"])
def test_ports_are_ascii_digits_only(bad):
    with pytest.raises(ValidationError) as err:
        validate.port(bad, "host_port")
    assert err.value.field == "host_port"
    with pytest.raises(ValidationError):
        validate.port_spec(f"{bad}:80")
    with pytest.raises(ValidationError):
        validate.port_spec(f"80:{bad}/tcp")


def test_sctp_is_published_as_docker_does():
    assert validate.port_spec("8080:80/sctp") == (Forward("sctp", 8080, 80),)
    assert validate.protocol("SCTP") == "sctp"


def test_a_range_is_capped_before_it_is_expanded():
    assert len(validate.port_spec(f"1-{validate.MAX_PORTS}:1-{validate.MAX_PORTS}")) == validate.MAX_PORTS
    for spec in ("10000-65535:10000-65535", "10000-12999:10000-12999", "1-1001:1-1001"):
        with pytest.raises(ValidationError) as err:
            validate.port_spec(spec)
        assert err.value.field == "host_port" and "at most 1000" in err.value.message


def test_several_specs_are_capped_together_and_duplicates_found_on_any_address():
    with pytest.raises(ValidationError, match="at most|more than 1000"):
        validate.port_specs(["1-600:1-600", "1001-1600:1-600"])
    for specs in (["8080:80", "8080:81"], ["8080:80", "127.0.0.1:8080:81"],
                  ["127.0.0.1:8080:80", "127.0.0.1:8080:81"], ["8000-8010:80-90", "8005:1"]):
        with pytest.raises(ValidationError, match="given twice"):
            validate.port_specs(specs)
    ok = validate.port_specs(["127.0.0.1:8080:80", "192.0.2.1:8080:80", "8080:80/udp", "8080:80/sctp"])
    assert len(ok) == 4
    with pytest.raises(ValidationError) as err:
        validate.port_specs("8080:80")  # a bare string is not a list of specs
    assert err.value.field == "ports"


def test_duplicate_check_is_linear():
    """1,000 single-port specs (the cap) used to cost 500,000 comparisons; now one lookup each."""
    specs = [f"{p}:{p}" for p in range(1, validate.MAX_PORTS + 1)]
    assert len(validate.port_specs(specs)) == validate.MAX_PORTS


def test_messages_quote_values_short_and_on_one_line():
    with pytest.raises(ValidationError) as err:
        validate.subnet("x" * 10_000 + "\n")
    assert len(str(err.value)) < 300 and "\n" not in str(err.value)
