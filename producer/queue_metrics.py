"""`textq_queue_depth{model}` and `textq_oldest_queued_seconds{model}`, computed through the Client at
scrape time: what an autoscaler (KEDA, an HPA on external metrics) or an alert reads."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from producer.client import Client

log = logging.getLogger(__name__)


class QueueCollector(Collector):
    """One read per scrape: a Redis LLEN and one index lookup per model."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("textq_queue_depth", "Messages waiting on the model's Redis list (each carries jobs)",
                                  labels=["model"])
        oldest = GaugeMetricFamily("textq_oldest_queued_seconds",
                                   "Age of the model's oldest queued job (0: none queued)", labels=["model"])
        try:
            stats = self.client.queue_stats()
        except Exception as exc:  # a scrape still answers the request metrics while the database or Redis is down
            log.warning("queue metrics unavailable: %s", type(exc).__name__)
            return
        for queue in stats:
            depth.add_metric([queue.model], queue.depth)
            oldest.add_metric([queue.model], queue.oldest_queued_s or 0.0)
        yield depth
        yield oldest


__all__ = ["QueueCollector"]
