"""`bridgescope agent`: one host's collector, watcher and doctor behind a bearer-token API.

    bridgescope agent [--name NAME] [--netns NAME] [--listen ADDR:PORT] [--token-file F]
                      [--tls-cert F --tls-key F] [--allow-changes] [--engine-socket PATH]...
                      [--audit-log PATH]
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from bridgescope.collector.errors import BridgescopeError
from bridgescope.webui.cli_snapshot import add_engine_socket_option

DEFAULT_LISTEN = "127.0.0.1:9477"
HELP = "serve one host's topology, doctor and metrics to a fleet dashboard (bearer-token API)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help=HELP, description=(
        "Serve this host's live topology (GET /v1/snapshot, /v1/events), the doctor's findings, "
        "Prometheus metrics (/metrics) and, with --allow-changes, port forwards (/v1/forwards) "
        "to a bridgescope dashboard. Every request needs the token."))
    p.add_argument("--name", help="the host's name in the fleet (default: the --netns name, "
                                  "else the hostname)")
    p.add_argument("--netns", metavar="NAME", help="treat this network namespace as the host")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR:PORT",
                   help=f"address to listen on (default {DEFAULT_LISTEN}; any other than "
                        "loopback needs --tls-cert and --tls-key)")
    p.add_argument("--token-file", metavar="FILE",
                   help="read the token from FILE (else $BRIDGESCOPE_TOKEN; one of them is required)")
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("--allow-changes", action="store_true",
                   help="accept POST/DELETE /v1/forwards (default: read-only)")
    p.add_argument("--audit-log", metavar="PATH",
                   help="JSON-lines audit log (default: audit.jsonl in the bridgescope state dir)")
    p.add_argument("--firewall", default="auto", choices=("auto", "nft", "legacy", "nftables"),
                   help="firewall backend for changes (default: the one the host uses)")
    add_engine_socket_option(p)
    p.set_defaults(func=run)


def agent_token(token_file: str | None, environ: dict[str, str]) -> str:
    """--token-file, else $BRIDGESCOPE_TOKEN; never a made-up one (nobody could use it)."""
    from bridgescope.webui import auth

    if token_file:
        return auth.read_token(token_file, environ)
    token = environ.get("BRIDGESCOPE_TOKEN", "").strip()
    if not token:
        raise BridgescopeError("an agent needs a token: --token-file FILE or $BRIDGESCOPE_TOKEN")
    return token


def agent_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict:
    """Command line -> create_agent_app() config; BridgescopeError on bad input."""
    from bridgescope.collector.kernel.namespaces import resolve_netns
    from bridgescope.plumbing.state import state_dir
    from bridgescope.webui import auth

    host, _ = auth.parse_listen(args.listen)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise BridgescopeError("--tls-cert and --tls-key go together")
    if not auth.is_loopback(host) and not args.tls_cert:
        raise BridgescopeError(f"refusing to listen on {host} without TLS: give --tls-cert and "
                               "--tls-key (the token would cross the network in clear)")
    if args.netns:
        resolve_netns(args.netns)
    return {"NAME": args.name or args.netns or socket.gethostname(), "HOST": args.netns,
            "LISTEN": args.listen, "READ_ONLY": not args.allow_changes,
            "TOKEN": agent_token(args.token_file, dict(os.environ) if environ is None else environ),
            "AUDIT_LOG": args.audit_log or str(state_dir() / "audit.jsonl"),
            "FIREWALL": args.firewall}


def run(args: argparse.Namespace) -> int:
    from bridgescope.collector.kernel.containers import choose_engine_sockets
    from bridgescope.webui.fleet.agent_server import Tls, serve_agent

    config = agent_config(args)
    choose_engine_sockets(args.engine_socket)
    tls = Tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    if args.allow_changes:
        _keep_changes_whole(args.netns, config["AUDIT_LOG"])

    def ready() -> None:
        scheme = "https" if tls else "http"
        print(f"bridgescope agent {config['NAME']} on {scheme}://{config['LISTEN']}"
              + (" - read-only" if config["READ_ONLY"] else " - changes allowed"), flush=True)

    serve_agent(config, tls=tls, when_ready=ready)
    return 0


def _keep_changes_whole(host: str | None, audit_log: str) -> None:
    """As `serve` does where changes are allowed: finish or roll back a change a crash
    interrupted, then follow the adopted containers (their forwards move with them)."""
    from pathlib import Path

    from bridgescope.plumbing.api import recover
    from bridgescope.webui import reconcile
    from bridgescope.webui.audit import AuditLog

    audit = AuditLog(Path(audit_log))
    if rec := recover(host=host):
        print(rec.summary, file=sys.stderr)
        audit.record("agent", {"action": "recover", "host": host}, rec.commands, f"ok: {rec.summary}")
    reconcile.follow_once(host, audit)
    reconcile.start(host, audit)


