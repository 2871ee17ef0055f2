"""Logs, lifecycle lines and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from rsocket import BufferConfig, EventBuffer, metrics
from rsocket.apps.logformat import JsonFormatter, TextFormatter, record_fields
from rsocket.breaker import CircuitBreaker
from rsocket.manager import ConnectionManager
from rsocket.socket import SocketConfig
from rsocket.testing import ReferenceServer

prometheus_client = pytest.importorskip("prometheus_client")


@pytest.fixture
def registry() -> Iterator[prometheus_client.CollectorRegistry]:
    previous = metrics._current
    reg = prometheus_client.CollectorRegistry()
    metrics.configure(reg)
    yield reg
    metrics._current = previous


def value(reg, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


BUFFER_METRICS = [
    ("rsocket_buffer_flush_total", {"forced": "true"}),
    ("rsocket_buffer_flush_total", {"forced": "false"}),
    ("rsocket_buffer_overflow_total", {}),
    ("rsocket_buffer_items_flushed_total", {}),
    ("rsocket_buffer_final_flush_total", {}),
    ("rsocket_buffer_destroyed_total", {"had_pending": "true"}),
    ("rsocket_buffer_destroyed_total", {"had_pending": "false"}),
    ("rsocket_events_dropped_total", {}),
    ("rsocket_buffers_live", {}),
    ("rsocket_buffer_flush_duration_seconds_count", {}),
]


def test_buffer_metrics_after_a_scripted_scenario(registry):
    # the buffer counters are process-wide (read from every buffer at each scrape):
    # compare before and after
    before = {(name, tuple(labels.items())): value(registry, name, **labels)
              for name, labels in BUFFER_METRICS}
    ev = EventBuffer(config=BufferConfig(max_buffer_items=2, auto_flush=False))
    assert value(registry, "rsocket_buffers_live") == before[("rsocket_buffers_live", ())] + 1
    ev.process(lambda batch: None)
    ev.buffer()
    for i in range(3):  # the third emit overflows: a forced release of 2
        ev.emit("chats.upsert", [{"id": f"c{i}"}])
    ev.flush()  # a normal release of 1
    ev.buffer()
    ev.emit("chats.delete", ["x"])
    ev.destroy()  # a final flush of 1
    ev.emit("chats.delete", ["y"])  # dropped
    delta = {name + "".join(f"{{{v}}}" for v in labels.values()):
             value(registry, name, **labels) - before[(name, tuple(labels.items()))]
             for name, labels in BUFFER_METRICS}
    assert delta == {
        "rsocket_buffer_flush_total{true}": 2,  # the overflow and the final flush
        "rsocket_buffer_flush_total{false}": 1,
        "rsocket_buffer_overflow_total": 1,
        "rsocket_buffer_items_flushed_total": 4,
        "rsocket_buffer_final_flush_total": 1,
        "rsocket_buffer_destroyed_total{true}": 1,
        "rsocket_buffer_destroyed_total{false}": 0,
        "rsocket_events_dropped_total": 1,
        "rsocket_buffers_live": 0,
        "rsocket_buffer_flush_duration_seconds_count": 3,
    }


def test_metrics_created_twice_in_one_registry_is_not_an_error(registry):
    assert metrics.configure(registry) is metrics.get()
    assert value(registry, "rsocket_circuit_transitions_total", to="open") == 0  # starts at zero


async def test_connection_metrics_reconnects_and_breaker(registry):
    async with ReferenceServer(tenants={"t1": "k"}, ping_interval=None) as server:
        breaker = CircuitBreaker(failure_threshold=1, open_timeout=0.05, success_threshold=1,
                                 name="t1")
        m = ConnectionManager("t1", server.url, "k", breaker=breaker, backoff=(0.01,),
                              stable_after=5, socket_config=SocketConfig(close_timeout=1))
        await m.start()
        assert value(registry, "rsocket_connection_state", state="open") == 1
        server.inject("t1", "stream_error", code=503)
        async with asyncio.timeout(5):
            while not (m.generation == 2 and m.connected):
                await asyncio.sleep(0.005)
        await m.destroy()
    assert value(registry, "rsocket_reconnects_total") == 1
    assert value(registry, "rsocket_circuit_transitions_total", to="open") == 1
    assert value(registry, "rsocket_circuit_transitions_total", to="half_open") == 1
    assert value(registry, "rsocket_circuit_transitions_total", to="closed") == 1
    assert value(registry, "rsocket_connection_state", state="open") == 0


def test_tenant_label_is_opt_in():
    previous = metrics._current
    reg = prometheus_client.CollectorRegistry()
    try:
        m = metrics.configure(reg, tenant_label=True)
        m.tenant(m.reconnects_total, "t9").inc()
        assert reg.get_sample_value("rsocket_reconnects_total", {"tenant": "t9"}) == 1
    finally:
        metrics._current = previous


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "RSOCKET_LOG"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, env=environ, check=False)


def test_the_library_works_without_prometheus_client():
    result = run_python("""
        import sys
        sys.modules["prometheus_client"] = None  # blocked: import raises ImportError
        import rsocket
        from rsocket import metrics
        ev = rsocket.EventBuffer(config=rsocket.BufferConfig(auto_flush=False))
        got = []
        ev.process(got.append)
        ev.buffer(); ev.emit("chats.upsert", [{"id": "a"}]); ev.flush(); ev.destroy()
        assert got and not metrics.get().enabled
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


LIFECYCLE_SCRIPT = """
    import asyncio
    from rsocket import BufferConfig, EventBuffer
    from rsocket.breaker import CircuitBreaker
    from rsocket.manager import ConnectionManager
    from rsocket.testing import ReferenceServer

    def upsert(i, type_):
        key = {"remoteJid": "a@s", "id": str(i), "fromMe": False}
        return {"messages": [{"key": key}], "type": type_}

    async def main():
        ev = EventBuffer(config=BufferConfig(max_buffer_items=2, max_history_cache=1,
                                             auto_flush_timeout=0.01))
        ev.buffer()                                              # buffer_start
        ev.emit("messaging-history.set", {"chats": [{"id": "a"}, {"id": "b"}]})
        ev.emit("messages.upsert", upsert(1, "notify"))
        ev.emit("messages.upsert", upsert(2, "append"))          # type_mismatch_flush
        ev.emit("chats.delete", ["x"])
        ev.emit("chats.delete", ["y"])                           # buffer_overflow
        ev.flush()                                               # buffer_flush
        ev.buffer()
        await asyncio.sleep(0.05)                                # buffer_timeout
        ev.destroy()                                             # buffer_destroyed
        async with ReferenceServer(tenants={"t1": "k"}, ping_interval=None) as server:
            breaker = CircuitBreaker(failure_threshold=1, open_timeout=0.01, name="t1")
            m = ConnectionManager("t1", server.url, "k", backoff=(0.01,), breaker=breaker)
            await m.start()                                      # connection_open
            server.inject("t1", "stream_error", code=503)        # close, breaker, reconnect
            while m.generation < 2 or not m.connected:
                await asyncio.sleep(0.01)
            await m.destroy()

    asyncio.run(main())
"""
LIFECYCLE_EVENTS = (
    "buffer_start", "buffer_flush", "buffer_timeout", "buffer_overflow", "cache_cleanup",
    "type_mismatch_flush", "buffer_destroyed", "connection_open", "connection_close",
    "breaker_transition", "reconnect_scheduled",
)


def test_rsocket_log_writes_one_line_per_lifecycle_event():
    result = run_python(LIFECYCLE_SCRIPT, RSOCKET_LOG="1")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    for event in LIFECYCLE_EVENTS:
        assert any(f" {event}" in line for line in lines), (event, result.stderr)
    close = next(line for line in lines if " connection_close" in line)
    assert "code=503" in close
    reconnect = next(line for line in lines if " reconnect_scheduled" in line)
    assert "delay=" in reconnect


def test_no_lifecycle_line_is_printed_without_rsocket_log():
    result = run_python(LIFECYCLE_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("rsocket ")]


def make_record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("rsocket.socket", logging.WARNING, __file__, 1,
                               "socket closed: %s", ("503 injected",), None)
    record.__dict__.update(extra)
    return record


def test_json_log_lines_parse_and_carry_the_fields():
    line = JsonFormatter().format(make_record(tenant="t1", status_code=503))
    data = json.loads(line)
    assert data["level"] == "warning" and data["logger"] == "rsocket.socket"
    assert data["msg"] == "socket closed: 503 injected"
    assert data["fields"] == {"tenant": "t1", "status_code": 503}
    assert data["time"].endswith("+00:00")


def test_json_formatter_serializes_any_field_and_exceptions():
    try:
        raise ValueError("boom")
    except ValueError:
        record = make_record(error=RuntimeError("x"))
        record.exc_info = sys.exc_info()
    data = json.loads(JsonFormatter().format(record))
    assert data["fields"]["error"] == "x" and "ValueError: boom" in data["exc"]


def test_text_formatter_and_record_fields():
    record = make_record(tenant="t1")
    assert record_fields(record) == {"tenant": "t1"}
    assert TextFormatter().format(record).endswith("socket closed: 503 injected  tenant=t1")


def test_the_library_installs_no_handler():
    assert all(isinstance(h, logging.NullHandler) for h in logging.getLogger("rsocket").handlers)
    assert not logging.getLogger("rsocket.buffer").handlers


def test_oldest_pending_age_makes_a_stalled_buffer_visible(registry):
    ev = EventBuffer(config=BufferConfig(auto_flush=False))
    assert value(registry, "rsocket_buffer_oldest_pending_seconds") == 0
    ev.buffer()
    ev.emit("chats.upsert", [{"id": "a"}])
    first = value(registry, "rsocket_buffer_oldest_pending_seconds")
    assert first > 0
    ev.flush()
    assert value(registry, "rsocket_buffer_oldest_pending_seconds") == 0
    ev.destroy()


async def test_socket_metrics_invalid_events_and_keepalive(registry):
    from rsocket.socket import Socket

    async with ReferenceServer(tenants={"t1": "k"}, ping_interval=None) as server:
        sock = Socket(server.url, "t1", "k", config=SocketConfig(keepalive_interval=0.05))
        await sock.connect()
        server.publish("t1", "chats.upsert", [{"no_id": 1}])
        async with asyncio.timeout(5):
            while sock.last_seq < 1 or sock.latency is None:
                await asyncio.sleep(0.01)
        await sock.end()
    assert value(registry, "rsocket_events_invalid_total") == 1
    assert value(registry, "rsocket_keepalive_rtt_seconds_count") >= 1


async def test_timer_firings_and_batches_are_counted_apart(registry):
    from .helpers import until

    def released() -> float:  # process-wide: every buffer's releases so far
        return sum(value(registry, "rsocket_buffer_flush_total", forced=f)
                   for f in ("true", "false"))

    before = released()
    ev = EventBuffer(config=BufferConfig(auto_flush_timeout=0.01))
    try:
        ev.process(lambda batch: None)
        ev.buffer()
        ev.emit("chats.upsert", [{"id": "a"}])  # a scope its owner never closes
        await until(lambda: value(registry, "rsocket_buffer_timer_flushes_total") == 1, 5.0)
        ev.buffer()
        ev.emit("chats.upsert", [{"id": "b"}])
        ev.flush()  # a release, not a firing
        assert released() - before == 2
        assert value(registry, "rsocket_buffer_timer_flushes_total") == 1
    finally:
        ev.destroy()
