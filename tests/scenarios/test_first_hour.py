"""What a newcomer meets in the first hour: errors that show without any logging
set up, hooks that take them over, replies, stopping from code, plain messages,
crash-safe cursors."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

from rsocket import BufferConfig, DisconnectError, EventBuffer, QueryError, TenantPool
from rsocket.socket import Socket, SocketConfig
from rsocket.testing import ReferenceServer

from ..helpers import until

ROOT = Path(__file__).resolve().parents[2]
TENANTS = {"t1": "secret", "t2": "secret", "t3": "secret"}  # one token, as a user types it
pytestmark = pytest.mark.server_options(tenants=TENANTS, ping_interval=20.0)
FAST = SocketConfig(keepalive_interval=1, connect_timeout=2, close_timeout=1, drain_timeout=1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_python(code: str, *args: str, env: dict[str, str] | None = None,
                     timeout: float = 60.0) -> tuple[str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, err.decode()[-3000:]
    return out.decode(), err.decode()


# -- no silent failures ------------------------------------------------------------------------

SILENT = textwrap.dedent("""
    import asyncio, sys
    from rsocket import TenantPool

    calls = 0

    async def handler(tenant, batch):
        global calls
        if "messages.upsert" in batch:
            calls += 1
            1 / 0  # a bug in the application's handler

    async def main(url, down):
        pool = TenantPool(backoff=(0.2,))
        pool.process(handler)
        try:
            await pool.add("t0", "http://127.0.0.1:1", "secret")
        except ValueError as exc:
            print("ValueError:", exc)
        await pool.add("t1", url, "wrong")         # a wrong token
        await pool.add("t2", down, "secret")       # a server that is not running
        await pool.add("t3", url, "secret")        # a handler that raises

        async def everything_happened():           # a refusal, failed connects, a retry
            while not (pool.get("t1").state == "logged_out"
                       and pool.get("t2").reconnects >= 3 and calls >= 2):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(everything_happened(), 30)
        await pool.close()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


async def test_errors_reach_stderr_with_no_logging_configured(server: ReferenceServer):
    server.start_traffic(20, ["t3"])
    down = f"ws://127.0.0.1:{free_port()}"
    out, err = await run_python(SILENT, server.url, down)
    assert "ValueError: not a WebSocket URL: 'http://127.0.0.1:1'" in out
    assert "t1: logged out (401 bad token)" in err
    assert f"t2: cannot connect to {down}" in err and "Connect call failed" in err
    assert "t2: cannot connect" in err and err.count("t2: cannot connect") == 1  # once a minute
    assert "t3: handler handler raised on a batch" in err and "ZeroDivisionError" in err
    assert "retrying in" in err  # and it says what happens next
    # routine lines stay out of the way
    assert "socket open" not in err and "reconnect in" not in err


async def test_on_error_and_on_state_take_them_over(server: ReferenceServer, caplog):
    caplog.set_level(logging.DEBUG, logger="rsocket")
    errors: list[tuple[str, BaseException]] = []
    states: list[tuple[str, str, int | None]] = []

    def handler(tenant: str, batch: dict[str, Any]) -> None:
        if "chats.delete" in batch:
            raise KeyError("oops")

    async with TenantPool(watchdog=False, socket_config=FAST, backoff=(0.05,)) as pool:
        pool.on_error(lambda tenant, exc: errors.append((tenant, exc)))
        pool.process(handler)
        await pool.add("t1", server.url, "secret")
        pool.on_state(lambda tenant, state, code: states.append((tenant, state, code)))
        await pool.add("t2", server.url, "wrong")
        server.publish("t1", "chats.delete", ["x@s.whatsapp.net"])
        await until(lambda: any(isinstance(e, KeyError) for _, e in errors))
        server.inject("t1", "stream_error", code=503)
        await until(lambda: ("t1", "waiting", 503) in states)
        await until(lambda: states.count(("t1", "open", None)) == 1)
    assert ("t2", "logged_out", 401) in states
    assert ("t1", "destroyed", None) in states  # close() reaches the hook too
    kinds = {(tenant, type(exc).__name__, getattr(exc, "status_code", None))
             for tenant, exc in errors}
    assert {("t1", "KeyError", None), ("t2", "DisconnectError", 401),
            ("t1", "DisconnectError", 503)} <= kinds
    # taken over: nothing at WARNING or above from rsocket
    loud = [r.getMessage() for r in caplog.records  # (the test server's own lines aside)
            if r.name.startswith("rsocket") and not r.name.startswith("rsocket.server")
            and r.levelno >= logging.WARNING]
    assert not loud, loud


async def test_a_hook_that_raises_is_logged_not_fatal(server: ReferenceServer, caplog):
    def broken(tenant: str, exc: BaseException) -> None:
        raise RuntimeError("hook bug")

    async with TenantPool(watchdog=False, socket_config=FAST) as pool:
        pool.on_error(broken)
        await pool.add("t1", server.url, "wrong")
        await until(lambda: pool.get("t1").state == "logged_out")
    assert any("on_error hook raised" in r.getMessage() for r in caplog.records)


# -- replies, stopping, status -------------------------------------------------------------


async def test_pool_query_replies_through_the_tenant(server: ReferenceServer):
    async with TenantPool(watchdog=False, socket_config=FAST) as pool:
        await pool.add("t1", server.url, "secret")
        result = await pool.query("t1", "send_message", {"jid": "1@s.whatsapp.net", "text": "hi"})
        assert result["key"]["fromMe"] is True and result["key"]["remoteJid"] == "1@s.whatsapp.net"
        assert await pool.get("t1").query("echo", [1, 2]) == [1, 2]
        with pytest.raises(QueryError, match="unknown method 'nope'"):
            await pool.query("t1", "nope")
        with pytest.raises(KeyError, match="t9"):
            await pool.query("t9", "echo")
        server.inject("t1", "stream_error", code=503)
        await until(lambda: not pool.get("t1").connected)
        with pytest.raises(DisconnectError, match="not connected"):
            await pool.query("t1", "echo")


async def test_close_from_code_ends_run_forever_and_status_stays_meaningful(
    server: ReferenceServer,
):
    server.publish_many("t1", [("chats.upsert", [{"id": f"c{i}"}]) for i in range(5)])
    pool = TenantPool(watchdog=False, socket_config=FAST)
    await pool.add("t1", server.url, "secret")
    await until(lambda: pool.get("t1").events_processed == 5)
    runner = asyncio.create_task(pool.run_forever())
    await asyncio.sleep(0)
    await pool.close()
    await asyncio.wait_for(runner, 5)  # run_forever returned
    status = pool.status()["t1"]
    assert status["state"] == "destroyed" and not status["connected"]
    assert status["events_processed"] == 5 and status["last_seq"] == 5
    await pool.add("t1", server.url, "secret")  # usable again
    assert pool.status()["t1"]["state"] == "open"
    await pool.close()


async def test_a_first_connect_is_not_resumed_and_a_reconnect_is(server: ReferenceServer):
    server.publish("t1", "chats.delete", ["x"])
    opened: list[dict[str, Any]] = []

    def record(batch: dict[str, Any]) -> None:
        update = batch.get("connection.update")
        if update and update.get("connection") == "open":
            opened.append(update)

    first = Socket(server.url, "t1", "secret", config=FAST)
    first.ev.process(record)
    async with first:
        await until(lambda: first.last_seq == 1)
    again = Socket(server.url, "t1", "secret", resume=first.last_seq, epoch=first.epoch,
                   config=FAST)
    again.ev.process(record)
    async with again:
        pass
    assert [u["resumed"] for u in opened] == [False, True]


# -- plain messages ----------------------------------------------------------------------------


async def test_wss_against_a_plain_server_says_so(server: ReferenceServer):
    sock = Socket(server.url.replace("ws://", "wss://"), "t1", "secret", config=FAST)
    with pytest.raises(DisconnectError, match=r"TLS handshake .* failed.*plain ws:// server"):
        await sock.connect()


async def test_an_unknown_tenant_is_a_bad_token(server: ReferenceServer):
    sock = Socket(server.url, "nobody", "secret", config=FAST)
    with pytest.raises(DisconnectError, match="401 bad token"):
        await sock.connect()


def test_an_unknown_event_name_warns_once_or_fails_when_strict():
    ev = EventBuffer(config=BufferConfig(auto_flush=False))
    try:
        with pytest.warns(UserWarning, match=r"'chats\.upsrt' \(did you mean 'chats\.upsert'\?\)"):
            ev.on("chats.upsrt", print)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ev.on("chats.upsrt", print)  # once per name: no second warning
            ev.on("chats.upsert", print)  # a real name: none
            ev.on("presence.update", print)  # not buffered, but a Baileys event: none
        with pytest.raises(ValueError, match=r"unknown event name 'contacts\.upd'"):
            ev.on("contacts.upd", print, strict=True)
    finally:
        ev.destroy()


LOUD_ONLY = textwrap.dedent("""
    import asyncio, logging, sys
    from rsocket import TenantPool
    logging.basicConfig(level=logging.INFO)   # what a newcomer writes first

    async def main(url):
        async with TenantPool(backoff=(0.05,)) as pool:
            pool.process(lambda tenant, batch: None)
            await pool.add("t1", url, "secret")
            await asyncio.sleep(1.0)

    asyncio.run(main(sys.argv[1]))
""")


async def test_info_logging_shows_no_routine_lines(server: ReferenceServer):
    server.start_traffic(50, ["t1"])
    for delay in (0.3, 0.6):
        asyncio.get_running_loop().call_later(
            delay, server.inject, "t1", "stream_error")  # reconnects to log about
    _, err = await run_python(LOUD_ONLY, server.url)
    lines = [line for line in err.splitlines() if "rsocket" in line]
    assert not [line for line in lines if "lifecycle" in line or "reconnect in" in line
                or "socket open" in line or "buffer destroyed" in line], lines
    assert len(lines) <= 3, lines  # a 10,000-line flood before


# -- crash-safe cursors ------------------------------------------------------------------------


async def test_after_kill_9_a_restart_replays_at_most_about_the_save_interval(
    server: ReferenceServer, tmp_path: Path,
):
    """The cursor is saved about once a second while a socket is open (every store):
    a bot killed with SIGKILL resumes from that save, not from its last reconnect."""
    rate = 20  # events/s for t1
    server.start_traffic(rate, ["t1"])
    cursors = tmp_path / "cursors.json"
    args = [str(ROOT / "examples" / "pool_bot.py"), "--url", server.url, "--tenants", "t1",
            "--cursors", str(cursors)]
    bot = await asyncio.create_subprocess_exec(sys.executable, *args,
                                               stdout=asyncio.subprocess.PIPE)
    processed = 0
    assert bot.stdout is not None
    async with asyncio.timeout(30):
        while processed < 3 * rate:  # about 3 s of events: several periodic saves
            line = (await bot.stdout.readline()).decode()
            if m := re.match(r"t1: seqs \d+\.\.(\d+)", line):
                processed = int(m[1])
    bot.send_signal(signal.SIGKILL)
    await bot.wait()
    saved = json.loads(cursors.read_text())["t1"]["seq"]
    assert 0 < saved <= processed
    replay = processed - saved
    # at most the events of one save interval (1 s), with room for a busy machine
    assert replay <= rate * 3, (processed, saved)

    again = await asyncio.create_subprocess_exec(sys.executable, *args, "--seconds", "1",
                                                 stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(again.communicate(), 30)
    assert again.returncode == 0
    start = int(re.search(r"t1: seqs (\d+)\.\.", out.decode())[1])
    assert start == saved + 1  # resumed from the periodic save: nothing lost, little again
