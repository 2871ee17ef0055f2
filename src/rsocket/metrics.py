"""Prometheus metrics, or no-ops when prometheus-client is absent.

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

__all__ = ["Metrics", "breaker_source", "buffer_source", "configure", "get"]

_prom: Any
_families: Any
try:  # optional extra "metrics"
    import prometheus_client as _prom
    import prometheus_client.core as _families
except ImportError:  # pragma: no cover - exercised in a subprocess test
    _prom = _families = None

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

# the event buffers' summed counters, read at scrape time (rsocket.buffer registers it)
_buffer_source: Callable[[], dict[str, Any]] | None = None


def buffer_source(fn: Callable[[], dict[str, Any]]) -> None:
    """Register the function that sums every buffer's counters (``rsocket.buffer``
    does, at import): the buffer metrics are read from it when Prometheus
    scrapes, so a release costs no metric update."""
    global _buffer_source
    _buffer_source = fn


# (name, state) of every live circuit breaker (rsocket.breaker registers it)
_breaker_source: Callable[[], list[tuple[str, str]]] | None = None


def breaker_source(fn: Callable[[], list[tuple[str, str]]]) -> None:
    """Register the function listing every live breaker's (name, state)
    (``rsocket.breaker`` does, at import): ``rsocket_circuit_state`` is counted
    from it when Prometheus scrapes, so a breaker needs no gauge bookkeeping."""
    global _breaker_source
    _breaker_source = fn


class _BreakerCollector:
    """``rsocket_circuit_state``: live breakers per state (and tenant, when labelled)."""

    _STATES = ("closed", "open", "half_open")

    def __init__(self, tenant_label: bool) -> None:
        self.tenant_label = tenant_label

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        if _breaker_source is None or _prom is None:
            return
        labels = ["tenant", "state"] if self.tenant_label else ["state"]
        family = _families.GaugeMetricFamily(
            "rsocket_circuit_state", "Circuit breakers per state.", labels=labels)
        counts: dict[tuple[str, ...], int] = {}
        if not self.tenant_label:
            counts = {(state,): 0 for state in self._STATES}
        for name, state in _breaker_source():
            key: tuple[str, ...] = (name, state) if self.tenant_label else (state,)
            counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            family.add_metric(list(key), n)
        yield family


class _BufferCollector:
    """The buffer metrics, computed from the buffers' own counters at each scrape."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        if _buffer_source is None or _prom is None:
            return
        t = _buffer_source()
        core = _families
        flush = core.CounterMetricFamily("rsocket_buffer_flush", "Buffer releases.",
                                         labels=["forced"])
        flush.add_metric(["true"], t["forced_flushes"])
        flush.add_metric(["false"], t["flushes"] - t["forced_flushes"])
        yield flush
        cumulative, buckets = 0, []
        for bound, n in zip([*map(str, t["flush_bounds"]), "+Inf"], t["flush_buckets"],
                            strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        yield core.HistogramMetricFamily(
            "rsocket_buffer_flush_duration_seconds", "Time to consolidate and deliver one release.",
            buckets=buckets, sum_value=t["flush_seconds"])
        for name, doc, key in (
            ("rsocket_buffer_items_flushed", "Buffered emit() calls released.", "items_flushed"),
            ("rsocket_buffer_overflow", "Releases forced by max_buffer_items.", "overflows"),
            ("rsocket_events_dropped", "Events emitted into a destroyed buffer.", "dropped"),
        ):
            yield core.CounterMetricFamily(name, doc, value=t[key])
        for name, doc, key in (
            ("rsocket_buffers_live", "Created, not destroyed buffers.", "live"),
            ("rsocket_buffer_cache_size", "History cache entries over live buffers.",
             "cache_size"),
            ("rsocket_buffer_oldest_pending_seconds",
             "Age of the oldest event not yet processed, over live buffers.", "oldest_pending"),
        ):
            yield core.GaugeMetricFamily(name, doc, value=t[key])


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

        self.buffer_destroyed_total = make(
            "Counter", "rsocket_buffer_destroyed", "Destroyed buffers.", ("had_pending",)
        )
        self.buffer_final_flush_total = make(
            "Counter", "rsocket_buffer_final_flush", "Final flushes made by destroy()."
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
        self.buffer_timer_flushes_total = make(
            "Counter", "rsocket_buffer_timer_flushes",
            "Auto-flush timer firings: scopes force-released by the safety valve (the "
            "incident's signal; batches released are rsocket_buffer_flush_total).", t
        )
        self.handler_retries_total = make(
            "Counter", "rsocket_handler_retries",
            "Handler calls made again with a batch an earlier call failed on.", t
        )
        self.dead_letters_total = make(
            "Counter", "rsocket_dead_letters",
            "Batches a handler gave up on after its last attempt (dead-lettered).", t
        )
        self.handler_slow_total = make(
            "Counter", "rsocket_handler_slow",
            "Async handler calls still running past the slow-handler threshold.", t
        )
        self.events_invalid_total = make(
            "Counter", "rsocket_events_invalid", "Events dropped for failing their schema.", t
        )
        self.events_oversize_total = make(
            "Counter", "rsocket_events_oversize",
            "Events a server left out for exceeding the client's max_frame.", t
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
        self.circuit_transitions_total = make(
            "Counter", "rsocket_circuit_transitions", "Breaker transitions.", (*t, "to")
        )
        self.circuit_rejected_total = make(
            "Counter", "rsocket_circuit_rejected", "Attempts rejected by an open breaker.", t
        )

        if _prom is not None:
            registry_ = registry if registry is not None else _prom.REGISTRY
            for collector in (_BufferCollector(), _BreakerCollector(tenant_label)):
                registry_.register(collector)
                self.collectors.append(collector)

        # labelled series start at zero instead of appearing on first use
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
