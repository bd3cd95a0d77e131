"""A change's fence: it answers once every other near cache has applied its drop, or cannot serve it.

A near cache learns of a drop from the invalidation on its tracking connection, which another
route to Redis (a congested link, a proxy) can deliver after the change's response has reached
its client and the client's next request has reached that near cache. So after its drop a change
publishes a fence on every primary's presence channel, which every near cache of the prefix
subscribes to on its tracking connection to that primary: the fence travels behind the drop's
invalidations. Each near cache, having applied what came before it, acknowledges it with an RPUSH
to the fence's list (``acknowledge``), and the change answers once every subscriber the PUBLISH
reached has (``wait``): a round trip or two.

One that does not acknowledge (a stalled process, a lost connection) is covered by the heartbeat
rule (``near.py``): a near cache serves only on an answer to a PING sent less than PONG_DEADLINE
ago, and a PING sent after the drop is answered after its invalidation, so PONG_DEADLINE after the
drop it has applied it or serves nothing. That is the longest a change waits.

Cluster forwards a PUBLISH to every node, so a near cache gets each fence on each of its
connections; only the copy on the connection to the node that published it, named in the fence,
vouches for that node's invalidations.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from app.cache.keys import KeySpace
from app.cache.tracking import PONG_DEADLINE
from app.redis_topology import REDIS_ERRORS, Topology

POLL = 0.001  # seconds between two counts of a fence's acknowledgements
TTL_MS = 5000  # an acknowledgement arriving after its change stopped waiting expires


def wait(topology: Topology, client: Any, keys: KeySpace) -> str:
    """Publish a fence on every primary and wait for its acknowledgements, at most PONG_DEADLINE.

    This process's own near cache acknowledges too (within a millisecond or so): whether its
    connections are still subscribed only Redis knows, and counting one too few would be unsafe.
    Returns how it ended: ``alone`` (no near cache listens), ``acknowledged`` or ``deadline``."""
    deadline = time.monotonic() + PONG_DEADLINE
    token = uuid.uuid4().hex
    key = keys.fence(token)
    try:
        reached = [node.publish(keys.near_presence, f"{token} {name}") for name, node in topology.primaries(client)]
        if not any(reached):
            return "alone"
        while time.monotonic() < deadline:
            if client.llen(key) >= sum(reached):
                client.unlink(key)  # none will come after: nothing is left under the prefix
                return "acknowledged"
            time.sleep(POLL)
    except REDIS_ERRORS:
        pass  # cannot tell who has applied it: the heartbeat rule's bound
    time.sleep(max(0.0, deadline - time.monotonic()))
    with contextlib.suppress(*REDIS_ERRORS):
        client.unlink(key)  # what came (a late one lives TTL_MS)
    return "deadline"


def fence_of(message: bytes, connection: str, connections: int) -> str | None:
    """The token of a fence that vouches for this connection (None: a copy Cluster forwarded)."""
    token, _, node = message.decode().partition(" ")
    return token if connections == 1 or node == connection else None


def acknowledge(client: Any, keys: KeySpace, tokens: list[str]) -> None:
    """Acknowledge fences applied here. A lost acknowledgement only makes its change wait out
    PONG_DEADLINE, so nothing here may fail the caller (a request, or the listener thread).
    ValueError: a closed client; AttributeError: redis-py's connection disconnected by another
    thread while this pipeline read from it (the app stopping: ``SharedCache.stop`` closes the
    client while its near cache's thread may still be acknowledging)."""
    with contextlib.suppress(*REDIS_ERRORS, OSError, ValueError, AttributeError):
        pipe = client.pipeline(transaction=False)  # one round trip for all of them
        for token in tokens:
            key = keys.fence(token)
            pipe.rpush(key, 1)
            pipe.pexpire(key, TTL_MS)
        pipe.execute()
