"""The production server: waitress, embedded, one process, many threads.

Waitress reads every request whole (request line, headers and body) in its event loop and
only then hands it to a worker thread, so a client that sends slowly or stalls holds a socket,
never a thread; a page is served while hundreds of such connections are open. Waitress has
limits on header and body size and closes idle connections, but no deadline for a request
that keeps trickling in: `_Server.maintenance` adds one (REQUEST_DEADLINE).

One process on purpose: the live topology (the Watcher's netlink sockets and firewall
monitors) and the fan-out to every open tab live in its memory. Each open tab holds one
thread for its event stream, so threads must exceed the streams we accept (Settings.max_streams).

Checked against waitress 3.0.2 (pinned in pyproject.toml): HTTPChannel.request is the request
still being read (None between requests), HTTPChannel.requests the ones being served, and the
server's maintenance() runs from its event loop every cleanup_interval seconds.
"""
from __future__ import annotations

import os
import resource
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer

from bridgescope.collector.errors import BridgescopeError
from bridgescope.collector.kernel.setns import libc
from bridgescope.webui import auth
from bridgescope.webui.app import Runtime, create_app, runtime

MIN_THREADS = 64
REQUEST_DEADLINE = 10.0  # seconds from a request's first byte to its last
IDLE_TIMEOUT = 30  # seconds a kept-alive connection may wait for its next request
MAX_HEADER_BYTES = 64 * 1024
# Refused before it is read; the app's own, smaller limit (bodies.MAX_BODY) answers with a
# readable error for anything between.
MAX_BODY_BYTES = 1024 * 1024
MAX_CONNECTIONS = 1000
OPEN_FILES_WANTED = 4096  # a connection may use up to 3 descriptors (socket, in/out spill files)


class _Request(HTTPRequestParser):
    """A request being read, which remembers when its first byte came."""

    def __init__(self, adj) -> None:
        super().__init__(adj)
        self.began = time.monotonic()


class _Channel(HTTPChannel):
    parser_class = _Request


class _Server(TcpWSGIServer):
    channel_class = _Channel

    def maintenance(self, now: float) -> None:
        """Waitress closes idle connections; also close any whose request has been arriving
        for longer than REQUEST_DEADLINE (a slow client trickling a header line at a time)."""
        super().maintenance(now)
        for channel in overdue(self.active_channels.values(), time.monotonic() - REQUEST_DEADLINE):
            channel.will_close = True


def overdue(channels: Iterable[HTTPChannel], cutoff: float) -> list[HTTPChannel]:
    """Channels serving nothing whose request still being read began before cutoff."""
    return [c for c in channels
            if not c.requests and c.request is not None and c.request.began < cutoff]


def _connection_limit() -> int:
    """Raise our soft open-files limit toward OPEN_FILES_WANTED (never above the hard limit)
    and fit the connection limit inside it, leaving room for the Watcher's sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(OPEN_FILES_WANTED, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    room = OPEN_FILES_WANTED if soft == resource.RLIM_INFINITY else soft
    return max(64, min(MAX_CONNECTIONS, (room - 256) // 3))


def _listen(listen: str) -> str:
    host, port = auth.parse_listen(listen)
    host = "127.0.0.1" if host == "localhost" else host  # one socket, the address the banner shows
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_server(app, listen: str, threads: int) -> _Server:
    """Bind now (a busy port fails here, in words), serve when run() is called."""
    try:
        return _Server(
            app, map={}, listen=_listen(listen), threads=max(threads, MIN_THREADS),
            connection_limit=_connection_limit(), channel_timeout=IDLE_TIMEOUT, cleanup_interval=1,
            max_request_header_size=MAX_HEADER_BYTES, max_request_body_size=MAX_BODY_BYTES,
            asyncore_use_poll=True,  # select() cannot watch descriptors above 1024
            ident="bridgescope", expose_tracebacks=False)
    except OSError as err:
        raise BridgescopeError(f"cannot listen on {listen}: {err.strerror or err}") from None


def _stop_on_signals(rt: Runtime) -> None:
    """SIGTERM/SIGINT/SIGQUIT end every open event stream (they notice within a second) and
    stop the event loop; the cleanup after it stops the Watcher. A second signal during that
    cleanup is ignored rather than cutting it short.

    A process forked from a request thread (pyroute2 forks to open a socket in a namespace,
    then ends the child with SIGTERM) inherits this handler: there the signal must do what it
    does by default, or the child would unwind into a copy of the server and never exit."""
    serving = os.getpid()

    def handler(signum, _frame):
        if os.getpid() != serving:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not rt.closing.is_set():
            rt.closing.set()
            raise SystemExit(0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, handler)


PR_SET_CHILD_SUBREAPER = 36


def _adopt_orphans() -> None:
    """Become the subreaper of everything the app starts (the Watcher's firewall monitors and
    what they start), so nothing escapes _end_descendants at exit."""
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _children() -> list[int]:
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == me:
                out.append(int(entry))
    return out


def _end_descendants() -> None:
    """On exit, end the processes the app left to us (our own descendants, by pid)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _children()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            pids = _children()
            time.sleep(0.05)


def serve(app_config: dict[str, Any], *, threads: int = MIN_THREADS,
          when_ready: Callable[[], None] | None = None) -> None:
    _adopt_orphans()
    try:
        app = create_app(app_config)
        rt = runtime(app)
        _stop_on_signals(rt)
        server = make_server(app, app_config.get("LISTEN", "127.0.0.1:8470"), threads)
        try:
            if when_ready:
                when_ready()
            rt.start()  # the Watcher, now; requests wait in the backlog meanwhile
            server.run()  # returns after SystemExit/KeyboardInterrupt, its threads stopped
        finally:
            rt.closing.set()
            server.task_dispatcher.shutdown(timeout=5)
            rt.stop()
            wasyncore.close_all(server._map)  # the listening socket and every connection
    finally:
        _end_descendants()
