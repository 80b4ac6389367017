"""The server's Prometheus metrics, in a registry of its own (one per app, so tests do not collide).

Requests, their latency and their passages are labelled by route (one label value per route the app
defines, ``unmatched`` for any other path, so that no client can grow the series without bound).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "nimbuild_requests", "HTTP requests by route and status code", ["route", "code"], registry=r
        )
        self.request_seconds = Histogram(
            "nimbuild_request_duration_seconds",
            "Time to answer a ranking request (every rerank route)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.passages = Counter("nimbuild_passages", "Passages ranked", ["route"], registry=r)
        self.batch_size = Histogram("nimbuild_batch_size", "Rows per model call", buckets=_BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "nimbuild_inference_duration_seconds", "Time per model call", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.padding_ratio = Histogram(
            "nimbuild_padding_ratio",
            "Share of padded tokens per model call",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
            registry=r,
        )
        self.queue_depth = Gauge("nimbuild_queue_depth", "Passages waiting for a model call", registry=r)
        self.ready = Gauge("nimbuild_ready", "1 once the model has answered its warm-up", registry=r)
        self.connections = Gauge("nimbuild_http_connections", "Open HTTP connections", registry=r)
        self.connections_refused = Counter(
            "nimbuild_http_connections_refused",
            "Connections answered 503 at the NIM_HTTP_MAX_CONNECTIONS ceiling",
            registry=r,
        )
        self.connections_closed = Counter(
            "nimbuild_http_connections_closed",
            "Connections the server closed, by reason (header, body or keep-alive timeout; idle connection evicted "
            "at the ceiling)",
            ["reason"],
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
