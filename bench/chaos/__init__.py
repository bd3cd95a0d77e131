"""A chaos run with a history checker (issue 14 item 7): ``python -m bench.chaos``.

- ``workload``: clients over two or more gunicorn replicas on fresh connections;
- ``nemesis``: Redis, MongoDB, worker, replica and network faults, one at a time;
- ``history``: every op and fault with monotonic start and end times;
- ``checker``: stale reads, lost writes, unexpected statuses;
- ``stack``: the servers, started through ``devstack``; ``run``: the run and its report.
"""
