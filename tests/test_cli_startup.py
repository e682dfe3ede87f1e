"""The CLI starts light: each sub-command imports only its own module's dependencies."""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from bridgescope.webui import cli

HEAVY = ("flask", "pyroute2", "waitress", "bridgescope.plumbing", "bridgescope.collector.live", "http.client", "email")


def loaded_after(argv: list[str]) -> set[str]:
    code = (f"import sys\nfrom bridgescope.webui import cli\ntry:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('\\n'.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {m for m in out.split() if m.startswith(HEAVY)}


@pytest.mark.parametrize("argv", [["--help"], ["snapshot", "--help"]])
def test_help_imports_nothing_heavy(argv):
    assert loaded_after(argv) == set()


def test_doctor_help_imports_no_web_server():
    assert not {m for m in loaded_after(["doctor", "--help"]) if m.startswith(("flask", "waitress"))}


def test_the_listing_says_what_each_module_says():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for module in dict.fromkeys(m for m, _ in cli.COMMANDS.values()):
        importlib.import_module(module).register(sub)
    own = {a.dest: a.help for a in sub._choices_actions}
    assert own == {name: text for name, (_, text) in cli.COMMANDS.items()}


def test_each_command_is_parsed_by_its_module():
    args = cli.build_parser("snapshot").parse_args(["snapshot", "--json"])
    assert args.json and args.func.__module__ == "bridgescope.webui.cli_snapshot"


def test_snapshot_json_into_a_pipe_is_compact_and_the_same_document(tmp_path):
    """Into a pipe the document is written compact (the C encoder); it parses to what the
    indented form says."""
    code = ("import json, sys\nfrom bridgescope.collector.model import Snapshot\n"
            "import bridgescope.webui.cli_snapshot as c\nc.collect = lambda *a, **k: Snapshot(host='ns-1')\n"
            "c.run(type('A', (), {'json': True, 'dot': False, 'netns': None, 'no_firewall': True,"
            " 'engine_socket': []})())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.count("\n") == 1 and ": " not in out
    assert json.loads(out)["host"] == "ns-1"
