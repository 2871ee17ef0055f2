"""The Baileys bridge (the Node package in ``bridge/``) as a server for tests and the demo.

:class:`BridgeServer` starts ``bridge/bin/rsocket-bridge.js --test-source`` as a child
process: each tenant's events come from Baileys' own event emitter
(``makeEventBuffer`` of an unpacked ``baileys`` package), not from an account. It has
the :class:`~rsocket.server.ReferenceServer` API the demo and the tests use, so the
same client code runs against either::

    async with BridgeServer(tenants={"t1": "token1"}) as srv:
        seqs = srv.publish_many("t1", Workload(1).take(100))  # through Baileys' ev.emit
        srv.inject("t1", "drop")
        srv.stats()["t1"]["last_seq"]

Requests go to the child as JSON lines on its stdin, one at a time, and are answered
on its stdout; they are plain (not async) calls, as the reference server's are.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec

from ..guard import GuardConfig, raise_open_files_limit
from .reference import FAULTS
from .traffic import Traffic

__all__ = ["BAILEYS_VERSION", "BridgeServer", "BridgeUnavailable", "find_baileys", "find_bridge"]

#: The Baileys release the bridge's tests and demo load the event buffer of.
BAILEYS_VERSION = "6.17.16"

_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rsocket"


class BridgeUnavailable(RuntimeError):
    """Node, the bridge package, its dependencies or Baileys are missing (the message
    says which and what to run)."""


def find_bridge(bridge_dir: str | os.PathLike[str] | None = None, *, install: bool = False) -> Path:
    """The ``bridge/`` package directory, its Node dependencies installed.

    Looks at ``bridge_dir``, then ``$RSOCKET_BRIDGE``, then ``./bridge`` and the
    ``bridge/`` of the source tree this package runs from. With ``install``, runs
    ``npm ci`` there when ``node_modules`` is missing.

    Raises:
        BridgeUnavailable: no ``node``, no bridge directory, or dependencies missing.
    """
    if shutil.which("node") is None:
        raise BridgeUnavailable("the Baileys bridge needs Node.js 20+ (`node` is not on PATH)")
    env = os.environ.get("RSOCKET_BRIDGE")
    candidates = [Path(p) for p in (bridge_dir, env) if p] or [
        Path.cwd() / "bridge", Path(__file__).resolve().parents[3] / "bridge"
    ]
    for path in candidates:
        if (path / "bin" / "rsocket-bridge.js").is_file():
            break
    else:
        raise BridgeUnavailable(
            f"no bridge package at {' or '.join(map(str, candidates))}: run from a clone of "
            "rsocket or set RSOCKET_BRIDGE to its bridge/ directory"
        )
    if not (path / "node_modules" / "ws").is_dir():
        if not install:
            raise BridgeUnavailable(f"the bridge's Node dependencies are missing: run `npm ci` in {path}")
        _npm(["ci", "--no-audit", "--no-fund"], cwd=path, what="installing the bridge's dependencies")
    return path


def find_baileys(baileys: str | os.PathLike[str] | None = None, *, install: bool = False) -> Path:
    """An unpacked ``baileys`` package (its ``lib/Utils/event-buffer.js`` is the source).

    Looks at ``baileys``, then ``$RSOCKET_BAILEYS``, then the cache
    (``~/.cache/rsocket/baileys-<version>``). With ``install``, fills the cache with
    ``npm pack baileys@<version>`` (``npm install baileys`` needs a git dependency
    that is not always reachable; the packed package alone is enough here).

    Raises:
        BridgeUnavailable: no such package, and not installed.
    """
    cached = _CACHE / f"baileys-{BAILEYS_VERSION}" / "package"
    candidates = [Path(p) for p in (baileys, os.environ.get("RSOCKET_BAILEYS")) if p] or [cached]
    for path in candidates:
        if (path / "lib" / "Utils" / "event-buffer.js").is_file():
            return path
    if not install or candidates != [cached]:
        raise BridgeUnavailable(
            f"no unpacked baileys package at {' or '.join(map(str, candidates))}: "
            f"`npm pack baileys@{BAILEYS_VERSION} && tar xzf baileys-{BAILEYS_VERSION}.tgz` "
            "and set RSOCKET_BAILEYS to the `package` directory"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    _npm(["pack", f"baileys@{BAILEYS_VERSION}", "--silent"], cwd=cached.parent,
         what=f"fetching baileys@{BAILEYS_VERSION} (npm pack)")  # fmt: skip
    tarball = cached.parent / f"baileys-{BAILEYS_VERSION}.tgz"
    shutil.unpack_archive(tarball, cached.parent)
    tarball.unlink()
    return cached


def _npm(args: list[str], *, cwd: Path, what: str) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise BridgeUnavailable(f"{what} needs npm (not on PATH)")
    print(f"rsocket: {what} in {cwd} ...", file=sys.stderr)
    done = subprocess.run([npm, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise BridgeUnavailable(f"{what} failed (npm {' '.join(args)}):\n{done.stderr.strip()}")


_SAFE_INTEGER = 2**53 - 1  # past it, a JavaScript number is not exact


def _camel(fields: dict[str, Any]) -> dict[str, Any]:
    """``max_failures`` -> ``maxFailures``: Python options as the bridge names them."""
    return {name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:]): value
            for name, value in fields.items()}


def _tag(value: Any) -> Any:
    """Python values the child's JSON cannot carry as such, tagged as Baileys hands them
    out: bytes -> ``{"$bytes": b64}`` (a ``Buffer``), integers past 2**53 -> ``{"$long":
    digits}`` (a protobuf ``Long``)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _SAFE_INTEGER:
        return {"$long": str(value)}  # a JSON number would reach Node as a float
    if isinstance(value, dict):
        return {k: _tag(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tag(v) for v in value]
    return value


def _untag(value: Any) -> Any:
    """The child's JSON tags back to Python values ({"$bytes": b64} -> bytes)."""
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        return {k: _untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untag(v) for v in value]
    return value


class BridgeServer:
    """The bridge in test mode, as a child process; an async context manager.

    Args:
        tenants: tenant name -> token (default ``{"t1": "token1"}``).
        host, port: where the bridge listens (loopback; 0 picks a free port).
        replay_window, batch_size, max_outbound: as :class:`~rsocket.server.ReferenceServer`.
        ping_interval: WebSocket-level keepalive in seconds (None disables it).
        log_dir: keep each tenant's log in this folder (the bridge's durable log: a
            bridge started again on it resumes the same sessions); None: in memory.
        bridge_dir, baileys: see :func:`find_bridge` and :func:`find_baileys`.
        install: let those run ``npm`` for what is missing.
        timeout: seconds the child has to start and to answer each request.
        guard: limits on failed hellos and unauthenticated connections, as the
            reference server's (``rsocket.guard.GuardConfig``).
        redis: one bridge of a fleet (docs/FLEET.md): accounts by lease in this
            Redis, their events from its test upstream (``rsocket.testing.fleet``).
        lease_ttl, capacity, bridge_id, prefix: the fleet's settings.

    Raises:
        BridgeUnavailable: (on start) Node, the bridge or Baileys are missing.
    """

    #: What the demo's JSON calls this server.
    kind = "baileys-bridge"

    # The reference server's options, as the Server protocol has them: either server
    # runs any test, so the signatures are alike on purpose.
    def __init__(
        self,
        tenants: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        replay_window: int = 100_000,
        batch_size: int = 100,
        max_outbound: int = 100_000,
        ping_interval: float | None = 20.0,
        log_dir: str | os.PathLike[str] | None = None,
        bridge_dir: str | os.PathLike[str] | None = None,
        baileys: str | os.PathLike[str] | None = None,
        install: bool = False,
        timeout: float = 30.0,
        guard: GuardConfig | None = None,
        redis: str | None = None,
        lease_ttl: float = 15.0,
        capacity: int | None = None,
        bridge_id: str | None = None,
        prefix: str | None = None,
    ) -> None:
        self.tenants = dict(tenants if tenants is not None else {"t1": "token1"})
        self.host = host
        self.port = port
        self.replay_window = replay_window
        self.batch_size = batch_size
        self.max_outbound = max_outbound
        self.ping_interval = ping_interval
        self.log_dir = log_dir
        self.timeout = timeout
        self.guard_config = guard if guard is not None else GuardConfig()
        fleet = {"--redis": redis, "--lease-ttl": f"{lease_ttl:g}", "--capacity": capacity,
                 "--bridge-id": bridge_id, "--prefix": prefix}
        self._fleet_args = [str(part) for option, value in fleet.items() if value is not None
                            for part in (option, value)] if redis else []
        #: this bridge's id in the fleet (set by start() with ``redis``)
        self.bridge_id = bridge_id
        self._where = (bridge_dir, baileys, install)
        self._process: subprocess.Popen[bytes] | None = None
        self._pending = bytearray()  # read from the child, not yet a whole line
        self._next_id = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._traffic = Traffic(self.publish_many, self._spawn, self.tenants.keys())

    async def __aenter__(self) -> BridgeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """``ws://host:port`` of the bridge."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    async def start(self) -> None:
        """Start the child and wait until it listens."""
        if self._process is not None:
            raise RuntimeError("bridge already started")
        bridge_dir, baileys, install = self._where
        loop = asyncio.get_running_loop()
        bridge = await loop.run_in_executor(None, lambda: find_bridge(bridge_dir, install=install))
        package = await loop.run_in_executor(None, lambda: find_baileys(baileys, install=install))
        command = [
            shutil.which("node") or "node", str(bridge / "bin" / "rsocket-bridge.js"),
            "--test-source", "--baileys", str(package), "--host", self.host,
            "--port", str(self.port), "--tenants", json.dumps(self.tenants),
            "--replay-window", str(self.replay_window), "--batch-size", str(self.batch_size),
            "--max-outbound", str(self.max_outbound),
            "--ping-interval", "none" if self.ping_interval is None else f"{self.ping_interval:g}",
            *(("--log-dir", str(self.log_dir)) if self.log_dir is not None else ()),
            "--guard", json.dumps(_camel(asdict(self.guard_config))),
            *self._fleet_args,
        ]  # fmt: skip
        raise_open_files_limit()  # the child inherits it: Node cannot raise its own
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            ready = await loop.run_in_executor(None, self._read_reply)
        except BaseException:
            self._kill()
            raise
        self.port = int(ready["port"])
        self.bridge_id = ready.get("bridge", self.bridge_id)

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (tests pause and kill it)."""
        return self._process.pid if self._process is not None else None

    def kill(self) -> None:
        """SIGKILL the child, as a crash: no close, no lease released."""
        self._kill()

    async def close(self) -> None:
        """Stop traffic, close the bridge (its connections get 1001) and reap the child."""
        process = self._process
        if process is None:
            return
        self.stop_traffic()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if process.poll() is None:
                self._request("close")
                await asyncio.get_running_loop().run_in_executor(None, process.wait, self.timeout)
        except (BridgeUnavailable, RuntimeError, subprocess.TimeoutExpired):
            pass
        finally:
            self._kill()

    # -- the ReferenceServer API ---------------------------------------------------

    def publish(self, tenant: str, name: str, data: Any) -> int:
        """Emit one event on ``tenant``'s Baileys emitter; returns its seq (of its
        last part, when the bridge split it).

        Raises:
            KeyError: unknown tenant.
            ValueError: the bridge appended nothing (``creds.update`` is never
                forwarded; a detached or logged-out tenant has no emitter feeding it).
        """
        seqs = self.publish_many(tenant, [(name, data)])
        if not seqs:
            raise ValueError(f"the bridge appended no event for {name!r} to {tenant!r}'s log")
        return seqs[-1]

    def publish_many(
        self, tenant: str, events: Iterable[tuple[str, Any]], *, buffered: bool = False
    ) -> range:
        """Emit ``(name, data)`` events on ``tenant``'s Baileys emitter, one ``ev.emit``
        each (``buffered``: between ``ev.buffer()`` and ``ev.flush()``, so Baileys
        consolidates them first). Payloads travel as JSON: ``bytes`` become a ``Buffer``;
        ``{"$long": "123"}``, ``{"$bytes": "<base64>"}`` and ``{"$undefined": 1}``
        stand for a protobuf ``Long``, a ``Buffer`` and ``undefined``.

        Returns:
            The seqs the bridge appended.
        """
        self._check(tenant)
        events = (_tag(event) for event in events)
        if buffered:  # one buffer()/flush() around all of them
            reply = self._request("emit", tenant=tenant, events=list(events), buffered=True)
            return range(reply["first"], reply["last"] + 1)
        first = last = None
        events = iter(events)
        while chunk := list(islice(events, 1000)):  # bounded requests, however many events
            reply = self._request("emit", tenant=tenant, events=chunk)
            first = reply["first"] if first is None else first
            last = reply["last"]
        if first is None or last is None:
            return range(0)
        return range(first, last + 1)  # empty when Baileys released nothing

    def inject(self, tenant: str, fault: str, **kw: Any) -> None:
        """Inject a fault, as :meth:`rsocket.server.ReferenceServer.inject`."""
        self._check(tenant)
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {FAULTS}")
        self._request("inject", tenant=tenant, fault=fault, params=kw)

    def reset(self, tenant: str) -> None:
        """Start ``tenant``'s log afresh (new session); a live connection gets 515."""
        self._check(tenant)
        self._request("reset", tenant=tenant)

    def retained(self, tenant: str) -> list[tuple[str, Any]]:
        """The events ``tenant``'s log holds, as the bridge converted them."""
        self._check(tenant)
        return [(name, data) for name, data in _untag(self._request("retained", tenant=tenant)["events"])]

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per tenant, the reference server's counters plus ``attached`` and ``logged_out``."""
        stats: dict[str, dict[str, Any]] = self._request("stats")["stats"]
        return stats

    def sent(self, tenant: str) -> list[dict[str, Any]]:
        """The ``sendMessage(jid, content)`` calls ``tenant``'s test socket recorded."""
        self._check(tenant)
        sent: list[dict[str, Any]] = self._request("sent", tenant=tenant)["sent"]
        return sent

    def logout(self, tenant: str) -> None:
        """Make ``tenant``'s Baileys socket report a logout (``connection.update`` close, 401)."""
        self._check(tenant)
        self._request("logout", tenant=tenant)

    def whatsapp(self, tenant: str, kind: str, **params: Any) -> tuple[range, list[str]]:
        """Emit real-sized WhatsApp payloads built with Baileys' own protobuf classes on
        ``tenant``'s Baileys emitter: ``"history"`` (a first login's history sync, about
        5 MB), ``"images"`` (``count`` offline images with ``thumbnail``-byte JPEG
        thumbnails), ``"lid"`` (Baileys 7 LID-addressed messages).

        Returns:
            The seqs the bridge appended and the message ids the payloads carry.
        """
        self._check(tenant)
        reply = self._request("whatsapp", tenant=tenant, kind=kind, params=params)
        return range(reply["first"], reply["last"] + 1), reply["ids"]

    def attach(self, tenant: str) -> None:
        """Attach a new test socket to ``tenant`` (as after a new login)."""
        self._check(tenant)
        self._request("attach", tenant=tenant)

    def start_traffic(
        self, rate: float, tenants: Iterable[str] | None = None, *, seed: int = 1
    ) -> None:
        """Emit the standard event mix at ``rate`` events/s per tenant, as
        :meth:`rsocket.server.ReferenceServer.start_traffic`."""
        if self._process is None:
            raise RuntimeError("start the bridge before its traffic")
        self._traffic.start(rate, tenants, seed)

    def stop_traffic(self) -> None:
        """Stop every traffic generator."""
        self._traffic.stop()

    # -- the child -------------------------------------------------------------------

    def _check(self, tenant: str) -> None:
        if tenant not in self.tenants:
            raise KeyError(tenant)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _request(self, op: str, **fields: Any) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdin is None:
            raise RuntimeError("the bridge is not running")
        self._next_id += 1
        line = msgspec.json.encode({"id": self._next_id, "op": op, **fields}) + b"\n"
        try:
            process.stdin.write(line)
            process.stdin.flush()
        except BrokenPipeError:
            raise BridgeUnavailable(f"the bridge exited (code {process.poll()})") from None
        reply = self._read_reply()
        while isinstance(reply.get("id"), int) and reply["id"] < self._next_id:
            reply = self._read_reply()  # the late answer to a request that timed out
        if reply.get("id") != self._next_id:
            raise RuntimeError(f"bridge answered request {reply.get('id')}, expected {self._next_id}")
        if not reply["ok"]:
            raise RuntimeError(f"bridge {op}: {reply['error']}")
        return reply

    def _read_reply(self) -> dict[str, Any]:
        """The child's next stdout line, within ``timeout``."""
        process = self._process
        assert process is not None and process.stdout is not None
        fd = process.stdout.fileno()
        deadline = time.monotonic() + self.timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._pending:
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    raise BridgeUnavailable(f"the bridge did not answer within {self.timeout:g} s")
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise BridgeUnavailable(f"the bridge exited (code {process.wait()})")
                self._pending += chunk
        end = self._pending.index(b"\n")
        line = bytes(self._pending[:end])
        del self._pending[: end + 1]
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self._pending.clear()
        if process.poll() is None:
            process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
