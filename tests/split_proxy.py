"""A TCP proxy in front of a redis-server that can cut one message on the near cache's tracking
connection in two: the first half goes through, the rest waits until the test releases it.

Redis writes a message in one piece, so this is how a test sees a half-received message.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class SplitProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.tracking: set[socket.socket] = set()  # client sides that sent CLIENT TRACKING
        self.armed = False
        self.held: dict[socket.socket, bytearray] = {}  # a client side: the bytes it has not got yet
        self.split = threading.Event()
        self.lock = threading.Lock()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def arm(self) -> None:
        """Cut the next bytes Redis sends on a tracking connection."""
        with self.lock:
            self.armed = True
            self.split.clear()

    def release(self) -> None:
        with self.lock:
            for client, rest in self.held.items():
                client.sendall(rest)
            self.held.clear()

    def close(self) -> None:
        self.stopped = True
        self.thread.join(2)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()

    def _run(self) -> None:
        while not self.stopped:
            for key, _ in self.selector.select(0.05):
                if key.fileobj is self.listener:
                    client, _ = self.listener.accept()
                    server = socket.create_connection(self.target)
                    self.selector.register(client, selectors.EVENT_READ, (server, False))
                    self.selector.register(server, selectors.EVENT_READ, (client, True))
                    continue
                peer, from_server = key.data
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for sock in (key.fileobj, peer):
                        with contextlib.suppress(KeyError, ValueError):
                            self.selector.unregister(sock)
                        sock.close()
                    continue
                self._forward(key.fileobj, peer, data, from_server)

    def _forward(self, source: socket.socket, peer: socket.socket, data: bytes, from_server: bool) -> None:
        with self.lock:
            if not from_server:
                if b"TRACKING" in data:
                    self.tracking.add(source)
            elif peer in self.held:
                self.held[peer] += data
                return
            elif self.armed and peer in self.tracking:
                self.armed = False
                half = max(1, len(data) // 2)
                peer.sendall(data[:half])
                self.held[peer] = bytearray(data[half:])
                self.split.set()
                return
            with contextlib.suppress(OSError):
                peer.sendall(data)
