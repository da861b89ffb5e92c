"""A peer that accepts connections and never says anything: what a hung endpoint, a firewall that
swallows packets after the handshake, or a wrong port behind a load balancer looks like. Every
client of an external peer (AWS API, S3, SSH, instance metadata) must give up on it within its
bound and say which endpoint did not answer.

The `silent` fixture yields ``(host, port)``; one listener for the whole test session.
"""

from __future__ import annotations

import socket
import threading

import pytest


class SilentListener:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []  # kept open: a closed socket would answer (with EOF)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture(scope="session")
def silent():
    listener = SilentListener()
    yield "127.0.0.1", listener.port
    listener.close()
