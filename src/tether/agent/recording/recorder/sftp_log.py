"""Which files an SFTP session touched, read from the packets as they pass (stdlib only).

The recorder sits between sshd and the real ``sftp-server`` and feeds each direction's
bytes to an :class:`SftpLog`. It never changes or holds back a byte; it only parses the
SFTP v3 framing (``uint32 length, byte type, payload``) to note what an engineer
transferred: every opened file with its name, open flags and the bytes written to it
and read from it, and removals, renames and new or removed directories. Anything it
does not understand is skipped, and a stream that stops making sense (a bad length)
turns parsing off rather than guessing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

FXP_INIT, FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 1, 3, 4, 5, 6
FXP_REMOVE, FXP_MKDIR, FXP_RMDIR, FXP_RENAME = 13, 14, 15, 18
FXP_STATUS, FXP_HANDLE, FXP_DATA = 101, 102, 103
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC = 1, 2, 4, 8, 16

#: Longest SFTP packet accepted (OpenSSH's own limit is 256 KiB).
MAX_PACKET = 1 << 20
#: Most transfers kept per session (a runaway client cannot grow the metadata).
MAX_TRANSFERS = 1000


@dataclass
class Transfer:
    """One file an engineer opened, removed, renamed, or a directory made or removed.

    ``op`` is ``upload`` (opened for writing), ``download`` (opened for reading),
    ``remove``, ``rename`` (``target`` is the new name), ``mkdir`` or ``rmdir``.
    """

    op: str
    path: str
    written: int = 0
    read: int = 0
    target: str | None = None

    @property
    def size(self) -> int:
        """Bytes moved: written for an upload, read for a download."""
        return self.written if self.op == "upload" else self.read

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"op": self.op, "path": self.path}
        if self.op in ("upload", "download"):
            data["bytes"] = self.size
        if self.target is not None:
            data["target"] = self.target
        return data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def u32(self) -> int:
        (value,) = struct.unpack_from(">I", self.data, self.at)
        self.at += 4
        return int(value)

    def u64(self) -> int:
        (value,) = struct.unpack_from(">Q", self.data, self.at)
        self.at += 8
        return int(value)

    def string(self) -> bytes:
        size = self.u32()
        if self.at + size > len(self.data):
            raise struct.error("string past the end of the packet")
        value = self.data[self.at : self.at + size]
        self.at += size
        return value

    def text(self) -> str:
        return self.string().decode("utf-8", errors="replace")


@dataclass
class _Direction:
    buffer: bytearray = field(default_factory=bytearray)


class SftpLog:
    """Follows both directions of one SFTP session; :attr:`transfers` is the result."""

    def __init__(self) -> None:
        self.transfers: list[Transfer] = []
        self.dropped = 0
        self.broken = False
        self._to_server = _Direction()
        self._to_client = _Direction()
        self._opening: dict[int, Transfer] = {}
        self._handles: dict[bytes, Transfer] = {}
        self._reading: dict[int, Transfer] = {}

    def moving(self) -> list[dict[str, object]]:
        """The files open for transfer now (at most 10), with the bytes moved so far."""
        return [t.to_json() for t in list(self._handles.values())[:10]]

    def client_data(self, data: bytes) -> None:
        """Bytes the client sent towards sftp-server."""
        self._feed(self._to_server, data, self._request)

    def server_data(self, data: bytes) -> None:
        """Bytes sftp-server sent back to the client."""
        self._feed(self._to_client, data, self._reply)

    def _feed(self, direction: _Direction, data: bytes, handle: object) -> None:
        if self.broken:
            return
        buffer = direction.buffer
        buffer += data
        while len(buffer) >= 4:
            (size,) = struct.unpack_from(">I", buffer, 0)
            if size < 1 or size > MAX_PACKET:
                self.broken = True
                buffer.clear()
                return
            if len(buffer) < 4 + size:
                return
            packet = bytes(buffer[4 : 4 + size])
            del buffer[: 4 + size]
            try:
                handle(packet[0], _Reader(packet[1:]))  # type: ignore[operator]
            except (struct.error, IndexError):
                continue

    def _add(self, transfer: Transfer) -> None:
        if len(self.transfers) >= MAX_TRANSFERS:
            self.dropped += 1
            return
        self.transfers.append(transfer)

    def _request(self, kind: int, r: _Reader) -> None:
        if kind == FXP_INIT:
            return
        request_id = r.u32()
        if kind == FXP_OPEN:
            path = r.text()
            flags = r.u32()
            writing = bool(flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC))
            self._opening[request_id] = Transfer("upload" if writing else "download", path)
        elif kind == FXP_WRITE:
            transfer = self._handles.get(r.string())
            if transfer is not None:
                r.u64()
                transfer.written += len(r.string())
        elif kind == FXP_READ:
            transfer = self._handles.get(r.string())
            if transfer is not None:
                self._reading[request_id] = transfer
        elif kind == FXP_CLOSE:
            self._handles.pop(r.string(), None)
        elif kind in (FXP_REMOVE, FXP_MKDIR, FXP_RMDIR):
            op = {FXP_REMOVE: "remove", FXP_MKDIR: "mkdir", FXP_RMDIR: "rmdir"}[kind]
            self._add(Transfer(op, r.text()))
        elif kind == FXP_RENAME:
            old = r.text()
            self._add(Transfer("rename", old, target=r.text()))

    def _reply(self, kind: int, r: _Reader) -> None:
        request_id = r.u32()
        if kind == FXP_HANDLE:
            transfer = self._opening.pop(request_id, None)
            if transfer is not None:
                self._handles[r.string()] = transfer
                self._add(transfer)
        elif kind == FXP_DATA:
            transfer = self._reading.pop(request_id, None)
            if transfer is not None:
                transfer.read += len(r.string())
        elif kind == FXP_STATUS:
            self._opening.pop(request_id, None)
            self._reading.pop(request_id, None)
