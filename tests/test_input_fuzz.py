"""Property-based fuzzing of every input: each form field, each JSON field, each CLI argument.

One throwaway namespace plays the host for the whole module, holding a network, a container
and a forward, so that a field slipping through validation could really change something.
Each example swaps one field of an otherwise valid request for a hostile value and submits
it for real (not as a dry run). The properties: never a 500 or a traceback; a refusal is a
4xx (or a one-line CLI error) and leaves the kernel and the saved state exactly as they were.
An example that happens to be valid is accepted, and undone before the next one.
"""
from __future__ import annotations

import contextlib
import io
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RUN_PREFIX, delete_netns, sh
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from webui_sources import StaticSource, sample_snapshot

from bridgescope.collector.firewall import nftinfo
from bridgescope.plumbing import api as plumbing
from bridgescope.plumbing import conflicts, netns, validate
from bridgescope.plumbing.state import Forward
from bridgescope.webui import cli
from bridgescope.webui.app import create_app

BASE = "http://127.0.0.1:8470"
FUZZ = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

IFF_UP = 0x1
NET, SUBNET, CTR, FWD = "bsfz0", "10.246.0.0/24", "fz", "8080:80/tcp"

# Values each field is tried with besides random text: the list and its relatives.
NASTY = ["", " ", "²", "٨٠", "８０", "9_408", "+80", "-1", "0", "65536", "99999999999", "--help", "-",
         ".", "..", "дocker0", "a/b", "a b", "0.0.0.0/8", "240.0.0.0/24", "255.255.255.0/30",
         "0.0.0.0/0", "10.246.0.0/31", "255.255.255.255", "224.0.0.1", "10.246.0.2", "0.0.0.0",
         "false", "true", "on", "no", "sctp", "SCTP", "gre", "8080:80", "8080:80/sctp",
         "10000-65535:10000-65535", "1-3:1-3", "8080:80 8080:81", "[::1]:80:80", "1:1/tcp/udp",
         "x" * 3000, "a\x00b", "a\nb", "{{7*7}}", "<b>x</b>", "'; ip link del lo", "%n%s"]
texts = st.one_of(st.sampled_from(NASTY), st.text(max_size=24),
                  st.from_regex(r"[0-9a-z.:/\-\[\] ]{0,22}", fullmatch=True))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


# ---- the throwaway host ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Iterator[str]:
    name = f"{RUN_PREFIX}fz-host"
    old_state = os.environ.get("BRIDGESCOPE_STATE_DIR")
    os.environ["BRIDGESCOPE_STATE_DIR"] = str(tmp_path_factory.mktemp("fuzz-state"))
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        _baseline(name)
        yield name
    finally:
        for entry in Path("/run/netns").iterdir():
            if entry.name.startswith(name):
                delete_netns(entry.name)
        if old_state is not None:
            os.environ["BRIDGESCOPE_STATE_DIR"] = old_state


def _baseline(host: str) -> None:
    """Back to one network, one container, one forward (a valid example may have changed it)."""
    st_ = plumbing.load_state(host)
    for f in st_.forwards:
        if (f.container, f.spec()) != (CTR, FWD):
            plumbing.remove_forward(f.container, f.spec(), host=host)
    for c in st_.containers:
        if c.name != CTR:
            plumbing.remove_container(c.name, host=host)
    for n in st_.networks:
        if n.name != NET:
            plumbing.remove_network(n.name, force=True, host=host)
    st_ = plumbing.load_state(host)
    if st_.network(NET) is None:
        plumbing.create_network(NET, SUBNET, host=host)
    if plumbing.load_state(host).container(CTR) is None:
        plumbing.create_container(CTR, NET, host=host)
    if not plumbing.load_state(host).forwards:
        plumbing.add_forward(CTR, FWD, host=host)


def fingerprint(host: str) -> tuple:
    """What a change would alter: the saved state, the links, the namespaces, and the firewall
    (nf_tables counts every committed transaction in a namespace: its generation). Read over
    netlink in-process: a subprocess per example would eat the test budget."""
    path = f"/run/netns/{host}"
    links = netns.with_netlink(path, lambda ipr: sorted(  # IFF_UP only: carrier settles by itself
        (link.get_attr("IFLA_IFNAME"), link["flags"] & IFF_UP, link.get_attr("IFLA_MASTER"))
        for link in ipr.get_links()))
    generation = netns.run_in(path, nftinfo.generation_here)
    spaces = sorted(e.name for e in Path("/run/netns").iterdir() if e.name.startswith(host))
    return plumbing.load_state(host), links, generation, spaces


def _check(host: str, before: tuple, refused: bool, what: str) -> None:
    if refused:
        assert fingerprint(host) == before, f"a refused {what} changed something"
    else:
        _baseline(host)


# ---- the web client: the one place that knows about authentication --------------------------------

@pytest.fixture(scope="module")
def web(host, tmp_path_factory):
    """(post_form, call_json) against an app whose host is the throwaway namespace."""
    app = create_app({"SOURCE": StaticSource(sample_snapshot()), "NO_AUTH": True, "HOST": host,
                      "AUDIT_LOG": str(tmp_path_factory.mktemp("fuzz-audit") / "audit.jsonl")})
    client = app.test_client()
    csrf = app.extensions["bridgescope_access"].csrf

    def post_form(url: str, fields: dict[str, str]):
        return client.post(url, base_url=BASE, headers={"HX-Request": "true"},
                           data={"csrf_token": csrf, **fields})

    def call_json(method: str, url: str, body: Any = None):
        kw = {"json": body} if body is not None else {}
        return client.open(url, method=method, base_url=BASE, headers={"X-CSRF-Token": csrf}, **kw)
    return post_form, call_json


# ---- forms ----------------------------------------------------------------------------------------

FORMS = {  # url -> a valid submission (fields and intent)
    "/forms/forward": {"container": CTR, "host_port": "8081", "container_port": "80",
                       "protocol": "tcp", "host_ip": "", "intent": "add", "form_prefix": "g"},
    "/forms/network": {"name": "bsfz1", "subnet": "10.247.0.0/24", "gateway": "",
                       "masquerade": "on", "intent": "apply", "form_prefix": "g"},
    "/forms/container": {"name": "fz2", "network": NET, "ip": "", "ports": "8082:80",
                         "intent": "apply", "form_prefix": "p"},
    "/forms/remove-container": {"name": "fz3", "intent": "confirm"},
    "/forms/remove-network": {"name": "bsfz3", "force": "", "intent": "confirm"},
}
FORM_FIELDS = [(url, name) for url, fields in FORMS.items() for name in fields]


@pytest.mark.kernel
@pytest.mark.parametrize("url,name", FORM_FIELDS, ids=[f"{u[7:]}-{n}" for u, n in FORM_FIELDS])
@FUZZ
@given(value=texts)
@example(value="²")  # str.isdigit() took it, int() did not: a 500
def test_every_form_field(host, web, url, name, value):
    post_form, _ = web
    before = fingerprint(host)
    resp = post_form(url, {**FORMS[url], name: value})
    assert resp.status_code in (200, 409, 413, 422), resp.get_data(as_text=True)[:1000]
    refused = resp.status_code != 200 or "Nothing was changed" in resp.get_data(as_text=True)
    _check(host, before, refused, f"{url} with {name}={value!r}")


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["forward", "network", "container"])
@FUZZ
@given(values=st.dictionaries(st.sampled_from(["name", "subnet", "gateway", "masquerade", "network",
                                               "ip", "ports", "container", "host_port",
                                               "container_port", "protocol", "host_ip"]),
                              texts, max_size=6))
def test_live_preview_never_fails_and_never_changes(host, web, kind, values):
    post_form, _ = web
    before = fingerprint(host)
    resp = post_form(f"/forms/preview/{kind}", values)
    assert resp.status_code == 200
    assert fingerprint(host) == before


# ---- JSON API -------------------------------------------------------------------------------------

ENDPOINTS = {  # (method, url) -> a valid body
    ("POST", "/api/networks"): {"name": "bsfz4", "subnet": "10.248.0.0/24", "gateway": None,
                                "masquerade": True, "dry_run": False},
    ("POST", "/api/containers"): {"name": "fz5", "network": NET, "ip": None, "ports": ["8083:80"]},
    ("POST", "/api/forwards"): {"container": CTR, "spec": "8084:80/udp"},
    ("DELETE", "/api/forwards"): {"container": CTR, "spec": "9999:80"},
    ("DELETE", "/api/networks/bsfz6"): {"force": False},
}
JSON_FIELDS = [(m, u, n) for (m, u), body in ENDPOINTS.items() for n in [*body, "unknown"]]


@pytest.mark.kernel
@pytest.mark.parametrize("method,url,name", JSON_FIELDS,
                         ids=[f"{m}{u[4:]}-{n}" for m, u, n in JSON_FIELDS])
@FUZZ
@given(value=json_values)
@example(value="false")
def test_every_json_field(host, web, method, url, name, value):
    _, call = web
    before = fingerprint(host)
    resp = call(method, url, {**ENDPOINTS[(method, url)], name: value})
    assert resp.status_code in (200, 400, 409, 413, 422), resp.get_data(as_text=True)[:1000]
    if resp.status_code != 200:
        assert resp.get_json()["error"] and "\n" not in resp.get_json()["error"]
    _check(host, before, resp.status_code != 200, f"{method} {url} with {name}={value!r}")


@pytest.mark.kernel
@pytest.mark.parametrize("method,prefix", [("DELETE", "/api/networks/"), ("DELETE", "/api/containers/"),
                                           ("GET", "/api/audit?n="), ("POST", "/api/networks?dry_run=")])
@FUZZ
@given(value=texts)
def test_every_path_and_query_value(host, web, method, prefix, value):
    _, call = web
    before = fingerprint(host)
    quoted = urllib.parse.quote(value, safe="")
    body = {"name": "bsfz7", "subnet": "10.249.0.0/24"} if method == "POST" else None
    resp = call(method, prefix + quoted, body)
    assert resp.status_code < 500, resp.get_data(as_text=True)[:1000]
    _check(host, before, resp.status_code != 200 or method == "GET", f"{method} {prefix}{value!r}")


# ---- CLI, in-process ------------------------------------------------------------------------------

def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:  # argparse: usage error (2) or --help (0)
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, err.getvalue()


COMMANDS = {  # a valid command line with {} where the fuzzed argument goes
    "network-name": ["network", "create", "--subnet=10.250.0.0/24", "--", "{}"],
    "network-subnet": ["network", "create", "--subnet={}", "bsfz8"],
    "network-gateway": ["network", "create", "--subnet=10.250.0.0/24", "--gateway={}", "bsfz8"],
    "network-rm": ["network", "rm", "--", "{}"],
    "container-name": ["container", "create", f"--network={NET}", "--", "{}"],
    "container-network": ["container", "create", "--network={}", "fz9"],
    "container-ip": ["container", "create", f"--network={NET}", "--ip={}", "fz9"],
    "container-publish": ["container", "create", f"--network={NET}", "--publish={}", "fz9"],
    "container-rm": ["container", "rm", "--", "{}"],
    "forward-add-container": ["forward", "add", "--", "{}", "8085:80"],
    "forward-add-spec": ["forward", "add", "--", CTR, "{}"],
    "forward-rm-spec": ["forward", "rm", "--", CTR, "{}"],
}


@pytest.mark.kernel
@pytest.mark.parametrize("command", list(COMMANDS))
@FUZZ
@given(value=texts.filter(lambda v: "\x00" not in v))
def test_every_cli_argument(host, command, value):
    argv = [value if a == "{}" else a for a in COMMANDS[command]]
    argv = argv[:2] + [f"--netns={host}"] + argv[2:]
    before = fingerprint(host)
    code, stderr = _cli(argv)
    assert code in (0, 1, 2) and "Traceback" not in stderr, stderr
    if code == 1:
        assert stderr.startswith("bridgescope: ") and stderr.count("\n") == 1, stderr
    _check(host, before, code != 0, f"bridgescope {' '.join(argv)}")


def test_cli_refuses_an_option_like_name_in_one_line(capsys):
    """`network create -- --help` used to build a bridge named --help (dry run: nothing runs)."""
    code = cli.main(["network", "create", "--dry-run", "--subnet", "10.251.0.0/24", "--", "--help"])
    err = capsys.readouterr().err
    assert code == 1 and err == "bridgescope: name: '--help' must not start with '-' or '.'\n"


# ---- the linear conflict check decides as the per-mapping scan did ----------------------------------

def _scan(m, ours, foreign, listeners):
    """The former find_conflict: every holder scanned for one mapping (the reference)."""
    for f in ours:
        if f.proto == m.proto and f.host_port == m.host_port and conflicts._overlaps(f.host_ip, m.host_ip):
            return "ours"
    for pf in foreign:
        end = pf.host_port_end or pf.host_port
        if pf.proto == m.proto and pf.host_port <= m.host_port <= end and \
                conflicts._overlaps(pf.host_ip, m.host_ip) and pf.owner != "bridgescope":
            return "foreign"
    for ls in listeners:
        if ls.proto == m.proto and ls.port == m.host_port and \
                (ls.address in ("0.0.0.0", "::") or m.host_ip is None or ls.address == m.host_ip):
            return "listener"
    return None


protos = st.sampled_from(validate.PROTOCOLS)
ports = st.integers(1, 12)
ips = st.sampled_from([None, "127.0.0.1", "192.0.2.1"])


@st.composite
def _foreign(draw):
    from bridgescope.collector.model import PortForward

    start = draw(ports)
    end = draw(st.one_of(st.none(), st.integers(start, 14)))
    return PortForward("ns-1", draw(protos), draw(ips), start, "172.17.0.2", 80,
                       draw(st.sampled_from(["docker", "bridgescope", "cni"])), "nft", host_port_end=end)


@settings(max_examples=200, deadline=None)
@given(mappings=st.lists(st.builds(Forward, protos, ports, ports, ips), max_size=6),
       ours=st.lists(st.builds(Forward, protos, ports, ports, ips, st.just("c")), max_size=6),
       foreign=st.lists(_foreign(), max_size=4),
       listeners=st.lists(st.builds(conflicts.Listener, protos,
                                    st.sampled_from(["0.0.0.0", "::", "127.0.0.1", "192.0.2.1"]), ports),
                          max_size=4))
def test_indexed_conflict_check_matches_the_scan(mappings, ours, foreign, listeners):
    expected = next((r for m in mappings if (r := _scan(m, ours, foreign, listeners))), None)
    got = conflicts.find_conflicts(mappings, ours, foreign, listeners)
    kind = None if got is None else "ours" if "by bridgescope" in got else \
        "listener" if "listening" in got else "foreign"
    assert kind == expected
