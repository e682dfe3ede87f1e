"""Serving the agent: webui/server.py's hardened waitress, and TLS in front of it when asked.

Waitress speaks no TLS (its event loop reads plain sockets), so with a certificate the agent
listens with the stdlib `ssl` module and hands each decrypted connection to waitress on a
loopback port: the request deadline, header and body limits stay waitress's. The front holds
one thread per connection (an agent has few clients: a dashboard or two and Prometheus) and
bounds the handshake and each blocked write by HANDSHAKE_DEADLINE / WRITE_DEADLINE.
"""
from __future__ import annotations

import selectors
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from bridgescope.collector.errors import BridgescopeError
from bridgescope.webui import auth, server
from bridgescope.webui.app import runtime
from bridgescope.webui.fleet.agent import create_agent_app

HANDSHAKE_DEADLINE = 10.0
WRITE_DEADLINE = 30.0
MAX_TLS_CONNECTIONS = 256
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Tls:
    cert: str
    key: str


def tls_context(tls: Tls) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as err:
        raise BridgescopeError(f"cannot load the TLS certificate {tls.cert} and key {tls.key}: "
                               f"{getattr(err, 'strerror', None) or err}") from None
    return ctx


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TlsFront:
    """Accepts TLS connections on `listen` and pipes each to the plain server at `backend`."""

    def __init__(self, listen: str, ctx: ssl.SSLContext, backend: tuple[str, int]):
        host, port = auth.parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as err:
            self._sock.close()
            raise BridgescopeError(f"cannot listen on {listen}: {err.strerror or err}") from None
        self._sock.listen(128)
        self._ctx = ctx
        self._backend = backend
        self._slots = threading.BoundedSemaphore(MAX_TLS_CONNECTIONS)
        self._closing = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._accept, name="bridgescope-tls", daemon=True).start()

    def close(self) -> None:
        self._closing.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                conn.close()  # full: the client retries later
                continue
            threading.Thread(target=self._serve, args=(conn,), name="bridgescope-tls-conn",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(HANDSHAKE_DEADLINE)
            with self._ctx.wrap_socket(conn, server_side=True) as tls, \
                    socket.create_connection(self._backend, timeout=WRITE_DEADLINE) as plain:
                tls.settimeout(WRITE_DEADLINE)
                self._pipe(tls, plain)
        except (OSError, ssl.SSLError):
            pass  # a failed handshake or a vanished client ends only its own connection
        finally:
            conn.close()
            self._slots.release()

    def _pipe(self, tls: ssl.SSLSocket, plain: socket.socket) -> None:
        """Both directions in one thread (an SSL object must not be read and written from two
        threads at once). Bytes the TLS layer already decrypted are drained before waiting."""
        with selectors.DefaultSelector() as sel:
            sel.register(tls, selectors.EVENT_READ)
            sel.register(plain, selectors.EVENT_READ)
            while not self._closing.is_set():
                ready = [key.fileobj for key, _ in sel.select(timeout=0 if tls.pending() else 1.0)]
                if tls.pending() and tls not in ready:
                    ready.append(tls)
                for src in ready:
                    dst = plain if src is tls else tls
                    try:
                        data = src.recv(CHUNK)
                    except ssl.SSLWantReadError:
                        continue
                    if not data:
                        return
                    dst.sendall(data)


def serve_agent(config: dict, *, tls: Tls | None, threads: int = server.MIN_THREADS,
                when_ready: Callable[[], None] | None = None) -> None:
    """server.serve's life cycle for the agent's app: bind first (errors in words), start the
    Watcher, serve until a signal, then stop everything the agent started."""
    server._adopt_orphans()
    front = None
    try:
        app = create_agent_app(config)
        rt = runtime(app)
        server._stop_on_signals(rt)
        if tls is not None:
            ctx = tls_context(tls)
            port = _free_loopback_port()
            front = TlsFront(config["LISTEN"], ctx, ("127.0.0.1", port))
            plain = server.make_server(app, f"127.0.0.1:{port}", threads)
        else:
            plain = server.make_server(app, config["LISTEN"], threads)
        try:
            if when_ready:
                when_ready()
            rt.start()
            if front is not None:
                front.start()
            plain.run()
        finally:
            rt.closing.set()
            if front is not None:
                front.close()
            plain.task_dispatcher.shutdown(timeout=5)
            rt.stop()
            server.wasyncore.close_all(plain._map)
    finally:
        server._end_descendants()
