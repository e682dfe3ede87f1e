"""Slow clients against `bridgescope serve`: does GET / still answer, and what does it cost?

Serves a throwaway, nearly empty host namespace and measures

  * idle RSS of the server (every process of its session, so a forking server counts whole);
  * GET / latency (p50, max over 10) with no other client: the baseline;
  * the same while 200 connections hold a partial request open and trickle a header line
    every few seconds (slowloris); the ratio to the baseline is what the slow clients cost;
  * a 100 MB request body: the status, and the server's RSS right after.

Everything lives in a namespace named bsslow<hex>-host, removed at the end even on failure;
all traffic is on 127.0.0.1. Run as root: .venv/bin/python bench/bench_slowclients.py
"""
from __future__ import annotations

import argparse
import os
import secrets
import socket
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

PREFIX = "bsslow" + secrets.token_hex(2)
HOST = f"{PREFIX}-host"
TOKEN = "bench-" + secrets.token_hex(8)


def session_rss_kib(sid: int) -> int:
    """Resident memory of every process in session sid (the server and whatever it started)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            with open(f"/proc/{entry}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total


def latencies(url: str, n: int, timeout: float) -> list[float]:
    """Seconds per GET (timeout counts as the timeout: the page did not come)."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        try:
            requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout).raise_for_status()
            out.append(time.perf_counter() - start)
        except requests.RequestException:
            out.append(timeout)
        time.sleep(0.1)
    return out


class Slowloris:
    """count sockets that each send a request line and Host, then one header line every
    `every` seconds, never finishing; stop() closes them all."""

    def __init__(self, port: int, count: int, every: float = 2.0):
        self.port, self.count, self.every = port, count, every
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def start(self) -> Slowloris:
        for _ in range(self.count):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n".encode())
            self.socks.append(s)
        self._thread.start()
        return self

    def _trickle(self) -> None:
        n = 0
        while not self._stop.wait(self.every):
            n += 1
            for s in self.socks:
                try:
                    s.sendall(f"X-Slow-{n}: 1\r\n".encode())
                except OSError:
                    pass  # the server closed it: that is its right

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for s in self.socks:
            s.close()


def big_body(port: int, size: int) -> str:
    """POST size bytes of JSON-ish body, with valid token and CSRF token; the status line, or
    how the server refused it."""
    csrf = requests.get(f"http://127.0.0.1:{port}/api/session", timeout=10,
                        headers={"Authorization": f"Bearer {TOKEN}"}).json()["csrf_token"]
    chunk = b"[" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall((f"POST /api/networks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Authorization: Bearer {TOKEN}\r\nX-CSRF-Token: {csrf}\r\n"
                   "Content-Type: application/json\r\n"
                   f"Content-Length: {size}\r\nConnection: close\r\n\r\n").encode())
        try:
            for _ in range(size // len(chunk)):
                s.sendall(chunk)
        except OSError as err:
            pass_reason = f"send stopped: {err.strerror}"
        else:
            pass_reason = "all sent"
        try:
            first = s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError as err:
            first = f"no answer ({err.strerror})"
    return f"{first or 'connection closed'} ({pass_reason})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slow", type=int, default=200, help="slow connections (default 200)")
    ap.add_argument("--timeout", type=float, default=5.0, help="GET / timeout in seconds")
    args = ap.parse_args()

    subprocess.run(["ip", "netns", "add", HOST], check=True)
    proc = None
    try:
        subprocess.run(["ip", "-n", HOST, "link", "set", "lo", "up"], check=True)
        port = serve_process.free_port()
        logs = tempfile.TemporaryDirectory(prefix="bsslow-")  # removed at exit
        log = Path(logs.name) / "serve.log"
        with log.open("w") as out:
            proc = serve_process.start(HOST, port, env={"BRIDGESCOPE_TOKEN": TOKEN}, output=out)
        url = f"http://127.0.0.1:{port}/"
        serve_process.wait_until_answering(proc, url, headers={"Authorization": f"Bearer {TOKEN}"},
                                           timeout=120, log=log)
        time.sleep(2)
        idle = session_rss_kib(proc.pid)
        base = latencies(url, 10, args.timeout)
        slow = Slowloris(port, args.slow).start()
        try:
            time.sleep(1)
            loaded = latencies(url, 10, args.timeout)
        finally:
            slow.stop()
        time.sleep(1)
        body = big_body(port, 100 * 1024 * 1024)
        after_body = session_rss_kib(proc.pid)

        p50b, p50l = statistics.median(base), statistics.median(loaded)
        print(f"idle RSS (server session): {idle / 1024:.1f} MiB")
        print(f"GET / alone:            p50 {p50b * 1000:.1f} ms, max {max(base) * 1000:.1f} ms")
        print(f"GET / with {args.slow} slow: p50 {p50l * 1000:.1f} ms, max {max(loaded) * 1000:.1f} ms, "
              f"{sum(t >= args.timeout for t in loaded)}/10 timed out ({args.timeout:.0f} s)")
        print(f"ratio (p50 with slow clients / alone): {p50l / p50b:.1f}x")
        print(f"100 MB body: {body}; RSS after: {after_body / 1024:.1f} MiB")
    finally:
        if proc is not None:
            serve_process.stop(proc)
        subprocess.run(["ip", "netns", "del", HOST], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
