"""Kubernetes pod names from containerd: `namespace/pod`, read from the labels CRI puts on
each pod's sandbox, through containerd's own API on its socket.

No Kubernetes API and so no RBAC: CRI makes every pod sandbox a containerd container in the
containerd namespace `k8s.io`, labelled `io.cri-containerd.kind=sandbox`,
`io.kubernetes.pod.namespace` and `io.kubernetes.pod.name`. One call lists the sandboxes
(Containers/List, filtered on that label); one more (Tasks/List) gives each sandbox's pid,
whose /proc/PID/ns/net is matched to a namespace by (st_dev, st_ino) as containers.py does for
Docker, and cached the same way: asked again only when that path no longer leads to the
namespace it led to.

Why a client of our own rather than grpcio: grpcio adds about 20 MB to the resident size
(measured: `import grpc` alone) of an agent whose budget is 60 MB (bench/RESULTS.md), and
runs threads of its own. What is needed is small: unary calls over one unix socket, so
HTTP/2 framing with every header sent as an HPACK literal and none decoded (a call
succeeded when its stream carried a whole gRPC message; a failed call ends with trailers
only), and the protobuf wire format for the few fields read. Memory is bounded by flow
control itself: the window granted to a stream is the largest answer accepted.

Optional by design, as the other engines are: no socket, a dead one, an answer that does not
parse, or a containerd without CRI (Docker's own, namespace `moby`) all mean "no names".
The wire, in our words: docs/fleet.md, "containerd's wire".
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from bridgescope.collector.kernel.containers import TIMEOUT, Located, NsKey, locate, speaks_http2

log = logging.getLogger(__name__)

CRI_NAMESPACE = "k8s.io"
KIND, SANDBOX = "io.cri-containerd.kind", "sandbox"
POD_NAMESPACE, POD_NAME = "io.kubernetes.pod.namespace", "io.kubernetes.pod.name"
LIST_CONTAINERS = "/containerd.services.containers.v1.Containers/List"
LIST_TASKS = "/containerd.services.tasks.v1.Tasks/List"
NAMESPACE = (("containerd-namespace", CRI_NAMESPACE),)  # gRPC metadata
MAX_ANSWER = 16 << 20  # a node's sandboxes with their OCI specs: ~10 KB each


# --- protobuf wire format: only what these calls need ------------------------------------------

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def string_field(number: int, text: str) -> bytes:
    data = text.encode()
    return varint(number << 3 | LEN) + varint(len(data)) + data


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of a message: an int for varints and fixed-width
    fields, the bytes of a length-delimited one. Raises ValueError on malformed input."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire in (I64, I32):
            width = 8 if wire == I64 else 4
            if pos + width > len(buf):
                raise ValueError("truncated fixed-width field")
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        elif wire == LEN:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated length-delimited field")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"wire type {wire} (groups) is not used by containerd's API")
        yield number, value


@dataclass(frozen=True)
class ContainerdContainer:
    id: str
    labels: tuple[tuple[str, str], ...]

    def label(self, key: str) -> str:
        return dict(self.labels).get(key, "")


@dataclass(frozen=True)
class Task:
    id: str  # a task's id is its container's (containerd 1.6 leaves container_id empty)
    pid: int


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ValueError("a string field carried a number")
    return value.decode("utf-8", "replace")


def _entry(buf: bytes) -> tuple[str, str]:
    """One entry of a map<string, string>: key 1, value 2."""
    parts = {number: _text(value) for number, value in fields(buf) if number in (1, 2)}
    return parts.get(1, ""), parts.get(2, "")


def parse_containers(answer: bytes) -> list[ContainerdContainer]:
    """ListContainersResponse: containers 1 -> Container {id 1, labels 2}; the rest skipped."""
    found = []
    for number, value in fields(answer):
        if number == 1:
            cid, labels = "", []
            for inner, item in fields(_bytes(value)):
                if inner == 1:
                    cid = _text(item)
                elif inner == 2:
                    labels.append(_entry(_bytes(item)))
            found.append(ContainerdContainer(cid, tuple(labels)))
    return found


def parse_tasks(answer: bytes) -> list[Task]:
    """ListTasksResponse: tasks 1 -> Process {id 2, pid 3}."""
    found = []
    for number, value in fields(answer):
        if number == 1:
            parts = dict(fields(_bytes(value)))
            pid = parts.get(3, 0)
            found.append(Task(_text(parts.get(2, b"")), pid if isinstance(pid, int) else 0))
    return found


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("a message field carried a number")
    return value


def list_containers_request(filters: Iterable[str]) -> bytes:
    return b"".join(string_field(1, f) for f in filters)


SANDBOX_FILTER = f'labels."{KIND}"=={SANDBOX}'


# --- HTTP/2, unary gRPC calls only ---------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM = ACK = 0x1
END_HEADERS, PADDED = 0x4, 0x8
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4
DEFAULT_WINDOW = 65535


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int = 7) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out, value = bytearray((limit,)), value - limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literals(headers: Iterable[tuple[str, str]]) -> bytes:
    """Each header as a literal without indexing, new name, no Huffman: valid for any decoder,
    and it leaves both sides' dynamic tables untouched."""
    out = bytearray()
    for name, value in headers:
        out.append(0x00)
        for text in (name.encode(), value.encode()):
            out += _hpack_int(len(text)) + text
    return bytes(out)


def grpc_message(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def first_grpc_message(body: bytes) -> bytes:
    """The first length-prefixed message of a gRPC answer body; ValueError when there is none
    (the call failed: its status is in trailers this client does not decode)."""
    if len(body) < 5:
        raise ValueError("the call answered no message")
    compressed, size = body[0], struct.unpack(">I", body[1:5])[0]
    if compressed:
        raise ValueError("a compressed message, which was not offered")
    if len(body) < 5 + size:
        raise ValueError("a truncated message")
    return body[5:5 + size]


class Connection:
    """One HTTP/2 connection to a gRPC server over a connected socket; calls one at a time."""

    def __init__(self, sock: socket.socket, timeout: float = TIMEOUT) -> None:
        self.sock, self.timeout = sock, timeout
        self.next_stream = 1
        self.buffer = b""
        settings = struct.pack(">HIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, MAX_ANSWER)
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings)
                     + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_ANSWER - DEFAULT_WINDOW)))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def call(self, method: str, message: bytes, metadata: Iterable[tuple[str, str]] = ()) -> bytes:
        """One unary call: the answer's message. OSError when the server fails or is too slow,
        ValueError when what it says does not parse."""
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        headers = [(":method", "POST"), (":scheme", "http"), (":path", method), (":authority", "localhost"),
                   ("content-type", "application/grpc"), ("te", "trailers"),
                   ("grpc-timeout", f"{max(1, int(self.timeout * 1000))}m"), *metadata]
        self.sock.sendall(frame(HEADERS, END_HEADERS, stream, hpack_literals(headers))
                          + frame(DATA, END_STREAM, stream, grpc_message(message)))
        return first_grpc_message(self._answer(stream, time.monotonic() + self.timeout))

    def _answer(self, stream: int, deadline: float) -> bytes:
        body = bytearray()
        while True:
            kind, flags, on, payload = self._frame(deadline)
            if kind == SETTINGS and not flags & ACK:
                self.sock.sendall(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self.sock.sendall(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY or (kind == RST_STREAM and on == stream):
                raise OSError("containerd closed the call")
            elif kind == DATA:
                if payload:  # the connection's window is shared by the calls: give it back
                    self.sock.sendall(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload))))
                if on == stream:
                    body += _unpadded(payload, flags)
                    if len(body) > MAX_ANSWER:  # flow control bounds it, unless the server ignores it
                        raise ValueError("an answer larger than any node's sandboxes make")
            if on == stream and kind in (DATA, HEADERS) and flags & END_STREAM:
                return bytes(body)

    def _frame(self, deadline: float) -> tuple[int, int, int, bytes]:
        head = self._read(9, deadline)
        size = int.from_bytes(head[:3], "big")
        return head[3], head[4], struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF, self._read(size, deadline)

    def _read(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("containerd did not answer in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(max(65536, size - len(self.buffer)))
            if not chunk:
                raise OSError("containerd closed the connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


def connect(path: str, timeout: float = TIMEOUT) -> Connection:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        return Connection(sock, timeout)
    except BaseException:
        sock.close()
        raise


def _unpadded(payload: bytes, flags: int) -> bytes:
    if not flags & PADDED:
        return payload
    pad = payload[0] if payload else 0
    if pad >= len(payload):
        raise ValueError("padding longer than the frame")
    return payload[1:len(payload) - pad]


# --- pod names -------------------------------------------------------------------------------------

_located: dict[tuple[str, str], Located] = {}
_located_lock = threading.Lock()


def pod_names(sockets: Iterable[str], proc: str = "/proc") -> dict[NsKey, str]:
    """{namespace (dev, ino): "namespace/pod"} from every containerd socket among `sockets`."""
    names: dict[NsKey, str] = {}
    for path in sockets:
        if os.path.exists(path) and speaks_http2(path):
            names.update(_pods_of(path, proc))
    return names


def _pods_of(path: str, proc: str) -> dict[NsKey, str]:
    try:
        with connect(path) as conn:
            listed = conn.call(LIST_CONTAINERS, list_containers_request([SANDBOX_FILTER]), NAMESPACE)
            pods = {c.id: pod for c in parse_containers(listed) if (pod := pod_name(c))}
            where = _still_located(path, pods)
            if any(w is None for w in where.values()):
                pids = {t.id: t.pid for t in parse_tasks(conn.call(LIST_TASKS, b"", NAMESPACE))}
                where = {cid: w or locate(_pid_paths(pids.get(cid), proc)) for cid, w in where.items()}
                with _located_lock:
                    _located.update({(path, cid): w for cid, w in where.items()})
    except (OSError, ValueError) as err:
        log.debug("no pod names from containerd at %s: %s", path, err)
        return {}
    return only_pod_in_each(pods, where)


def only_pod_in_each(pods: Mapping[str, str], where: Mapping[str, Located | None]) -> dict[NsKey, str]:
    """{namespace: pod} where one sandbox alone is found: the sandboxes of host-network pods
    all run in the node's own namespace, which is no pod's."""
    claims = [(key, pods[cid]) for cid, w in where.items() if w is not None for _, key in w.found]
    shared = {key for key, count in Counter(key for key, _ in claims).items() if count > 1}
    return {key: pod for key, pod in claims if key not in shared}


def _still_located(path: str, pods: Iterable[str]) -> dict[str, Located | None]:
    """Where each listed sandbox's namespace was found, None where that no longer holds;
    sandboxes no longer listed are forgotten."""
    listed = set(pods)
    with _located_lock:
        for gone in [k for k in _located if k[0] == path and k[1] not in listed]:
            del _located[gone]
        known = {cid: _located.get((path, cid)) for cid in listed}
    return {cid: k if k is not None and k.still_there() else None for cid, k in known.items()}


def pod_name(container: ContainerdContainer) -> str | None:
    """`namespace/pod` for a CRI pod sandbox; None for anything else (a pod's app containers
    share its sandbox's namespace; other clients' containers are no pods)."""
    if container.label(KIND) != SANDBOX:
        return None
    namespace, name = container.label(POD_NAMESPACE), container.label(POD_NAME)
    return f"{namespace}/{name}" if namespace and name else None


def _pid_paths(pid: int | None, proc: str) -> list[str]:
    return [f"{proc}/{pid}/ns/net"] if pid else []
