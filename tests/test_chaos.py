"""The chaos run of issue 14 (``bench/chaos``): its checker finds each kind of violation in a small
synthetic history, accepts the linearizable ones, and a 60-second run on standalone is clean."""

from __future__ import annotations

import itertools
import socket
from types import SimpleNamespace

import pytest

from bench.chaos.checker import RECOVERY_MARGIN, Report, check
from bench.chaos.history import Fault, History, Op
from bench.chaos.nemesis import Nemesis
from bench.chaos.run import Result, doc_row, run_chaos, summary
from devstack.proxy import TcpProxy
from devstack.redis_server import RedisServer
from devstack.wait import wait_until

PAIR = {"device_id": "d1", "device_name": "room"}
_ids = itertools.count(1)


def op(kind: str, start: float, end: float, status: int | None, resp: dict | None = None, **req) -> Op:
    return Op(kind, 0, start, end, req, status, None if status else "reset", resp or {}, next(_ids))


def history(*ops: Op, faults: tuple[Fault, ...] = ()) -> History:
    h = History()
    h.ops, h.faults = list(ops), list(faults)
    return h


def created(start: float = 0.0, end: float = 1.0, key_id: str = "k1", device_id: str = "d1") -> Op:
    return op("create_key", start, end, 201, {"key_id": key_id}, user="u", token="t0", device_id=device_id,
              device_name="room")  # fmt: skip


def deleted(start: float, end: float, key_id: str = "k1", status: int = 204, device_id: str = "d1") -> Op:
    return op("delete_key", start, end, status, user="u", token="t0", key_id=key_id, device_id=device_id,
              device_name="room")  # fmt: skip


def push(start: float, end: float, status: int, value: float, key_id: str = "k1") -> Op:
    return op("push", start, end, status, key_id=key_id, value=value, **PAIR)


def lookup(start: float, end: float, status: int, chain: list[str] | None = None, device_id: str = "d1") -> Op:
    resp = {"chain": chain} if chain is not None else {}
    return op("lookup", start, end, status, resp, auth="anonymous", device_id=device_id, device_name="room")


def test_push_accepted_after_its_keys_delete_answered_is_stale():
    report = check(history(created(), deleted(2, 3), push(4, 5, 201, 1.0)), {("d1", "room"): {1.0}})
    assert len(report.stale) == 1 and "deleted key" in report.stale[0]


def test_push_overlapping_the_delete_is_not_judged():
    report = check(history(created(), deleted(2, 3), push(2.5, 3.5, 201, 1.0)), {("d1", "room"): {1.0}})
    assert report.ok, report


def test_push_refused_with_a_key_whose_create_answered_is_stale():
    report = check(history(created(), push(2, 3, 401, 1.0)), {})
    assert len(report.stale) == 1 and "live key" in report.stale[0]


def test_lookup_of_a_pair_whose_last_key_was_deleted_is_stale():
    report = check(history(created(), deleted(2, 3), lookup(4, 5, 200, ["d1"])), {})
    assert any("found after" in line for line in report.stale)


def test_lookup_unknown_after_create_answered_is_stale():
    report = check(history(created(), lookup(2, 3, 404)), {})
    assert len(report.stale) == 1 and "unknown after" in report.stale[0]


def test_lookup_showing_a_replaced_chain_is_stale():
    ops = [created(), created(0, 1, "k2", "d2"), deleted(2, 3, "k2", device_id="d2"), lookup(4, 5, 200, ["d1", "d2"])]
    report = check(history(*ops), {})
    assert len(report.stale) == 1 and "chain shows d2 in" in report.stale[0]
    missing = check(history(created(), created(2, 3, "k2", "d2"), lookup(4, 5, 200, ["d1"])), {})
    assert len(missing.stale) == 1 and "chain shows d2 out" in missing.stale[0]


def test_unknown_outcome_leaves_the_pair_unjudged_until_a_known_change():
    unknown = deleted(2, 3, status=503)
    assert not check(history(created(), unknown, lookup(4, 5, 200, ["d1"])), {}).stale
    report = check(history(created(), unknown, deleted(6, 7, status=404), lookup(8, 9, 200, ["d1"])), {})
    assert len(report.stale) == 1


def test_old_token_accepted_after_rotate_answered_is_stale():
    rotate = op("rotate", 2, 3, 200, {"token": "t1"}, user="u", token="t0")
    stale = op("bearer", 4, 5, 200, user="u", token="t0")
    fresh_refused = op("bearer", 4, 5, 401, user="u", token="t1")
    during = op("bearer", 2.5, 3.5, 200, user="u", token="t0")
    report = check(history(rotate, stale, fresh_refused, during), {})
    assert len(report.stale) == 2
    assert "old token accepted" in report.stale[0] and "new token refused" in report.stale[1]


def test_failed_rotate_does_not_promise_anything():
    rotate = op("rotate", 2, 3, 503, user="u", token="t0")
    assert not check(history(rotate, op("bearer", 4, 5, 200, user="u", token="t0")), {}).stale


def test_readings_missing_an_acknowledged_push_are_stale():
    reads = op("readings", 4, 5, 200, {"count": 1, "chain": ["d1"]}, auth="anonymous", **PAIR)
    ops = [created(), push(1.5, 2, 201, 1.0), push(2.5, 3, 201, 2.0), reads]
    report = check(history(*ops), {("d1", "room"): {1.0, 2.0}})
    assert len(report.stale) == 1 and "2 pushes acknowledged" in report.stale[0]


def test_acknowledged_push_missing_from_mongodb_is_lost():
    report = check(
        history(created(), push(2, 3, 201, 1.0), push(2, 3, 201, 2.0), push(2, 3, 503, 3.0)), {("d1", "room"): {2.0}}
    )
    assert len(report.lost) == 1 and "value': 1.0" in report.lost[0]


def test_statuses_500_always_and_503_or_no_answer_only_around_a_fault():
    mongo = Fault("mongo_stop", 10, 12)
    kill = Fault("worker_kill", 20, 21, replica=0)
    ops = [
        lookup(1, 2, 500),  # a 500 is a bug
        lookup(11, 12, 503),  # during the fault
        lookup(12 + RECOVERY_MARGIN - 1, 12 + RECOVERY_MARGIN, 503),  # within the margin
        lookup(30, 31, 503),  # long after
        lookup(20.5, 21, None),  # its replica's workers were killed
        lookup(11, 11.5, None),  # MongoDB paused: an answer (503) is due, not a dropped connection
    ]
    report = check(history(*ops, faults=(mongo, kill)), {})
    assert sorted(line.split(":")[0] for line in report.unexpected) == [
        "500",
        "503 with no fault active",
        "no answer (reset) with no process of its replica ended",
    ]


@pytest.mark.timeout(300)
def test_sixty_seconds_of_chaos_on_standalone_is_clean(capsys):
    result = run_chaos("standalone", seed=14, seconds=60, log=lambda _line: None)
    text = summary(result)
    assert result.ops > 500 and sum(result.faults.values()) >= 5, text
    assert not result.nemesis_failures, text
    assert (len(result.report.stale), len(result.report.lost), len(result.report.unexpected)) == (0, 0, 0), text


def test_proxy_cut_resets_connections_and_refuses_new_ones_until_healed(redis_server):
    proxy = TcpProxy(redis_server.port)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            assert conn.recv(100) == b"+PONG\r\n"
            proxy.cut(30)
            with pytest.raises(OSError):
                conn.sendall(b"PING\r\n")
                if not conn.recv(100):
                    raise ConnectionResetError
        # the reset can reach connect() itself (CI saw it there), or the first send or read
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            if not conn.recv(100):
                raise ConnectionResetError
        proxy.heal()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            assert conn.recv(100) == b"+PONG\r\n"
    finally:
        proxy.close()


def test_a_primary_restarted_empty_is_empty_beside_its_replica(tmp_path):
    """The nemesis's "restarted empty" must be: a replica's full sync used to leave its RDB in the
    directory a Sentinel set's nodes share, and the next primary killed came back with it (a key
    deleted since was back: the sentinel chaos run's stale reads, nothing the service could do)."""
    primary = RedisServer(dir=str(tmp_path))
    replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(primary.port)], dir=str(tmp_path))
    try:
        primary.start()
        primary.probe.set("chaos:restart", "old")
        replica.start()  # a full sync: the replica writes what it receives to disk
        assert wait_until(lambda: replica.probe.get("chaos:restart") == b"old", 10)
        primary.probe.delete("chaos:restart")
        primary.kill()
        primary.start()
        assert primary.probe.get("chaos:restart") is None
    finally:
        replica.cleanup()
        primary.cleanup()


def test_a_fault_the_nemesis_failed_to_inject_is_not_counted_as_injected():
    """A Sentinel failover that never completed was counted (and written) as one injected."""

    def failover(settle: bool = True) -> float:
        raise RuntimeError("timed out waiting for the failover")

    stack = SimpleNamespace(topology="sentinel", replicas=[], redis=SimpleNamespace(failover=failover))
    h = History()
    nemesis = Nemesis(stack, h, seed=1, log=lambda line: None)
    nemesis.inject("sentinel_failover")
    assert nemesis.counts == {} and len(nemesis.failures) == 1
    assert [f.kind for f in h.faults] == ["sentinel_failover"]  # its window is still in the history
    result = Result("sentinel", 1, 60.0, h, Report(), nemesis.counts, nemesis.failures)
    assert "| sentinel_failover" not in doc_row(result)
    assert "not injected: sentinel_failover 1" in doc_row(result)
