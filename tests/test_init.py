"""The public import surface and the core selection (SPEC section 1)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

import rsocket

OWN_MODULE = {
    "EventBuffer": "rsocket.buffer", "BufferConfig": "rsocket.buffer",
    "BufferedData": "rsocket.buffer", "BufferStats": "rsocket.buffer",
    "MessageStatus": "rsocket.buffer", "DisconnectReason": "rsocket.buffer",
    "live_buffers": "rsocket.buffer", "ProtocolError": "rsocket.protocol",
    "Socket": "rsocket.socket", "SocketConfig": "rsocket.socket",
    "CircuitBreaker": "rsocket.breaker", "ConnectionManager": "rsocket.manager",
    "TenantPool": "rsocket.manager", "SeqStore": "rsocket.manager",
    "FileSeqStore": "rsocket.manager", "Cursor": "rsocket.manager",
    "DisconnectError": "rsocket.errors",
}


def test_public_names_are_exported_and_importable_from_their_module():
    assert set(OWN_MODULE) | {"__version__"} == set(rsocket.__all__)
    for name, module in OWN_MODULE.items():
        assert getattr(importlib.import_module(module), name) is getattr(rsocket, name), name
    assert isinstance(rsocket.__version__, str)


def python(code: str, **env: str) -> str:
    environ = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, check=True, timeout=60).stdout.strip()


def test_a_client_never_imports_the_server():
    assert python("import sys, rsocket; print('rsocket.server' in sys.modules)") == "False"


@pytest.mark.c_extension
def test_the_compiled_core_is_the_default():
    from rsocket import _buffer, buffer

    assert buffer.IMPLEMENTATION == "cython"
    assert buffer.BufferCore is _buffer.BufferCore
    ev = rsocket.EventBuffer()
    try:
        assert isinstance(ev, _buffer.BufferCore)
    finally:
        ev.destroy()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", "python"), ("true", "python"), ("YES", "python"),
     ("", "cython"), ("0", "cython"), ("false", "cython"), ("no", "cython")],
)
@pytest.mark.c_extension
def test_rsocket_no_extensions_forces_the_pure_core(value, expected):
    code = "import rsocket.buffer as b; print(b.IMPLEMENTATION)"
    assert python(code, RSOCKET_NO_EXTENSIONS=value) == expected
