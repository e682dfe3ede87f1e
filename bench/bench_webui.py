"""Dashboard benchmark: kernel change -> stream -> browser, first render, streams vs requests.

Builds a throwaway host namespace with a bridge and N "container" namespaces (veth to the
bridge), serves it with `bridgescope serve`, and measures with Debian's Chromium:

  * kernel change (a bridge added in the host namespace) -> delta on an SSE stream and ->
    node in window.cy, p50/p95, at 5 and 500 namespaces; baseline: the same change seen by
    `ip monitor link` (raw netlink), so the ratio is what bridgescope adds;
  * first render (navigation start -> graph drawn, two animation frames later) at 60, 500 and
    2,000 containers, folded (the default: a bridge too big to read folds into one node) and
    expanded (?fold=never: every container drawn); three yardsticks in the same run (rounds
    interleaved), each drawing the elements the expanded page drew: bare Cytoscape's own first
    render (navigation -> drawn, a page holding only Cytoscape that fetches /api/graph and draws
    with the default style: unlabelled dots); the same with the page already loaded (fetch +
    draw); and bare Cytoscape drawing exactly what the page drew in each mode, with the page's
    stylesheet, labels and box sizes, from the elements in hand: like for like with the page's
    drawing time;
  * 50 open streams: latency of GET /, /api/graph, /api/topology with and without them.

Everything lives in namespaces named bsdbench<hex>-*, removed at the end even on failure.
Run as root: .venv/bin/python bench/bench_webui.py [--sizes 60,500,2000] [--changes 20] [--no-changes]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import serve_process

PREFIX = "bsdbench" + secrets.token_hex(2)
HOST = f"{PREFIX}-host"
TOKEN = "bench-" + secrets.token_hex(8)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def ip(*argv: str, ns: str | None = None, stdin: str | None = None) -> None:
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(argv)
    subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# ---- the topology under test -----------------------------------------------------------------

def make_host() -> None:
    ip("netns", "add", HOST)
    ip("-batch", "-", ns=HOST, stdin="link set lo up\nlink add br0 type bridge\n"
       "addr add 10.77.0.1/16 dev br0\nlink set br0 up\n")


PER_BRIDGE = 1000  # a Linux bridge takes at most 1024 ports: bigger hosts get more bridges


def grow_to(have: int, want: int) -> int:
    for i in range(have, want):
        ns, bridge, k = f"{PREFIX}-c{i}", i // PER_BRIDGE, i % PER_BRIDGE
        if k == 0 and bridge > 0:
            ip("-batch", "-", ns=HOST, stdin=f"link add br{bridge} type bridge\n"
               f"addr add 10.{77 + bridge}.0.1/16 dev br{bridge}\nlink set br{bridge} up\n")
        ip("netns", "add", ns)
        ip("-batch", "-", ns=HOST, stdin=f"link add vb{i} type veth peer name eth0 netns {ns}\n"
           f"link set vb{i} master br{bridge} up\n")
        ip("-batch", "-", ns=ns, stdin=f"link set lo up\nlink set eth0 up\n"
           f"addr add 10.{77 + bridge}.{1 + k // 250}.{1 + k % 250}/16 dev eth0\n")
    return want


def wait_for_containers(base: str, n: int, timeout: float = 600) -> None:
    """Until the server's picture holds all n containers (the watcher takes a while under load)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        els = requests.get(f"{base}/api/graph", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120).json()
        if sum(str(e["data"].get("ns_name", "")).startswith(f"{PREFIX}-c") for e in els) >= n:
            return
        time.sleep(1)
    raise SystemExit(f"the server never showed {n} containers")


def teardown() -> None:
    for entry in os.listdir("/run/netns"):
        if entry.startswith(PREFIX + "-"):
            subprocess.run(["ip", "netns", "del", entry], capture_output=True)


# ---- the server and its streams --------------------------------------------------------------

def start_server(port: int, state: str) -> subprocess.Popen:
    proc = serve_process.start(HOST, port, args=("--audit-log", f"{state}/audit.jsonl"),
                               env={"BRIDGESCOPE_TOKEN": TOKEN, "BRIDGESCOPE_STATE_DIR": state})
    try:
        serve_process.wait_until_answering(proc, f"http://127.0.0.1:{port}/api/graph", timeout=300,
                                           headers={"Authorization": f"Bearer {TOKEN}"})
    except RuntimeError as err:
        serve_process.stop(proc)
        raise SystemExit("bridgescope serve did not come up") from err
    return proc


class StreamClient(threading.Thread):
    """One SSE connection; remembers when each added node label first arrived."""

    def __init__(self, url: str, record: bool = True):
        super().__init__(daemon=True)
        self.url, self.record = url, record
        self.seen: dict[str, float] = {}
        self.version = 0
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with requests.get(self.url, headers=headers, stream=True, timeout=(10, 120)) as resp:
            event = None
            for line in resp.iter_lines(decode_unicode=True):
                if self.stop.is_set():
                    return
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    now = time.time()
                    self.version = data.get("version", self.version)
                    if self.record:
                        for el in data.get("added", data.get("elements", [])):
                            self.seen.setdefault(el["data"].get("label", ""), now)
                    if event == "graph":
                        self.ready.set()


class NetlinkMonitor(threading.Thread):
    """Baseline: `ip monitor link` in the host namespace, time each new link's first line."""

    def __init__(self):
        super().__init__(daemon=True)
        self.proc = subprocess.Popen(["ip", "-n", HOST, "-o", "monitor", "link"], stdout=subprocess.PIPE, text=True)
        self.seen: dict[str, float] = {}

    def run(self) -> None:
        for line in self.proc.stdout:
            now = time.time()
            parts = line.split(":")
            if len(parts) > 1:
                self.seen.setdefault(parts[1].strip().split("@")[0], now)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ---- browser -------------------------------------------------------------------------------------

def wait_js(page, expr: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(expr)
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(expr)


TWO_FRAMES = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now()))))"


def first_render(browser, base: str, screenshot: Path | None = None,
                 expanded: bool = False) -> tuple[float, float, list[str], str]:
    """Navigation start -> graph drawn, and of that the drawing (the whole graph in hand ->
    drawn), in ms; the ids of the elements the page drew; and what a like-for-like yardstick
    draws: the page's stylesheet and its elements as drawn (display labels included), JSON."""
    ctx = browser.new_context(viewport={"width": 1500, "height": 950})
    page = ctx.new_page()
    page.goto(f"{base}/?token={TOKEN}" + ("&fold=never" if expanded else ""))
    wait_js(page, "window.bridgescopeDrawn !== undefined", 600)
    ms = page.evaluate("window.bridgescopeDrawn")  # stamped by the page itself, two frames after drawing
    drawn = page.evaluate("cy.elements().map(e => e.id())")
    drawing = ms - page.evaluate("window.bridgescopeGraphAt")
    styled = page.evaluate(AS_DRAWN)
    if screenshot is not None:
        page.screenshot(path=str(screenshot))
    ctx.close()
    return ms, drawing, drawn, styled


# The page's stylesheet and elements as they were drawn (a box's size is in its data, which the
# stylesheet maps: static/boxes.js), so the yardstick draws the same picture.
AS_DRAWN = """JSON.stringify({style: cy.style().json(), elements: cy.elements().jsons().map(j => ({
  group: j.group, data: j.data, position: j.position, classes: j.classes}))})"""

BARE_STYLED = """async (json) => {
  const t0 = performance.now();
  const {style, elements} = JSON.parse(json);
  const div = document.createElement('div');
  div.style.width = '1500px'; div.style.height = '900px';
  document.body.appendChild(div);
  window.bareStyled = cytoscape({container: div, elements, style, layout: {name: 'preset'}});
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0;
}"""


# The yardstick draws exactly the elements the expanded page drew (`keep`): /api/graph also
# lists every other namespace on the machine (other test runs' too, hidden by the page as
# unrelated), which would make the yardstick's work depend on what else runs here.
BARE = """async (keep) => {
  const t0 = performance.now();
  const wanted = new Set(keep);
  const els = (await (await window.bridgescopeSession.fetch('/api/graph')).json())
    .filter((e) => wanted.has(e.data.id));
  const div = document.createElement('div'); div.className = 'bare';
  div.style.width = '1500px'; div.style.height = '900px';
  document.body.appendChild(div);
  window.bare = cytoscape({container: div, elements: els, layout: {name: 'preset'}});
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0;
}"""


# A page with nothing but Cytoscape, on the dashboard's origin (served by the browser itself, not
# by bridgescope): it fetches the graph, keeps what the page drew and draws it with Cytoscape's
# default style. Timed from navigation, as the page's first render is.
BARE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>bare Cytoscape</title></head>
<body style="margin:0"><div id="c" style="width:1500px;height:900px"></div>
<script src="/static/vendor/cytoscape/cytoscape.min.js"></script>
<script>
(async () => {
  const keep = new Set(KEEP);
  const resp = await fetch('/api/graph', {headers: {Authorization: 'Bearer TOKEN'}});
  const els = (await resp.json()).filter((e) => keep.has(e.data.id));
  window.bare = cytoscape({container: document.getElementById('c'), elements: els, layout: {name: 'preset'}});
  requestAnimationFrame(() => requestAnimationFrame(() => { window.bareDrawn = performance.now(); }));
})();
</script></body></html>"""


def bare_first_render(browser, base: str, keep: list[str]) -> float:
    """Baseline for the page's first render: navigation -> drawn on a page holding only
    Cytoscape (no session, no panels), the same elements, Cytoscape's default style."""
    ctx = browser.new_context(viewport={"width": 1500, "height": 950})
    page = ctx.new_page()
    html = BARE_PAGE.replace("KEEP", json.dumps(keep)).replace("TOKEN", TOKEN)
    page.route(f"{base}/bench-bare", lambda route: route.fulfill(status=200, content_type="text/html", body=html))
    page.goto(f"{base}/bench-bare")
    ms = wait_js(page, "window.bareDrawn", 600)
    assert page.evaluate("window.bare.elements().length") > 0, "the yardstick drew nothing"
    ctx.close()
    return ms


def bare_render(browser, base: str, keep: list[str], styled: str | None = None) -> float:
    """Baseline: the same elements, plain Cytoscape, no app (script already cached and parsed):
    with Cytoscape's default style (unlabelled dots), or with `styled` (first_render's last
    value), the page's own stylesheet and labels."""
    ctx = browser.new_context(viewport={"width": 1500, "height": 950})
    page = ctx.new_page()
    page.goto(f"{base}/audit?token={TOKEN}")  # a page of ours without the app's script
    # the boot page fetches the real one with this tab's session: add the script once it is there
    wait_js(page, "!!document.getElementById('theme-toggle') && !!window.bridgescopeSession")
    page.add_script_tag(url=f"{base}/static/vendor/cytoscape/cytoscape.min.js")
    wait_js(page, "typeof cytoscape === 'function'")
    if styled is None:
        ms = page.evaluate(BARE, keep)
        count = page.evaluate("window.bare.elements().length")
    else:
        ms = page.evaluate(BARE_STYLED, styled)
        count = page.evaluate("window.bareStyled.elements().length")
    assert count > 0, "the yardstick drew nothing"
    ctx.close()
    return ms


def measure_changes(browser, base: str, count: int, tag: str) -> dict:
    stream = StreamClient(f"{base}/api/events")
    stream.start()
    stream.ready.wait(120)
    monitor = NetlinkMonitor()
    monitor.start()
    page = ctx = None
    if browser is not None:
        ctx = browser.new_context(viewport={"width": 1500, "height": 950})
        page = ctx.new_page()
        page.goto(f"{base}/?token={TOKEN}")
        wait_js(page, "!!(window.cy && window.cy.nodes && window.cy.nodes().length > 0)", 120)
        page.evaluate("() => { window.__seen = {}; cy.on('add', 'node', e => { "
                      "const l = e.target.data('label'); "
                      "if (!(l in window.__seen)) window.__seen[l] = Date.now(); }); }")
    time.sleep(1.0)

    def in_browser(name: str) -> float:
        return page.evaluate(f"window.__seen[{name!r}] || 0") / 1000.0 if page is not None else 0.0

    to_stream, to_browser, to_netlink = [], [], []
    for k in range(count):
        name = f"bq{tag}{k}"
        t0 = time.time()
        ip("link", "add", name, "type", "bridge", ns=HOST)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (name in stream.seen and (page is None or in_browser(name))):
            time.sleep(0.005)
        b = in_browser(name)
        if name in stream.seen and (b or page is None):
            to_stream.append((stream.seen[name] - t0) * 1000)
            if b:
                to_browser.append((b - t0) * 1000)
        if name in monitor.seen:
            to_netlink.append((monitor.seen[name] - t0) * 1000)
        ip("link", "del", name, ns=HOST)
        time.sleep(0.3)
    stream.stop.set()
    monitor.close()
    if ctx is not None:
        ctx.close()
    return {"stream": to_stream, "browser": to_browser, "netlink": to_netlink, "missed": count - len(to_stream)}


def request_latency(base: str, rounds: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    out = {}
    with requests.Session() as s:
        for path in ("/", "/api/graph", "/api/topology"):
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                s.get(base + path, headers=headers, timeout=60).raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
            out[path] = statistics.median(times)
    return out


def streams_vs_requests(base: str, streams: int, rounds: int) -> tuple[dict, dict, int]:
    before = request_latency(base, rounds)
    clients = [StreamClient(f"{base}/api/events", record=False) for _ in range(streams)]
    for c in clients:
        c.start()
    opened = sum(c.ready.wait(120) for c in clients)
    during = request_latency(base, rounds)
    for c in clients:
        c.stop.set()
    return before, during, opened


# ---- main ------------------------------------------------------------------------------------------

def report_changes(n: int, r: dict) -> None:
    def line(name, vals):
        if not vals:
            return f"    {name:28s} no samples"
        return f"    {name:28s} p50 {pct(vals, 50):7.1f} ms   p95 {pct(vals, 95):7.1f} ms   (n={len(vals)})"
    print(f"  {n} namespaces: kernel change ->")
    print(line("netlink (ip monitor, base)", r["netlink"]))
    print(line("SSE delta", r["stream"]))
    print(line("node in window.cy", r["browser"]))
    if r["netlink"] and r["browser"]:
        print(f"    ratio browser/netlink p50 {pct(r['browser'], 50) / max(pct(r['netlink'], 50), 0.01):.1f}x")
    print(f"    missed {r['missed']}")


def deltas_only(sizes: list[int], changes: int) -> int:
    """change -> SSE delta at each size, without a browser: cheap enough for 1,000 namespaces."""
    state = tempfile.mkdtemp(prefix="bsdbench-state-")
    port = serve_process.free_port()
    base = f"http://127.0.0.1:{port}"
    proc = None
    print(f"bench_webui --deltas-only: prefix {PREFIX}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    try:
        make_host()
        have = grow_to(0, sizes[0])
        proc = start_server(port, state)
        for n in sizes:
            have = grow_to(have, n)
            time.sleep(3)  # let the watcher take in the new namespaces
            report_changes(n, measure_changes(None, base, changes, str(n)))
    finally:
        if proc is not None:
            serve_process.stop(proc)
        teardown()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="60,500,2000")
    ap.add_argument("--no-changes", action="store_true", help="first render only (no change latencies, no streams)")
    ap.add_argument("--modes", default="folded,expanded", help="first render: folded, expanded or both")
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--deltas-only", action="store_true",
                    help="no browser: only kernel change -> SSE delta (and the netlink baseline) per size")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.deltas_only:
        return deltas_only(sizes, args.changes)
    from playwright.sync_api import sync_playwright

    state = tempfile.mkdtemp(prefix="bsdbench-state-")
    ARTIFACTS.mkdir(exist_ok=True)
    port = serve_process.free_port()
    base = f"http://127.0.0.1:{port}"
    proc = None
    print(f"bench_webui: prefix {PREFIX}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    try:
        make_host()
        have = grow_to(0, sizes[0])
        proc = start_server(port, state)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            for n in sizes:
                have = grow_to(have, n)
                wait_for_containers(base, n)
                modes = [m == "expanded" for m in args.modes.split(",")]
                *_, keep, _ = first_render(browser, base, expanded=True)  # warm-up; what the yardstick draws
                # rounds interleave the yardsticks and each mode, so a change in the machine's
                # load (other runs share it) weighs on all of them alike
                times: dict[str, list[float]] = {"bare": [], "bare page": []}
                styled: dict[str, str] = {}
                for rnd in range(3):
                    times["bare"].append(bare_render(browser, base, keep))
                    times["bare page"].append(bare_first_render(browser, base, keep))
                    for expanded in modes:
                        how = "expanded" if expanded else "folded"
                        shot = ARTIFACTS / f"dashboard-{n}-containers-{how}.png" if rnd == 0 else None
                        ms, drawing, _, styled[how] = first_render(browser, base, shot, expanded)
                        times.setdefault(how, []).append(ms)
                        times.setdefault(how + " drawing", []).append(drawing)
                        times.setdefault(how + " styled", []).append(bare_render(browser, base, keep, styled[how]))
                bare = statistics.median(times["bare"])
                page_bare = statistics.median(times["bare page"])
                print(f"  {n} containers: bare Cytoscape's first render (navigation -> drawn, a page holding only "
                      f"Cytoscape, default style, the same {len(keep)} elements) {page_bare:6.0f} ms", flush=True)
                for how in [h for h in times if not h.startswith("bare") and " " not in h]:
                    ours, drawing = statistics.median(times[how]), statistics.median(times[how + " drawing"])
                    like = statistics.median(times[how + " styled"])
                    print(f"  {n} containers, {how:8s}: first render {ours:7.0f} ms ({ours / page_bare:.2f}x bare "
                          f"Cytoscape's first render), of which drawing "
                          f"{drawing:6.0f} ms  (bare Cytoscape, page loaded, same {len(keep)} elements {bare:6.0f} ms; "
                          f"ratio {ours / bare:.2f}x, drawing {drawing / bare:.2f}x; bare Cytoscape drawing what "
                          f"the page drew, with its style and labels, {like:6.0f} ms: drawing {drawing / like:.2f}x)",
                          flush=True)
                if not args.no_changes and (n in (5, 500) or n == sizes[-1]):
                    report_changes(n, measure_changes(browser, base, args.changes, str(n)))
            if args.no_changes:
                browser.close()
                return 0
            before, during, opened = streams_vs_requests(base, args.streams, args.rounds)
            print(f"  {have} namespaces, {opened}/{args.streams} streams open: median request latency")
            for path in before:
                print(f"    GET {path:14s} without {before[path]:7.1f} ms   with {during[path]:7.1f} ms"
                      f"   ratio {during[path] / before[path]:.2f}x")
            browser.close()
    finally:
        if proc is not None:
            serve_process.stop(proc)
        teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
