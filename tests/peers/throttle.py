"""A slow link, as an OpenSSH ProxyCommand: relays stdin/stdout to HOST:PORT at BYTES_PER_S in
each direction, so a test can act in the middle of a transfer (kill sshd, kill the laptop process,
terminate the instance) instead of racing a loopback copy that ends in milliseconds.

    ProxyCommand python tests/peers/throttle.py 127.0.0.1 2222 2000000 [HOLD_FILE HOLD_AFTER]

With HOLD_FILE and HOLD_AFTER, each direction stops passing bytes once it has passed HOLD_AFTER of
them, for as long as HOLD_FILE exists: an upload or a download that is mid-file however late a
loaded machine lets the test act (a 2 s transfer can end before a starved test thread looks). The
other direction carries only the protocol's small replies, so it stays under HOLD_AFTER.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

CHUNK = 16384


def pump(
    read, write, rate: float, done: threading.Event, hold: str | None = None, hold_after: int = 0
) -> None:
    start, sent = time.monotonic(), 0
    try:
        while data := read(CHUNK):
            while hold and sent >= hold_after and os.path.exists(hold):
                time.sleep(0.05)
            write(data)
            sent += len(data)
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    except OSError:
        pass
    finally:
        done.set()


def main() -> None:
    host, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    hold, hold_after = (sys.argv[4], int(sys.argv[5])) if len(sys.argv) > 5 else (None, 0)
    sock = socket.create_connection((host, port))
    done = threading.Event()
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()

    def to_stdout(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(stdout, view) :]

    threading.Thread(
        target=pump,
        args=(lambda n: os.read(stdin, n), sock.sendall, rate, done, hold, hold_after),
        daemon=True,
    ).start()
    threading.Thread(
        target=pump, args=(sock.recv, to_stdout, rate, done, hold, hold_after), daemon=True
    ).start()
    done.wait()


if __name__ == "__main__":
    main()
