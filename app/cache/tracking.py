"""The near cache's tracking connections, read without waiting by an incremental RESP2 parser.

The near cache reads its tracking sockets without waiting: whatever bytes have arrived are fed
here, every complete message comes out, and an incomplete tail stays buffered until the rest
arrives. So a half-received message never blocks a lookup (redis-py's ``read_response`` waits
for the whole reply; hiredis can parse incrementally but is optional, and redis-py exposes no
"is a complete reply buffered" check for its pure-Python parser).
"""

from __future__ import annotations

import ssl
import time
from typing import Any

CHANNEL = b"__redis__:invalidate"
PING = b"*1\r\n$4\r\nPING\r\n"
PONG_DEADLINE = 0.25  # a heartbeat answer vouches for L1 this long after its PING was sent
NOTHING_YET = (BlockingIOError, ssl.SSLWantReadError)  # a non-blocking read found no bytes
CRLF = b"\r\n"
MAX_BUFFER = 512 * 1024 * 1024  # Redis's own proto-max-bulk-len: a declared length above it is garbage


class ProtocolError(ValueError):
    """The bytes are not RESP2: the connection is unusable."""


class ReplyError(str):
    """A ``-ERR ...`` reply, kept as a value so the caller decides what it means."""


class _Incomplete(Exception):
    """The buffer ends inside a message."""


class RespParser:
    """Feed it bytes, take out complete messages; what is left over waits for the next feed."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> bool:
        """Whether part of a message is buffered (its rest has not arrived yet)."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[Any]:
        """Add ``data``; every message now complete, in order (bulk strings as bytes)."""
        buf = self._buf
        buf += data
        messages: list[Any] = []
        pos = 0
        end = len(buf)
        while pos < end:
            try:
                value, pos = self._parse(buf, pos)
            except _Incomplete:
                break
            messages.append(value)
        del buf[:pos]
        return messages

    def _parse(self, buf: bytearray, pos: int) -> tuple[Any, int]:
        line_end = buf.find(CRLF, pos)
        if line_end < 0:
            if len(buf) - pos > 64 * 1024:  # no header line is that long
                raise ProtocolError("RESP header line too long")
            raise _Incomplete
        kind = buf[pos]
        line = bytes(buf[pos + 1 : line_end])
        pos = line_end + 2
        if kind == 0x2B:  # + simple string
            return line, pos
        if kind == 0x2D:  # - error
            return ReplyError(line.decode(errors="replace")), pos
        if kind == 0x3A:  # : integer
            return _int(line), pos
        if kind == 0x24:  # $ bulk string
            size = _int(line)
            if size < 0:
                return None, pos
            if size > MAX_BUFFER:
                raise ProtocolError(f"bulk string of {size} bytes")
            if len(buf) < pos + size + 2:
                raise _Incomplete
            if buf[pos + size : pos + size + 2] != CRLF:
                raise ProtocolError("bulk string not followed by CRLF")
            return bytes(buf[pos : pos + size]), pos + size + 2
        if kind == 0x2A:  # * array
            count = _int(line)
            if count < 0:
                return None, pos
            items = []
            for _ in range(count):
                item, pos = self._parse(buf, pos)
                items.append(item)
            return items, pos
        raise ProtocolError(f"unexpected RESP type byte {kind!r}")


def _int(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolError(f"not a RESP integer: {line[:32]!r}") from None


class Listener:
    """One primary's tracking connection (RESP2: invalidations arrive as pub/sub messages)."""

    def __init__(self, name: str, connection: Any) -> None:
        self.name = name
        self.connection = connection
        self.parser = RespParser()
        self.sock: Any = None
        self.ping_sent: float | None = None  # the heartbeat awaiting its PONG
        self.fresh_until = 0.0  # the last PONG's PING + PONG_DEADLINE

    def open(self, prefixes: list[str], presence: str) -> None:
        """Subscribe (blocking, with the connection's timeouts), then switch to non-blocking reads.

        Also to ``presence``, the channel of this prefix's near caches: a change's fence arrives
        there, behind the invalidations its drop sent on this connection."""
        conn = self.connection
        conn.connect()
        conn.send_command("CLIENT", "ID")
        own_id = conn.read_response()
        tracking = ["CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST"]
        for prefix in prefixes:
            tracking += ["PREFIX", prefix]
        conn.send_command(*tracking)
        conn.read_response()  # nothing else is sent to a RESP2 client before it subscribes
        sent = time.monotonic()
        conn.send_command("SUBSCRIBE", CHANNEL, presence)
        sock = conn._sock
        messages: list[Any] = []
        while len(messages) < 2:  # our parser from here on: it keeps whatever follows the replies
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("tracking connection closed")
            messages += self.parser.feed(data)
        # Any message after the replies predates L1 serving, which starts empty.
        for reply in messages[:2]:
            if not (isinstance(reply, list) and reply[:1] == [b"subscribe"]):
                raise ConnectionError(f"unexpected reply to SUBSCRIBE: {reply!r}")
        sock.setblocking(False)
        self.sock = sock
        self.fresh_until = sent + PONG_DEADLINE

    def receive(self) -> list[Any]:
        """Every message complete now, without waiting (a partial one stays in the parser)."""
        messages: list[Any] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except NOTHING_YET:
                return messages
            if not data:
                raise ConnectionError("tracking connection closed")
            messages += self.parser.feed(data)

    def ping(self, now: float) -> None:
        if self.sock.send(PING) != len(PING):  # 14 bytes into an empty send buffer: all or a fault
            raise ConnectionError("heartbeat not sent whole")
        self.ping_sent = now

    def close(self) -> None:
        self.connection.disconnect()
