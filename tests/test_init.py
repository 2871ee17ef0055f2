"""The public import surface and the core selection."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rsocket

OWN_MODULE = {
    "EventBuffer": "rsocket.buffer", "BufferConfig": "rsocket.buffer",
    "BufferedData": "rsocket.buffer", "BufferStats": "rsocket.buffer",
    "MessageStatus": "rsocket.buffer", "DisconnectReason": "rsocket.buffer",
    "live_buffers": "rsocket.buffer", "ProtocolError": "rsocket.protocol",
    "Socket": "rsocket.socket", "SocketConfig": "rsocket.socket",
    "CircuitBreaker": "rsocket.breaker", "ConnectionManager": "rsocket.manager",
    "TenantPool": "rsocket.pool", "SeqStore": "rsocket.manager",
    "FileSeqStore": "rsocket.manager", "Cursor": "rsocket.manager",
    "DisconnectError": "rsocket.errors", "QueryError": "rsocket.errors",
    "MemorySeqStore": "rsocket.cursor", "Retry": "rsocket.retry",
    "DeadLetter": "rsocket.retry", "Seqs": "rsocket.seqs",
    "FileDeadLetters": "rsocket.deadletters", "RedisDeadLetters": "rsocket.deadletters",
}


def test_public_names_are_exported_and_importable_from_their_module():
    assert set(OWN_MODULE) | {"__version__"} == set(rsocket.__all__)
    for name, module in OWN_MODULE.items():
        assert getattr(importlib.import_module(module), name) is getattr(rsocket, name), name
    assert isinstance(rsocket.__version__, str)


def test_moved_names_still_import_with_a_deprecation_warning():
    from rsocket.apps.logformat import JsonFormatter

    with pytest.warns(DeprecationWarning, match="rsocket.pool"):
        from rsocket.manager import TenantPool
    assert TenantPool is rsocket.TenantPool
    with pytest.warns(DeprecationWarning, match="rsocket.apps.logformat"):
        from rsocket.logs import JsonFormatter as moved
    assert moved is JsonFormatter
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        importlib.import_module("rsocket.manager").nope  # noqa: B018


def python(code: str, **env: str) -> str:
    environ = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, check=True, timeout=60).stdout.strip()


def test_a_client_never_imports_the_server():
    assert python("import sys, rsocket; print('rsocket.testing' in sys.modules)") == "False"


@pytest.mark.c_extension
def test_the_compiled_core_is_the_default():
    from rsocket import _buffer, buffer

    assert buffer.IMPLEMENTATION == "cython"
    assert buffer.BufferedData is _buffer.BufferedData
    ev = rsocket.EventBuffer()
    try:
        assert isinstance(ev._core, _buffer.BufferCore)
        assert ev.emit == ev._core.emit  # the per-event call goes straight into C
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


def test_without_the_compiled_core_a_warning_says_so_once():
    # as after a build without a compiler: the import of rsocket._buffer fails
    code = ("import sys; sys.modules['rsocket._buffer'] = None; "
            "import rsocket.buffer as b; import rsocket; print(b.IMPLEMENTATION)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True, env={**os.environ, "RSOCKET_NO_EXTENSIONS": ""})
    assert result.stdout.strip() == "python"
    assert result.stderr.count("the compiled merge core is not available") == 1


def test_choosing_the_pure_core_is_silent():
    result = subprocess.run([sys.executable, "-c", "import rsocket"], capture_output=True,
                            text=True, timeout=60, check=True,
                            env={**os.environ, "RSOCKET_NO_EXTENSIONS": "1"})
    assert result.stderr == ""


@pytest.mark.parametrize("required", ["yes", ""])
def test_rsocket_build_extension_yes_makes_a_failed_compile_an_error(tmp_path, required):
    pytest.importorskip("Cython")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CC": "/bin/false", "RSOCKET_BUILD_EXTENSION": required,
           "RSOCKET_NO_EXTENSIONS": ""}
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=root, capture_output=True, text=True, timeout=300, env=env,
    )
    if required:
        assert result.returncode != 0
        assert "/bin/false" in result.stderr  # the compile failed, and that failed the build
    else:
        assert result.returncode == 0, result.stderr
        assert "installing the pure-Python core" in result.stderr


def test_the_repository_owns_its_contract():
    """Code, tests and docs cite docs/, never a brief outside the repository."""
    root = Path(__file__).resolve().parents[1]
    # spelled in two pieces so that this test does not find itself
    outside = ("S" "PEC section", "S" "PEC.md", "../" "shared", "shared" "/bench")
    offenders = []
    for folder in ("src", "tests", "benchmarks", "bridge/lib", "bridge/bin", "bridge/test",
                   "docs", "examples", ".ci"):
        for path in (root / folder).rglob("*"):
            if path.suffix in (".py", ".pyx", ".js", ".md", "") and path.is_file() \
                    and "node_modules" not in path.parts:
                text = path.read_text(encoding="utf-8", errors="replace")
                offenders += [f"{path.relative_to(root)}: {word}" for word in outside if word in text]
    readme = (root / "README.md").read_text(encoding="utf-8")
    offenders += [f"README.md: {word}" for word in outside if word in readme]
    assert not offenders, offenders
