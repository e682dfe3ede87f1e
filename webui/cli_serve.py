"""`bridgescope serve`: the dashboard on waitress, guarded by an access token.

    bridgescope serve [--listen 127.0.0.1:8470] [--read-only] [--netns NAME] [--engine-socket PATH]...
                      [--token-file F] [--no-auth] [--allow-host NAME] [--audit-log PATH]
                      [--agent URL]... [--agent-token-file F] [--agent-ca F] [--agent-server-name NAME]
                      [--kubernetes-agents [NS/]SERVICE]

With --agent or --kubernetes-agents it shows a fleet: every agent's host merged into one view,
and no local host.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, urlsplit

from bridgescope.collector.errors import BridgescopeError
from bridgescope.collector.kernel.containers import choose_engine_sockets
from bridgescope.webui.cli_snapshot import add_engine_socket_option

DEFAULT_LISTEN = "127.0.0.1:8470"
_DNS_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*", re.I)


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
    fleet = p.add_argument_group("fleet", "show the hosts of bridgescope agents instead of this one")
    fleet.add_argument("--agent", action="append", default=[], metavar="URL",
                       help="an agent to show, http(s)://HOST:PORT (repeatable; plain http only on loopback)")
    fleet.add_argument("--kubernetes-agents", metavar="[NAMESPACE/]SERVICE",
                       help="follow the agents behind this headless Service (in a cluster, with the "
                            "pod's service account; NAMESPACE defaults to the pod's own)")
    fleet.add_argument("--agent-token-file", metavar="FILE",
                       help="the agents' bearer token (else $BRIDGESCOPE_AGENT_TOKEN)")
    fleet.add_argument("--agent-ca", metavar="FILE", help="CA certificate(s) the agents' TLS certificates are checked against")
    fleet.add_argument("--agent-server-name", metavar="NAME",
                       help="the DNS name the agents' certificate carries, checked instead of the address "
                            "dialled (agents on the host network answer at node IPs; default: the address)")
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
    return {"FLEET": fleet_plan(args, environ), **{
        "LISTEN": args.listen, "HOST": args.netns, "READ_ONLY": args.read_only,
        "TOKEN": token, "NO_AUTH": args.no_auth, "ALLOWED_HOSTS": tuple(args.allow_host),
        "AUDIT_LOG": args.audit_log or str(state_dir() / "audit.jsonl"), "FIREWALL": args.firewall,
        "MAX_STREAMS": max(args.threads, 64) - 16,
    }}


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def fleet_plan(args: argparse.Namespace, environ: dict[str, str] | None = None):
    """The fleet options -> a FleetPlan, or None without them; raises BridgescopeError."""
    from bridgescope.webui.auth import is_loopback
    from bridgescope.webui.fleet.client import parse_url
    from bridgescope.webui.fleet.source import FleetPlan

    agents = getattr(args, "agent", None) or []
    kube = getattr(args, "kubernetes_agents", None)
    if not agents and not kube:
        if any(getattr(args, a, None) for a in ("agent_token_file", "agent_ca", "agent_server_name")):
            raise BridgescopeError("--agent-token-file, --agent-ca and --agent-server-name need "
                                   "--agent or --kubernetes-agents")
        return None
    if args.netns:
        raise BridgescopeError("--netns and --agent/--kubernetes-agents contradict each other: "
                               "a fleet dashboard shows its agents' hosts, no local one")
    urls = tuple(dict.fromkeys(parse_url(u) for u in agents))
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme == "http" and parts.hostname != "localhost" and not is_loopback(parts.hostname):
            raise BridgescopeError(f"--agent {url}: plain http sends the token in the clear; use https beyond loopback")
    env = os.environ if environ is None else environ
    token = _agent_token(args.agent_token_file, env)
    if args.agent_ca and not os.access(args.agent_ca, os.R_OK):
        raise BridgescopeError(f"cannot read the agents' CA file {args.agent_ca}")
    kubernetes = None
    if kube:
        namespace, _, service = kube.rpartition("/")
        if not service:
            raise BridgescopeError(f"--kubernetes-agents {kube!r}: expected [NAMESPACE/]SERVICE")
        kubernetes = (namespace or _pod_namespace(), service)
    server_name = getattr(args, "agent_server_name", None)
    if server_name is not None and not _DNS_NAME.fullmatch(server_name):
        raise BridgescopeError(f"--agent-server-name {server_name!r}: expected a DNS name")
    return FleetPlan(urls, token, args.agent_ca, kubernetes, server_name)


def _agent_token(path: str | None, env) -> str:
    if path:
        try:
            text = Path(path).read_text().strip()
        except OSError as err:
            raise BridgescopeError(f"cannot read the agents' token file {path}: {err.strerror}") from err
    else:
        text = env.get("BRIDGESCOPE_AGENT_TOKEN", "").strip()
    if not text:
        raise BridgescopeError("the agents need a token: --agent-token-file FILE or $BRIDGESCOPE_AGENT_TOKEN")
    return text


def _pod_namespace() -> str:
    try:
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or "default"
    except OSError:
        return "default"


def banner(config: dict) -> str:
    from bridgescope.webui import auth

    host, port = auth.parse_listen(config["LISTEN"])
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    url = f"http://{shown}:{port}/"
    fleet = config.get("FLEET")
    lines = [f"bridgescope dashboard on {config['LISTEN']}"
             + (f" (host namespace: {config['HOST']})" if config["HOST"] else "")
             + (f" (fleet: {len(fleet.agents)} agent(s)"
                + (f", Kubernetes service {'/'.join(fleet.kubernetes)}" if fleet.kubernetes else "") + ")"
                if fleet else "")
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
    from bridgescope.collector.render.slots import keep_slots_in
    from bridgescope.plumbing.api import recover
    from bridgescope.plumbing.state import state_dir
    from bridgescope.webui.audit import AuditLog
    from bridgescope.webui.server import serve

    config = app_config(args)
    plan = config["FLEET"]
    if plan is not None and plan.kubernetes is not None:  # outside a pod: one line now, not a traceback once serving
        from bridgescope.webui.fleet.discovery import ApiAccess
        config["FLEET"] = replace(plan, api=ApiAccess.in_cluster())
    choose_engine_sockets(args.engine_socket)
    local = config["FLEET"] is None  # a fleet's agents draw and change their own hosts
    if local:
        keep_slots_in(state_dir() / "picture" / "slots.json")  # the same picture after a restart
    if local and not args.read_only and (rec := recover(host=args.netns)):  # a change a crash interrupted
        print(rec.summary, file=sys.stderr)
        AuditLog(Path(config["AUDIT_LOG"])).record(
            "serve", {"action": "recover", "host": args.netns}, rec.commands, f"ok: {rec.summary}")
    if local and not args.read_only:  # adopted containers may have moved meanwhile
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
