"""`bridgescope serve`: the dashboard on waitress, guarded by an access token.

    bridgescope serve [--listen 127.0.0.1:8470] [--read-only] [--netns NAME] [--engine-socket PATH]...
                      [--token-file F] [--no-auth] [--allow-host NAME] [--audit-log PATH]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import quote

from bridgescope.collector.errors import BridgescopeError
from bridgescope.collector.kernel.containers import choose_engine_sockets
from bridgescope.webui.cli_snapshot import add_engine_socket_option

DEFAULT_LISTEN = "127.0.0.1:8470"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the live dashboard",
                       description="Serve the live topology dashboard (waitress, one process).")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to listen on (default {DEFAULT_LISTEN}; beyond localhost "
                        "anyone who can reach it and has the token can change the firewall)")
    p.add_argument("--read-only", action="store_true", help="show, never change: no forms, mutations refused")
    p.add_argument("--netns", metavar="NAME", help="treat this network namespace as the host")
    p.add_argument("--token-file", metavar="FILE",
                   help="read the access token from FILE (else $BRIDGESCOPE_TOKEN, else a random one)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve without an access token (CSRF and Host checks stay on)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept this Host header name (e.g. a reverse proxy's); repeatable")
    p.add_argument("--audit-log", metavar="PATH",
                   help="JSON-lines audit log (default: audit.jsonl in the bridgescope state dir)")
    p.add_argument("--firewall", default="auto", choices=("auto", "nft", "legacy", "nftables"),
                   help="firewall backend for changes (default: the one the host uses)")
    p.add_argument("--threads", type=int, default=96,
                   help="server threads (at least 64); each open tab holds one, 16 stay for pages")
    add_engine_socket_option(p)
    p.set_defaults(func=run)


def app_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict:
    """Command line -> create_app() config; raises BridgescopeError on bad input."""
    from bridgescope.collector.kernel.namespaces import resolve_netns
    from bridgescope.plumbing.state import state_dir
    from bridgescope.webui import auth

    auth.parse_listen(args.listen)
    if args.netns:
        resolve_netns(args.netns)  # fail now, in words, rather than in the worker
    if args.no_auth and args.token_file:
        raise BridgescopeError("--no-auth and --token-file contradict each other")
    token = None if args.no_auth else auth.read_token(args.token_file, environ)
    return {
        "LISTEN": args.listen, "HOST": args.netns, "READ_ONLY": args.read_only,
        "TOKEN": token, "NO_AUTH": args.no_auth, "ALLOWED_HOSTS": tuple(args.allow_host),
        "AUDIT_LOG": args.audit_log or str(state_dir() / "audit.jsonl"), "FIREWALL": args.firewall,
        "MAX_STREAMS": max(args.threads, 64) - 16,
    }


def banner(config: dict) -> str:
    from bridgescope.webui import auth

    host, port = auth.parse_listen(config["LISTEN"])
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    url = f"http://{shown}:{port}/"
    lines = [f"bridgescope dashboard on {config['LISTEN']}"
             + (f" (host namespace: {config['HOST']})" if config["HOST"] else "")
             + (" - read-only" if config["READ_ONLY"] else "")]
    lines.append(f"    open: {url}?token={quote(config['TOKEN'], safe='')}" if config["TOKEN"] else f"    open: {url}")
    lines.append(f"    audit log: {config['AUDIT_LOG']}")
    return "\n".join(lines)


def warnings(config: dict) -> list[str]:
    from bridgescope.webui import auth

    host, _ = auth.parse_listen(config["LISTEN"])
    out = []
    if not auth.is_loopback(host):
        out.append(f"WARNING: listening on {host}, beyond localhost. Anyone on the network who gets "
                   "the URL can " + ("see" if config["READ_ONLY"] else "change") +
                   " this host's networking and firewall. Prefer --listen 127.0.0.1:PORT and an SSH tunnel.")
    if config["NO_AUTH"]:
        out.append("WARNING: --no-auth: no access token. Every local user and process that can reach "
                   "the port can use the dashboard" + ("" if config["READ_ONLY"] else " to change the firewall") + ".")
    return out


def run(args: argparse.Namespace) -> int:
    from bridgescope.collector.render.graph import keep_slots_in
    from bridgescope.plumbing.api import recover
    from bridgescope.plumbing.state import state_dir
    from bridgescope.webui.audit import AuditLog
    from bridgescope.webui.server import serve

    config = app_config(args)
    choose_engine_sockets(args.engine_socket)
    keep_slots_in(state_dir() / "picture" / "slots.json")  # the same picture after a restart
    if not args.read_only and (rec := recover(host=args.netns)):  # a change a crash interrupted
        print(rec.summary, file=sys.stderr)
        AuditLog(Path(config["AUDIT_LOG"])).record(
            "serve", {"action": "recover", "host": args.netns}, rec.commands, f"ok: {rec.summary}")
    if not args.read_only:  # adopted containers may have moved while we were not running
        from bridgescope.webui import reconcile
        follow_audit = AuditLog(Path(config["AUDIT_LOG"]))
        reconcile.follow_once(args.netns, follow_audit)
        reconcile.start(args.netns, follow_audit)
    for line in warnings(config):
        print("\n" + "!" * 78 + f"\n{line}\n" + "!" * 78, file=sys.stderr)

    def ready() -> None:
        print(banner(config), flush=True)

    serve(config, threads=args.threads, when_ready=ready)
    return 0
