"""Retake the README's pictures of one host: docs/screenshots/dashboard-{3,60,500}-containers*.png.

The sandbox lab (prefix bsshot) with a third container and a second forward, then 60 and 500
containers on its docker0 (bare namespaces wired as an engine would), each drawn by a real
`bridgescope serve` in Chromium at 1366×768 and 1920×1080. Everything is removed afterwards.
Run as root from the repository: `make screenshots`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import serve_process  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from bridgescope.plumbing import api  # noqa: E402
from bridgescope.plumbing.lab import sandbox  # noqa: E402

PREFIX = "bsshot"
OUT = ROOT / "docs" / "screenshots"
TOKEN = "screenshots-" + os.urandom(8).hex()
SIZES = ((1366, 768), (1920, 1080))


def run(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


def grow(host: str, have: int, want: int) -> None:
    for i in range(have, want):
        ns = f"{PREFIX}-x{i}"
        run("ip", "netns", "add", ns)
        run("ip", "-n", host, "-batch", "-", stdin=f"link add vx{i} type veth peer name eth0 netns {ns}\n"
            f"link set vx{i} master docker0 up\n")
        run("ip", "-n", ns, "-batch", "-", stdin=f"link set lo up\nlink set eth0 up\n"
            f"addr add 172.17.{10 + i // 250}.{1 + i % 250}/16 dev eth0\nroute add default via 172.17.0.1\n")


def wait(page, expr: str, timeout: float = 180.0) -> None:
    """Poll (the page's CSP forbids the eval that wait_for_function needs)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expr):
        if time.monotonic() > deadline:
            raise TimeoutError(f"never true: {expr}")
        time.sleep(0.1)


def shoot(browser, base: str, name: str, size: tuple[int, int], wanted: int, search: str | None,
          fit: bool = False) -> None:
    """One picture: the page once it counts `wanted` namespaces, after a search (its panel open),
    the whole graph fitted again if `fit`."""
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    page = context.new_page()
    page.goto(f"{base}/?token={TOKEN}")
    status = "(document.getElementById('graph-status')?.textContent || '')"
    wait(page, f"{status}.startsWith('{wanted} namespaces')")
    time.sleep(1.0)
    if search:
        page.click("#graph-search")
        page.keyboard.type(search)
        page.keyboard.press("Enter")
        page.wait_for_selector("#details .details-head h2", timeout=60_000)
        time.sleep(1.0)
    if fit:
        page.click("#fit")
        time.sleep(1.0)
    page.screenshot(path=str(OUT / name))
    print("wrote", OUT / name, flush=True)
    context.close()


def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="bs-shots-"))
    os.environ["BRIDGESCOPE_STATE_DIR"] = str(state)
    info = sandbox.lab_up(PREFIX)
    have = 0
    try:
        api.create_container("c3", sandbox.BRIDGE, ports=["8081:80"], host=info.host)
        with serve_process.serving(info.host, TOKEN, state, state / "serve.log") as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True)  # Debian's, as the tests
            for size in SIZES:
                shoot(browser, base, f"dashboard-3-containers-{size[0]}.png", size, 6, "c1", fit=True)
            for total, search in ((60, "x30"), (500, "x250")):
                grow(info.host, have, total - 3)
                have = total - 3
                shoot(browser, base, f"dashboard-{total}-containers-folded-1366.png", SIZES[0], total + 3, None)
                shoot(browser, base, f"dashboard-{total}-containers-1920.png", SIZES[1], total + 3, search)
            browser.close()
    finally:
        for i in range(have):
            subprocess.run(["ip", "netns", "del", f"{PREFIX}-x{i}"], check=False)
        sandbox.lab_down(PREFIX)


if __name__ == "__main__":
    main()
