"""The machine's web server in the throughput runs: ``python -m bench.sink PORTFILE``.

A minimal HTTP/1.0 server: ``GET /N`` answers N bytes of zeros. It sends from one
preallocated buffer with ``sendall`` in threads, so it is never the bottleneck (it
moves several GB/s on loopback).
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

CHUNK = memoryview(bytes(1 << 20))


def serve(conn: socket.socket) -> None:
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            data = conn.recv(4096)
            if not data:
                return
            request += data
        size = int(request.split()[1].lstrip(b"/"))
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        while size > 0:
            n = min(size, len(CHUNK))
            conn.sendall(CHUNK[:n])
            size -= n


def main(port_file: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port_file.write_text(str(server.getsockname()[1]))
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
