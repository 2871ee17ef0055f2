"""CircuitBreaker: every transition, the sliding window, probes, logs and metrics, on a fake clock."""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rsocket import lifecycle, metrics
from rsocket.breaker import BreakerStats, CircuitBreaker, CircuitState

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(clock: FakeClock) -> Callable[..., CircuitBreaker]:
    """``make(**kwargs)``: a breaker on the fake clock (threshold 3, window 60, timeout 30, 2)."""

    def make(**kwargs: Any) -> CircuitBreaker:
        kwargs.setdefault("failure_threshold", 3)
        kwargs.setdefault("clock", clock)
        return CircuitBreaker(**kwargs)

    return make


@pytest.fixture
def registry() -> Iterator[Any]:
    """A fresh prometheus registry made current; the previous metrics come back afterwards."""
    prometheus_client = pytest.importorskip("prometheus_client")
    saved = metrics._current
    reg = prometheus_client.CollectorRegistry()
    metrics.configure(reg)
    yield reg
    metrics._current = saved


def gauge(registry: Any, state: str, **labels: str) -> float:
    """``rsocket_circuit_state`` for ``state``; a series never touched reads 0."""
    value = registry.get_sample_value("rsocket_circuit_state", {**labels, "state": state})
    return 0.0 if value is None else value


def open_breaker(cb: CircuitBreaker) -> None:
    for _ in range(cb.failure_threshold):
        cb.record_failure(RuntimeError("boom"))
    assert cb.state is OPEN


def half_open_breaker(cb: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(cb)
    clock.advance(cb.open_timeout)
    assert cb.state is HALF_OPEN


# -- construction ---------------------------------------------------------------


def test_defaults() -> None:
    cb = CircuitBreaker()
    assert (cb.failure_threshold, cb.failure_window, cb.open_timeout, cb.success_threshold) == (
        5,
        60.0,
        30.0,
        2,
    )
    assert cb.state is CLOSED
    assert cb.can_execute()
    assert CircuitState.HALF_OPEN == "half_open"


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": -1}, "failure_threshold"),
        ({"failure_threshold": 2.5}, "failure_threshold"),
        ({"failure_threshold": True}, "failure_threshold"),
        ({"success_threshold": 0}, "success_threshold"),
        ({"failure_window": 0}, "failure_window"),
        ({"failure_window": -5.0}, "failure_window"),
        ({"failure_window": float("inf")}, "failure_window"),
        ({"open_timeout": 0.0}, "open_timeout"),
        ({"open_timeout": float("nan")}, "open_timeout"),
        ({"open_timeout": "30"}, "open_timeout"),
        ({"clock": 3.0}, "clock"),
        ({"error_filter": "nope"}, "error_filter"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        CircuitBreaker(**kwargs)


# -- CLOSED -> OPEN and the sliding window -----------------------------------------


def test_opens_at_failure_threshold(make: Callable[..., CircuitBreaker]) -> None:
    cb = make()
    cb.record_failure()
    cb.record_failure(ValueError("x"))
    assert cb.state is CLOSED
    assert cb.can_execute()
    cb.record_failure()
    assert cb.state is OPEN
    assert not cb.can_execute()


def test_failures_older_than_the_window_do_not_count(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    cb = make(failure_window=60.0)
    cb.record_failure()
    clock.advance(30)
    cb.record_failure()
    clock.advance(31)  # the first failure is now 61 s old
    assert cb.stats().failures == 1
    cb.record_failure()
    assert cb.state is CLOSED
    assert cb.stats().failures == 2
    cb.record_failure()  # three inside 60 s (at 30, 61, 61)
    assert cb.state is OPEN


def test_window_boundary_is_exclusive(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    """A failure exactly ``failure_window`` seconds old has left the window."""
    cb = make(failure_threshold=2, failure_window=10.0)
    cb.record_failure()
    clock.advance(9.5)
    assert cb.stats().failures == 1  # still inside
    clock.advance(0.5)  # exactly 10 s old
    assert cb.stats().failures == 0
    cb.record_failure()
    assert cb.state is CLOSED


def test_window_boundary_just_inside_still_opens(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    cb = make(failure_threshold=2, failure_window=10.0)
    cb.record_failure()
    clock.advance(9.75)
    cb.record_failure()
    assert cb.state is OPEN


def test_success_in_closed_does_not_erase_the_window(make: Callable[..., CircuitBreaker]) -> None:
    """A flapping link (connect, fail, connect, fail...) must still open the circuit."""
    cb = make()
    for _ in range(2):
        cb.record_failure()
        cb.record_success()
    assert cb.stats().failures == 2
    cb.record_failure()
    assert cb.state is OPEN


# -- OPEN -> HALF_OPEN ------------------------------------------------------------


def test_open_rejects_and_counts(make: Callable[..., CircuitBreaker], clock: FakeClock) -> None:
    cb = make()
    open_breaker(cb)
    assert [cb.can_execute() for _ in range(3)] == [False] * 3
    assert cb.stats().rejected == 3
    clock.advance(29.75)
    assert not cb.can_execute()
    assert cb.stats().rejected == 4


def test_time_until_half_open(make: Callable[..., CircuitBreaker], clock: FakeClock) -> None:
    cb = make(open_timeout=30.0)
    assert cb.time_until_half_open() == 0.0  # closed
    open_breaker(cb)
    assert cb.time_until_half_open() == 30.0
    clock.advance(12.5)
    assert cb.time_until_half_open() == 17.5
    assert cb.stats().time_until_half_open == 17.5
    clock.advance(17.5)
    assert cb.time_until_half_open() == 0.0
    assert cb.state is HALF_OPEN
    assert cb.time_until_half_open() == 0.0  # half-open


def test_half_open_is_lazy_and_happens_once(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    cb = make()
    seen: list[tuple[CircuitState, CircuitState]] = []
    cb.add_listener(lambda old, new: seen.append((old, new)))
    open_breaker(cb)
    clock.advance(100)  # nobody looks: no transition yet
    assert seen == [(CLOSED, OPEN)]
    assert cb.can_execute()  # the first look makes the move (and is the probe)
    assert cb.state is HALF_OPEN
    assert cb.state is HALF_OPEN
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


# -- HALF_OPEN ------------------------------------------------------------------


def test_half_open_lets_one_probe_through(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    cb = make(success_threshold=3)
    half_open_breaker(cb, clock)
    rejected = cb.stats().rejected
    assert cb.can_execute()  # the probe
    assert not cb.can_execute()  # rejected fast while the probe is in flight
    assert not cb.can_execute()
    assert cb.stats().rejected == rejected + 2
    cb.record_success()  # ends the probe
    assert cb.state is HALF_OPEN
    assert cb.can_execute()  # next probe
    assert not cb.can_execute()


def test_half_open_closes_after_success_threshold(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    cb = make(success_threshold=2)
    half_open_breaker(cb, clock)
    assert cb.can_execute()
    cb.record_success()
    assert cb.state is HALF_OPEN
    assert cb.stats().successes == 1
    cb.record_success()
    assert cb.state is CLOSED
    st = cb.stats()
    assert (st.successes, st.failures, st.opened_at) == (0, 0, None)
    # closing starts afresh: the failures that opened the circuit are gone
    cb.record_failure()
    cb.record_failure()
    assert cb.state is CLOSED


def test_failure_in_half_open_reopens_and_restarts_timeout(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    cb = make(open_timeout=30.0)
    half_open_breaker(cb, clock)
    first_opened = cb.stats().opened_at
    assert cb.can_execute()
    cb.record_success()  # one success is not enough ...
    clock.advance(5)
    assert cb.can_execute()
    cb.record_failure(OSError("503"))  # ... and any failure reopens
    assert cb.state is OPEN
    st = cb.stats()
    assert st.opened_at == clock.now != first_opened
    assert st.successes == 0
    assert st.time_until_half_open == 30.0
    clock.advance(29.5)
    assert cb.state is OPEN
    clock.advance(0.5)
    assert cb.state is HALF_OPEN


def test_due_half_open_failure_reopens_without_a_look(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    """A failure reported once open_timeout is up counts as a half-open failure."""
    cb = make()
    seen: list[tuple[CircuitState, CircuitState]] = []
    cb.add_listener(lambda old, new: seen.append((old, new)))
    open_breaker(cb)
    clock.advance(30)
    cb.record_failure()
    assert cb.state is OPEN
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]
    assert cb.stats().opened_at == clock.now


def test_outcomes_while_open_are_ignored(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    """Late reports from attempts started before the opening neither extend nor close it."""
    cb = make()
    open_breaker(cb)
    opened_at = cb.stats().opened_at
    clock.advance(10)
    cb.record_failure()
    cb.record_success()
    st = cb.stats()
    assert (st.state, st.opened_at, st.time_until_half_open, st.transitions) == (
        OPEN,
        opened_at,
        20.0,
        1,
    )


def test_abandoned_probe_is_replaced_after_open_timeout(
    make: Callable[..., CircuitBreaker], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cb = make(open_timeout=30.0)
    half_open_breaker(cb, clock)
    assert cb.can_execute()  # a probe that never reports back
    clock.advance(29.5)
    assert not cb.can_execute()
    clock.advance(0.5)
    with caplog.at_level(logging.WARNING, logger="rsocket.breaker"):
        assert cb.can_execute()  # taken for abandoned: a new probe
    assert "probe abandoned" in caplog.text
    assert not cb.can_execute()


# -- error filter -----------------------------------------------------------------


class Closed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def counts(err: BaseException) -> bool:
    return not (isinstance(err, Closed) and err.code in (401, 440))


def test_error_filter_ignores_errors_in_closed(make: Callable[..., CircuitBreaker]) -> None:
    cb = make(error_filter=counts)
    for _ in range(10):
        cb.record_failure(Closed(401))
        cb.record_failure(Closed(440))
    assert cb.state is CLOSED
    assert cb.stats().failures == 0
    for _ in range(3):
        cb.record_failure(Closed(503))
    assert cb.state is OPEN


def test_error_filter_in_half_open_ends_the_probe_without_counting(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    cb = make(error_filter=counts)
    half_open_breaker(cb, clock)
    assert cb.can_execute()
    cb.record_failure(Closed(440))  # not a failure: stays half-open ...
    st = cb.stats()
    assert (st.state, st.successes) == (HALF_OPEN, 0)
    assert cb.can_execute()  # ... but the probe is over, so another may go


def test_without_error_the_filter_is_not_asked(make: Callable[..., CircuitBreaker]) -> None:
    asked: list[BaseException] = []

    def never(err: BaseException) -> bool:
        asked.append(err)
        return False

    cb = make(error_filter=never)
    for _ in range(3):
        cb.record_failure()
    assert cb.state is OPEN
    assert asked == []


def test_raising_error_filter_counts_the_failure(
    make: Callable[..., CircuitBreaker], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(err: BaseException) -> bool:
        raise KeyError("filter bug")

    cb = make(error_filter=broken)
    with caplog.at_level(logging.ERROR, logger="rsocket.breaker"):
        cb.record_failure(RuntimeError("x"))
    assert cb.stats().failures == 1
    assert "error_filter raised" in caplog.text


# -- reset ------------------------------------------------------------------------


def test_reset_from_open(make: Callable[..., CircuitBreaker], clock: FakeClock) -> None:
    cb = make()
    seen: list[tuple[CircuitState, CircuitState]] = []
    cb.add_listener(lambda old, new: seen.append((old, new)))
    open_breaker(cb)
    cb.can_execute()
    clock.advance(100)  # due for half-open: reset must not make that move first
    cb.reset()
    assert seen == [(CLOSED, OPEN), (OPEN, CLOSED)]
    assert cb.stats() == BreakerStats(
        state=CLOSED,
        failures=0,
        successes=0,
        opened_at=None,
        time_until_half_open=0.0,
        rejected=0,
        transitions=1,  # the reset's own
    )
    assert cb.can_execute()


def test_reset_from_half_open_with_probe(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    cb = make()
    half_open_breaker(cb, clock)
    assert cb.can_execute()
    cb.reset()
    assert cb.state is CLOSED
    open_breaker(cb)  # a full threshold is needed again
    clock.advance(30)
    assert cb.can_execute()  # no stale probe flag


def test_reset_when_closed_is_not_a_transition(make: Callable[..., CircuitBreaker]) -> None:
    cb = make()
    seen: list[Any] = []
    cb.add_listener(lambda old, new: seen.append((old, new)))
    cb.record_failure()
    cb.record_failure()
    cb.reset()
    assert seen == []
    assert cb.stats().failures == 0
    cb.record_failure()
    assert cb.state is CLOSED


# -- listeners ------------------------------------------------------------------


def test_listeners_see_every_transition(
    make: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    cb = make()
    seen: list[tuple[CircuitState, CircuitState, CircuitState]] = []
    cb.add_listener(lambda old, new: seen.append((old, new, cb.state)))
    half_open_breaker(cb, clock)
    cb.can_execute()
    cb.record_failure()
    clock.advance(30)
    cb.can_execute()
    cb.record_success()
    cb.record_success()
    assert seen == [
        (CLOSED, OPEN, OPEN),  # called after the transition: the state is already new
        (OPEN, HALF_OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN, OPEN),
        (OPEN, HALF_OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED, CLOSED),
    ]
    assert cb.stats().transitions == 5


def test_raising_listener_is_logged_and_others_still_run(
    make: Callable[..., CircuitBreaker], caplog: pytest.LogCaptureFixture
) -> None:
    cb = make(name="t1")
    after: list[CircuitState] = []

    def bad(old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("listener bug")

    cb.add_listener(bad)
    cb.add_listener(lambda old, new: after.append(new))
    with caplog.at_level(logging.ERROR, logger="rsocket.breaker"):
        open_breaker(cb)
    assert after == [OPEN]
    assert cb.state is OPEN
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "listener" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert errors[0].breaker == "t1"


def test_remove_listener(make: Callable[..., CircuitBreaker]) -> None:
    cb = make()
    seen: list[Any] = []

    def listener(old: CircuitState, new: CircuitState) -> None:
        seen.append(new)

    cb.add_listener(listener)
    cb.remove_listener(listener)
    cb.remove_listener(listener)  # unknown: ignored
    open_breaker(cb)
    assert seen == []


def test_listener_may_remove_itself(make: Callable[..., CircuitBreaker]) -> None:
    cb = make()
    seen: list[str] = []

    def once(old: CircuitState, new: CircuitState) -> None:
        seen.append("once")
        cb.remove_listener(once)

    cb.add_listener(once)
    cb.add_listener(lambda old, new: seen.append("always"))
    open_breaker(cb)
    cb.reset()
    assert seen == ["once", "always", "always"]


# -- stats ------------------------------------------------------------------------


def test_stats_fields(make: Callable[..., CircuitBreaker], clock: FakeClock) -> None:
    cb = make()
    cb.record_failure()
    clock.advance(1)
    cb.record_failure()
    assert cb.stats() == BreakerStats(CLOSED, 2, 0, None, 0.0, 0, 0)
    cb.record_failure()
    opened = clock.now
    cb.can_execute()
    clock.advance(10)
    assert cb.stats() == BreakerStats(OPEN, 3, 0, opened, 20.0, 1, 1)
    clock.advance(20)
    cb.can_execute()
    cb.can_execute()
    cb.record_success()
    st = cb.stats()
    assert st == BreakerStats(HALF_OPEN, 3, 1, opened, 0.0, 2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.rejected = 0  # type: ignore[misc]


# -- logs, lifecycle lines, metrics ----------------------------------------------


def test_transitions_are_logged_with_fields(
    make: Callable[..., CircuitBreaker], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cb = make(name="acme")
    with caplog.at_level(logging.INFO, logger="rsocket.breaker"):
        half_open_breaker(cb, clock)
        cb.record_success()
        cb.record_success()
    records = [r for r in caplog.records if r.name == "rsocket.breaker"]
    got = [
        (r.levelno, r.breaker, getattr(r, "from"), r.to, r.failures)  # type: ignore[attr-defined]
        for r in records
    ]
    assert got == [
        (logging.WARNING, "acme", "closed", "open", 3),
        (logging.INFO, "acme", "open", "half_open", 3),
        (logging.INFO, "acme", "half_open", "closed", 0),
    ]
    assert "acme" in records[0].getMessage()


def test_given_logger_adapter_is_used(
    make: Callable[..., CircuitBreaker], caplog: pytest.LogCaptureFixture
) -> None:
    adapter = logging.LoggerAdapter(logging.getLogger("app.tenant"), {"tenant": "t9"})
    cb = make(logger=adapter)
    with caplog.at_level(logging.INFO, logger="app.tenant"):
        open_breaker(cb)
    (record,) = [r for r in caplog.records if r.name == "app.tenant"]
    assert record.tenant == "t9"  # type: ignore[attr-defined]
    assert record.levelno == logging.WARNING
    assert not [r for r in caplog.records if r.name == "rsocket.breaker"]


def test_lifecycle_lines(
    make: Callable[..., CircuitBreaker],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lifecycle.logger, "propagate", True)  # RSOCKET_LOG=1 turns it off
    cb = make(name="acme")
    with caplog.at_level(logging.DEBUG, logger="rsocket.lifecycle"):
        assert lifecycle.enabled()
        half_open_breaker(cb, clock)
        cb.reset()
    lines = [
        (r.getMessage(), r.lifecycle)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "rsocket.lifecycle"
    ]
    assert lines == [
        ("breaker_transition", {"breaker": "acme", "old": "closed", "new": "open", "failures": 3}),
        (
            "breaker_transition",
            {"breaker": "acme", "old": "open", "new": "half_open", "failures": 3},
        ),
        (
            "breaker_transition",
            {"breaker": "acme", "old": "half_open", "new": "closed", "failures": 0},
        ),
    ]


def test_no_lifecycle_lines_when_disabled(
    make: Callable[..., CircuitBreaker], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="rsocket.lifecycle"):
        open_breaker(make())
    assert not [r for r in caplog.records if r.name == "rsocket.lifecycle"]


def test_metrics_after_a_scenario(
    make: Callable[..., CircuitBreaker], clock: FakeClock, registry: Any
) -> None:
    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    def counts() -> dict[str, float]:
        return {s.value: gauge(registry, s.value) for s in CircuitState}

    gc.collect()
    base = counts()  # breakers still referenced by earlier tests

    def states() -> dict[str, float]:
        return {state: n - base[state] for state, n in counts().items()}

    # labelled counters start at zero
    assert value("rsocket_circuit_transitions_total", to="open") == 0.0
    a = make(name="a")
    b = make(name="b")
    assert states()["closed"] == 2.0

    open_breaker(a)  # closed -> open
    assert states() == {"closed": 1.0, "open": 1.0, "half_open": 0.0}
    a.can_execute()
    a.can_execute()  # 2 rejections
    clock.advance(30)
    assert a.can_execute()  # open -> half_open, the probe
    assert not a.can_execute()  # 3rd rejection
    assert states() == {"closed": 1.0, "open": 0.0, "half_open": 1.0}
    a.record_failure()  # half_open -> open
    clock.advance(30)
    a.can_execute()  # open -> half_open
    a.record_success()
    a.record_success()  # half_open -> closed

    assert value("rsocket_circuit_transitions_total", to="open") == 2.0
    assert value("rsocket_circuit_transitions_total", to="half_open") == 2.0
    assert value("rsocket_circuit_transitions_total", to="closed") == 1.0
    assert value("rsocket_circuit_rejected_total") == 3.0
    assert states() == {"closed": 2.0, "open": 0.0, "half_open": 0.0}

    open_breaker(b)
    b.reset()  # open -> closed
    assert value("rsocket_circuit_transitions_total", to="closed") == 2.0
    assert states() == {"closed": 2.0, "open": 0.0, "half_open": 0.0}


def test_metrics_with_tenant_label(make: Callable[..., CircuitBreaker], registry: Any) -> None:
    metrics.configure(registry, tenant_label=True)
    cb = make(name="t7")
    open_breaker(cb)
    cb.can_execute()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"tenant": "t7", **labels})

    assert value("rsocket_circuit_transitions_total", to="open") == 1.0
    assert value("rsocket_circuit_rejected_total") == 1.0
    assert gauge(registry, "open", tenant="t7") == 1.0
    assert gauge(registry, "closed", tenant="t7") == 0.0


def test_dropped_breaker_leaves_the_state_gauge(
    make: Callable[..., CircuitBreaker], registry: Any
) -> None:
    gc.collect()
    before = {state: gauge(registry, state.value) for state in CircuitState}
    cb = make()
    open_breaker(cb)
    assert gauge(registry, "open") == before[OPEN] + 1
    del cb
    gc.collect()
    assert {state: gauge(registry, state.value) for state in CircuitState} == before


def test_state_gauge_is_read_from_the_live_breakers_in_every_registry(
    make: Callable[..., CircuitBreaker], registry: Any
) -> None:
    """The gauge is counted at scrape time: a breaker created under one registry
    shows its current state in any registry configured since, never a stale one."""
    import prometheus_client

    cb = make()
    other = prometheus_client.CollectorRegistry()
    metrics.configure(other)
    open_breaker(cb)
    for reg in (registry, other):
        assert gauge(reg, "open") >= 1.0
    opened = gauge(other, "open")
    cb.reset()
    assert gauge(other, "open") == opened - 1
