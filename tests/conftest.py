"""Shared fixtures: the buffer suite runs over every available merge core."""

from __future__ import annotations

import asyncio
import gc
import importlib
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import rsocket
from rsocket._compat import NO_EXTENSIONS
from rsocket.buffer import BufferConfig, event_buffer_class

CORES = [
    pytest.param("rsocket._buffer", id="c-extension", marks=pytest.mark.c_extension),
    pytest.param("rsocket._buffer_py", id="pure-python"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--c-extensions",
        action="store_true",
        default=not NO_EXTENSIONS,
        help="run the compiled core too (default unless RSOCKET_NO_EXTENSIONS is set)",
    )
    parser.addoption("--no-c-extensions", dest="c_extensions", action="store_false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("c_extensions"):
        return
    skip = pytest.mark.skip(reason="compiled core disabled (--no-c-extensions)")
    for item in items:
        if "c_extension" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_failure_logs() -> None:
    """Each test sees a handler's first failure logged in full (the rate limit is
    process-wide, by handler name)."""
    from rsocket.runner import FailureLog

    FailureLog.forget()


@pytest.fixture(scope="session", params=CORES)
def buffer_core(request: pytest.FixtureRequest) -> ModuleType:
    """The merge core module; a missing compiled core is an error, not a skip."""
    return importlib.import_module(request.param)


@pytest.fixture
def EventBuffer(buffer_core: ModuleType) -> type:
    return event_buffer_class(buffer_core)


@pytest.fixture
def make_buffer(EventBuffer: type) -> Iterator[Callable[..., Any]]:
    """Create buffers (``make_buffer(**config)``); all are destroyed at teardown."""
    created: list[Any] = []
    baseline = rsocket.live_buffers()

    def make(logger: Any = None, **config: Any) -> Any:
        config.setdefault("auto_flush", False)
        ev = EventBuffer(logger=logger, config=BufferConfig(**config))
        created.append(ev)
        return ev

    yield make
    for ev in created:
        ev.destroy()
    assert rsocket.live_buffers() == baseline


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fails a test that leaves tasks of its own running on the loop."""
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)  # let just-cancelled tasks finish
    gc.collect()
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    assert not leaked, f"leaked tasks: {leaked}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A real ``redis-server`` on a free 127.0.0.1 port, persistence off, for the session.

    ``.url``, ``.port`` and ``.process`` (tests may SIGSTOP/SIGCONT it). Without
    the binary (or the ``redis`` package) the Redis tests skip with a reason;
    under CI (``CI=true``) that is a failure instead.
    """
    import os
    import shutil

    from rsocket.apps.redis_local import LocalRedis

    missing = None
    try:
        import redis  # noqa: F401
    except ImportError:
        missing = "the 'redis' package is not installed (pip install 'rsocket-events[redis]')"
    if missing is None and shutil.which("redis-server") is None:
        missing = "redis-server is not installed (apt-get install redis-server)"
    if missing is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs a real Redis: {missing}")
        pytest.skip(missing)
    server = LocalRedis()
    try:
        yield server
    finally:
        server.stop()
