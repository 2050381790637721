"""Prometheus metrics of one gateway (its own registry, so apps in one process do not collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
        self.prompt_tokens = Counter(
            "lifecycle_gateway_prompt_tokens", "Prompt tokens of answered requests", registry=r
        )
        self.workers = WorkerStats()
        r.register(self.workers)
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
        self.workers.workers = list(pool.workers)
        for w in pool.workers:
            self.queue.labels(w.address).set(w.queued)
            self.outstanding.labels(w.address).set(w.outstanding)
            self.up.labels(w.address).set(1 if w.up else 0)
            if w.up:
                self.served.labels(w.address, w.model).set(int(w.version) if w.version.isdigit() else 0)


#: The worker engines' running totals (ModelStatus.stats), exported per worker as counters.
_COUNTERS = {
    "decode_passes": "Decode passes (one token for every running row)",
    "decode_seconds": "Seconds spent in decode passes (rate / rate of passes: decode step time)",
    "decode_rows": "Rows advanced by decode passes (rate / rate of passes: mean batch size)",
    "prefill_passes": "Prefill passes (prompts written into their rows, one pass for all admitted at once)",
    "prefill_seconds": "Seconds spent in prefill passes",
    "prefill_tokens": "Prompt tokens prefilled",
    "prefix_tokens": "Prompt tokens whose keys/values came from the prefix cache",
    "prompt_tokens": "Prompt tokens of finished requests",
    "completion_tokens": "Completion tokens of finished requests",
}
_GAUGES = {
    "kv_bytes": "KV storage allocated, bytes",
    "kv_rows_used": "KV rows (sequences) holding a request",
    "kv_rows": "KV rows allocated",
    "adapters": "Model versions in memory (adapters on a resident base)",
}


class WorkerStats:
    """A collector of what the workers reported at the last look (``/metrics`` looks first): the engine's
    totals and KV use per worker, and ``lifecycle_model_info`` (1 per version a worker holds, with its
    digest; ``serving="1"`` on the one it serves)."""

    def __init__(self) -> None:
        self.workers: list[Any] = []

    def collect(self) -> Any:
        counters = {k: CounterMetricFamily(f"lifecycle_worker_{k}", h, labels=["worker"]) for k, h in _COUNTERS.items()}
        gauges = {k: GaugeMetricFamily(f"lifecycle_worker_{k}", h, labels=["worker"]) for k, h in _GAUGES.items()}
        info = GaugeMetricFamily("lifecycle_model_info", "Model versions in the workers' memory (value 1)",
                                 labels=["worker", "model", "version", "digest", "serving"])  # fmt: skip
        for w in self.workers:
            if not w.up:
                continue
            for model, version, digest in w.loaded:
                serving = "1" if (model, version) == (w.model, w.version) else "0"
                info.add_metric([w.address, model, version, digest, serving], 1)
            if w.stats is None:
                continue
            for key, family in counters.items():
                family.add_metric([w.address], float(getattr(w.stats, key)))
            for key, gauge in gauges.items():
                gauge.add_metric([w.address], float(getattr(w.stats, key)))
        yield from counters.values()
        yield from gauges.values()
        yield info
