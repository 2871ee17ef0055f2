"""Optional speedups: which merge core to load, and uvloop when it is installed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["NO_EXTENSIONS", "env_flag", "loop_name", "parse_flag", "run", "stop_on_signals"]

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"", "0", "false", "no"})


def parse_flag(text: str) -> bool | None:
    """True for 1/true/yes, False for 0/false/no or empty (any case, spaces
    ignored), None for anything else: the one reading of rsocket's flags."""
    word = text.strip().lower()
    return True if word in _TRUE else False if word in _FALSE else None


def env_flag(name: str) -> bool:
    """True when the variable ``name`` is 1/true/yes (anything else is False)."""
    return parse_flag(os.environ.get(name, "")) is True


NO_EXTENSIONS = env_flag("RSOCKET_NO_EXTENSIONS") or sys.implementation.name != "cpython"


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool | None = None) -> T:
    """Run ``main`` on uvloop when it is installed (and not disabled), else asyncio.

    ``RSOCKET_NO_UVLOOP=1`` or ``use_uvloop=False`` forces the stock loop.
    """
    if use_uvloop is None:
        use_uvloop = not env_flag("RSOCKET_NO_UVLOOP")
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: what the running loop is."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set ``stop`` (where the platform has the handlers)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
