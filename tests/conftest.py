"""Shared fixtures: the buffer suite runs over every available merge core, the
socket suites over every server kind (``server``), and one leak checker
(``no_leaks``)."""

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

from .helpers import SERVERS, TENANTS, server_of

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
async def no_leaks() -> AsyncIterator[None]:
    """Fails a test that leaves a task of its own running once it (and its server)
    ended; just-cancelled tasks get a bounded moment to finish."""
    before = asyncio.all_tasks()
    yield
    new = asyncio.all_tasks() - before - {asyncio.current_task()}
    if new:
        await asyncio.wait(new, timeout=5)
    gc.collect()
    leaked = [t for t in new if not t.done()]
    assert not leaked, f"leaked tasks: {leaked}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``server`` runs on each kind a ``servers`` mark names (bare: every kind)."""
    if "server" not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker("servers")
    kinds = ("reference",) if mark is None else (mark.args or SERVERS)
    metafunc.parametrize("server", kinds, indirect=True)


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A started test server on 127.0.0.1 (``rsocket.testing.Server``): the reference
    server, or each kind a ``servers`` mark names. It serves :data:`TENANTS` with
    no pings, unless a ``server_options(**kw)`` mark says otherwise (the closest mark
    wins whole, it does not merge with a module's; ``traffic=rate``:
    the standard mix at ``rate`` events/s per tenant from the start)."""
    mark = request.node.get_closest_marker("server_options")
    options = {"tenants": TENANTS, "ping_interval": None, **(mark.kwargs if mark else {})}
    traffic = options.pop("traffic", None)
    async with server_of(request.param, **options) as srv:
        if traffic:
            srv.start_traffic(traffic)
        yield srv


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
