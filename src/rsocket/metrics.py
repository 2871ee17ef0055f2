"""Prometheus metrics (SPEC section 8), or no-ops when prometheus-client is absent.

Components call :func:`get` when they update a metric; updates happen per
release, connection or transition, never per event. By default the metrics
live in prometheus-client's global registry; :func:`configure` picks another
registry and opts in to the ``tenant`` label on per-connection metrics (off by
default: 1,000 tenants would multiply every series). Configuring the same
registry twice returns the same metrics instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Metrics", "configure", "gauge_function", "get"]

_prom: Any
try:  # optional extra "metrics"
    import prometheus_client as _prom
except ImportError:  # pragma: no cover - exercised in a subprocess test
    _prom = None

_FLUSH_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
_RTT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Noop:
    """Stands in for any metric or labelled child; every operation does nothing."""

    def labels(self, *args: Any, **kwargs: Any) -> _Noop:
        return self

    def inc(self, amount: float = 1) -> None: ...
    def dec(self, amount: float = 1) -> None: ...
    def set(self, value: float) -> None: ...
    def observe(self, value: float) -> None: ...
    def set_function(self, fn: Any) -> None: ...


_NOOP = _Noop()

# gauges whose value a component computes at scrape time: attribute -> function
_gauge_functions: dict[str, Callable[[], float]] = {}


def gauge_function(name: str, fn: Callable[[], float]) -> None:
    """Make gauge ``name`` (a :class:`Metrics` attribute) report ``fn()`` at every
    scrape, in the current metrics and in any configured later."""
    _gauge_functions[name] = fn
    if _current is not None:
        getattr(_current, name).set_function(fn)


class Metrics:
    """Every rsocket metric, created in one registry.

    Attributes are prometheus-client metrics (or no-ops). Per-connection
    metrics take a ``tenant`` label only when ``tenant_label`` is on; use
    :meth:`tenant` to get the right child either way.
    """

    def __init__(self, registry: Any = None, *, tenant_label: bool = False) -> None:
        self.enabled = _prom is not None
        self.tenant_label = tenant_label
        t = ("tenant",) if tenant_label else ()

        #: the collectors created in ``registry`` (unregistered when reconfigured)
        self.collectors: list[Any] = []

        def make(kind: str, name: str, doc: str, labels: tuple[str, ...] = (), **kw: Any) -> Any:
            if _prom is None:
                return _NOOP
            metric = getattr(_prom, kind)(name, doc, labels, registry=registry, **kw)
            self.collectors.append(metric)
            return metric

        self.buffer_flush_total = make(
            "Counter", "rsocket_buffer_flush", "Buffer releases.", ("forced",)
        )
        self.buffer_flush_duration_seconds = make(
            "Histogram",
            "rsocket_buffer_flush_duration_seconds",
            "Time to consolidate and deliver one release.",
            buckets=_FLUSH_BUCKETS,
        )
        self.buffer_items_flushed_total = make(
            "Counter", "rsocket_buffer_items_flushed", "Buffered emit() calls released."
        )
        self.buffer_overflow_total = make(
            "Counter", "rsocket_buffer_overflow", "Releases forced by max_buffer_items."
        )
        self.buffer_cache_size = make(
            "Gauge", "rsocket_buffer_cache_size", "History cache entries over live buffers."
        )
        self.buffer_destroyed_total = make(
            "Counter", "rsocket_buffer_destroyed", "Destroyed buffers.", ("had_pending",)
        )
        self.buffer_final_flush_total = make(
            "Counter", "rsocket_buffer_final_flush", "Final flushes made by destroy()."
        )
        self.buffers_live = make("Gauge", "rsocket_buffers_live", "Created, not destroyed buffers.")
        self.events_dropped_total = make(
            "Counter", "rsocket_events_dropped", "Events emitted into a destroyed buffer."
        )
        self.buffer_oldest_pending_seconds = make(
            "Gauge",
            "rsocket_buffer_oldest_pending_seconds",
            "Age of the oldest unreleased buffered event over live buffers.",
        )
        self.events_duplicate_total = make(
            "Counter", "rsocket_events_duplicate", "Events dropped as already processed.", t
        )
        self.resume_gaps_total = make(
            "Counter", "rsocket_resume_gaps", "Resumes the server could not replay in full.", t
        )
        self.handler_errors_total = make(
            "Counter", "rsocket_handler_errors", "Exceptions raised by event handlers.", t
        )
        self.handler_slow_total = make(
            "Counter", "rsocket_handler_slow",
            "Async handler calls still running past the slow-handler threshold.", t
        )
        self.events_invalid_total = make(
            "Counter", "rsocket_events_invalid", "Events dropped for failing their schema.", t
        )
        self.keepalive_rtt_seconds = make(
            "Histogram",
            "rsocket_keepalive_rtt_seconds",
            "Keepalive round trip.",
            t,
            buckets=_RTT_BUCKETS,
        )
        self.event_loop_lag_seconds = make(
            "Gauge", "rsocket_event_loop_lag_seconds", "Last measured event-loop lag."
        )
        self.connection_state = make(
            "Gauge", "rsocket_connection_state", "Sockets per connection state.", (*t, "state")
        )
        self.reconnects_total = make(
            "Counter", "rsocket_reconnects", "Reconnects scheduled by managers.", t
        )
        self.circuit_state = make(
            "Gauge", "rsocket_circuit_state", "Circuit breakers per state.", (*t, "state")
        )
        self.circuit_transitions_total = make(
            "Counter", "rsocket_circuit_transitions", "Breaker transitions.", (*t, "to")
        )
        self.circuit_rejected_total = make(
            "Counter", "rsocket_circuit_rejected", "Attempts rejected by an open breaker.", t
        )

        for attribute, fn in _gauge_functions.items():
            getattr(self, attribute).set_function(fn)

        # labelled series start at zero instead of appearing on first use
        for forced in ("true", "false"):
            self.buffer_flush_total.labels(forced=forced)
        for had in ("true", "false"):
            self.buffer_destroyed_total.labels(had_pending=had)
        if not tenant_label:
            for to in ("closed", "open", "half_open"):
                self.circuit_transitions_total.labels(to=to)

    def tenant(self, metric: Any, tenant: str, **labels: str) -> Any:
        """The child of a per-connection metric for ``tenant`` (label dropped when off)."""
        if self.tenant_label:
            return metric.labels(tenant=tenant, **labels)
        return metric.labels(**labels) if labels else metric


_by_registry: dict[int, tuple[Any, Metrics]] = {}
_current: Metrics | None = None


def configure(registry: Any = None, *, tenant_label: bool = False) -> Metrics:
    """Create (or reuse) the metrics in ``registry`` and make them current.

    Args:
        registry: a ``prometheus_client.CollectorRegistry``; None for the global one.
        tenant_label: add a ``tenant`` label to per-connection metrics.
    """
    global _current
    if _prom is not None and registry is None:
        registry = _prom.REGISTRY
    key = id(registry)
    found = _by_registry.get(key)
    if found is None or found[1].tenant_label != tenant_label:
        if found is not None and registry is not None:
            for collector in found[1].collectors:
                registry.unregister(collector)
        found = (registry, Metrics(registry, tenant_label=tenant_label))
        _by_registry[key] = found
    _current = found[1]
    return _current


def get() -> Metrics:
    """The current metrics (created in the global registry on first use)."""
    return _current if _current is not None else configure()
