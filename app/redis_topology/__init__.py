"""Redis topologies: the one place that turns the configuration into Redis clients.

Standalone (``REDIS_URL``), Sentinel (``REDIS_SENTINELS`` + ``REDIS_SENTINEL_MASTER``) or
Cluster (``REDIS_CLUSTER_NODES``), one class each behind the interface of ``base.Topology``.
Everything else (the device cache, its admin routes, the Celery broker) asks a topology for
clients, the primaries to walk and the broker URL, so nothing else knows which topology it
runs on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.redis_topology.base import (
    OUTAGE_ERRORS,
    REDIS_ERRORS,
    SENTINEL_BROKER_DB,
    Topology,
    broker_transport_options,
    client_options,
    parse_nodes,
)
from app.redis_topology.cluster import ClusterTopology, LazyCluster, LazyClusterCache
from app.redis_topology.sentinel import MasterSentinelCache, SentinelTopology
from app.redis_topology.standalone import StandaloneTopology

__all__ = [
    "OUTAGE_ERRORS",
    "REDIS_ERRORS",
    "SENTINEL_BROKER_DB",
    "ClusterTopology",
    "LazyCluster",
    "LazyClusterCache",
    "MasterSentinelCache",
    "SentinelTopology",
    "StandaloneTopology",
    "Topology",
    "broker_transport_options",
    "client_options",
    "parse_nodes",
    "topology_from_config",
]


def topology_from_config(config: Mapping[str, Any]) -> Topology:
    """The topology the settings name (``app.config`` has checked that they name one)."""
    password = config.get("REDIS_PASSWORD")
    if config.get("REDIS_CLUSTER_NODES"):
        return ClusterTopology(config["REDIS_CLUSTER_NODES"], password)
    if config.get("REDIS_SENTINELS"):
        return SentinelTopology(
            config["REDIS_SENTINELS"],
            config["REDIS_SENTINEL_MASTER"],
            password,
            config.get("REDIS_SENTINEL_PASSWORD"),
        )
    return StandaloneTopology(config["REDIS_URL"], password)
