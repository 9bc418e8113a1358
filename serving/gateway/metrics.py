"""The gateway's Prometheus metrics, in their own registry (served at the gateway's ``/metrics``).

Counters for what happened and gauges for the ratios the issue asks to watch: cache hit rate, the
share of routed requests each real model got, and the FLOPs spent and saved (by the cache: the cost
of the answer it replayed; by the router: the large model's cost minus the small one's).
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self.requests = Counter("arena_gateway_requests", "Chat requests by requested model and where the answer came from",
                                ["model", "source"], registry=self.registry)
        self.lookups = Counter("arena_gateway_cache_lookups", "Cache lookups by result (hit, similar, miss, uncacheable)",
                               ["result"], registry=self.registry)
        self.routed = Counter("arena_gateway_routed", "Requests sent upstream, by virtual model and real model",
                              ["virtual_model", "model"], registry=self.registry)
        self.flops = Counter("arena_gateway_flops", "Estimated FLOPs: spent upstream, saved by the cache, saved by routing",
                             ["kind"], registry=self.registry)
        self.hit_rate = Gauge("arena_gateway_cache_hit_rate", "Cache hits (exact and similar) / cacheable lookups",
                              registry=self.registry)
        self.routed_share = Gauge("arena_gateway_routed_share", "Share of a virtual model's upstream requests per real model",
                                  ["virtual_model", "model"], registry=self.registry)
        self.cache_entries = Gauge("arena_gateway_cache_entries", "Entries in the cache", registry=self.registry)
        self.cache_bytes = Gauge("arena_gateway_cache_bytes", "Bytes of answers in the cache", registry=self.registry)
        self._hits = self._cacheable = 0
        self._routes: dict[str, dict[str, int]] = {}

    def lookup(self, result: str) -> None:
        self.lookups.labels(result).inc()
        if result == "uncacheable":
            return
        with self._lock:
            self._cacheable += 1
            self._hits += result in ("hit", "similar")
            self.hit_rate.set(self._hits / self._cacheable)

    def route(self, virtual_model: str, model: str) -> None:
        self.routed.labels(virtual_model, model).inc()
        with self._lock:
            counts = self._routes.setdefault(virtual_model, {})
            counts[model] = counts.get(model, 0) + 1
            total = sum(counts.values())
            for name, count in counts.items():
                self.routed_share.labels(virtual_model, name).set(count / total)

    def render(self) -> bytes:
        return generate_latest(self.registry)
