"""Sub-command `bridgescope doctor [--json] [--netns NAME]`: what is broken, why, and the fix."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

from bridgescope.collector.doctor import diagnose
from bridgescope.collector.doctor.finding import Finding, counts_of
from bridgescope.collector.kernel.snapshot import collect
from bridgescope.collector.model import to_plain
from bridgescope.plumbing.api import forward_targets, owned_tags
from bridgescope.webui.verdicts import verdict_listeners

EXIT_ERRORS = 2  # 1 stays "the doctor itself could not run"

_EPILOG = """\
exit status:
  0  no finding of severity "error" (warnings and info may be printed)
  2  at least one "error" finding
  1  the doctor could not run (namespace missing, permission denied, ...)
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "doctor", help="find what is broken in the host's container networking, and the fix",
        description="Scan the host and the containers plugged into its bridges and report each "
        "problem (forwarding off, links down, an address without prefix, a missing route, "
        "MASQUERADE or DNAT mistakes, FORWARD drops, hairpin, split-brain iptables, duplicate "
        "or orphaned rules) with the commands that fix it.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true",
                        help="print {\"findings\": [{id, severity, objects, title, explanation, fix}]}")
    parser.add_argument("--netns", metavar="NAME", default=None,
                        help="treat this namespace (name in /run/netns or nsfs path) as the host")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    snap = collect(args.netns)
    findings = diagnose(snap, owned_tags(args.netns), verdict_listeners(snap), forward_targets(args.netns))
    if args.json:
        json.dump({"findings": to_plain(findings)}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(findings))
    return EXIT_ERRORS if any(f.severity == "error" for f in findings) else 0


def render_text(findings: tuple[Finding, ...]) -> str:
    if not findings:
        return "No problems found.\n"
    blocks = []
    for f in findings:
        lines = [f"{f.severity.upper()} [{f.id}] {f.title}"]
        lines += textwrap.wrap(f.explanation, 88, initial_indent="  ", subsequent_indent="  ")
        lines += ["  fix:"] + [f"    {cmd}" for cmd in f.fix]
        blocks.append("\n".join(lines))
    counts = counts_of(findings)
    summary = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n)
    return "\n\n".join(blocks) + f"\n\n{summary}\n"
