"""A TCP proxy that adds latency and cuts server-to-client streams at an exact byte.

Why: loopback has no round-trip time, which hides clients that wait for each reply instead of
pipelining, and a server-side fault only covers our own fake server.  Putting this proxy in
front of any POP3 server (the fake one or a real Dovecot) gives both.

Each direction has a reader thread that stamps every chunk with ``arrival + one_way_delay``
and a scheduler thread that writes chunks when they fall due.  Latency is therefore added
without limiting throughput (sleeping per chunk would cap it at one chunk per delay).
``cut_after_server_bytes`` counts wire bytes (TLS records, if the session uses TLS); the client
gets exactly that many, then a FIN, and the server sees its connection closed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from types import TracebackType

__all__ = ["DelayProxy"]


def _shutdown(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


class _Pipe:
    """One direction of one connection: a queue of (due time, bytes); b"" marks EOF."""

    def __init__(self, link: _Link, src: socket.socket, dst: socket.socket, to_client: bool):
        self.link, self.src, self.dst, self.to_client = link, src, dst, to_client
        self.queue: deque[tuple[float, bytes]] = deque()
        self.cond = threading.Condition()
        self.broken = False

    def read_loop(self) -> None:
        while True:
            try:
                data = self.src.recv(65536)
            except OSError:
                data = b""
            with self.cond:
                self.queue.append((time.monotonic() + self.link.delay, data))
                self.cond.notify()
            if not data:
                return

    def write_loop(self) -> None:
        try:
            while True:
                with self.cond:
                    while True:
                        if not self.queue:
                            self.cond.wait()
                            continue
                        wait = self.queue[0][0] - time.monotonic()
                        if wait <= 0:
                            data = self.queue.popleft()[1]
                            break
                        self.cond.wait(wait)
                if not data:
                    if not (self.to_client and self.link.cut):
                        _shutdown(self.dst, socket.SHUT_WR)
                    return
                self.link.deliver(self, data)
        finally:
            self.link.finished()


class _Link:
    """A client connection and its upstream connection, with the cut bookkeeping."""

    def __init__(
        self, client: socket.socket, upstream: socket.socket, delay: float, cut: int | None
    ) -> None:
        self.client, self.upstream = client, upstream
        self.delay, self.cut_after = delay, cut
        self.delivered = 0
        self.cut = False
        self.done = 0
        self.lock = threading.Lock()
        self.pipes = [_Pipe(self, client, upstream, False), _Pipe(self, upstream, client, True)]

    def threads(self) -> list[threading.Thread]:
        loops = [loop for p in self.pipes for loop in (p.read_loop, p.write_loop)]
        return [threading.Thread(target=loop, daemon=True, name="delayproxy") for loop in loops]

    def deliver(self, pipe: _Pipe, data: bytes) -> None:
        if self.cut or pipe.broken:
            return  # after a cut, keep reading the client (so close sends no RST) but drop it
        if pipe.to_client and self.cut_after is not None:
            room = self.cut_after - self.delivered
            if len(data) >= room:
                self._sendall(pipe, data[:room])
                self.do_cut()
                return
            self.delivered += len(data)
        self._sendall(pipe, data)

    def _sendall(self, pipe: _Pipe, data: bytes) -> None:
        try:
            pipe.dst.sendall(data)
        except OSError:
            pipe.broken = True  # from now on, read and drop what the source still sends
            if pipe.to_client:
                _shutdown(pipe.src, socket.SHUT_RDWR)  # client gone: hang up on the server

    def do_cut(self) -> None:
        """FIN to the client after exactly ``cut_after`` bytes; drop the upstream side."""
        self.cut = True
        _shutdown(self.client, socket.SHUT_WR)
        _shutdown(self.upstream, socket.SHUT_RDWR)

    def abort(self) -> None:
        _shutdown(self.client, socket.SHUT_RDWR)
        _shutdown(self.upstream, socket.SHUT_RDWR)

    def finished(self) -> None:
        with self.lock:
            self.done += 1
            last = self.done == len(self.pipes)
        if last:
            self.client.close()
            self.upstream.close()


class DelayProxy:
    """Proxy 127.0.0.1:``port`` to the target; settings are read when a connection opens."""

    host = "127.0.0.1"

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        one_way_delay: float = 0.0,
        cut_after_server_bytes: int | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.one_way_delay = one_way_delay
        self.cut_after_server_bytes = cut_after_server_bytes
        self.port = 0
        self.connections = 0
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> DelayProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(64)
        listener.settimeout(0.5)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="delayproxy-accept")
        self._acceptor.daemon = True
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Close the listener and every proxied connection; join all threads."""
        self._stopping.set()
        if self._listener is not None:
            _shutdown(self._listener, socket.SHUT_RDWR)
            self._listener.close()
        if self._acceptor is not None:
            self._acceptor.join(5)
        with self._lock:
            links, threads = list(self._links), list(self._threads)
        for link in links:
            link.abort()
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> DelayProxy:
        return self if self._listener is not None else self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._stopping.is_set():
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, upstream, self.one_way_delay, self.cut_after_server_bytes)
            threads = link.threads()
            with self._lock:
                self.connections += 1
                self._links = [x for x in self._links if x.done < len(x.pipes)] + [link]
                self._threads = [t for t in self._threads if t.is_alive()] + threads
            if link.cut_after == 0:
                link.do_cut()
            for thread in threads:
                thread.start()
