"""The plumbing forms: typed parsing, previews, validation next to the field, real changes.

Pure tests cover parsing; kernel tests post the forms to an app whose "host" is a throwaway
namespace and check what the kernel then holds (and that a refused change left nothing).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import delete_netns, sh
from webui_sources import StaticSource, sample_snapshot

from bridgescope.webui import bodies
from bridgescope.webui.app import create_app, runtime
from bridgescope.webui.audit import AuditLog, RefusalBudget
from bridgescope.webui.forms import FieldErrors, container_args, field_for, forward_spec, network_args

BASE = "http://127.0.0.1:8470"


# ---- pure parsing ------------------------------------------------------------------------------

def test_forward_fields_become_a_docker_style_spec():
    assert forward_spec({"container": "web", "host_port": "8080", "container_port": "80",
                         "protocol": "tcp", "host_ip": ""}) == {"container": "web", "spec": "8080:80/tcp"}
    assert forward_spec({"container": "web", "host_port": "53", "container_port": "5353",
                         "protocol": "UDP", "host_ip": " 192.0.2.2 "})["spec"] == "192.0.2.2:53:5353/udp"
    assert forward_spec({"container": "w", "host_port": "1", "container_port": "2",
                         "protocol": "sctp", "host_ip": "0.0.0.0"})["spec"] == "1:2/sctp"


@pytest.mark.parametrize("values,field", [
    ({"host_port": "8080", "container_port": "80"}, "container"),
    ({"container": "w", "host_port": "http", "container_port": "80"}, "host_port"),
    ({"container": "w", "host_port": "0", "container_port": "80"}, "host_port"),
    ({"container": "w", "host_port": "65536", "container_port": "80"}, "host_port"),
    ({"container": "w", "host_port": "8080", "container_port": ""}, "container_port"),
    ({"container": "w", "host_port": "8080", "container_port": "-1"}, "container_port"),
    ({"container": "w", "host_port": "8080", "container_port": "80", "protocol": "icmp"}, "protocol"),
    ({"container": "w", "host_port": "8080", "container_port": "80", "host_ip": "1.2.3"}, "host_ip"),
    # The plumbing is IPv4-only: the form says so at the field instead of passing it on.
    ({"container": "w", "host_port": "8080", "container_port": "80", "host_ip": "2001:db8::1"}, "host_ip"),
])
def test_malformed_forward_fields_are_named(values, field):
    with pytest.raises(FieldErrors) as err:
        forward_spec(values)
    assert field in err.value.errors


def test_network_and_container_parsing():
    assert network_args({"name": "n1", "subnet": "10.9.0.0/24", "masquerade": "on"}) == \
        {"name": "n1", "subnet": "10.9.0.0/24", "masquerade": True}
    assert network_args({"name": "n1", "subnet": "10.9.0.0/24", "gateway": "10.9.0.254"})["masquerade"] is False
    assert container_args({"name": "a", "network": "n1", "ports": "8081:80, 53:53/udp"})["ports"] == \
        ("8081:80", "53:53/udp")
    with pytest.raises(FieldErrors) as err:
        network_args({"name": " "})
    assert set(err.value.errors) == {"name", "subnet"}


def test_plumbing_fields_map_onto_form_fields():
    assert field_for("forward", "spec") == "host_port"
    assert field_for("container", "host_port") == "ports"
    assert field_for("remove-container", "container") == "name"
    assert field_for("network", "subnet") == "subnet"
    assert field_for("network", "firewall") is None


# ---- through the app, against a real throwaway host ---------------------------------------------

@pytest.fixture
def lab_host(netns, tmp_path, monkeypatch):
    """A namespace playing the host; every container namespace plumbing makes is removed too."""
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path / "state"))
    host = netns("host")
    yield host
    for name in Path("/run/netns").iterdir():
        if name.name.startswith(host + "-"):
            delete_netns(name.name)


@pytest.fixture
def client_for(tmp_path):
    def make(host: str, **config):
        app = create_app({"SOURCE": StaticSource(sample_snapshot()), "NO_AUTH": True, "HOST": host,
                          "AUDIT_LOG": str(tmp_path / "audit.jsonl"), **config})
        client = app.test_client()
        csrf = app.extensions["bridgescope_access"].csrf

        def post(url, **fields):
            return client.post(url, base_url=BASE, headers={"HX-Request": "true"},
                               data={"csrf_token": csrf, **fields})
        client.post_form = post
        client.app_ = app
        return client
    return make


def links(host: str) -> str:
    return sh("ip", "-n", host, "-br", "link").stdout


def nat(host: str) -> str:
    out = sh("iptables-nft-save", "-t", "nat", ns=host).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("#"))


def error_next_to(html: str, form_id: str, field: str) -> str:
    m = re.search(rf'<p class="field-error" id="{form_id}-{field}-error">([^<]+)</p>', html)
    assert m, f"no error next to {field} in:\n{html[:3000]}"
    return m.group(1)


@pytest.mark.kernel
def test_build_and_tear_down_through_the_forms(lab_host, client_for, tmp_path):
    c = client_for(lab_host)
    preview = c.post_form("/forms/network", name="bsnet0", subnet="10.231.0.0/24", masquerade="on",
                          intent="preview")
    assert preview.status_code == 200 and "Commands it will run" in preview.get_data(as_text=True)
    assert re.search(r"ip .*link add .*bsnet0 .*type bridge", preview.get_data(as_text=True))
    assert "bsnet0" not in links(lab_host)  # a preview changes nothing

    made = c.post_form("/forms/network", name="bsnet0", subnet="10.231.0.0/24", masquerade="on", intent="apply")
    assert made.status_code == 200 and "Network created" in made.get_data(as_text=True)
    assert "bsnet0" in links(lab_host)
    assert 'id="audit-box" hx-swap-oob' in made.get_data(as_text=True)  # audit list refreshed

    ctr = c.post_form("/forms/container", name="web", network="bsnet0", ip="", ports="", intent="apply")
    assert ctr.status_code == 200, ctr.get_data(as_text=True)

    fwd = c.post_form("/forms/forward", container="web", host_port="8088", container_port="80",
                      protocol="tcp", host_ip="", intent="add")
    assert fwd.status_code == 200 and "Port forward added" in fwd.get_data(as_text=True)
    assert "--dport 8088" in nat(lab_host)

    first = c.post_form("/forms/forward", container="web", host_port="8088", container_port="80",
                        protocol="tcp", intent="remove")
    assert "Confirm removal" in first.get_data(as_text=True) and "--dport 8088" in nat(lab_host)
    gone = c.post_form("/forms/forward", container="web", host_port="8088", container_port="80",
                       protocol="tcp", intent="confirm-remove")
    assert "Port forward removed" in gone.get_data(as_text=True)
    assert "--dport 8088" not in nat(lab_host)

    ask = c.post_form("/forms/remove-container", name="web", intent="preview")
    assert "Confirm: remove container web" in ask.get_data(as_text=True)
    assert c.post_form("/forms/remove-container", name="web", intent="confirm").status_code == 200
    assert c.post_form("/forms/remove-network", name="bsnet0", intent="confirm").status_code == 200
    assert "bsnet0" not in links(lab_host)

    entries = AuditLog(tmp_path / "audit.jsonl").recent(20)
    actions = [e.request["action"] for e in reversed(entries)]
    assert actions == ["create_network", "create_container", "add_forward", "remove_forward",
                       "remove_container", "remove_network"]
    assert all(e.ok and e.commands and e.client == "127.0.0.1" for e in entries)
    assert c.app_.extensions["bridgescope"].source.refreshed  # the Watcher was asked to re-read


@pytest.mark.kernel
@pytest.mark.parametrize("url,fields,form_id,field", [
    ("/forms/network", {"name": "bad name!", "subnet": "10.232.0.0/24"}, "g-network", "name"),
    ("/forms/network", {"name": "bsnet1", "subnet": "10.232.0.0/33"}, "g-network", "subnet"),
    ("/forms/network", {"name": "bsnet1", "subnet": "10.232.0.0/24", "gateway": "10.9.9.9"}, "g-network", "gateway"),
    ("/forms/network", {"name": "bsnet1", "subnet": ""}, "g-network", "subnet"),
    ("/forms/container", {"name": "web", "network": "nonet"}, "g-container", "network"),
    ("/forms/container", {"name": "", "network": "nonet"}, "g-container", "name"),
    ("/forms/container", {"name": "web", "network": "bsnet9", "ip": "10.99.0.1"}, "g-container", "ip"),
    ("/forms/container", {"name": "web", "network": "bsnet9", "ports": "80:abc"}, "g-container", "ports"),
    ("/forms/forward", {"container": "ghost", "host_port": "8080", "container_port": "80"}, "g-forward", "container"),
    ("/forms/forward", {"container": "c", "host_port": "x", "container_port": "80"}, "g-forward", "host_port"),
    ("/forms/forward", {"container": "c", "host_port": "80", "container_port": "99999"}, "g-forward", "container_port"),
    ("/forms/forward", {"container": "c", "host_port": "80", "container_port": "80", "protocol": "gre"}, "g-forward", "protocol"),
    ("/forms/forward", {"container": "c", "host_port": "80", "container_port": "80", "host_ip": "300.1.1.1"}, "g-forward", "host_ip"),
    ("/forms/remove-container", {"name": "ghost"}, "g-remove-container", "name"),
    ("/forms/remove-network", {"name": "ghost"}, "g-remove-network", "name"),
])
def test_every_validation_error_is_shown_next_to_its_field_and_changes_nothing(
        lab_host, client_for, tmp_path, url, fields, form_id, field):
    c = client_for(lab_host)
    if "bsnet9" in str(fields):
        assert c.post_form("/forms/network", name="bsnet9", subnet="10.233.0.0/24", intent="apply").status_code == 200
    before_links, before_nat = links(lab_host), nat(lab_host)
    resp = c.post_form(url, intent="confirm" if "remove-" in url else "apply", **fields)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 422, html[:2000]
    assert error_next_to(html, form_id, field)
    assert "Nothing was changed" in html
    assert links(lab_host) == before_links and nat(lab_host) == before_nat
    attempts = [e for e in AuditLog(tmp_path / "audit.jsonl").recent(5)
                if e.request["args"].get("name") != "bsnet9"]
    assert not any(e.ok for e in attempts)  # refused attempts are logged as failures, if at all


@pytest.mark.kernel
def test_a_conflicting_forward_is_refused_with_the_port_marked(lab_host, client_for):
    c = client_for(lab_host)
    c.post_form("/forms/network", name="bsnet2", subnet="10.234.0.0/24", intent="apply")
    c.post_form("/forms/container", name="a", network="bsnet2", intent="apply")
    c.post_form("/forms/container", name="b", network="bsnet2", intent="apply")
    assert c.post_form("/forms/forward", container="a", host_port="9000", container_port="80",
                       intent="add").status_code == 200
    before = nat(lab_host)
    clash = c.post_form("/forms/forward", container="b", host_port="9000", container_port="80", intent="add")
    assert clash.status_code == 422
    assert "9000" in error_next_to(clash.get_data(as_text=True), "g-forward", "host_port")
    assert nat(lab_host) == before


@pytest.mark.kernel
def test_live_preview_shows_commands_or_the_problem(lab_host, client_for):
    c = client_for(lab_host)
    ok = c.post_form("/forms/preview/network", name="bsnet3", subnet="10.235.0.0/24", masquerade="on")
    assert ok.status_code == 200 and "Commands it will run" in ok.get_data(as_text=True)
    assert "MASQUERADE" in ok.get_data(as_text=True)
    bad = c.post_form("/forms/preview/forward", container="", host_port="x")
    assert "Container is required" in bad.get_data(as_text=True)
    assert c.post_form("/forms/preview/remove-network", name="x").status_code == 404
    assert "bsnet3" not in links(lab_host)


def test_forms_page_works_without_javascript(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path))
    app = create_app({"SOURCE": StaticSource(sample_snapshot()), "NO_AUTH": True})
    client = app.test_client()
    csrf = app.extensions["bridgescope_access"].csrf
    page = client.get("/forms/", base_url=BASE).get_data(as_text=True)
    for label in ("Container", "Host port", "Container port", "Protocol", "Host IP"):
        assert re.search(rf'<label for="g-forward-[a-z_]+">{label}</label>', page), label
    assert ">Add port forward</button>" in page
    resp = client.post("/forms/forward", base_url=BASE, data={"csrf_token": csrf, "container": "",
                                                               "host_port": "1", "container_port": "1"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 422 and "<html" in html  # a whole page, errors in place
    assert "Container is required" in error_next_to(html, "g-forward", "container")


# ---- strict fields: every malformed one is a 422 next to it, never a 500, never a change -------

@pytest.fixture
def with_container(lab_host, client_for):
    """A host with network bsnet5 and container web, so a forward form is otherwise valid."""
    c = client_for(lab_host)
    assert c.post_form("/forms/network", name="bsnet5", subnet="10.237.0.0/24", intent="apply").status_code == 200
    assert c.post_form("/forms/container", name="web", network="bsnet5", intent="apply").status_code == 200
    return c


def _link_names(host: str) -> list[str]:
    """Names only: a new bridge's or veth's operstate settles on its own after creation."""
    return [line.split()[0] for line in links(host).splitlines()]


def _refused_unchanged(c, host, url, form_id, field, **fields):
    before = (_link_names(host), nat(host))
    resp = c.post_form(url, **fields)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 422, html[:2000]
    message = error_next_to(html, form_id, field)
    assert (_link_names(host), nat(host)) == before
    return message


@pytest.mark.kernel
@pytest.mark.parametrize("field", ["host_port", "container_port"])
@pytest.mark.parametrize("value", ["²", "٨٠", "9_408", "+80", "８０"])
def test_ports_are_ascii_digits_in_the_forward_form(with_container, lab_host, field, value):
    """'²' passed str.isdigit and int() raised: a 500. '9_408' and '٨٠' were int()-ed."""
    fields = {"container": "web", "host_port": "8090", "container_port": "80", field: value}
    _refused_unchanged(with_container, lab_host, "/forms/forward", "g-forward", field,
                       intent="add", **fields)


@pytest.mark.kernel
@pytest.mark.parametrize("name", ["--help", "-n", ".x", "дocker0", "ｂｒ0"])
def test_option_like_and_non_ascii_names_are_refused(lab_host, client_for, name):
    c = client_for(lab_host)
    _refused_unchanged(c, lab_host, "/forms/network", "g-network", "name",
                       name=name, subnet="10.238.0.0/24", intent="apply")


@pytest.mark.kernel
@pytest.mark.parametrize("subnet", ["0.0.0.0/8", "240.0.0.0/24", "255.255.255.0/30", "10.0.0.0/31"])
def test_subnets_no_container_can_use_are_refused(lab_host, client_for, subnet):
    c = client_for(lab_host)
    _refused_unchanged(c, lab_host, "/forms/network", "g-network", "subnet",
                       name="bsnet6", subnet=subnet, intent="apply")


@pytest.mark.kernel
@pytest.mark.parametrize("host_ip", ["255.255.255.255", "224.0.0.1", "10.237.0.2", "10.237.0.99"])
def test_forward_host_ip_must_be_a_unicast_address_of_the_host(with_container, lab_host, host_ip):
    """10.237.0.2 is container web's own address: such a DNAT never matches anything."""
    message = _refused_unchanged(with_container, lab_host, "/forms/forward", "g-forward", "host_ip",
                                 container="web", host_port="8091", container_port="80",
                                 host_ip=host_ip, intent="add")
    assert host_ip in message


@pytest.mark.kernel
def test_gateway_is_still_a_host_address_to_publish_on(with_container, lab_host):
    ok = with_container.post_form("/forms/forward", container="web", host_port="8092",
                                  container_port="80", host_ip="10.237.0.1", intent="add")
    assert ok.status_code == 200, ok.get_data(as_text=True)[:2000]
    assert "-d 10.237.0.1/32" in nat(lab_host)


@pytest.mark.kernel
def test_sctp_forward_is_added_and_removed_through_the_form(with_container, lab_host):
    """The API and CLI took sctp, the form refused it: an sctp forward could not be removed."""
    page = with_container.get("/forms/", base_url=BASE).get_data(as_text=True)
    assert '<option value="sctp">sctp</option>' in page
    fields = dict(container="web", host_port="3868", container_port="3868", protocol="sctp")
    added = with_container.post_form("/forms/forward", intent="add", **fields)
    assert added.status_code == 200, added.get_data(as_text=True)[:2000]
    assert "-p sctp -m sctp --dport 3868" in nat(lab_host)
    ask = with_container.post_form("/forms/forward", intent="remove", **fields)
    assert "Confirm removal" in ask.get_data(as_text=True)
    gone = with_container.post_form("/forms/forward", intent="confirm-remove", **fields)
    assert gone.status_code == 200 and "Port forward removed" in gone.get_data(as_text=True)
    assert "sctp" not in nat(lab_host)


@pytest.mark.kernel
def test_a_range_over_the_cap_is_refused_at_once_with_the_cap_in_the_message(lab_host, client_for):
    """The live preview of 10000-65535:10000-65535 never answered (a quadratic duplicate check)."""
    import time

    c = client_for(lab_host)
    assert c.post_form("/forms/network", name="bsnet7", subnet="10.239.0.0/24", intent="apply").status_code == 200
    for ports in ("10000-12999:10000-12999", "10000-65535:10000-65535"):
        start = time.monotonic()
        resp = c.post_form("/forms/preview/container", name="big", network="bsnet7", ports=ports)
        assert time.monotonic() - start < 5  # generous: it is refused before anything is expanded
        assert "at most 1000" in resp.get_data(as_text=True)
    largest = c.post_form("/forms/preview/container", name="big", network="bsnet7",
                          ports="20000-20999:20000-20999")
    assert "Commands it will run" in largest.get_data(as_text=True)
    assert "big" not in links(lab_host)


@pytest.mark.kernel
def test_checkbox_values_other_than_on_are_refused(lab_host, client_for):
    c = client_for(lab_host)
    _refused_unchanged(c, lab_host, "/forms/network", "g-network", "masquerade",
                       name="bsnet8", subnet="10.240.0.0/24", masquerade="nope", intent="apply")


# ---- refusals are audited, at a bounded rate; previews are not ------------------------------------

def _refusals(tmp_path):
    return [e for e in AuditLog(tmp_path / "audit.jsonl").recent(200) if e.result.startswith("refused:")]


@pytest.mark.kernel
def test_a_refused_submission_is_audited_and_a_preview_is_not(lab_host, client_for, tmp_path):
    c = client_for(lab_host)
    c.post_form("/forms/preview/network", name="--help", subnet="10.241.0.0/24")
    c.post_form("/forms/network", name="--help", subnet="10.241.0.0/24", intent="preview")
    assert _refusals(tmp_path) == []
    c.post_form("/forms/network", name="--help", subnet="10.241.0.0/24", intent="apply")
    (entry,) = _refusals(tmp_path)
    assert not entry.ok and entry.commands == () and entry.client == "127.0.0.1"
    assert entry.request["action"] == "create_network" and "must not start with" in entry.result
    c.post_form("/forms/forward", container="ghost", host_port="1", container_port="1", intent="add")
    assert "no container named ghost" in _refusals(tmp_path)[0].result  # the plumbing's refusal


@pytest.mark.kernel
def test_a_flood_of_refusals_is_logged_at_a_bounded_rate_with_a_count(lab_host, client_for, tmp_path):
    c = client_for(lab_host)
    budget = runtime(c.app_).audit.refusals = RefusalBudget(per_window=3)
    for _ in range(20):
        assert c.post_form("/forms/network", name="x" * 5000, subnet="?", intent="apply").status_code == 422
    logged = _refusals(tmp_path)
    assert len(logged) == 3
    assert all(len(str(e.request)) < 2000 for e in logged)  # a huge field is cut short
    budget.window = 0  # the window is over
    c.post_form("/forms/network", name="-", subnet="?", intent="apply")
    assert "+17 earlier refusals from 127.0.0.1 not logged" in _refusals(tmp_path)[0].result


def test_refusal_budget_resets_per_window_and_per_client():
    now = [0.0]
    b = RefusalBudget(per_window=2, window=60, clock=lambda: now[0])
    assert [b.admit("a", "field") for _ in range(4)] == [0, 0, None, None]
    assert b.admit("b", "field") == 0
    now[0] = 61
    assert b.admit("a", "field") == 2
    small = RefusalBudget(max_keys=2, clock=lambda: now[0])
    for i in range(10):
        now[0] = i * 100
        small.admit(f"c{i}", "field")
    assert len(small._seen) <= 2


def test_a_body_over_the_limit_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGESCOPE_STATE_DIR", str(tmp_path))
    app = create_app({"SOURCE": StaticSource(sample_snapshot()), "NO_AUTH": True, "HOST": "nonexistent"})
    csrf = app.extensions["bridgescope_access"].csrf
    resp = app.test_client().post("/forms/network", base_url=BASE,
                                  data={"csrf_token": csrf, "name": "n", "ports": "1" * (bodies.MAX_BODY + 1)})
    assert resp.status_code == 413
