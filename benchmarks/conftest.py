"""Fixtures for the buffer benchmarks: both merge cores, the standard workload."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from gate import CORES, cache_keys_blob, load_workload
from rsocket._compat import NO_EXTENSIONS
from rsocket.apps.bench import Copies


def pytest_addoption(parser: pytest.Parser) -> None:
    try:  # tests/conftest.py declares the same options when both folders run together
        parser.addoption("--c-extensions", action="store_true", default=not NO_EXTENSIONS)
        parser.addoption("--no-c-extensions", dest="c_extensions", action="store_false")
    except ValueError:
        pass


@pytest.fixture(scope="session", params=list(CORES), ids=list(CORES))
def core(request: pytest.FixtureRequest) -> ModuleType:
    """The merge core module: ``c`` (compiled) or ``py`` (pure)."""
    if request.param == "c" and not request.config.getoption("c_extensions"):
        pytest.skip("compiled core disabled (--no-c-extensions)")
    return importlib.import_module(CORES[request.param])


@pytest.fixture(scope="session")
def workload() -> Copies:
    """mixed-100k (or ``RSOCKET_BENCH_EVENTS`` events), fresh copies by pickle (or
    by msgspec, as a socket decodes them, with ``RSOCKET_BENCH_DECODE=msgspec``)."""
    return load_workload(int(os.environ.get("RSOCKET_BENCH_EVENTS", "100000")),
                         decode=os.environ.get("RSOCKET_BENCH_DECODE", "pickle"))


@pytest.fixture(scope="session")
def cache_keys() -> bytes:
    return cache_keys_blob(1_000_000)
