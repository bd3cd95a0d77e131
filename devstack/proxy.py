"""A TCP proxy between one replica and Redis that a chaos run can sever (a network partition).

``cut(seconds)`` closes every connection through it at once and, for ``seconds``, closes each
new one as soon as it is accepted (the replica sees resets, not a hang); ``heal()`` ends that early.
``delay`` (seconds) holds back what Redis sends before passing it on: a slow route to one replica.
Considered: toxiproxy (a Go server, not on PyPI or Debian) and ``iptables`` (needs root and
would cut every process on the port, not one replica); a threaded proxy of ~100 lines does it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from devstack.ports import free_port


class TcpProxy:
    """Listens on a free loopback port and forwards each connection to ``target_port``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=128)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._refuse_until = 0.0
        self._closed = False
        self.cuts = 0
        self.delay = 0.0  # seconds each chunk from Redis waits before it is passed on
        threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def retarget(self, port: int) -> None:
        """New connections go to ``port`` (a restarted Redis on another port); old ones stay."""
        self.target = (self.target[0], port)

    def cut(self, seconds: float) -> None:
        """Reset every connection now and refuse (accept, then reset) new ones for ``seconds``."""
        with self._lock:
            self._refuse_until = time.monotonic() + seconds
            conns, self._conns = list(self._conns), set()
            self.cuts += 1
        for conn in conns:
            _reset(conn)

    def heal(self) -> None:
        with self._lock:
            self._refuse_until = 0.0

    def severed(self) -> bool:
        return time.monotonic() < self._refuse_until

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut(0)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.severed():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst, delayed in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, delayed), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delayed: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if delayed and self.delay:
                    time.sleep(self.delay)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            _reset(src)
            _reset(dst)


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a cut cable or a dropped NAT entry looks to the peer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)  # wakes the pump blocked in recv() on it
    with contextlib.suppress(OSError):
        sock.close()
