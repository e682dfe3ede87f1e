"""Fleet dashboard benchmark: 50 hosts x 20 containers through agents.

    sudo .venv/bin/python bench/bench_fleet.py [--hosts 50] [--real 2] [--changes 20]

One sandbox lab grown to 20 containers stands for every host. `--real` of the hosts are real
`bridgescope agent` processes on that lab (each under its own --name); the others are replay
agents in this process: they speak the same API (bearer token, /v1/info, /v1/events with the
graph a real agent sent for the lab, a keepalive every 5 s), so the dashboard does the same
work for them without 50 watchers reading this machine's every namespace. Measured: the
dashboard's first render in Chromium (all hosts folded: > 6), the same with every host
opened, a kernel change on a real agent's host -> the new node in the browser (p50/p95), and
the dashboard's RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fleet_labs
import serve_process
from bench_webui import TWO_FRAMES, wait_js  # the same first-render probe as the single-host bench

TOKEN = "bench-fleet-dashboard"
PREFIX = "bsfleetbench"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def grow_lab(prefix: str, containers: int):
    from bridgescope.plumbing import api
    from bridgescope.plumbing.lab import sandbox

    info = sandbox.lab_up(prefix)
    for k in range(3, containers + 1):
        api.create_container(f"c{k}", sandbox.BRIDGE, host=info.host)
    return info


def first_graph(url: str) -> dict:
    """The graph event a real agent sends first."""
    with requests.get(url + "/v1/events", headers={"Authorization": f"Bearer {fleet_labs.TOKEN}"},
                      stream=True, timeout=120) as resp:
        name, data = None, []
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data.append(line.split(":", 1)[1].strip())
            elif not line and data:
                if name == "graph":
                    return json.loads("\n".join(data))
                data = []
    raise RuntimeError("no graph from the agent")


class AgentWatch(threading.Thread):
    """When each node label first arrives in a delta on the agent's own stream: the share of a
    change's latency that is the agent's (and this machine's), before the dashboard sees it."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.seen = url, {}

    def run(self) -> None:
        with requests.get(self.url + "/v1/events", headers={"Authorization": f"Bearer {fleet_labs.TOKEN}"},
                          stream=True, timeout=600) as resp:
            for line in resp.iter_lines(decode_unicode=True):
                if line.startswith("data:") and '"delta"' in line[:40]:
                    now = time.time()
                    for e in json.loads(line[5:]).get("added") or ():
                        self.seen.setdefault(e["data"].get("label"), now)


class Replay(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, graph_text: str):
        super().__init__(("127.0.0.1", 0), ReplayHandler)
        self.name, self.graph_text, self.closing = name, graph_text, threading.Event()


class ReplayHandler(BaseHTTPRequestHandler):
    server: Replay

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {fleet_labs.TOKEN}":
            self._json(401, {"error": "unauthorized"})
        elif self.path == "/v1/info":
            self._json(200, {"name": self.server.name, "version": 1, "read_only": True, "bridgescope": "bench"})
        elif self.path == "/v1/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                self.wfile.write(f"id: 1\nevent: graph\ndata: {self.server.graph_text}\n\n".encode())
                self.wfile.flush()
                while not self.server.closing.wait(5.0):
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
            except OSError:
                pass
        else:
            self._json(404, {"error": "no such route"})

    def _json(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")




def render(browser, base: str, hosts: int, shot: Path | None = None) -> float:
    ctx = browser.new_context(viewport={"width": 1366, "height": 768})
    page = ctx.new_page()
    page.goto(f"{base}/?token={TOKEN}")
    wait_js(page, f"window.bridgescopeFirstRender !== undefined && cy.nodes('[kind = \"fleethost\"]').length === {hosts}", 120)
    ms = page.evaluate(TWO_FRAMES)
    if shot is not None:
        page.screenshot(path=str(shot))
    ctx.close()
    return ms


def changes(browser, base: str, lab_host: str, count: int, agent_url: str) -> tuple[list[float], list[float]]:
    ctx = browser.new_context(viewport={"width": 1366, "height": 768})
    page = ctx.new_page()
    page.goto(f"{base}/?token={TOKEN}")
    wait_js(page, "!!(window.cy && cy.nodes().length > 0)", 120)
    page.evaluate("() => { window.__seen = {}; cy.on('add', 'node', e => { const l = e.target.data('label'); "
                  "if (e.target.data('host') === 'real-0' && !(l in window.__seen)) window.__seen[l] = Date.now(); }); }")
    watch = AgentWatch(agent_url)
    watch.start()
    time.sleep(1.0)
    out, at_agent = [], []
    for k in range(count):
        name = f"bfq{k}"
        t0 = time.time()
        subprocess.run(["ip", "-n", lab_host, "link", "add", name, "type", "bridge"], check=True)
        try:
            seen = wait_js(page, f"window.__seen[{name!r}] || 0", 15)
            out.append(seen - t0 * 1000)
        except TimeoutError:
            pass
        if name in watch.seen:
            at_agent.append((watch.seen[name] - t0) * 1000)
        subprocess.run(["ip", "-n", lab_host, "link", "del", name], check=True)
        time.sleep(0.4)
    ctx.close()
    return out, at_agent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--real", type=int, default=2)
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--screenshot", type=Path)
    ap.add_argument("--no-renders", action="store_true", help="measure changes only")
    args = ap.parse_args()
    from bridgescope.plumbing.lab import sandbox

    tmp = Path(tempfile.mkdtemp(prefix="bsfleetbench-"))
    os.environ["BRIDGESCOPE_STATE_DIR"] = str(tmp / "state")
    agents, replays, proc = [], [], None
    try:
        info = grow_lab(PREFIX, args.containers)
        for k in range(args.real):
            agents.append(fleet_labs.make_agent(f"real-{k}", info.host, tmp, tmp / "state").start(allow_changes=False))
        graph = first_graph(agents[0].url)
        # this shared test machine holds hundreds of other namespaces (other labs), which a real
        # node would not: the replays send the lab's own picture, as the dashboard shows it
        from bridgescope.webui.fleet.merge import related_only

        graph = {**graph, "elements": related_only(graph["elements"])}
        text = json.dumps(graph, separators=(",", ":"))
        for k in range(args.hosts - args.real):
            r = Replay(f"sim-{k:02d}", text)
            threading.Thread(target=r.serve_forever, daemon=True).start()
            replays.append(r)
        urls = [a.url for a in agents] + [f"http://127.0.0.1:{r.server_address[1]}" for r in replays]
        port = serve_process.free_port()
        argv = [sys.executable, "-m", "bridgescope.webui.cli", "serve", "--listen", f"127.0.0.1:{port}",
                "--agent-token-file", str(agents[0].token_file)]
        for u in urls:
            argv += ["--agent", u]
        log = tmp / "serve.log"
        with log.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "BRIDGESCOPE_TOKEN": TOKEN})
        base = f"http://127.0.0.1:{port}"
        serve_process.wait_until_answering(proc, base + "/api/session", headers={"Authorization": f"Bearer {TOKEN}"},
                                           log=log, timeout=60)
        h = serve_process.login(base, TOKEN)
        h["X-CSRF-Token"] = requests.get(base + "/api/session", headers=h, timeout=10).json()["csrf_token"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [x["state"] for x in requests.get(base + "/api/fleet/hosts", headers=h, timeout=60).json()]
            if states.count("live") == args.hosts:
                break
            time.sleep(0.5)
        elements = len(requests.get(base + "/api/graph", headers=h, timeout=30).json())
        per_host = sum(1 for e in graph["elements"] if e["data"].get("kind") == "namespace" and e["data"].get("container") is True)
        print(f"{args.hosts} hosts ({args.real} real agents, {args.hosts - args.real} replay agents), "
              f"{per_host} containers each; merged picture {elements} elements (folded)")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            folded = [render(browser, base, args.hosts) for _ in range(1 if args.no_renders else 3)]
            print(f"first render, all hosts folded: median {pct(folded, 50):.0f} ms ({', '.join(f'{v:.0f}' for v in folded)})")
            requests.post(base + "/api/fleet/open", json={"host": "real-0"}, headers=h, timeout=10).raise_for_status()
            lat, at_agent = changes(browser, base, info.host, args.changes, agents[0].url)
            print(f"change on one host -> browser: p50 {pct(lat, 50):.0f} ms, p95 {pct(lat, 95):.0f} ms "
                  f"(n={len(lat)}/{args.changes}); the agent's own stream: p50 {pct(at_agent, 50):.0f} ms, "
                  f"p95 {pct(at_agent, 95):.0f} ms (n={len(at_agent)})")
            if args.no_renders:
                browser.close()
                print(f"dashboard RSS: {rss_mb(proc.pid):.0f} MB")
                return 0
            for x in requests.get(base + "/api/fleet/hosts", headers=h, timeout=10).json():
                requests.post(base + "/api/fleet/open", json={"host": x["name"]}, headers=h, timeout=10)
            time.sleep(2)
            elements = len(requests.get(base + "/api/graph", headers=h, timeout=30).json())
            opened = [render(browser, base, args.hosts, args.screenshot) for _ in range(2)]
            print(f"first render, every host opened ({elements} elements): median {pct(opened, 50):.0f} ms")
            browser.close()
        print(f"dashboard RSS: {rss_mb(proc.pid):.0f} MB")
    finally:
        if proc is not None:
            serve_process.stop(proc)
        for r in replays:
            r.closing.set()
            r.shutdown()
        for a in agents:
            a.stop()
        sandbox.lab_down(PREFIX)
    return 0


if __name__ == "__main__":
    sys.exit(main())
