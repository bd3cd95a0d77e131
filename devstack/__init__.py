"""The local servers of ``scripts/run``, the tests and the benchmarks, started and stopped one way.

Dev and test only: ``.dockerignore`` keeps this package out of the production image, and nothing
under ``app/`` or ``tasks/`` imports it.

- ``wait``: ``wait_until``, the one poll-until-true helper.
- ``ports``: free loopback ports, and whether something listens on one.
- ``processes``: child processes (logs, sessions, stopping), a ``Group`` stopped in reverse
  order, the environment of a service process, signals that run the ``finally`` blocks.
- ``redis_server``, ``sentinel``, ``cluster``: a redis-server the caller owns (stop, kill,
  pause, resume), a Sentinel set, a Redis Cluster.
- ``mongo``: SecantusDB in-process (tests) or as the ``secantusd-py`` process (scripts/run, bench).
- ``web``: gunicorn replicas; ``celery``: Celery worker and beat processes.
- ``rabbitmq``, ``tools``: RabbitMQ on 127.0.0.1:5672 and the Debian packages the tests run.
- ``run``, ``demo``: what ``scripts/run`` does (``python -m devstack.run``).
- ``opensensor_source``: an opensensor-api database, for the import's tests and bench.

Considered: mirakuru and pytest-redis (process executors and server fixtures). They start one server
each and stop it; the tests also hang servers (SIGSTOP), fail Sentinel sets and Clusters over, run
SecantusDB in-process and restart it on its port, which is what these modules already did.
"""
