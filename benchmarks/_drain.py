"""The bare pipelined drain: the fastest a client can pull a mailbox out of this server.

It logs in (USER/PASS), asks STAT for the count, then keeps a large window of ``RETR n``
commands in flight and throws the data away, counting responses by their ``CRLF . CRLF``
terminators (dot-stuffing guarantees that sequence appears nowhere else in a RETR
response).  Per chunk it does one ``recv_into`` into a reused 1 MiB buffer and one
``bytearray.count`` -- C speed; it stores nothing, hashes nothing, parses nothing.  What it
measures is the physical limit of this Dovecot on this machine and link.

    python -m benchmarks._drain --host 127.0.0.1 --port 1110 --user bench [--tls --ca CA]

The password comes from $BENCH_PW.  Prints one JSON line: messages, octets (STAT), bytes
received.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys

TERMINATOR = b"\r\n.\r\n"
BUFFER = 1024 * 1024


class _Lines:
    """Line reading for the lock-step login part of the session."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise SystemExit("drain: server closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def ok(self, command: bytes | None) -> bytes:
        if command is not None:
            self.sock.sendall(command + b"\r\n")
        line = self.line()
        if not line.startswith(b"+OK"):
            shown = command.split(b" ")[0] if command else b"greeting"
            raise SystemExit(f"drain: {shown.decode()} failed: {line[:80]!r}")
        return line


def drain(
    host: str, port: int, user: str, password: str, *, window: int, ca_file: str | None
) -> dict[str, int]:
    """Fetch every message once, pipelined, discarding the data; return the counts."""
    sock: socket.socket = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ca_file is not None:
        ctx = ssl.create_default_context(cafile=ca_file)
        sock = ctx.wrap_socket(sock, server_hostname=host)
    lines = _Lines(sock)
    lines.ok(None)
    lines.ok(b"USER " + user.encode())
    lines.ok(b"PASS " + password.encode())
    stat = lines.ok(b"STAT").split()
    count, octets = int(stat[1]), int(stat[2])
    if lines.buf:
        raise SystemExit("drain: unexpected bytes after STAT")

    buf = bytearray(BUFFER)
    sent = done = received = 0
    tail = b""
    while done < count:
        if sent < count and sent - done <= window // 2:
            upto = min(count, done + window)
            sock.sendall(b"".join(b"RETR %d\r\n" % n for n in range(sent + 1, upto + 1)))
            sent = upto
        got = sock.recv_into(buf)
        if not got:
            raise SystemExit(f"drain: connection closed after {done} of {count} messages")
        received += got
        head = bytes(buf[: min(4, got)])
        done += (tail + head).count(TERMINATOR) + buf.count(TERMINATOR, 0, got)
        tail = bytes(buf[got - 4 : got]) if got >= 4 else (tail + head)[-4:]
    lines.buf = b""
    lines.ok(b"QUIT")
    sock.close()
    return {"messages": done, "octets": octets, "bytes_received": received}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--window", type=int, default=1000, help="RETRs in flight (at most)")
    parser.add_argument("--ca", help="use implicit TLS, trusting this CA bundle")
    args = parser.parse_args(argv)
    password = os.environ.get("BENCH_PW", "")
    result = drain(args.host, args.port, args.user, password, window=args.window, ca_file=args.ca)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
