"""Download ``GET /N`` from 127.0.0.1:PORT and discard it; return bytes and seconds."""

from __future__ import annotations

import socket
import time


def fetch(port: int, size: int, timeout: float = 600.0) -> tuple[int, float]:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /%d HTTP/1.0\r\n\r\n" % size)
        head = b""
        while b"\r\n\r\n" not in head:
            data = s.recv(4096)
            if not data:
                raise ConnectionError(f"no HTTP answer through port {port}")
            head += data
        got = len(head.split(b"\r\n\r\n", 1)[1])
        while got < size:
            n = s.recv_into(view)
            if n == 0:
                raise ConnectionError(f"stream ended after {got} of {size} bytes")
            got += n
    return got, time.perf_counter() - start
