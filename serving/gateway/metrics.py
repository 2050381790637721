"""Prometheus metrics of one gateway (its own registry, so apps in one process do not collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("lifecycle_gateway_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "lifecycle_gateway_request_seconds", "Request latency", ["route"], buckets=_LATENCY, registry=r
        )
        self.ttft = Histogram(
            "lifecycle_gateway_time_to_first_token_seconds",
            "Time to first token",
            ["route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.retries = Counter(
            "lifecycle_gateway_worker_retries",
            "Requests sent to another worker after theirs failed (before the first token, or mid-generation "
            "for a completion that is not streamed: it starts over)",
            ["when"],
            registry=r,
        )
        self.tokens = Counter("lifecycle_gateway_completion_tokens", "Completion tokens generated", registry=r)
        self.queue = Gauge("lifecycle_worker_queue_depth", "Requests waiting in a worker", ["worker"], registry=r)
        self.outstanding = Gauge(
            "lifecycle_worker_outstanding", "Requests in flight to a worker", ["worker"], registry=r
        )
        self.up = Gauge("lifecycle_worker_up", "1 when the worker answers and has a model", ["worker"], registry=r)
        self.served = Gauge(
            "lifecycle_worker_served_version",
            "Model version a worker serves (value = version)",
            ["worker", "model"],
            registry=r,
        )
        self.log_dropped = Counter(
            "lifecycle_inference_log_dropped", "Inference-log records dropped (buffer full)", registry=r
        )
        self.shadows = Counter(
            "lifecycle_gateway_shadow_requests",
            "Requests of a shadow stage: mirrored, or skipped (8 mirrors already waiting for spare capacity)",
            ["outcome"],
            registry=r,
        )
        self.log_written = Counter("lifecycle_inference_log_written", "Inference-log records written", registry=r)

    def observe_pool(self, pool: Any) -> None:
        for w in pool.workers:
            self.queue.labels(w.address).set(w.queued)
            self.outstanding.labels(w.address).set(w.outstanding)
            self.up.labels(w.address).set(1 if w.up else 0)
            if w.up:
                self.served.labels(w.address, w.model).set(int(w.version) if w.version.isdigit() else 0)
