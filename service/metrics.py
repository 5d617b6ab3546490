"""Prometheus metrics: requests and latencies by route template, queue depth, jobs, phase times."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from rq import Queue

from worker.records import RecordStore

log = logging.getLogger(__name__)


class QueueCollector(Collector):
    """Reads queue depth, job counts and phase times from Redis at scrape time."""

    def __init__(self, store: RecordStore, queue: Queue) -> None:
        self.store = store
        self.queue = queue

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("nacs_redis_up", "Whether Redis answered the last scrape.")
        try:
            stats = self.store.stats()
            depth_now = self.queue.count
        except Exception as error:  # noqa: BLE001 - a scrape must answer while Redis is down
            log.warning("metrics: queue stats unavailable (%s)", error)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        depth = GaugeMetricFamily("nacs_queue_depth", "Jobs waiting on the RQ queue.")
        depth.add_metric([], float(depth_now))
        yield depth
        active = GaugeMetricFamily("nacs_jobs", "Jobs now queued or running.", labels=["status"])
        for status in ("queued", "running"):
            active.add_metric([status], float(stats["jobs"].get(status, 0)))
        yield active
        finished = CounterMetricFamily(
            "nacs_jobs_finished", "Jobs that ended, by status.", labels=["status"]
        )
        for status in ("succeeded", "failed", "cancelled"):
            finished.add_metric([status], float(stats["jobs"].get(status, 0)))
        yield finished
        phases = SummaryMetricFamily(
            "nacs_phase_seconds", "Time spent in each phase of succeeded jobs.", labels=["phase"]
        )
        for phase, values in sorted(stats["phase_seconds"].items()):
            phases.add_metric(
                [phase], count_value=values.get("count", 0.0), sum_value=values.get("sum", 0.0)
            )
        yield phases
        shards = CounterMetricFamily(
            "nacs_shard_jobs",
            "Shard jobs of jobs spread over several workers that ended, by kind and outcome.",
            labels=["kind", "outcome"],
        )
        for name, count in sorted(stats.get("shard_jobs", {}).items()):
            kind, _, outcome = name.partition(":")
            shards.add_metric([kind, outcome], float(count))
        yield shards


class HttpMetrics:
    """Counts every request and observes its latency by method, route template and status
    (a pure ASGI middleware, outside every other)."""

    def __init__(self, app: Any, registry: CollectorRegistry) -> None:
        self.app = app
        labels = ["method", "route"]
        self.requests = Counter(
            "nacs_http_requests", "HTTP requests by method, route and status.", [*labels, "status"],
            registry=registry,
        )
        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        self.latency = Histogram(
            "nacs_http_request_duration_seconds", "HTTP request latency by method and route.",
            labels, registry=registry, buckets=buckets,
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(method, route).observe(time.perf_counter() - started)
