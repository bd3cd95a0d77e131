"""The nemesis: one fault at a time, held for a second or a few, healed, then a quiet gap.

Every fault is recorded from the moment before it is injected to the moment its heal is complete
(a restarted server answering, a failover settled), so the checker's windows cover it whole.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

from bench.chaos.history import Fault, History
from bench.chaos.stack import Stack
from devstack.mongo import fail_command
from devstack.processes import children
from devstack.redis_server import RedisServer
from devstack.wait import wait_until
from devstack.web import http_get

MONGO_ERRORS = (91, 11600, 189)  # ShutdownInProgress, InterruptedAtShutdown, PrimarySteppedDown
MONGO_COMMANDS = ("insert", "delete", "findAndModify", "distinct", "find", "update", "aggregate")


def data_nodes(stack: Stack, rng: random.Random) -> list[RedisServer]:
    """The Redis node(s) a fault hits: the server, the Sentinel primary, or one Cluster primary."""
    r = stack.redis
    if stack.topology == "standalone":
        return [r]
    if stack.topology == "sentinel":
        return [r.primary()]
    return [rng.choice(r.primary_nodes())]


def redis_stop(stack: Stack, rng: random.Random, hold: float) -> str:
    nodes = data_nodes(stack, rng)
    for node in nodes:
        node.pause()
    time.sleep(hold)
    for node in nodes:
        node.resume()
    return f"SIGSTOP {hold:.1f}s port {nodes[0].port}"


def redis_restart_empty(stack: Stack, rng: random.Random, hold: float) -> str:
    node = data_nodes(stack, rng)[0]
    node.kill()
    time.sleep(hold)
    if stack.topology == "standalone":
        node.start()
    else:
        stack.redis.ensure_running()
    return f"SIGKILL, {hold:.1f}s down, restarted empty, port {node.port}"


def client_pause(stack: Stack, rng: random.Random, hold: float) -> str:
    if stack.topology == "cluster":
        nodes = stack.redis.primary_nodes()
    else:
        nodes = [stack.redis if stack.topology == "standalone" else stack.redis.primary()]
    for node in nodes:
        with node.client() as c:
            c.execute_command("CLIENT", "PAUSE", int(hold * 1000), "WRITE")
    time.sleep(hold)
    return f"CLIENT PAUSE {int(hold * 1000)} WRITE on {len(nodes)} node(s)"


def sentinel_failover(stack: Stack, rng: random.Random, hold: float) -> str:
    stack.redis.wait_replica_reported()  # the last failover may be seconds ago
    stack.redis.failover(settle=False)
    time.sleep(hold)
    stack.redis.settle()
    return f"SENTINEL FAILOVER, now port {stack.redis.port}"


def cluster_primary_kill(stack: Stack, rng: random.Random, hold: float) -> str:
    key = f"{rng.random()}"
    stack.redis.fail_primary(key)
    time.sleep(hold)
    stack.redis.settle()
    return "SIGKILL of a Cluster primary, replica promoted, node back as replica"


def mongo_stop(stack: Stack, rng: random.Random, hold: float) -> str:
    os.kill(stack.mongo_proc.pid, signal.SIGSTOP)
    time.sleep(hold)
    os.kill(stack.mongo_proc.pid, signal.SIGCONT)
    return f"SecantusDB SIGSTOP {hold:.1f}s"


def mongo_failpoint(stack: Stack, rng: random.Random, hold: float) -> str:
    commands = rng.sample(MONGO_COMMANDS, rng.randint(1, 2))
    code, times = rng.choice(MONGO_ERRORS), rng.randint(1, 5)
    fail_command(stack.mongo_uri, {"times": times}, failCommands=commands, errorCode=code)
    time.sleep(hold)
    fail_command(stack.mongo_uri, "off")
    return f"failCommand {commands} code {code} times {times}"


def worker_kill(stack: Stack, rng: random.Random, hold: float, target: int) -> str:
    replica = stack.replicas[target]
    workers = children(replica.proc.pid)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)

    def back() -> bool:
        return len(children(replica.proc.pid)) >= len(workers) and http_get(replica.url + "/health/live", 1)[0] == 200

    wait_until(back, 30, ignore=(OSError,), interval=0.1)
    return f"SIGKILL of {len(workers)} workers"


def replica_restart(stack: Stack, rng: random.Random, hold: float, target: int) -> str:
    replica = stack.replicas[target]
    replica.stop()  # SIGTERM, as a rolling update does
    replica.start(60)
    return "SIGTERM, restarted"


def proxy_cut(stack: Stack, rng: random.Random, hold: float, target: int) -> str:
    stack.proxies[target].cut(hold)
    time.sleep(hold)
    stack.proxies[target].heal()
    return f"cut from Redis {hold:.1f}s"


GLOBAL: dict[str, Callable] = {
    "redis_stop": redis_stop,
    "redis_restart_empty": redis_restart_empty,
    "client_pause": client_pause,
    "mongo_stop": mongo_stop,
    "mongo_failpoint": mongo_failpoint,
}
TOPOLOGY: dict[str, Callable] = {"sentinel_failover": sentinel_failover, "cluster_primary_kill": cluster_primary_kill}
PER_REPLICA: dict[str, Callable] = {
    "worker_kill": worker_kill,
    "replica_restart": replica_restart,
    "proxy_cut": proxy_cut,
}


def fault_kinds(topology: str) -> list[str]:
    kinds = [*GLOBAL, "worker_kill", "replica_restart"]
    if topology == "standalone":
        kinds.append("proxy_cut")
    if topology == "sentinel":
        kinds.append("sentinel_failover")
    if topology == "cluster":
        kinds.remove("redis_restart_empty")  # a Cluster node back empty: covered by the primary kill
        kinds.append("cluster_primary_kill")
    return kinds


class Nemesis(threading.Thread):
    """Faults drawn with the run's seed until ``halt``; ``counts`` by kind; errors of its own logged."""

    def __init__(self, stack: Stack, history: History, seed: int, log: Callable[[str], None]) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.stack, self.history, self.rng, self.log = stack, history, random.Random(seed), log
        self.kinds = fault_kinds(stack.topology)
        self.halt = threading.Event()
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []

    def run(self) -> None:
        self.halt.wait(3.0)  # a healthy start
        while not self.halt.is_set():
            self.inject(self.rng.choice(self.kinds))
            self.halt.wait(self.rng.uniform(2.0, 5.0))

    def inject(self, kind: str) -> None:
        hold = self.rng.uniform(1.0, 4.0)
        target = self.rng.randrange(len(self.stack.replicas)) if kind in PER_REPLICA else None
        start = time.monotonic()
        try:
            if target is None:
                detail = {**GLOBAL, **TOPOLOGY}[kind](self.stack, self.rng, hold)
            else:
                detail = PER_REPLICA[kind](self.stack, self.rng, hold, target)
        except Exception as exc:  # noqa: BLE001 -- the run goes on; the summary lists it
            detail = f"failed: {exc.__class__.__name__}: {exc}"
            self.failures.append(f"{kind}: {detail}")
        else:
            self.counts[kind] += 1  # injected: what a failed attempt did is only in the history
        self.history.fault(Fault(kind, start, time.monotonic(), target, detail))
        self.log(f"fault {kind}{'' if target is None else f' r{target}'}: {detail}")
