"""A rolling update behind a real load balancer loses nothing (issue 14).

HAProxy in front of four replicas, each replaced in turn (SIGTERM, exit, a new one on its port)
while client threads push unique values and read on fresh connections: no request fails, and
every push answered 201 is in MongoDB afterwards. ``bench/rolling.py`` is the same run with figures.
"""

from __future__ import annotations

from bench.rolling import rolling_restart, seed_key
from devstack.mongo import start_secantusd
from devstack.processes import Group


def test_rolling_restart_of_four_replicas_behind_haproxy_fails_and_loses_nothing(settings, tmp_path):
    # MongoDB in a process of its own, as in production: the session's SecantusDB runs inside the
    # test process, and a stall of that process once failed every replica's /health at once
    # (HAProxy: "No server is available"), which says nothing of a rolling restart.
    group = Group()
    try:
        _, port = start_secantusd(group, tmp_path / "mongo", tmp_path / "secantusd.log")
        settings = {**settings, "MONGO_URI": f"mongodb://127.0.0.1:{port}/rolling"}
        key = seed_key(settings)
        outcome = rolling_restart(
            settings, tmp_path, key, replicas=4, workers=1, clients=4, drain=1.5, fall=4, log=print
        )
    finally:
        group.stop_all(grace=0)  # its data is of no further use: SIGKILL

    assert len(outcome.restarts) == 4
    assert outcome.requests["push"] > 0 and outcome.requests["read"] > 0
    assert outcome.failures == [], outcome.failures[:10]
    assert outcome.lost == []
