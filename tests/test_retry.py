"""A handler that raises: retried in order, then dead-lettered; never skipped silently.

Buffer-level tests run over both merge cores; socket and pool tests against both
servers on loopback; the crash test kills a real bot process with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rsocket import (
    DeadLetter,
    FileDeadLetters,
    RedisDeadLetters,
    Retry,
    Seqs,
    Socket,
    SocketConfig,
    TenantPool,
)
from rsocket.buffer import BufferConfig

from .helpers import TENANTS, server_of, until

pytestmark = pytest.mark.servers()  # the `server` fixture: the reference server, then the bridge

QUICK = Retry(attempts=3, backoff=(0.01, 0.02))
FAST = SocketConfig(keepalive_interval=0.5, keepalive_grace=0.5, connect_timeout=2,
                    close_timeout=1, drain_timeout=1,
                    buffer=BufferConfig(auto_flush=True, auto_flush_timeout=0.2))


def chats(*ids: str) -> list[dict[str, Any]]:
    return [{"id": i} for i in ids]


class Flaky:
    """A handler (sync or async) that fails its first ``failures`` calls per batch."""

    def __init__(self, failures: int, settled: list[range] | None = None) -> None:
        self.failures = failures
        self.calls: list[tuple[Any, ...]] = []
        self.settled_at_call: list[int] = []
        self.settled = settled
        self.failed: dict[str, int] = {}

    def __call__(self, batch: dict[str, Any], *rest: Any) -> None:
        self.calls.append((batch, *rest))
        if self.settled is not None:
            self.settled_at_call.append(len(self.settled))
        key = json.dumps(batch, sort_keys=True, default=str)
        if self.failed.get(key, 0) < self.failures:
            self.failed[key] = self.failed.get(key, 0) + 1
            raise ConnectionError("database unavailable")


def as_async(flaky: Flaky) -> Any:
    async def handler(batch: dict[str, Any], *rest: Any) -> None:
        await asyncio.sleep(0)
        flaky(batch, *rest)

    return handler


KINDS = ["sync", "async"]


def register(ev: Any, flaky: Flaky, kind: str, **kw: Any) -> None:
    ev.process(flaky if kind == "sync" else as_async(flaky), **kw)


# -- the buffer, both cores ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_batch_failing_twice_is_handed_three_times_and_settles_after(make_buffer, kind):
    ev = make_buffer()
    settled: list[range] = []
    ev.on_settled = settled.append
    flaky = Flaky(failures=2, settled=settled)
    register(ev, flaky, kind, retry=QUICK)
    ev.buffer()
    ev.emit("chats.upsert", chats("a"), seq=1)
    ev.emit("chats.upsert", chats("b"), seq=2)
    try:
        ev.flush()
    except ConnectionError:
        assert kind == "sync"  # a sync handler's first failure reaches the caller too
    await until(lambda: settled, timeout=5)
    assert [c[0] for c in flaky.calls] == [{"chats.upsert": chats("a", "b")}] * 3
    assert flaky.settled_at_call == [0, 0, 0]  # the cursor waited for the third call
    assert settled == [range(1, 3)]
    await ev.drain()


@pytest.mark.parametrize("kind", KINDS)
async def test_later_batches_wait_for_the_one_being_retried(make_buffer, kind):
    ev = make_buffer()
    settled: list[range] = []
    ev.on_settled = settled.append
    flaky = Flaky(failures=2)
    register(ev, flaky, kind, retry=QUICK)
    for seq, chat in ((1, "a"), (2, "b"), (3, "c")):
        try:
            ev.emit("chats.upsert", chats(chat), seq=seq)
        except ConnectionError:
            pass
    await until(lambda: len(settled) == 3, timeout=5)
    order = [c[0]["chats.upsert"][0]["id"] for c in flaky.calls]
    assert order == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert settled == [range(1, 2), range(2, 3), range(3, 4)]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_poison_batch_is_dead_lettered_and_later_events_flow(make_buffer, kind):
    ev = make_buffer()
    ev.tenant = "t9"
    ev.epoch = "e1"
    settled: list[range] = []
    ev.on_settled = settled.append
    letters: list[DeadLetter] = []
    ev.on_dead_letter(letters.append)
    poison = Flaky(failures=99)
    register(ev, poison, kind, retry=QUICK, with_seqs=True)
    try:
        ev.emit("chats.upsert", chats("x"), seq=7)
    except ConnectionError:
        pass
    await until(lambda: settled, timeout=5)
    assert len(poison.calls) == 3
    [letter] = letters
    assert letter.tenant == "t9" and letter.epoch == "e1" and letter.attempts == 3
    assert letter.seqs == range(7, 8) and letter.seqs.epoch == "e1"
    assert letter.batch == {"chats.upsert": chats("x")}
    assert isinstance(letter.error, ConnectionError)
    poison.failures = 0
    ev.emit("chats.upsert", chats("y"), seq=8)
    await until(lambda: len(settled) == 2, timeout=5)
    assert settled == [range(7, 8), range(8, 9)]


async def test_retry_none_dead_letters_after_one_call_and_still_raises(make_buffer):
    ev = make_buffer()
    settled: list[range] = []
    ev.on_settled = settled.append
    letters: list[DeadLetter] = []
    ev.on_dead_letter(letters.append)
    poison = Flaky(failures=99)
    ev.process(poison, retry=None)
    with pytest.raises(ConnectionError):
        ev.emit("chats.upsert", chats("x"), seq=1)
    await until(lambda: settled, timeout=5)
    assert len(poison.calls) == 1 and letters[0].attempts == 1


async def test_per_event_handlers_are_retried_too(make_buffer):
    ev = make_buffer()
    settled: list[range] = []
    ev.on_settled = settled.append
    payloads: list[Any] = []
    failures = iter([True, False])

    def on_chats(payload: Any) -> None:
        payloads.append(payload)
        if next(failures):
            raise ValueError("once")

    ev.on("chats.upsert", on_chats, retry=QUICK)
    try:
        ev.emit("chats.upsert", chats("a"), seq=1)
    except ValueError:
        pass
    await until(lambda: settled, timeout=5)
    assert payloads == [chats("a"), chats("a")]


def test_without_a_running_loop_the_exception_only_reaches_the_caller(make_buffer):
    ev = make_buffer()
    poison = Flaky(failures=99)
    ev.process(poison)
    with pytest.raises(ConnectionError):
        ev.emit("chats.upsert", chats("a"))
    with pytest.raises(ConnectionError):
        ev.emit("chats.upsert", chats("b"))
    assert len(poison.calls) == 2  # called inline each time, nothing queued


async def test_a_destroy_during_a_backoff_leaves_the_batch_unsettled(make_buffer, caplog):
    caplog.set_level(logging.INFO, logger="rsocket")
    ev = make_buffer()
    settled: list[range] = []
    ev.on_settled = settled.append
    poison = Flaky(failures=99)
    ev.process(poison, retry=Retry(attempts=5, backoff=(30.0, 30.0)))
    with pytest.raises(ConnectionError):
        ev.emit("chats.upsert", chats("a"), seq=1)
    ev.buffer()
    ev.emit("chats.upsert", chats("b"), seq=2)  # pending: released by the final flush
    assert ev._tasks  # a retry is waiting
    ev.destroy()
    async with asyncio.timeout(2):  # the 30 s backoff is cut short
        await ev.drain()
    assert settled == [] and len(poison.calls) == 1
    assert not ev._tasks
    assert any("next connection delivers them again" in r.getMessage() for r in caplog.records)


async def test_seqs_handlers_get_the_epoch_with_the_range(make_buffer):
    ev = make_buffer()
    ev.epoch = "log-1"
    got: list[Any] = []
    ev.process(lambda batch, seqs: got.append(seqs), with_seqs=True)
    ev.buffer()
    ev.emit("chats.upsert", chats("a"), seq=4)
    ev.emit("chats.upsert", chats("b"), seq=5)
    ev.flush()
    [seqs] = got
    assert isinstance(seqs, Seqs) and seqs == range(4, 6) and list(seqs) == [4, 5]
    assert seqs.epoch == "log-1" and seqs[-1] == 5 and 4 in seqs and len(seqs) == 2


async def test_a_failing_handler_is_logged_with_a_rate_limit(make_buffer, caplog):
    ev = make_buffer()
    ev.on_dead_letter(lambda letter: None)
    poison = Flaky(failures=99)
    ev.process(poison, retry=None)
    for i in range(50):
        try:  # raised here when called inline; queued behind a dead letter otherwise
            ev.emit("chats.upsert", chats(f"c{i}"), seq=i + 1)
        except ConnectionError:
            pass
    await ev.drain()
    failures = [r for r in caplog.records if getattr(r, "event", "") == "handler_failed"]
    assert len(failures) == 1 and failures[0].exc_info is not None  # the first, with traceback
    assert len(poison.calls) == 50


@pytest.mark.parametrize("with_seqs, handler", [
    (False, lambda: None),
    (False, lambda batch, seqs: None),
    (True, lambda batch: None),
])
def test_a_handler_that_cannot_take_the_arguments_is_refused_at_process(
        make_buffer, with_seqs, handler):
    ev = make_buffer()
    with pytest.raises(TypeError, match="cannot be called"):
        ev.process(handler, with_seqs=with_seqs)


async def test_the_pool_refuses_a_handler_without_the_tenant_argument():
    async with TenantPool(watchdog=False) as pool:
        with pytest.raises(TypeError, match="tenant, batch"):
            pool.process(lambda batch: None)
        with pytest.raises(TypeError, match="tenant, batch, seqs"):
            pool.process(lambda tenant, batch: None, with_seqs=True)
        pool.process(lambda tenant, batch, *more: None)  # *args can take them


def test_retry_rejects_nonsense():
    with pytest.raises(ValueError, match="attempts"):
        Retry(attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        Retry(backoff=(5, 1))
    delays = [Retry(backoff=(1, 8)).delay(n) for n in range(1, 7)]
    assert all(0.5 <= d <= 1 for d in delays[:1]) and all(4 <= d <= 8 for d in delays[3:])


# -- the socket and the pool, both servers ---------------------------------------------------


async def test_the_cursor_waits_for_a_retried_batch(server):
    sock = Socket(server.url, "t1", "token1", config=FAST)
    flaky = Flaky(failures=2)
    seen_last_seq: list[int] = []

    def handler(batch: dict[str, Any], seqs: Seqs) -> None:
        if "chats.upsert" in batch:
            seen_last_seq.append(sock.last_seq)
            flaky(batch, seqs)

    sock.ev.process(handler, with_seqs=True, retry=QUICK)
    await sock.connect()
    server.publish("t1", "chats.upsert", chats("a"))
    await until(lambda: sock.last_seq == 1, timeout=5)
    assert seen_last_seq == [0, 0, 0]
    [seqs] = {c[1] for c in flaky.calls}
    assert seqs == range(1, 2) and seqs.epoch == sock.epoch != ""
    await until(lambda: server.stats()["t1"]["acked"] == 1, timeout=5)
    await sock.end()


async def test_a_poison_event_goes_to_the_file_store_and_later_events_flow(server, tmp_path):
    sock = Socket(server.url, "t1", "token1", config=FAST)
    store = FileDeadLetters(tmp_path / "dead.jsonl")
    sock.ev.on_dead_letter(store)
    got: list[str] = []

    def handler(batch: dict[str, Any]) -> None:
        for chat in batch.get("chats.upsert", ()):
            if chat["id"] == "poison":
                raise ValueError("cannot parse this chat")
            got.append(chat["id"])

    sock.ev.process(handler, retry=QUICK)
    await sock.connect()
    server.publish("t1", "chats.upsert", chats("poison"))
    server.publish("t1", "chats.upsert", chats("fine"))
    await until(lambda: sock.last_seq == 2, timeout=5)
    assert got == ["fine"]
    [record] = list(store.read())
    assert record["tenant"] == "t1" and record["first"] == record["last"] == 1
    assert record["epoch"] == sock.epoch and record["attempts"] == 3
    assert record["error"]["type"] == "ValueError" and "cannot parse" in record["error"]["traceback"]
    assert record["batch"] == {"chats.upsert": chats("poison")}
    assert (tmp_path / "dead.jsonl").stat().st_mode & 0o777 == 0o600
    await sock.end()


async def test_a_batch_retried_when_the_socket_ends_comes_again_on_the_next(server):
    sock = Socket(server.url, "t1", "token1", config=FAST)
    poison = Flaky(failures=99)
    sock.ev.process(lambda b: poison(b) if "chats.upsert" in b else None,
                    retry=Retry(attempts=5, backoff=(30.0, 30.0)))
    await sock.connect()
    server.publish("t1", "chats.upsert", chats("a"))
    await until(lambda: poison.calls, timeout=5)
    async with asyncio.timeout(5):  # the backoff does not hold the close
        await sock.end()
    assert sock.last_seq == 0
    again = Socket(server.url, "t1", "token1", resume=sock.last_seq, epoch=sock.epoch,
                   config=FAST)
    got: list[Any] = []
    again.ev.process(lambda b: got.append(b) if "chats.upsert" in b else None)
    await again.connect()
    await until(lambda: again.last_seq == 1, timeout=5)
    assert got == [{"chats.upsert": chats("a")}]
    await again.end()


async def test_pool_retries_then_dead_letters_with_the_tenant(server, caplog):
    letters: list[DeadLetter] = []
    async with TenantPool(watchdog=False, backoff=(0.05,), socket_config=FAST) as pool:
        calls: list[tuple[str, int]] = []

        async def handler(tenant: str, batch: dict[str, Any], seqs: Seqs) -> None:
            if "chats.upsert" in batch:
                calls.append((tenant, seqs.start))
                raise RuntimeError("always")

        async def hook(letter: DeadLetter) -> None:
            await asyncio.sleep(0)
            letters.append(letter)

        pool.process(handler, with_seqs=True, retry=QUICK)
        pool.on_dead_letter(hook)
        await pool.add("t1", server.url, "token1")
        server.publish("t1", "chats.upsert", chats("a"))
        await until(lambda: pool.get("t1").socket.last_seq == 1, timeout=5)
        assert calls == [("t1", 1)] * 3
        assert letters[0].tenant == "t1" and letters[0].seqs == range(1, 2)


async def test_a_resume_gap_is_a_warning(caplog):
    async with server_of("reference", tenants=TENANTS, ping_interval=None) as server:
        sock = Socket(server.url, "t1", "token1", resume=50, epoch="gone", config=FAST)
        await sock.connect()
        await sock.end()
    warning = [r for r in caplog.records if getattr(r, "event", "") == "resume_gap"]
    assert warning and warning[0].levelno == logging.WARNING


async def test_run_forever_warns_once_no_tenant_is_left(caplog):
    async with server_of("reference", tenants=TENANTS, ping_interval=None) as server:
        pool = TenantPool(watchdog=False)
        await pool.add("t1", server.url, "token1")
        runner = asyncio.create_task(pool.run_forever())
        await until(lambda: pool.get("t1").connected, timeout=5)
        server.inject("t1", "stream_error", code=401)  # logged out: it ends for good
        await until(lambda: any("no tenant is running" in r.getMessage()
                                for r in caplog.records), timeout=5)
        await pool.close()
        await asyncio.wait_for(runner, 5)


# -- a crash during a retry ------------------------------------------------------------------

BOT = textwrap.dedent("""
    import asyncio, sys
    from rsocket import FileSeqStore, Retry, TenantPool

    url, cursors, mode = sys.argv[1:4]

    def handler(tenant, batch, seqs):
        if "chats.upsert" not in batch:
            return
        print("handling", seqs.start, seqs.stop - 1, flush=True)
        if mode == "fail":
            raise ConnectionError("database down")

    async def main():
        async with TenantPool(watchdog=False, seq_store=FileSeqStore(cursors),
                              save_interval=0.05) as pool:
            pool.process(handler, with_seqs=True,
                         retry=Retry(attempts=5, backoff=(60.0, 60.0)))
            await pool.add("t1", url, "token1")
            await asyncio.sleep(float(sys.argv[4]))

    asyncio.run(main())
""")


async def test_a_kill_9_during_a_retry_backoff_replays_the_batch(tmp_path: Path):
    script = tmp_path / "bot.py"
    script.write_text(BOT)
    cursors = tmp_path / "cursors.json"
    async with server_of("reference", tenants=TENANTS, ping_interval=None) as server:
        server.publish("t1", "chats.upsert", chats("a"))
        bot = await asyncio.create_subprocess_exec(
            sys.executable, str(script), server.url, str(cursors), "fail", "60",
            stdout=asyncio.subprocess.PIPE)
        assert bot.stdout is not None
        async with asyncio.timeout(30):
            line = (await bot.stdout.readline()).decode()
        assert line.split() == ["handling", "1", "1"]
        bot.send_signal(signal.SIGKILL)  # in the 60 s backoff
        await bot.wait()
        again = await asyncio.create_subprocess_exec(
            sys.executable, str(script), server.url, str(cursors), "ok", "1",
            stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(again.communicate(), 30)
        assert again.returncode == 0
        assert "handling 1 1" in out.decode()  # delivered again: nothing lost


# -- the Redis store ----------------------------------------------------------------------------


async def test_redis_dead_letters_land_in_a_stream(make_buffer, redis_server):
    store = RedisDeadLetters(redis_server.url, stream="test-dead:{tenant}")
    try:
        ev = make_buffer()
        ev.tenant, ev.epoch = "t5", "e5"
        settled: list[range] = []
        ev.on_settled = settled.append
        ev.on_dead_letter(store)
        ev.process(Flaky(failures=99), retry=Retry(attempts=2, backoff=(0.01, 0.01)))
        with pytest.raises(ConnectionError):
            ev.emit("messages.delete", {"keys": [{"remoteJid": "a@s.whatsapp.net", "id": "X"}]},
                    seq=3)
        await until(lambda: settled, timeout=5)  # settled once the entry is in Redis
        [record] = await store.read("t5")
        assert (record["tenant"], record["epoch"], record["first"], record["last"]) == (
            "t5", "e5", 3, 3)
        assert record["attempts"] == 2 and record["error"]["type"] == "ConnectionError"
        assert record["batch"]["messages.delete"]["keys"][0]["id"] == "X"
    finally:
        await store.client.delete("test-dead:t5")
        await store.close()
