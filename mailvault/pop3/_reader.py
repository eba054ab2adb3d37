"""The receive buffer and CRLF line reading for status lines and listings.

Bytes are appended to one ``bytearray`` and consumed by advancing ``pos``; the consumed
prefix is dropped only when new data is fed (CPython makes deleting a bytearray prefix
cheap), so reading N lines out of one large chunk never copies the rest of the chunk N
times.  ``read_line`` remembers how far it has already searched for LF so a line that
trickles in one byte at a time is not rescanned from its start on every feed.

Protocol lines must end in CRLF.  Accepting a bare LF here would make the "." terminator of
a listing ambiguous, so a bare LF is reported as the server's protocol error.
"""

from __future__ import annotations

from mailvault.errors import ProtocolError


class ReceiveBuffer:
    """Unconsumed bytes from the server: ``buf[pos:]``."""

    __slots__ = ("buf", "pos", "_scanned")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0
        self._scanned = 0  # no LF in buf[pos:_scanned]

    def __len__(self) -> int:
        return len(self.buf) - self.pos

    def feed(self, data: bytes) -> None:
        if self.pos:
            del self.buf[: self.pos]
            self._scanned -= self.pos
            self.pos = 0
        self.buf += data

    def head(self, n: int = 40) -> bytes:
        """The first ``n`` unconsumed bytes, for error messages."""
        return bytes(self.buf[self.pos : self.pos + n])

    def read_line(self, max_line: int) -> bytes | None:
        """Consume one CRLF-terminated line and return it without CRLF, or None if incomplete.

        ``max_line`` bounds the line including its CRLF, so a server that never sends a line
        end cannot make us buffer without limit.
        """
        buf = self.buf
        start = self.pos
        lf = buf.find(b"\n", max(start, self._scanned))
        if lf < 0:
            self._scanned = len(buf)
            if len(buf) - start >= max_line:
                raise ProtocolError(f"server sent a line longer than {max_line} bytes")
            return None
        if lf + 1 - start > max_line:
            raise ProtocolError(f"server sent a line longer than {max_line} bytes")
        if lf == start or buf[lf - 1] != 0x0D:
            bad = bytes(buf[start : lf + 1][:40])
            raise ProtocolError(f"server ended a line with a bare LF instead of CRLF: {bad!r}")
        line = bytes(buf[start : lf - 1])
        self.pos = lf + 1
        return line
