"""How the command line runs its coroutines: on uvloop when it is installed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from .._compat import env_flag

__all__ = ["loop_name", "run"]

T = TypeVar("T")


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
