"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rsocket import BufferConfig, SocketConfig

#: Multiplies every wait of :func:`until` (as websockets' WEBSOCKETS_TESTS_TIMEOUT_FACTOR
#: does): set ``RSOCKET_TESTS_TIMEOUT_FACTOR=3`` on a slow or loaded machine.
TIMEOUT_FACTOR = float(os.environ.get("RSOCKET_TESTS_TIMEOUT_FACTOR") or 1.0)

#: The accounts a test server serves unless a test needs others.
TENANTS = {"t1": "token1", "t2": "token2"}

#: Sockets and managers that notice and recover within tenths of a second (manager tests).
FAST_SOCKET = SocketConfig(keepalive_interval=0.5, keepalive_grace=0.5, connect_timeout=2,
                           close_timeout=1, drain_timeout=1,
                           buffer=BufferConfig(auto_flush_timeout=0.2))
FAST = {"socket_config": FAST_SOCKET, "backoff": (0.02, 0.05, 0.1), "jitter": 0.25,
        "stable_after": 0.2}


async def until(
    predicate: Callable[[], object | Awaitable[object]],
    timeout: float = 5.0,
    what: str = "the condition",
    *,
    step: float = 0.005,
) -> float:
    """Poll ``predicate`` (sync or async) until it is true; returns the seconds it took.

    Raises:
        TimeoutError: not true within ``timeout`` seconds, times
            :data:`TIMEOUT_FACTOR` (names ``what``).
    """
    timeout *= TIMEOUT_FACTOR
    started = time.monotonic()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)


#: The servers the protocol and socket suites run against: the reference server and
#: the Baileys bridge (Node, its events through Baileys' own emitter).
SERVERS = ("reference", "bridge")


def server_of(kind: str, **kw: Any) -> Any:
    """A (not started) server of ``kind``. The bridge needs Node, ``npm ci`` in
    ``bridge/`` and an unpacked Baileys (``RSOCKET_BAILEYS``); without them its tests
    skip with the reason, and under CI (``CI=true``) fail instead."""
    from rsocket.testing import ReferenceServer

    if kind == "reference":
        return ReferenceServer(**kw)
    from rsocket.testing.bridge import BridgeServer

    bridge_or_skip()
    return BridgeServer(**kw)


def rsocket_tasks() -> list[asyncio.Task[Any]]:
    """rsocket's own tasks still running (sockets, managers, runners name theirs ``rsocket-*``)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("rsocket-") and not t.done()]


def bridge_or_skip() -> None:
    """Skip the test (fail it under CI) unless Node, the bridge and Baileys are there."""
    from rsocket.testing.bridge import BridgeUnavailable, find_baileys, find_bridge

    try:
        find_bridge()
        find_baileys()
    except BridgeUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs the Baileys bridge: {exc}")
        pytest.skip(str(exc))
