"""A small closed-loop HTTP/1.1 load generator, the fallback when ``wrk`` is not installed.

Considered: locust and the like; they bring a web UI and many dependencies, and the
bench needs only wrk's closed loop (N keep-alive connections, one request in flight on
each) and its summary, for which gevent (already a dependency) is enough.

    python -m bench.loadgen URL --connections 32 --duration 10

prints one line ``BENCHJSON {...}`` with the same fields as the wrk script of bench/load.py.
Slower than wrk (it is Python): figures taken with it compare variants with each other,
not with figures taken with wrk.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.non2xx = 0
        self.s5xx = 0
        self.s4xx = 0
        self.errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytearray]:
    """Read one response with a Content-Length body; return (status, leftover bytes)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return status, body[length:]


def connection(host: str, port: int, request: bytes, deadline: float, timeout: float, stats: Stats) -> None:
    sock = None
    buf = bytearray()
    while time.monotonic() < deadline:
        if sock is None:
            try:
                sock = socket.create_connection((host, port), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                stats.errors["connect"] += 1
                sock = None
                gevent.sleep(0.01)
                continue
            buf = bytearray()
        start = time.perf_counter()
        try:
            sock.sendall(request)
        except OSError:
            stats.errors["write"] += 1
            sock.close()
            sock = None
            continue
        try:
            status, buf = read_response(sock, buf)
        except TimeoutError:
            stats.errors["timeout"] += 1
            sock.close()
            sock = None
            continue
        except (OSError, ValueError, IndexError):
            stats.errors["read"] += 1
            sock.close()
            sock = None
            continue
        if time.monotonic() > deadline:
            break  # like wrk: a response after the end does not count
        stats.latencies.append(time.perf_counter() - start)
        if not 200 <= status < 400:
            stats.non2xx += 1
        if status >= 500:
            stats.s5xx += 1
        elif status >= 400:
            stats.s4xx += 1
    if sock is not None:
        sock.close()


def run(url: str, connections: int, duration: float, timeout: float) -> dict:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    host, port = parts.hostname, parts.port or 80
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    stats = Stats()
    started = time.monotonic()
    deadline = started + duration
    gevent.joinall(
        [gevent.spawn(connection, host, port, request, deadline, timeout, stats) for _ in range(connections)]
    )
    elapsed = time.monotonic() - started
    lat = sorted(stats.latencies)
    return {
        "requests": len(lat),
        "duration_us": int(elapsed * 1e6),
        "p50_us": int(percentile(lat, 50) * 1e6),
        "p99_us": int(percentile(lat, 99) * 1e6),
        "max_us": int((lat[-1] if lat else 0) * 1e6),
        "mean_us": (sum(lat) / len(lat) * 1e6) if lat else 0.0,
        "non2xx": stats.non2xx,
        "s5xx": stats.s5xx,
        "s4xx": stats.s4xx,
        **stats.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per request, like wrk's --timeout")
    args = parser.parse_args()
    print("BENCHJSON " + json.dumps(run(args.url, args.connections, args.duration, args.timeout)), flush=True)


if __name__ == "__main__":
    main()
