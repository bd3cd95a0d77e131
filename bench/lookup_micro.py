"""Cost of one lookup call in-process, without HTTP: the cache layers alone, sequential, no gevent.

Run by cache_bench.py against its own servers (the app's settings come from the environment):

    python -m bench.lookup_micro

prints one line ``BENCHJSON {name: {"wall_us", "cpu_us"}}`` (median of three batches). Much less
sensitive to other load on the machine than the HTTP figures, and it shows what each layer costs.
"""

from __future__ import annotations

import json
import statistics
import time

from app.devices.lookup import load_device
from app.devices.service import public_view
from bench.benchapp import CEILING_KEY, app, memoized_load_device

DEVICE = ("demo-00001", "Room 1")


def main() -> None:
    cache = app.extensions["shared_cache"]
    client = cache.client
    ceiling_key = app.config["CACHE_KEY_PREFIX"] + CEILING_KEY
    calls = {
        "redis PING": (client.ping, 3000),
        "ceiling": (lambda: public_view(json.loads(client.get(ceiling_key)), None), 3000),
        "hit": (lambda: cache.get(*DEVICE), 3000),
        "memoize": (lambda: memoized_load_device(*DEVICE), 3000),
        "uncached": (lambda: load_device(*DEVICE), 300),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    with app.test_request_context("/"):
        for fn, _ in calls.values():
            fn()
        for _ in range(3):
            for name, (fn, n) in calls.items():
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(n):
                    fn()
                samples[name].append(((time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6))
    result = {
        name: {"wall_us": statistics.median(s[0] for s in v), "cpu_us": statistics.median(s[1] for s in v)}
        for name, v in samples.items()
    }
    print("BENCHJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
