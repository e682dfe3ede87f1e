"""The lab's tiny servers: answer every request with who answered and who asked.

`python -m bridgescope.plumbing.lab.echo_server NAME PORT [--udp]`. The answer `NAME saw ADDR`
makes NAT visible: the fake internet sees the host's uplink address when MASQUERADE works,
and a client learns which container a port forward reached.
"""
from __future__ import annotations

import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class _Handler(BaseHTTPRequestHandler):
    server_name_tag = "?"

    def do_GET(self) -> None:
        body = f"{self.server_name_tag} saw {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _UDPHandler(socketserver.BaseRequestHandler):
    server_name_tag = "?"

    def handle(self) -> None:
        _, sock = self.request
        sock.sendto(f"{self.server_name_tag} saw {self.client_address[0]}\n".encode(),
                    self.client_address)


def serve(name: str, port: int, udp: bool = False) -> None:
    if udp:
        handler = type("Udp", (_UDPHandler,), {"server_name_tag": name})
        socketserver.UDPServer.allow_reuse_address = True
        socketserver.UDPServer(("0.0.0.0", port), handler).serve_forever()
    else:
        handler = type("Http", (_Handler,), {"server_name_tag": name})
        HTTPServer.allow_reuse_address = True
        HTTPServer.address_family = socket.AF_INET
        HTTPServer(("0.0.0.0", port), handler).serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), "--udp" in sys.argv[3:])
