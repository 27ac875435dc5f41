"""Message framing between the client (``Sandbox``) and its worker processes.

Each message is a 4-byte big-endian length followed by a ``marshal`` payload (dicts of str, int,
float, bool and None). Both ends are the same interpreter (the workers are started with
``sys.executable``) and model code never holds these pipes, so ``marshal`` is safe here and several
times faster than JSON for the 64 kB outputs a run may carry.
"""

from __future__ import annotations

import marshal
import os
import struct

TYPE_CHECKING = False  # (typing is not imported: the worker template must stay small)
if TYPE_CHECKING:
    from typing import Any

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 256 << 20


def encode(obj: Any) -> bytes:
    data = marshal.dumps(obj)
    return _HEADER.pack(len(data)) + data


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def send(fd: int, obj: Any) -> None:
    write_all(fd, encode(obj))


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv(fd: int) -> Any:
    """Blocking read of one message; None when the peer closed the pipe."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE:
        raise ValueError(f"sandbox protocol: message of {size} bytes exceeds {MAX_MESSAGE}")
    body = _read_exact(fd, size)
    if body is None:
        return None
    return marshal.loads(body)


class Reader:
    """Incremental decoder for a non-blocking event loop: ``feed`` whatever ``os.read`` gave."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_MESSAGE:
                raise ValueError(f"sandbox protocol: message of {size} bytes exceeds {MAX_MESSAGE}")
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            out.append(marshal.loads(bytes(self._buf[_HEADER.size:end])))
            del self._buf[:end]
        return out
