"""A circuit breaker for reconnects.

``CircuitBreaker`` keeps a failing tenant from hammering the server:

* CLOSED: attempts are allowed; ``failure_threshold`` failures inside the sliding
  ``failure_window`` open the circuit.
* OPEN: attempts are rejected until ``open_timeout`` has passed on the clock; the
  move to HALF_OPEN is lazy (made by whichever call looks at the state first), so
  the breaker owns no timer and no task.
* HALF_OPEN: one probe attempt at a time; ``success_threshold`` successes close the
  circuit, any failure opens it again (and restarts ``open_timeout``).

The breaker is synchronous and not thread-safe: it is meant to be driven from one
event loop (the ``ConnectionManager``), which asks :meth:`CircuitBreaker.time_until_half_open`
how long to wait instead of awaiting the breaker.

Every transition is logged on ``rsocket.breaker`` (WARNING when opening, INFO
otherwise), counted in ``rsocket_circuit_transitions_total{to}`` and
``rsocket_circuit_state{state}`` (read from the live breakers when scraped),
written as a ``breaker_transition`` lifecycle
line and passed to the transition listeners.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from . import lifecycle, metrics
from .logs import FieldsAdapter, bind

__all__ = ["BreakerStats", "CircuitBreaker", "CircuitState"]



class CircuitState(StrEnum):
    """State of a :class:`CircuitBreaker`; the values are the metric label values."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: ``listener(old_state, new_state)``; the return value is ignored
Listener = Callable[[CircuitState, CircuitState], object]


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A snapshot of a :class:`CircuitBreaker` (see :meth:`CircuitBreaker.stats`).

    Attributes:
        state: the current state (after any due OPEN -> HALF_OPEN move).
        failures: counted failures still inside the sliding window.
        successes: successes counted in the current HALF_OPEN period (0 otherwise).
        opened_at: clock value of the last opening; None while CLOSED.
        time_until_half_open: seconds until an OPEN breaker lets a probe through;
            0 when not OPEN.
        rejected: ``can_execute()`` calls answered False since creation or reset.
        transitions: state changes since creation or reset (the reset's own
            transition included).
    """

    state: CircuitState
    failures: int
    successes: int
    opened_at: float | None
    time_until_half_open: float
    rejected: int
    transitions: int


# live breakers: the ``rsocket_circuit_state`` gauge counts their states at scrape time
_live: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()


def _states() -> list[tuple[str, str]]:
    """(name, state) of every live breaker, for the metrics collector.

    The raw state: a scrape (from the exporter's thread) must not make the
    lazy OPEN -> HALF_OPEN move."""
    return [(cb.name, cb._state.value) for cb in list(_live)]


metrics.breaker_source(_states)


def _positive_int(name: str, value: object) -> int:
    # bool is an int subclass, but failure_threshold=True is surely a mistake
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _positive_seconds(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


class CircuitBreaker:
    """CLOSED -> OPEN -> HALF_OPEN -> CLOSED, on an injectable monotonic clock.

    Choices worth knowing:

    * Failure window: a failure recorded at clock value ``t`` counts while
      ``now - t < failure_window``; at exactly ``failure_window`` seconds old it
      has left the window.
    * A success while CLOSED does not erase the window: only time does. A link
      that flaps (connects, then fails) would otherwise never open the circuit.
    * The window is cleared when the circuit closes (recovery is a fresh start)
      and by :meth:`reset`. Failures recorded while OPEN are neither counted
      nor extend ``open_timeout`` (they come from attempts that started before
      the circuit opened).
    * A success while OPEN is ignored for the same reason.
    * ``error_filter(err)`` returning False ignores the error: it is neither a
      failure nor a success. It still ends an in-flight HALF_OPEN probe, since
      that attempt is over; otherwise an intentional close during a probe would
      leave the breaker rejecting forever. The filter is only asked when ``err``
      is given; a filter that raises is logged and the failure counts.
    * A HALF_OPEN probe that never reports back (its task was cancelled, say)
      is taken as abandoned after ``open_timeout``, and the next
      ``can_execute()`` starts a new probe, so the breaker cannot get stuck.

    Args:
        failure_threshold: failures inside the window that open the circuit.
        failure_window: length in seconds of the sliding failure window.
        open_timeout: seconds an open circuit rejects before letting a probe through.
        success_threshold: HALF_OPEN successes that close the circuit.
        clock: monotonic clock in seconds (``time.monotonic``; a fake one in tests).
        error_filter: ``error_filter(err) -> bool``; False means the error does not
            count (intentional closes, 401, 440). None counts every error.
        name: breaker name (usually the tenant): in logs, lifecycle lines and the
            metrics' ``tenant`` label (when that label is on).
        logger: a ``Logger`` or ``LoggerAdapter``; ``rsocket.breaker`` by default.

    Raises:
        ValueError: a threshold is not a positive integer, a duration is not a
            positive finite number, or ``clock`` / ``error_filter`` is not callable.
    """

    __slots__ = ("__weakref__", "_clock", "_error_filter", "_failures", "_listeners", "_logger",
                 "_opened_at", "_probe_started", "_rejected", "_state", "_successes",
                 "_transitions", "failure_threshold", "failure_window", "name", "open_timeout",
                 "success_threshold")

    def __init__(
        self,
        failure_threshold: int = 5,
        failure_window: float = 60.0,
        open_timeout: float = 30.0,
        success_threshold: int = 2,
        *,
        clock: Callable[[], float] = time.monotonic,
        error_filter: Callable[[BaseException], bool] | None = None,
        name: str = "",
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.failure_threshold = _positive_int("failure_threshold", failure_threshold)
        self.failure_window = _positive_seconds("failure_window", failure_window)
        self.open_timeout = _positive_seconds("open_timeout", open_timeout)
        self.success_threshold = _positive_int("success_threshold", success_threshold)
        if not callable(clock):
            raise ValueError(f"clock must be callable, got {clock!r}")
        if error_filter is not None and not callable(error_filter):
            raise ValueError(f"error_filter must be callable or None, got {error_filter!r}")
        self.name = name
        self._clock = clock
        self._error_filter = error_filter
        self._logger = logger
        # a tuple, replaced on change: most breakers have no listener (no list each)
        self._listeners: tuple[Listener, ...] = ()

        self._state = CircuitState.CLOSED
        self._failures: deque[float] = deque()  # clock values of counted failures
        self._successes = 0
        self._opened_at: float | None = None
        self._probe_started: float | None = None  # clock value; None: no probe in flight
        self._rejected = 0
        self._transitions = 0

        _live.add(self)  # a dropped breaker (tenant removed) leaves the gauge by itself

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.value}>"

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state; makes the OPEN -> HALF_OPEN move once ``open_timeout`` is up."""
        if self._state is CircuitState.OPEN:
            assert self._opened_at is not None
            now = self._clock()
            if now - self._opened_at >= self.open_timeout:
                self._transition(CircuitState.HALF_OPEN, now)
        return self._state

    def time_until_half_open(self) -> float:
        """Seconds until an OPEN breaker lets a probe through; 0 when not OPEN."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        assert self._opened_at is not None
        return max(0.0, self._opened_at + self.open_timeout - self._clock())

    def can_execute(self) -> bool:
        """Whether an attempt may start now.

        CLOSED: always. OPEN: never (a counted rejection). HALF_OPEN: the first
        caller gets True and becomes the probe; later callers get False (counted
        rejections) until the probe reports through :meth:`record_success` or
        :meth:`record_failure`.
        """
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN:
            now = self._clock()
            if self._probe_started is None or now - self._probe_started >= self.open_timeout:
                if self._probe_started is not None:
                    self._log.warning(
                        "breaker %s: probe abandoned after %.1fs, starting another",
                        self.name,
                        now - self._probe_started,
                        extra={"breaker": self.name},
                    )
                self._probe_started = now
                return True
        self._rejected += 1
        m = metrics.get()
        m.tenant(m.circuit_rejected_total, self.name).inc()
        return False

    # -- outcomes ------------------------------------------------------------

    def record_success(self) -> None:
        """Report a successful attempt (in HALF_OPEN, counts towards closing)."""
        if self.state is not CircuitState.HALF_OPEN:
            return  # CLOSED: only time empties the window; OPEN: a stale attempt
        self._probe_started = None
        self._successes += 1
        if self._successes >= self.success_threshold:
            self._transition(CircuitState.CLOSED, self._clock())

    def record_failure(self, err: BaseException | None = None) -> None:
        """Report a failed attempt.

        Args:
            err: the error, shown to ``error_filter``; an error the filter rejects
                is ignored (but still ends an in-flight HALF_OPEN probe).
        """
        state = self.state
        if err is not None and not self._counts(err):
            if state is CircuitState.HALF_OPEN:
                self._probe_started = None
            return
        if state is CircuitState.OPEN:
            return  # an attempt from before the opening: must not extend open_timeout
        now = self._clock()
        self._failures.append(now)
        self._prune(now)
        if state is CircuitState.HALF_OPEN or len(self._failures) >= self.failure_threshold:
            self._transition(CircuitState.OPEN, now)

    def reset(self) -> None:
        """Back to CLOSED with every counter cleared (a transition if the state changes)."""
        old = self._state  # not self.state: no OPEN -> HALF_OPEN move on the way out
        self._failures.clear()
        self._successes = 0
        self._opened_at = None
        self._probe_started = None
        self._rejected = 0
        self._transitions = 0
        if old is not CircuitState.CLOSED:
            self._transition(CircuitState.CLOSED, self._clock())

    def stats(self) -> BreakerStats:
        """A snapshot of the state and counters (makes any due OPEN -> HALF_OPEN move)."""
        state = self.state
        self._prune(self._clock())
        return BreakerStats(
            state=state,
            failures=len(self._failures),
            successes=self._successes,
            opened_at=self._opened_at,
            time_until_half_open=self.time_until_half_open(),
            rejected=self._rejected,
            transitions=self._transitions,
        )

    # -- listeners -----------------------------------------------------------

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(old_state, new_state)`` after every transition.

        A listener that raises is logged and does not stop the others.
        """
        self._listeners = (*self._listeners, fn)

    def remove_listener(self, fn: Listener) -> None:
        """Stop calling ``fn``; a listener that was never added is ignored."""
        if fn in self._listeners:
            listeners = list(self._listeners)
            listeners.remove(fn)
            self._listeners = tuple(listeners)

    # -- internals -----------------------------------------------------------

    @property
    def _log(self) -> FieldsAdapter:
        return bind(self._logger, "rsocket.breaker")  # built when logging: none held

    def _counts(self, err: BaseException) -> bool:
        if self._error_filter is None:
            return True
        try:
            return bool(self._error_filter(err))
        except Exception:
            # unsure whether it counts: counting is the safe side (worst case a
            # premature opening, never an endless retry loop)
            self._log.exception(
                "breaker %s: error_filter raised; counting the failure",
                self.name,
                extra={"breaker": self.name},
            )
            return True

    def _prune(self, now: float) -> None:
        cutoff = now - self.failure_window
        while self._failures and self._failures[0] <= cutoff:
            self._failures.popleft()

    def _transition(self, new: CircuitState, now: float) -> None:
        old = self._state
        self._state = new
        self._transitions += 1
        self._successes = 0
        self._probe_started = None
        if new is CircuitState.OPEN:
            self._opened_at = now
        elif new is CircuitState.CLOSED:
            self._opened_at = None
            self._failures.clear()
        self._prune(now)
        failures = len(self._failures)

        self._log.log(
            logging.WARNING if new is CircuitState.OPEN else logging.INFO,
            "breaker %s: %s -> %s (%d failures in window)",
            self.name,
            old.value,
            new.value,
            failures,
            extra={"breaker": self.name, "from": old.value, "to": new.value, "failures": failures},
        )
        m = metrics.get()
        m.tenant(m.circuit_transitions_total, self.name, to=new.value).inc()
        if lifecycle.enabled():
            lifecycle.record(
                "breaker_transition",
                breaker=self.name,
                old=old.value,
                new=new.value,
                failures=failures,
            )

        for fn in self._listeners:  # a listener may remove itself: this tuple stays
            try:
                fn(old, new)
            except Exception:
                self._log.exception(
                    "breaker %s: transition listener %r raised",
                    self.name,
                    fn,
                    extra={"breaker": self.name, "from": old.value, "to": new.value},
                )
