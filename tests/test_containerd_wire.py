"""containerd's wire, without containerd: the protobuf and HTTP/2 pieces of
collector/kernel/containerd.py against bytes a real containerd 1.6 sent (tests/data/containerd/,
recorded from the fixture of test_containerd.py: a sandbox `sb1` labelled shop/web, and `app1`
carrying the pod labels but not CRI's sandbox kind)."""
from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from bridgescope.collector.kernel import containerd, containers
from bridgescope.collector.kernel.containerd import (
    ACK,
    PING,
    SETTINGS,
    ContainerdContainer,
    Task,
    fields,
    first_grpc_message,
    frame,
    hpack_literals,
    parse_containers,
    parse_tasks,
    pod_name,
    varint,
)

DATA = Path(__file__).parent / "data" / "containerd"


def recorded(name: str) -> bytes:
    return (DATA / name).read_bytes()


# --- protobuf -----------------------------------------------------------------------------------

def test_varints_seven_bits_a_byte_low_first():
    assert varint(1) == b"\x01"
    assert varint(150) == b"\x96\x01"
    assert varint(4223) == b"\xff\x20"
    assert list(fields(b"\x08\x96\x01")) == [(1, 150)]


def test_the_sandbox_filter_request_is_one_repeated_string():
    filt = 'labels."io.cri-containerd.kind"==sandbox'
    assert filt == containerd.SANDBOX_FILTER
    assert containerd.list_containers_request([filt]) == b"\x0a" + bytes((len(filt),)) + filt.encode()


def test_recorded_container_list_gives_ids_and_labels_and_skips_the_spec():
    every = parse_containers(recorded("list-containers-all.bin"))
    assert [c.id for c in every] == ["app1", "sb1"]
    [app, sandbox] = every
    assert sandbox.label("io.cri-containerd.kind") == "sandbox"
    assert (sandbox.label("io.kubernetes.pod.namespace"), sandbox.label("io.kubernetes.pod.name")) == ("shop", "web")
    assert app.label("io.cri-containerd.kind") == ""
    # what containerd answered to the sandbox filter: the sandbox alone
    assert parse_containers(recorded("list-containers-sandboxes.bin")) == [sandbox]


def test_recorded_task_list_gives_each_task_its_pid():
    assert parse_tasks(recorded("list-tasks.bin")) == [Task("app1", 15760), Task("sb1", 4223)]


def test_only_a_labelled_sandbox_is_a_pod():
    labels = (("io.kubernetes.pod.namespace", "shop"), ("io.kubernetes.pod.name", "web"))
    assert pod_name(ContainerdContainer("sb1", (*labels, ("io.cri-containerd.kind", "sandbox")))) == "shop/web"
    assert pod_name(ContainerdContainer("app1", labels)) is None
    assert pod_name(ContainerdContainer("c1", (*labels, ("io.cri-containerd.kind", "container")))) is None
    assert pod_name(ContainerdContainer("sb2", (("io.cri-containerd.kind", "sandbox"),))) is None


@pytest.mark.parametrize("garbage", [
    b"\x0a\x05ab",          # a length past the end
    b"\x0a",                # a tag and nothing
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint longer than 64 bits
    b"\x0b\x0c",            # a group (wire type 3)
    b"\x0d\x01\x02",        # a truncated fixed32
])
def test_malformed_messages_raise_value_error(garbage):
    with pytest.raises(ValueError):
        parse_containers(garbage)


def test_a_number_where_a_message_belongs_is_refused():
    with pytest.raises(ValueError):
        parse_tasks(b"\x08\x01")  # tasks (1) as a varint


# --- HTTP/2 and gRPC framing ---------------------------------------------------------------------

def test_frames_and_hpack_literals_byte_for_byte():
    assert frame(PING, ACK, 0, b"12345678") == b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + b"12345678"
    assert hpack_literals([(":method", "POST")]) == b"\x00\x07:method\x04POST"
    # a length past the 7-bit prefix continues in 7-bit groups (docs/fleet.md, "containerd's wire")
    assert hpack_literals([("x", "v" * 200)]) == b"\x00\x01x\x7f\x49" + b"v" * 200
    assert containerd._hpack_int(1337, 5) == b"\x1f\x9a\x0a"  # 31 + 1306: 1306 in 7-bit groups, low first


def test_grpc_messages_need_their_whole_length_and_no_compression():
    assert first_grpc_message(b"\x00\x00\x00\x00\x02hi\x00\x00\x00\x00\x00") == b"hi"
    for bad in (b"", b"\x00\x00\x00\x00\x05hi", b"\x01\x00\x00\x00\x02hi"):
        with pytest.raises(ValueError):
            first_grpc_message(bad)


def test_a_call_against_the_recorded_server_bytes():
    """What containerd sent for one Tasks/List: its SETTINGS, a WINDOW_UPDATE, a PING, the
    headers, the message, the trailers. The client answers the SETTINGS and the PING."""
    client, server = socket.socketpair()
    with client, server:
        server.sendall(recorded("list-tasks-server-bytes.bin"))
        with containerd.Connection(client, timeout=5) as conn:
            answer = conn.call(containerd.LIST_TASKS, b"", containerd.NAMESPACE)
        assert parse_tasks(answer) == [Task("sb1", 4223), Task("app1", 15760)]
        server.settimeout(5)
        sent = b""
        while chunk := server.recv(65536):
            sent += chunk
    assert sent.startswith(containerd.PREFACE)
    assert frame(SETTINGS, ACK, 0) in sent
    ping = recorded("list-tasks-server-bytes.bin").split(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00", 1)[1][:8]
    assert frame(PING, ACK, 0, ping) in sent
    assert b"\x00\x14containerd-namespace\x06k8s.io" in sent


def test_a_call_refused_with_trailers_only_is_an_error():
    client, server = socket.socketpair()
    with client, server:
        # HEADERS with END_STREAM and no DATA: how gRPC reports a failed call
        server.sendall(frame(SETTINGS, 0, 0) + frame(1, containerd.END_HEADERS | containerd.END_STREAM, 1, b"\x88"))
        with containerd.Connection(client, timeout=5) as conn, pytest.raises(ValueError):
            conn.call(containerd.LIST_TASKS, b"")


def test_a_server_that_says_nothing_is_given_up_on_in_time():
    client, server = socket.socketpair()
    with client, server, containerd.Connection(client, timeout=0.2) as conn, pytest.raises(TimeoutError):
        conn.call(containerd.LIST_TASKS, b"")


def test_padded_data_frames_are_unpadded():
    client, server = socket.socketpair()
    message = containerd.grpc_message(b"\x0a\x02hi")
    padded = bytes((3,)) + message + b"\x00" * 3
    with client, server:
        server.sendall(frame(containerd.DATA, containerd.PADDED, 1, padded)
                       + frame(1, containerd.END_HEADERS | containerd.END_STREAM, 1, b"\x88"))
        with containerd.Connection(client, timeout=5) as conn:
            assert conn.call(containerd.LIST_TASKS, b"") == b"\x0a\x02hi"


def test_window_updates_return_what_each_data_frame_took():
    client, server = socket.socketpair()
    message = containerd.grpc_message(b"x" * 100)
    with client, server:
        server.sendall(frame(containerd.DATA, 0, 1, message[:50]) + frame(containerd.DATA, containerd.END_STREAM, 1,
                                                                           message[50:]))
        with containerd.Connection(client, timeout=5) as conn:
            assert conn.call(containerd.LIST_TASKS, b"") == b"x" * 100
        server.settimeout(5)
        sent = b""
        while chunk := server.recv(65536):
            sent += chunk
    for size in (50, len(message) - 50):
        assert frame(containerd.WINDOW_UPDATE, 0, 0, struct.pack(">I", size)) in sent


# --- which sockets speak it; dead and silent ones -------------------------------------------------

def _serve_once(path: str, answer: bytes | None) -> threading.Thread:
    """A unix socket server for one connection: reads what comes, answers `answer` (None:
    nothing, until the client gives up), then hangs up."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                if answer is not None:
                    conn.sendall(answer)
                else:
                    conn.settimeout(10)
                    try:
                        conn.recv(1)  # until the client closes
                    except OSError:
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_http1_and_http2_servers_are_told_apart(tmp_path):
    http1, http2 = str(tmp_path / "docker.sock"), str(tmp_path / "containerd.sock")
    threads = [_serve_once(http1, b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"),
               _serve_once(http2, frame(SETTINGS, 0, 0))]
    assert not containers.speaks_http2(http1)
    assert containers.speaks_http2(http2)
    for thread in threads:
        thread.join(5)
    assert containers.speaks_http2(http2)  # remembered: nobody listens any more


def test_a_dead_socket_gives_no_names_at_once(tmp_path):
    dead = str(tmp_path / "containerd.sock")  # a socket file nobody listens on
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(dead)
    started = time.monotonic()
    assert containerd.pod_names([dead, str(tmp_path / "absent.sock")]) == {}
    assert time.monotonic() - started < 1


def test_a_silent_socket_gives_no_names_in_bounded_time(tmp_path):
    silent = str(tmp_path / "containerd.sock")
    thread = _serve_once(silent, None)
    started = time.monotonic()
    assert containerd.pod_names([silent]) == {}
    assert time.monotonic() - started < 5  # generous: one TIMEOUT
    thread.join(15)
