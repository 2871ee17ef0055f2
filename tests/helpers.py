"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(
    predicate: Callable[[], object | Awaitable[object]],
    timeout: float = 5.0,
    what: str = "the condition",
    *,
    step: float = 0.005,
) -> float:
    """Poll ``predicate`` (sync or async) until it is true; returns the seconds it took.

    Raises:
        TimeoutError: not true within ``timeout`` seconds (names ``what``).
    """
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
