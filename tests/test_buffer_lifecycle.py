"""Lifecycle of the event buffer (docs/BUFFER.md), over every merge core."""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc

import pytest

import rsocket
from rsocket import BufferConfig


def upsert(jid: str, mid: str, type_: str = "notify") -> dict:
    key = {"remoteJid": jid, "id": mid, "fromMe": False}
    return {"messages": [{"key": key, "message": {"conversation": mid}}], "type": type_}


def chats(*ids: str) -> list[dict]:
    return [{"id": i} for i in ids]


# -- buffering scopes ---------------------------------------------------------


def test_nested_scopes_release_once_when_the_outermost_closes(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    ev.buffer()
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    assert ev.flush() is False
    assert batches == [] and ev.is_buffering()
    assert ev.flush() is True
    assert batches == [{"chats.upsert": [{"id": "a"}]}]
    assert not ev.is_buffering()


def test_flush_when_not_buffering_returns_false(make_buffer):
    ev = make_buffer()
    assert ev.flush() is False
    assert ev.flush(force=True) is False


def test_forced_flush_releases_and_resets_depth(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    ev.buffer()
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    assert ev.flush(force=True) is True
    assert len(batches) == 1
    assert ev.stats().buffers_in_progress == 0
    assert ev.flush() is False


def test_unbuffered_emit_is_delivered_at_once_as_a_one_event_batch(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    payload = chats("a")
    assert ev.emit("chats.upsert", payload) is True
    assert batches == [{"chats.upsert": payload}]
    assert batches[0]["chats.upsert"] is payload


def test_non_bufferable_events_bypass_the_buffer(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    ev.buffer()
    ev.emit("connection.update", {"connection": "open"})
    assert batches == [{"connection.update": {"connection": "open"}}]
    assert ev.stats().items_buffered == 0


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("chats.upsert", []),
        ("messages.upsert", {"messages": [], "type": "notify"}),
        ("messaging-history.set", {"chats": [], "contacts": [], "messages": [], "isLatest": True}),
        ("messages.delete", {"keys": []}),
        ("connection.update", {}),
    ],
)
@pytest.mark.parametrize("buffering", [False, True])
def test_empty_payloads_are_never_delivered(make_buffer, event, payload, buffering):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    if buffering:
        ev.buffer()
    assert ev.emit(event, payload) is False
    ev.flush()
    assert batches == []
    assert ev.stats().flush_count == 0


def test_a_release_with_nothing_in_it_calls_no_handler_and_is_not_counted(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    ev.emit("chats.delete", ["a"])
    ev.emit("chats.upsert", chats("b"))
    ev.flush()
    ev.buffer()
    assert ev.flush() is True
    assert len(batches) == 1
    assert ev.stats().flush_count == 1


def test_emit_from_a_handler_goes_to_the_next_batch(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []

    def handler(batch: dict) -> None:
        batches.append(batch)
        if len(batches) == 1:
            ev.buffer()
            ev.emit("chats.upsert", chats("late"))
            ev.flush()

    ev.process(handler)
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    ev.flush()
    assert batches == [{"chats.upsert": [{"id": "a"}]}, {"chats.upsert": [{"id": "late"}]}]


@pytest.mark.parametrize("late", ["upsert", "delete"])
def test_an_emit_from_a_collection_during_a_release_is_neither_lost_nor_fatal(
    make_buffer, late
):
    """A collection can start at any allocation of a release, and a ``__del__`` or a
    gc callback it runs may emit into the buffer. Whatever the point, the late event
    is merged into the pending batch or the next one: released once, never lost, and
    the tables stay whole (the compiled core empties a table before building its list)."""
    gc_state = gc.get_threshold()
    try:
        for padding in range(130):  # moves the collection through the release
            ev = make_buffer(max_buffer_items=1)
            released: list[str] = []
            ev.process(lambda batch: released.extend(
                m["key"]["id"] for m in batch.get("messages.upsert", {}).get("messages", ())))
            ev.buffer()
            ev.emit("messages.upsert", {"messages": upsert("J", "M1")["messages"]
                                        + upsert("J", "M2")["messages"], "type": "notify"})
            fired: list[bool] = []

            def emit_late(phase: str, info: dict, ev=ev, fired=fired) -> None:
                if phase == "start" and not fired:
                    fired.append(True)
                    if late == "upsert":
                        ev.emit("messages.upsert", upsert("J", "M3"))
                    else:
                        ev.emit("messages.delete", {"keys": [upsert("J", "M2")["messages"][0]["key"]]})

            last = upsert("J", "M9")
            gc.set_threshold(60, 1000, 1000)
            gc.collect()
            pad = [[] for _ in range(padding)]
            gc.callbacks.append(emit_late)
            try:
                ev.emit("messages.upsert", last)  # overflow: the batch is released first
            finally:
                gc.callbacks.remove(emit_late)
                gc.set_threshold(*gc_state)
            del pad
            ev.flush(force=True)
            assert len(released) == len(set(released)), (padding, released)
            expected = {"M1", "M2", "M9"} | ({"M3"} if late == "upsert" and fired else set())
            if late == "delete":  # the delete may come before or after M2's release
                assert expected - {"M2"} <= set(released) <= expected, (padding, released)
            else:
                assert set(released) == expected, (padding, released)
    finally:
        gc.set_threshold(*gc_state)


# -- overflow, type change, barrier ---------------------------------------------


def test_overflow_releases_at_max_items_and_keeps_buffering(make_buffer):
    ev = make_buffer(max_buffer_items=10)
    sizes: list[int] = []
    ev.process(lambda b: sizes.append(len(b["chats.upsert"])))
    ev.buffer()
    for i in range(25):
        assert ev.emit("chats.upsert", chats(f"c{i}")) is True
        assert ev.is_buffering()
    assert sizes == [10, 10]
    assert ev.stats().items_buffered == 5
    ev.flush()
    assert sizes == [10, 10, 5]
    assert ev.stats().flush_count == 3


def test_upsert_type_change_releases_the_pending_batch_first(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    ev.buffer()
    ev.emit("messages.upsert", upsert("a", "1", "append"))
    ev.emit("messages.upsert", upsert("a", "2", "notify"))
    assert [b["messages.upsert"]["type"] for b in batches] == ["append"]
    assert ev.stats().buffers_in_progress == 1
    ev.flush()
    assert [b["messages.upsert"]["type"] for b in batches] == ["append", "notify"]
    assert [m["key"]["id"] for m in batches[1]["messages.upsert"]["messages"]] == ["2"]


def test_delete_all_is_a_barrier_released_not_dropped(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    ev.emit("messages.delete", {"jid": "a", "all": True})
    assert batches == [{"chats.upsert": [{"id": "a"}]}, {"messages.delete": {"jid": "a", "all": True}}]
    assert ev.is_buffering()


# -- handlers ---------------------------------------------------------------------


def test_batch_handlers_first_then_per_event_handlers_in_release_order(make_buffer):
    ev = make_buffer()
    calls: list[str] = []
    ev.on("messages.upsert", lambda p: calls.append("on:messages.upsert"))
    ev.on("chats.upsert", lambda p: calls.append("on:chats.upsert"))
    ev.process(lambda b: calls.append("batch"))
    ev.buffer()
    ev.emit("messages.upsert", upsert("a", "1"))
    ev.emit("chats.upsert", chats("a"))
    ev.flush()
    assert calls == ["batch", "on:chats.upsert", "on:messages.upsert"]


def test_every_handler_gets_the_batch_then_the_error_is_raised(make_buffer):
    ev = make_buffer()
    seen: list[str] = []

    def bad(batch: dict) -> None:
        seen.append("bad")
        raise ValueError("boom")

    ev.process(bad)
    ev.process(lambda b: seen.append("good"))
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    with pytest.raises(ValueError, match="boom"):
        ev.flush()
    assert seen == ["bad", "good"]
    assert not ev.is_buffering() and ev.stats().items_buffered == 0


def test_several_handler_errors_raise_an_exception_group(make_buffer):
    ev = make_buffer()
    ev.process(lambda b: 1 / 0)
    ev.on("chats.upsert", lambda p: [][1])
    with pytest.raises(ExceptionGroup) as info:
        ev.emit("chats.upsert", chats("a"))
    assert {type(e) for e in info.value.exceptions} == {ZeroDivisionError, IndexError}


def test_emit_that_triggers_a_release_merges_its_event_before_raising(make_buffer):
    ev = make_buffer(max_buffer_items=1)
    batches: list[dict] = []

    def handler(batch: dict) -> None:
        batches.append(batch)
        raise RuntimeError("handler")

    ev.process(handler)
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    with pytest.raises(RuntimeError):
        ev.emit("chats.upsert", chats("b"))  # overflow releases "a", then "b" is merged
    assert ev.stats().items_buffered == 1
    with pytest.raises(RuntimeError):
        ev.flush()
    assert [b["chats.upsert"][0]["id"] for b in batches] == ["a", "b"]


def test_off_and_remove_all_listeners(make_buffer):
    ev = make_buffer()
    got: list[str] = []

    def h(p):
        got.append("h")

    ev.on("chats.upsert", h)
    ev.on("chats.delete", lambda p: got.append("d"))
    ev.off("chats.upsert", h)
    ev.emit("chats.upsert", chats("a"))
    assert got == []
    ev.remove_all_listeners("chats.delete")
    ev.emit("chats.delete", ["a"])
    assert got == []
    ev.on("chats.upsert", h)
    ev.process(lambda b: got.append("batch"))
    ev.remove_all_listeners()
    ev.emit("chats.upsert", chats("a"))
    assert got == []


def test_process_returns_an_unsubscribe(make_buffer):
    ev = make_buffer()
    got: list[dict] = []
    unsubscribe = ev.process(got.append)
    ev.emit("chats.upsert", chats("a"))
    unsubscribe()
    unsubscribe()  # idempotent
    ev.emit("chats.upsert", chats("b"))
    assert len(got) == 1


def test_with_seqs_handlers_get_the_seq_range_of_each_release(make_buffer):
    ev = make_buffer(max_buffer_items=3)
    got: list[tuple[list[str], range]] = []
    ev.process(lambda b, seqs: got.append((list(b), seqs)), with_seqs=True)
    ev.buffer()
    for seq in range(1, 5):
        ev.emit("chats.upsert", chats(f"c{seq}"), seq=seq)
    ev.emit("connection.update", {"connection": "open"}, seq=5)
    ev.flush()
    assert [s for _, s in got] == [range(1, 4), range(5, 6), range(4, 5)]
    ev.emit("chats.upsert", chats("x"))
    assert got[-1][1] == range(0)


# -- async handlers -----------------------------------------------------------------


async def test_async_handlers_run_one_batch_at_a_time_in_order(make_buffer):
    ev = make_buffer()
    order: list[str] = []
    running = 0

    async def slow(batch: dict) -> None:
        nonlocal running
        running += 1
        assert running == 1
        await asyncio.sleep(0)
        order.append(batch["chats.upsert"][0]["id"])
        running -= 1

    ev.process(slow)
    for i in range(5):
        ev.emit("chats.upsert", chats(f"c{i}"))
    assert order == []
    async with asyncio.timeout(5):
        await ev.drain()
    assert order == [f"c{i}" for i in range(5)]


async def test_async_handler_errors_are_logged_with_the_batch_shape(make_buffer, caplog):
    ev = make_buffer()
    done: list[str] = []

    async def bad(batch: dict) -> None:
        raise ValueError("async boom")

    async def good(batch: dict) -> None:
        done.append("good")

    ev.process(bad, retry=None)  # no retry: logged, then dead-lettered
    ev.process(good)
    ev.emit("chats.upsert", chats("a", "b"))
    async with asyncio.timeout(5):
        await ev.drain()
    assert done == ["good"]
    assert any("dead letter" in r.getMessage() for r in caplog.records)
    record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert "chats.upsert" in record.getMessage() and record.exc_info[0] is ValueError
    assert record.batch_shape == {"chats.upsert": 2}


def test_async_handler_without_a_running_loop_raises_runtime_error(make_buffer):
    ev = make_buffer()
    seen: list[dict] = []

    async def handler(batch: dict) -> None:  # pragma: no cover - never runs
        pass

    ev.process(handler)
    ev.process(seen.append)
    with pytest.raises(RuntimeError):
        ev.emit("chats.upsert", chats("a"))
    assert len(seen) == 1


# -- timer ------------------------------------------------------------------------------


async def test_one_timer_per_scope_forces_a_flush_and_warns(make_buffer, caplog):
    ev = make_buffer(auto_flush=True, auto_flush_timeout=0.01)
    released = asyncio.Event()
    ev.process(lambda b: released.set())
    ev.buffer()
    ev.buffer()
    assert ev.stats().has_timer
    timer = ev._timer
    ev.buffer()
    assert ev._timer is timer  # nested scopes start no extra timer
    ev.emit("chats.upsert", chats("a"))
    async with asyncio.timeout(5):
        await released.wait()
    assert ev.stats().buffers_in_progress == 0 and not ev.stats().has_timer
    assert any(r.levelno == logging.WARNING and "auto-flush" in r.getMessage() for r in caplog.records)


async def test_flush_cancels_the_timer(make_buffer):
    ev = make_buffer(auto_flush=True, auto_flush_timeout=60)
    ev.buffer()
    timer = ev._timer
    ev.flush()
    assert timer.cancelled() and not ev.stats().has_timer


def test_no_timer_without_a_running_loop(make_buffer):
    ev = make_buffer(auto_flush=True)
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    assert ev.is_buffering() and not ev.stats().has_timer


async def test_auto_flush_false_starts_no_timer(make_buffer):
    ev = make_buffer(auto_flush=False)
    ev.buffer()
    assert not ev.stats().has_timer


async def test_buffered_decorator_releases_once_for_nested_calls(make_buffer):
    ev = make_buffer(auto_flush=True, auto_flush_timeout=60)
    batches: list[dict] = []
    ev.process(batches.append)

    @ev.buffered
    async def inner(i: int) -> int:
        ev.emit("chats.upsert", chats(f"c{i}"))
        return i

    @ev.buffered
    async def outer() -> int:
        assert ev.stats().has_timer
        timer = ev._timer
        total = await inner(1) + await inner(2)
        assert ev._timer is timer and batches == []
        return total

    assert await outer() == 3
    assert len(batches) == 1 and len(batches[0]["chats.upsert"]) == 2
    assert not ev.stats().has_timer


async def test_buffered_flushes_even_when_the_function_raises(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)

    @ev.buffered
    async def fails() -> None:
        ev.emit("chats.upsert", chats("a"))
        raise KeyError("x")

    with pytest.raises(KeyError):
        await fails()
    assert len(batches) == 1 and not ev.is_buffering()


# -- destroy ------------------------------------------------------------------------------


def test_destroy_flushes_pending_removes_listeners_and_is_idempotent(make_buffer, caplog):
    caplog.set_level(logging.DEBUG, logger="rsocket.buffer")
    base = rsocket.live_buffers()
    ev = make_buffer()
    assert rsocket.live_buffers() == base + 1
    batches: list[dict] = []
    ev.process(batches.append)
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    ev.destroy()
    assert batches == [{"chats.upsert": [{"id": "a"}]}]
    assert ev.destroyed and rsocket.live_buffers() == base
    ev.destroy()
    assert rsocket.live_buffers() == base
    assert ev.emit("chats.upsert", chats("b")) is False
    ev.buffer()
    assert not ev.is_buffering() and ev.flush() is False
    assert batches == [{"chats.upsert": [{"id": "a"}]}]
    assert ev.stats() == rsocket.BufferStats(0, 0, 0, 0, False)
    info = [r for r in caplog.records if r.levelno == logging.DEBUG and "destroyed" in r.getMessage()]
    assert len(info) == 1  # a routine line: DEBUG
    assert (info[0].items, info[0].flushes, info[0].timer) == (1, 0, False)


async def test_destroy_cancels_the_timer(make_buffer):
    ev = make_buffer(auto_flush=True, auto_flush_timeout=60)
    ev.buffer()
    timer = ev._timer
    ev.destroy()
    assert timer.cancelled()


def test_destroy_never_raises_and_logs_handler_errors(make_buffer, caplog):
    ev = make_buffer()
    ev.process(lambda b: 1 / 0)
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    ev.destroy()
    assert ev.destroyed
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


def test_destroy_with_nothing_pending_calls_no_handler(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    ev.buffer()
    ev.destroy()
    assert batches == []


def test_destroy_drops_undecided_conditionals_and_logs(make_buffer, caplog):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    ev.buffer()
    ev.emit("chats.update", [{"id": "a", "name": "x", "conditional": lambda d: None}])
    ev.destroy()
    assert batches == []
    assert any("undecided" in r.getMessage() for r in caplog.records)


def test_destroy_inside_a_handler(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []

    def handler(batch: dict) -> None:
        batches.append(batch)
        ev.destroy()

    ev.process(handler)
    ev.process(batches.append)  # still gets the batch being released
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    ev.flush()
    assert len(batches) == 2 and ev.destroyed
    assert ev.emit("chats.upsert", chats("b")) is False


async def test_queued_async_work_still_runs_after_destroy(make_buffer):
    ev = make_buffer()
    got: list[dict] = []

    async def handler(batch: dict) -> None:
        await asyncio.sleep(0)
        got.append(batch)

    ev.process(handler)
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    ev.destroy()
    async with asyncio.timeout(5):
        await ev.drain()
    assert got == [{"chats.upsert": [{"id": "a"}]}]
    assert not ev._tasks


# -- configuration ------------------------------------------------------------------------


def test_config_defaults():
    c = BufferConfig()
    assert (c.max_history_cache, c.max_buffer_items, c.auto_flush_timeout, c.auto_flush) == (
        10_000, 1_000, 5.0, True,
    )


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("RSOCKET_BUFFER_MAX_CACHE", "50")
    monkeypatch.setenv("RSOCKET_BUFFER_MAX_ITEMS", "7")
    monkeypatch.setenv("RSOCKET_BUFFER_TIMEOUT_MS", "250")
    monkeypatch.setenv("RSOCKET_BUFFER_AUTO_FLUSH", "no")
    c = BufferConfig.from_env(max_buffer_items=9)
    assert (c.max_history_cache, c.max_buffer_items, c.auto_flush_timeout, c.auto_flush) == (
        50, 9, 0.25, False,
    )


def test_config_empty_env_counts_as_unset(monkeypatch):
    monkeypatch.setenv("RSOCKET_BUFFER_MAX_ITEMS", "")
    assert BufferConfig.from_env() == BufferConfig()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RSOCKET_BUFFER_MAX_CACHE", "lots"),
        ("RSOCKET_BUFFER_MAX_CACHE", "-1"),
        ("RSOCKET_BUFFER_MAX_ITEMS", "0"),
        ("RSOCKET_BUFFER_MAX_ITEMS", "1.5"),
        ("RSOCKET_BUFFER_TIMEOUT_MS", "NaN"),
        ("RSOCKET_BUFFER_TIMEOUT_MS", "soon"),
        ("RSOCKET_BUFFER_TIMEOUT_MS", "-5"),
        ("RSOCKET_BUFFER_AUTO_FLUSH", "maybe"),
    ],
)
def test_malformed_env_raises_naming_variable_and_value(monkeypatch, EventBuffer, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError) as info:
        BufferConfig.from_env()
    assert var in str(info.value) and repr(value) in str(info.value)
    base = rsocket.live_buffers()
    with pytest.raises(ValueError, match=var):
        EventBuffer()
    assert rsocket.live_buffers() == base


def test_event_buffer_without_config_reads_the_env(monkeypatch, EventBuffer):
    monkeypatch.setenv("RSOCKET_BUFFER_MAX_ITEMS", "3")
    ev = EventBuffer()
    try:
        assert ev.config.max_buffer_items == 3
    finally:
        ev.destroy()


@pytest.mark.parametrize(
    "kwargs",
    [{"max_buffer_items": 0}, {"max_history_cache": -1}, {"auto_flush_timeout": 0},
     {"auto_flush_timeout": float("nan")}, {"auto_flush": "yes"}],
)
def test_bad_config_values_name_the_field(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BufferConfig(**kwargs)


def test_bad_payload_type_raises_a_clear_error_and_keeps_accepted_data(make_buffer):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    with pytest.raises(TypeError, match=r"chats\.upsert"):
        ev.emit("chats.upsert", "not a list")
    with pytest.raises(TypeError, match=r"messages\.update"):
        ev.emit("messages.update", [{"update": {}}])
    ev.flush()
    assert batches[0]["chats.upsert"] == [{"id": "a"}]


def test_a_conditional_that_raises_is_discarded_and_the_batch_delivered(make_buffer, caplog):
    ev = make_buffer()
    batches: list[dict] = []
    ev.process(batches.append)
    calls = 0

    def flaky(data) -> bool | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            return None  # undecided at merge time...
        raise RuntimeError("application bug")  # ...raises when asked again at release

    ev.buffer()
    ev.emit("chats.upsert", chats("a"))
    ev.emit("chats.update", [{"id": "b", "name": "x", "conditional": flaky}])
    ev.flush()
    assert batches == [{"chats.upsert": [{"id": "a"}]}]
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)


async def test_async_handler_errors_are_counted_with_the_tenant_label(EventBuffer):
    prometheus_client = pytest.importorskip("prometheus_client")
    from rsocket import metrics
    from rsocket.logs import bind

    previous = metrics._current
    registry = prometheus_client.CollectorRegistry()
    metrics.configure(registry, tenant_label=True)
    try:
        ev = EventBuffer(logger=bind(None, "rsocket.buffer", tenant="t7"),
                         config=BufferConfig(auto_flush=False))
        seen: list[dict] = []

        async def bad(batch: dict) -> None:
            seen.append(batch)
            raise ValueError("boom")

        ev.process(bad, retry=None)
        ev.emit("chats.upsert", chats("a"))
        ev.emit("chats.upsert", chats("b"))
        async with asyncio.timeout(5):
            await ev.drain()
        assert len(seen) == 2  # the runner survived the first error
        assert registry.get_sample_value("rsocket_handler_errors_total", {"tenant": "t7"}) == 2
        assert registry.get_sample_value("rsocket_dead_letters_total", {"tenant": "t7"}) == 2
        ev.destroy()
    finally:
        metrics._current = previous


# -- the facade's public hooks (what a socket uses) ----------------------------------------


def test_on_settled_reports_each_release_once_its_handlers_are_done(make_buffer):
    ev = make_buffer()
    settled: list[range] = []
    ev.on_settled = settled.append
    ev.process(lambda batch: None)
    ev.buffer()
    ev.emit("chats.upsert", [{"id": "a"}], seq=1)
    ev.emit("chats.upsert", [{"id": "b"}], seq=2)
    assert settled == []
    ev.flush()
    ev.emit("chats.delete", ["a"], seq=3)  # delivered at once
    assert settled == [range(1, 3), range(3, 4)]


def test_ingest_drops_invalid_events_and_skips_duplicates(make_buffer):
    class Item:
        def __init__(self, name, data):
            self.name, self.data = name, data

    ev = make_buffer()
    got: list[tuple[dict, range]] = []
    settled: list[range] = []
    ev.process(lambda batch, seqs: got.append((batch, seqs)), with_seqs=True)
    ev.on_settled = settled.append
    frame = [Item("chats.upsert", [{"id": "a"}]), Item("chats.upsert", [{"id": 1}]),
             Item("connection.update", {"connection": "close"}), Item("chats.delete", ["b"])]
    received, duplicates, invalid, errors = ev.ingest(5, frame, True, 5)
    assert (received, duplicates, errors) == (8, 1, None)  # seq 5 was received before
    assert invalid == [(6, "chats.upsert",
                        "`chats.upsert` payload: Expected `str`, got `int` - at `$[0].id`")]
    assert got == [({"connection.update": {"connection": "close", "upstream": True}}, range(7, 8)),
                   ({"chats.delete": ["b"]}, range(8, 9))]
    assert sorted(s for r in settled for s in r) == [6, 7, 8]


def test_set_owner_hands_destroy_to_the_owner(make_buffer):
    ev = make_buffer()
    closing: list[str] = []
    ev.set_owner(lambda: closing.append("owner ends itself first"))
    ev.destroy()
    assert closing and not ev.destroyed
    ev.destroy()  # the owner's own destroy, the hook cleared
    assert ev.destroyed


async def test_drain_with_a_timeout_and_cancel_handlers(make_buffer):
    ev = make_buffer()
    release = asyncio.Event()

    async def slow(batch):
        await release.wait()

    ev.process(slow)
    ev.emit("chats.delete", ["a"])
    assert await ev.drain(timeout=0.05) is False
    assert await ev.cancel_handlers() == 1
    assert await ev.drain(timeout=1) is True


def test_keys_removed_before_each_release_leave_no_memory_behind(make_buffer):
    """An update merged into the upsert of its message leaves the updates table empty
    at every release; the compiled core keeps keys' bytes in a store per table, which
    must not keep each removed key's bytes from one release to the next."""
    ev = make_buffer()
    ev.process(lambda batch: None)

    def key(i: int) -> dict:
        return {"remoteJid": "5511999990001@s.whatsapp.net", "id": f"3EB0{i:020d}", "fromMe": False}

    def scope(first: int) -> None:
        ev.buffer()
        for i in range(first, first + 2000):
            ev.emit("messages.update", [{"key": key(i), "update": {"status": 3}}])
            ev.emit("messages.upsert", {"messages": [{"key": key(i), "message": {}}],
                                        "type": "notify"})
        ev.flush()
        assert len(ev.pending.message_updates) == 0

    tracemalloc.start()
    try:
        scope(0)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for n in range(1, 11):
            scope(n * 2000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 20,000 keys' bytes kept would be about 1 MB; a store reused stays flat
    assert grown < 100_000, f"{grown} bytes kept after 10 releases"


def test_keys_removed_within_one_scope_do_not_pile_up(make_buffer):
    """One update stays pending while 20,000 others come and go in one scope (each
    deleted with its message, ten messages over and over): the updates table never
    empties, and what it holds stays the size of what is pending, not of everything
    that passed through it."""
    ev = make_buffer(max_buffer_items=100_000)
    ev.process(lambda batch: None)

    def key(i: int) -> dict:
        return {"remoteJid": "5511999990001@s.whatsapp.net", "id": f"3EB0{i:020d}", "fromMe": False}

    ev.buffer()
    ev.emit("messages.update", [{"key": key(-1), "update": {"status": 3}}])
    tracemalloc.start()
    try:
        for i in range(20_000):
            if i == 2000:
                gc.collect()
                before = tracemalloc.get_traced_memory()[0]
            ev.emit("messages.update", [{"key": key(i % 10), "update": {"status": 3}}])
            ev.emit("messages.delete", {"keys": [key(i % 10)]})
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(ev.pending.message_updates) == 1
    assert len(ev.pending.message_deletes) == 10
    ev.flush()
    # 18,000 removed keys' bytes kept would be about 900 KB
    assert grown < 100_000, f"{grown} bytes kept within one scope"
