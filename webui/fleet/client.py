"""One agent, followed: its /v1/events stream read in a thread of its own.

Every socket operation has a timeout, so a slow or dead agent stalls only its own thread:
the agent sends a keepalive comment every 5 s, and KEEPALIVE_TIMEOUT seconds of silence count
as a lost connection. After a loss the client reconnects with backoff and `Last-Event-ID`
(the agent then sends the deltas it still holds, else a fresh graph). The owner hears of
events and of state changes through two callbacks, called from this thread.
"""
from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from bridgescope.collector.errors import BridgescopeError

KEEPALIVE_TIMEOUT = 10.0  # seconds without a byte: the agent is gone
CONNECT_TIMEOUT = 5.0
BACKOFF = (0.5, 1.0, 2.0, 3.0)  # seconds before each further attempt; the last repeats
MAX_LINE = 64 * 1024 * 1024  # one SSE data line (a whole graph) may be large, never endless


@dataclass(frozen=True)
class Endpoint:
    """Where an agent answers and how to prove who we are."""
    url: str  # http(s)://HOST:PORT, no path
    token: str
    ca_file: str | None = None
    # The name the agent's certificate carries when it is dialled by address: agents on the
    # host network answer at node IPs that one shared certificate cannot list.
    server_name: str | None = None

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc


def parse_url(url: str) -> str:
    """An agent's base URL, checked; raises BridgescopeError in one line."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BridgescopeError(f"--agent {url!r}: expected http(s)://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise BridgescopeError(f"--agent {url!r}: give only scheme, host and port")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as err:
        raise BridgescopeError(f"--agent {url!r}: {err}") from None
    return f"{parts.scheme}://{parts.netloc}"


def connection(endpoint: Endpoint, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(endpoint.url)
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=endpoint.ca_file)
        return _HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout, context=ctx,
                                server_name=endpoint.server_name)
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose certificate is checked against `server_name` rather than the host dialled."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext, server_name: str | None,
                 timeout: float):
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name or host

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)


class AgentError(Exception):
    """The agent answered, but not as it should (status, content)."""


def request(endpoint: Endpoint, method: str, path: str, body: dict | None = None,
            timeout: float = 15.0) -> tuple[int, dict]:
    """One JSON request to the agent: (status, parsed body). Raises OSError (unreachable, TLS)
    or AgentError (an answer that is not JSON)."""
    conn = connection(endpoint, timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {endpoint.token}", "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read(4 * 1024 * 1024)
        try:
            parsed = json.loads(raw or b"{}")
        except ValueError:
            raise AgentError(f"{endpoint.netloc} answered {resp.status} with no JSON") from None
        return resp.status, parsed if isinstance(parsed, dict) else {"value": parsed}
    finally:
        conn.close()


def sse_events(lines: Iterator[bytes]) -> Iterator[tuple[str, str | None, str]]:
    """SSE lines -> (event name, id or None, data); a comment yields ("", None, "") so the
    reader sees life."""
    name, event_id, data = "message", None, []
    for raw in lines:
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        if not line:
            if data:
                yield name, event_id, "\n".join(data)
            name, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            yield "", None, ""
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "event":
            name = value
        elif key == "id":
            event_id = value
        elif key == "data":
            data.append(value)


class AgentClient:
    """Follows one agent in a daemon thread until stop().

    on_event(kind, payload): "info" (the agent's /v1/info), "graph", "delta", "doctor".
    on_state(state, error): "live" once the stream is open; "reconnecting" at the first loss;
    "stale" when a reconnect fails too.
    """

    def __init__(self, endpoint: Endpoint, on_event: Callable[[str, dict], None],
                 on_state: Callable[[str, str | None], None], keepalive_timeout: float = KEEPALIVE_TIMEOUT):
        self.endpoint = endpoint
        self.on_event = on_event
        self.on_state = on_state
        self.keepalive_timeout = keepalive_timeout
        self.last_id: str | None = None
        self._was_live = False
        self._stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name=f"bridgescope-agent-{endpoint.netloc}", daemon=True)

    def start(self) -> AgentClient:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(2)  # wakes the reader at once
            except OSError:
                pass
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            error = None
            try:
                self._follow()
            except (OSError, http.client.HTTPException, AgentError, ValueError) as err:
                error = _one_line(err)
            if self._stop.is_set():
                return
            if self._was_live:  # a stream that was open counts as a first loss
                failures, self._was_live = 0, False
            failures += 1
            self.on_state("reconnecting" if failures == 1 else "stale", error or "the agent closed the stream")
            self._stop.wait(BACKOFF[min(failures - 1, len(BACKOFF) - 1)])

    def _follow(self) -> None:
        status, info = request(self.endpoint, "GET", "/v1/info", timeout=CONNECT_TIMEOUT)
        if status != 200:
            raise AgentError(f"/v1/info answered {status}: {info.get('error', '')}".strip())
        self.on_event("info", info)
        conn = connection(self.endpoint, self.keepalive_timeout)
        self._conn = conn
        try:
            headers = {"Authorization": f"Bearer {self.endpoint.token}", "Accept": "text/event-stream"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            conn.request("GET", "/v1/events", headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                raise AgentError(f"/v1/events answered {resp.status}")
            self._read(resp)
        finally:
            self._conn = None
            conn.close()

    def _read(self, resp: http.client.HTTPResponse) -> None:
        opened = False
        for name, event_id, data in sse_events(iter(lambda: resp.readline(MAX_LINE), b"")):
            if self._stop.is_set():
                return
            if not opened:
                opened = self._was_live = True
                self.on_state("live", None)
            if not name:
                continue
            payload = json.loads(data)
            if name == "delta" and self.last_id is not None and str(payload.get("version")) != str(int(self.last_id) + 1):
                self.last_id = None  # a gap: start over from a whole graph
                raise AgentError("missed an update; resynchronising")
            if event_id is not None and name in ("graph", "delta"):
                self.last_id = event_id
            self.on_event(name, payload)


def _one_line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]
