"""Fuzzing (issue #8): the frame decoder, the server's input path, the two buffer cores.

- Decoder: random and mutated frames (truncated msgpack, wrong types, huge
  lengths, deep nesting, invalid UTF-8 in JSON, unknown ops) through both
  codecs and both sides, and through ``ClientSession``/``ServerSession``:
  the only exception is ``ProtocolError`` with the right close code; no input
  takes long (no hang); tracemalloc shows no growth.
- Server input path over real loopback: the same inputs sent to the reference
  server, as a first frame and after a valid ``hello``: the server answers
  what the sans-I/O oracle says (``failure{500}`` then the close code, or the
  normal reply), never crashes, and serves a normal socket afterwards.
- Differential: the compiled and the pure merge core given the same long
  random event streams release the same batches with the same seq ranges.

CI runs short versions; ``-m soak`` runs >= 100,000 decoder inputs, 2,000
loopback inputs and >= 1,000,000 differential events::

    python -m pytest -p no:cacheprovider -m soak tests/scenarios/test_fuzz.py -s
"""

from __future__ import annotations

import asyncio
import copy
import gc
import importlib
import random
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from rsocket.buffer import BufferConfig, event_buffer_class
from rsocket.errors import ProtocolError
from rsocket.protocol import (
    JSON,
    MSGPACK,
    Ack,
    Batch,
    BatchItem,
    ClientSession,
    Event,
    Failure,
    Hello,
    Offline,
    Ping,
    Pong,
    Query,
    Ready,
    Result,
    ServerSession,
    StreamError,
    codec_for,
)
from rsocket.socket import Socket, SocketConfig
from rsocket.testing import ReferenceServer, Workload

CLOSE_CODES = {1002, 1003, 1007, 1009}
MAX_SIZE = 1 << 16  # small, so "too big" is cheap to reach
SLOW = 0.5  # seconds: any single decode slower than this is a hang

CLIENT_FRAMES = [Hello("t1", "token1", 0, ""), Hello("t1", "token1", 5, "e"), Ack(3), Ping(7),
                 Query(1, "echo", {"a": [1, "x", None, 2.5]}), Query(2, "send_message", None)]
SERVER_FRAMES = [Ready("e", True, 2), Event(1, "chats.delete", ["a"]),
                 Batch(1, [BatchItem("chats.delete", ["a"]), BatchItem("groups.update",
                                                                       [{"id": "g"}])]),
                 Offline(0), Pong(7), Result(1, True, {"x": 1}), Result(2, False, None, "no"),
                 StreamError(503, "x"), Failure(401, "bad token")]


def raw(obj: Any, subprotocol: str) -> bytes | str:
    """Encode an arbitrary object (not necessarily a frame) with a subprotocol's codec."""
    if subprotocol == MSGPACK:
        return msgspec.msgpack.encode(obj)
    return msgspec.json.encode(obj).decode()


def corpus(subprotocol: str, side: str) -> list[bytes | str]:
    codec = codec_for(subprotocol)
    frames = CLIENT_FRAMES + SERVER_FRAMES  # the other side's ops are inputs too
    out = [codec.encode(f) for f in frames]
    for name, data in Workload(4).take(20):
        out.append(codec.encode(Event(1, name, data)))
    return out


# -- targeted inputs with a known close code ------------------------------------------------


def targeted(subprotocol: str, side: str) -> Iterator[tuple[str, bytes | str, int | None]]:
    """(what, message, expected close code) for the decoder of ``side`` (None: decodes)."""
    codec = codec_for(subprotocol)
    binary = subprotocol == MSGPACK
    mine = CLIENT_FRAMES if side == "client" else SERVER_FRAMES
    theirs = SERVER_FRAMES if side == "client" else CLIENT_FRAMES
    for frame in mine:
        yield f"valid {type(frame).__name__}", codec.encode(frame), None
    for frame in theirs:
        yield f"other side's {type(frame).__name__}", codec.encode(frame), 1003
    valid = codec.encode(mine[0])
    for cut in range(1, len(valid)):
        part = valid[:cut]
        yield f"truncated at {cut}", part, 1007
    yield "empty", b"" if binary else "", 1007
    yield "unknown op", raw({"op": "subscribe", "x": 1}, subprotocol), 1003
    yield "op not a str", raw({"op": 5}, subprotocol), 1007
    yield "no op", raw({"tenant": "t"}, subprotocol), 1007
    yield "not a map", raw([1, 2, 3], subprotocol), 1007
    yield "scalar", raw(17, subprotocol), 1007
    # wrong types in known ops
    wrong = ({"op": "hello", "tenant": 1, "token": "x"}, {"op": "ack", "seq": "3"},
             {"op": "ack", "seq": -1}, {"op": "ping", "id": None}, {"op": "query", "id": 1},
             {"op": "ready", "session": "e", "resumed": "yes", "pending": 0},
             {"op": "event", "seq": 0, "name": "x", "data": 1},
             {"op": "batch", "first": 1, "events": []},
             {"op": "batch", "first": 1, "events": [{"name": 1, "data": 1}]},
             {"op": "offline", "count": -1}, {"op": "stream_error", "code": "503"})
    for obj in wrong:
        side_ops = {"hello", "ack", "ping", "query"} if side == "client" else \
            {"ready", "event", "batch", "offline", "stream_error"}
        yield f"wrong types {obj['op']}", raw(obj, subprotocol), \
            1007 if obj["op"] in side_ops else 1003
    # huge lengths: the message itself too big, and a small message declaring a huge item
    big = "x" * (MAX_SIZE + 1)
    yield "message too big", raw({"op": "ping", "id": 1, "pad": big}, subprotocol), 1009
    if binary:
        yield "str32 of 4 GiB declared", b"\x81\xa2op\xdb\xff\xff\xff\xff" + b"ab", 1007
        yield "array32 of 4G items declared", b"\x81\xa2op\xdd\xff\xff\xff\xff", 1007
        yield "map32 of 4G pairs declared", b"\xdf\xff\xff\xff\xff", 1007
        yield "bin32 of 4 GiB declared", b"\x81\xa2op\xc6\xff\xff\xff\xff", 1007
        yield "invalid utf-8 in msgpack str", b"\x81\xa2op\xa2\xff\xfe", 1007
        yield "text message on msgpack", codec_for(JSON).encode(mine[0]), 1003
    else:
        yield "invalid utf-8 in json (bytes)", b'{"op":"ping","id":1,"x":"\xff\xfe"}', 1007
        yield "invalid utf-8 in the op", b'{"op":"p\xc3ng","id":1}', 1007
        yield "lone surrogate escape", '{"op":"ping","id":1,"x":"\\ud800"}', 1007
        op = "ping" if side == "client" else "pong"
        yield "big integer", f'{{"op":"{op}","id":1' + "0" * 400 + "}", "any"
        yield "huge integer", f'{{"op":"{op}","id":1' + "0" * 5000 + "}", 1007
        yield "binary msgpack on json", codec_for(MSGPACK).encode(mine[0]), 1007
    # deep nesting: inside an Any field (query params / event data) and at top level
    for depth in (50, 2_000, 20_000):
        if binary:
            nested = b"\x91" * depth + b"\xc0"
            top = nested
            if side == "client":
                frame = b"\x84\xa2op\xa5query\xa2id\x01\xa6method\xa4echo\xa6params" + nested
            else:
                frame = b"\x84\xa2op\xa5event\xa3seq\x01\xa4name\xa1x\xa4data" + nested
        else:
            nested = "[" * depth + "]" * depth
            top = nested
            if side == "client":
                frame = '{"op":"query","id":1,"method":"echo","params":' + nested + "}"
            else:
                frame = '{"op":"event","seq":1,"name":"x","data":' + nested + "}"
        yield f"deep nesting {depth} in a value", frame, None if depth <= 50 else "any"
        yield f"deep nesting {depth} at top level", top, 1007


# -- mutations ----------------------------------------------------------------------------


def mutate(rnd: random.Random, data: bytes | str, pool: list[bytes | str]) -> bytes | str:
    text = isinstance(data, str)
    buf = bytearray(data.encode("utf-8", "surrogatepass") if text else data)
    for _ in range(rnd.randint(1, 4)):
        kind = rnd.randrange(9)
        if kind == 0 and buf:  # truncate
            del buf[rnd.randrange(len(buf)):]
        elif kind == 1 and buf:  # flip a bit
            i = rnd.randrange(len(buf))
            buf[i] ^= 1 << rnd.randrange(8)
        elif kind == 2:  # insert random bytes
            i = rnd.randint(0, len(buf))
            buf[i:i] = rnd.randbytes(rnd.randint(1, 8))
        elif kind == 3 and buf:  # delete a span
            i = rnd.randrange(len(buf))
            del buf[i:i + rnd.randint(1, 8)]
        elif kind == 4:  # splice with another input
            other = pool[rnd.randrange(len(pool))]
            other_b = other.encode("utf-8", "surrogatepass") if isinstance(other, str) else other
            i, j = rnd.randint(0, len(buf)), rnd.randint(0, len(other_b))
            buf = buf[:i] + other_b[j:]
        elif kind == 5 and buf:  # interesting bytes: msgpack length headers, JSON specials
            i = rnd.randrange(len(buf))
            buf[i:i + 1] = rnd.choice([b"\xdb\xff\xff\xff\xff", b"\xdd\x7f\xff\xff\xff",
                                       b"\xdf\x00\x01\x00\x00", b"\xc1", b"\xd4", b"\xff",
                                       b'"', b"[", b"{", b"\\u", b"\xed\xa0\x80", b"\x00"])
        elif kind == 6 and buf:  # duplicate a span (repeats keys, nests deeper)
            i = rnd.randrange(len(buf))
            span = buf[i:i + rnd.randint(1, 16)]
            buf[i:i] = span * rnd.randint(1, 50)
        elif kind == 7 and buf:  # overwrite a byte
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
        elif kind == 8:  # random garbage
            buf = bytearray(rnd.randbytes(rnd.randint(0, 64)))
    if text and rnd.random() < 0.7:
        return buf.decode("utf-8", "replace")  # a str message (what websockets delivers)
    return bytes(buf)


def check_decode(codec: Any, side: str, message: bytes | str,
                 expected: int | str | None = "any") -> float:
    """Decode; only ProtocolError (with the expected code) may escape. Returns seconds."""
    decode = codec.decode_client if side == "client" else codec.decode_server
    started = time.perf_counter()
    try:
        decode(message, MAX_SIZE)
    except ProtocolError as exc:
        elapsed = time.perf_counter() - started
        assert exc.close_code in CLOSE_CODES, (exc, message[:80])
        if expected not in ("any", None):
            assert exc.close_code == expected, (exc, message[:80])
        elif expected is None:
            raise AssertionError(f"valid input refused: {exc}") from exc
        return elapsed
    elapsed = time.perf_counter() - started
    assert expected in ("any", None), (expected, message[:80])
    return elapsed


def run_sessions(subprotocol: str, message: bytes | str) -> None:
    """Feed a message to sessions in every state: only ProtocolError may escape."""
    states = []
    c = ClientSession("t1", "k", subprotocol=subprotocol, max_size=MAX_SIZE)
    states.append(c)
    c2 = ClientSession("t1", "k", resume=3, subprotocol=subprotocol, max_size=MAX_SIZE)
    c2.hello()
    states.append(c2)
    c3 = ClientSession("t1", "k", subprotocol=subprotocol, max_size=MAX_SIZE)
    c3.hello()
    c3.receive(codec_for(subprotocol).encode(Ready("e", True, 0)))
    states.append(c3)
    s1 = ServerSession(subprotocol=subprotocol, max_size=MAX_SIZE)
    s2 = ServerSession(subprotocol=subprotocol, max_size=MAX_SIZE)
    s2.receive(codec_for(subprotocol).encode(Hello("t1", "k")))
    s2.ready("e", True, 0, base_seq=10)
    for session in (*states, s1, s2):
        try:
            session.receive(message)
        except ProtocolError as exc:
            assert exc.close_code in CLOSE_CODES


SIDES = [(sp, side) for sp in (MSGPACK, JSON) for side in ("client", "server")]


@pytest.mark.parametrize(("subprotocol", "side"), SIDES)
def test_targeted_inputs_get_the_right_close_code(subprotocol, side):
    codec = codec_for(subprotocol)
    for what, message, expected in targeted(subprotocol, side):
        try:
            elapsed = check_decode(codec, side, message, expected)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from None
        assert elapsed < SLOW, what
        run_sessions(subprotocol, message)


def mutation_fuzz(subprotocol: str, side: str, n: int, seed: int) -> dict[str, Any]:
    codec = codec_for(subprotocol)
    pool = corpus(subprotocol, side) + [m for _, m, _ in targeted(subprotocol, side)]
    rnd = random.Random(seed)
    slowest = 0.0
    codes: dict[int | str, int] = {}
    gc.collect()
    tracemalloc.start()
    try:
        warm = n // 10
        for i in range(n):
            if i == warm:
                gc.collect()
                mem0 = tracemalloc.get_traced_memory()[0]
            message = mutate(rnd, pool[rnd.randrange(len(pool))], pool)
            started = time.perf_counter()
            decode = codec.decode_client if side == "client" else codec.decode_server
            try:
                decode(message, MAX_SIZE)
                codes["decoded"] = codes.get("decoded", 0) + 1
            except ProtocolError as exc:
                assert exc.close_code in CLOSE_CODES, (exc, message[:80])
                codes[exc.close_code] = codes.get(exc.close_code, 0) + 1
            slowest = max(slowest, time.perf_counter() - started)
            if i % 7 == 0:
                run_sessions(subprotocol, message)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - mem0
    finally:
        tracemalloc.stop()
    return {"inputs": n, "slowest_s": slowest, "growth_bytes": growth, "outcomes": codes}


@pytest.mark.parametrize(("subprotocol", "side"), SIDES)
def test_mutation_fuzz_decoder_short(subprotocol, side):
    report = mutation_fuzz(subprotocol, side, 3_000, seed=hash((subprotocol, side)) & 0xFFFF)
    assert report["slowest_s"] < SLOW
    assert report["growth_bytes"] < 256 * 1024, report


@pytest.mark.soak
@pytest.mark.parametrize(("subprotocol", "side"), SIDES)
def test_mutation_fuzz_decoder_soak(subprotocol, side):
    """4 x 30,000 = 120,000 mutated inputs (plus the session feeds)."""
    report = mutation_fuzz(subprotocol, side, 30_000, seed=11)
    print(f"\n{subprotocol} {side}: {report}")
    assert report["slowest_s"] < SLOW
    assert report["growth_bytes"] < 256 * 1024, report


# hypothesis: structured frames with random field values, and plain random bytes

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=4),
    max_leaves=20,
)
OPS = st.sampled_from(["hello", "ack", "ping", "query", "ready", "event", "batch", "offline",
                       "pong", "result", "stream_error", "failure", "nope", ""])
FIELDS = st.sampled_from(["tenant", "token", "resume", "epoch", "seq", "id", "method", "params",
                          "session", "resumed", "pending", "name", "data", "first", "events",
                          "count", "ok", "error", "code", "reason"])
FRAMES = st.builds(lambda op, fields: {"op": op, **fields}, OPS,
                   st.dictionaries(FIELDS, VALUES, max_size=5))
HYPO = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))


@HYPO
@given(frame=FRAMES, subprotocol=st.sampled_from([MSGPACK, JSON]),
       side=st.sampled_from(["client", "server"]))
def test_hypothesis_structured_frames(frame, subprotocol, side):
    try:
        message = raw(frame, subprotocol)
    except (OverflowError, msgspec.EncodeError):
        return  # e.g. an int beyond 64 bits has no msgpack form
    check_decode(codec_for(subprotocol), side, message)
    run_sessions(subprotocol, message)


@HYPO
@given(data=st.binary(max_size=200) | st.text(max_size=200),
       subprotocol=st.sampled_from([MSGPACK, JSON]), side=st.sampled_from(["client", "server"]))
def test_hypothesis_random_messages(data, subprotocol, side):
    check_decode(codec_for(subprotocol), side, data)
    run_sessions(subprotocol, data)


# -- the server's input path over real loopback ---------------------------------------------


def oracle(subprotocol: str, message: bytes | str, first: bool, last_sent: int) -> int | None:
    """The close code the server must use for ``message`` (None: the connection stays up)."""
    session = ServerSession(subprotocol=subprotocol, max_size=MAX_SIZE)
    codec = codec_for(subprotocol)
    try:
        if not first:
            session.receive(codec.encode(Hello("t1", "token1")))
            session.ready("e", True, 0, base_seq=last_sent)
        frames = session.receive(message)
    except ProtocolError as exc:
        return exc.close_code
    if first:
        hello = frames[0]
        if not isinstance(hello, Hello):
            return 1002
        if (hello.tenant, hello.token) != ("t1", "token1"):
            return 1008
        if hello.epoch == "" and hello.resume > last_sent:
            return 1002
    return None


async def send_bad(url: str, subprotocol: str, message: bytes | str, first: bool,
                   expected: int | None, last_sent: int) -> None:
    async with connect(url, subprotocols=[subprotocol], compression=None,
                       max_size=None, open_timeout=5, close_timeout=2) as ws:
        codec = codec_for(subprotocol)
        if not first:
            await ws.send(codec.encode(Hello("t1", "token1", last_sent, "")))
            session = ClientSession("t1", "token1", resume=last_sent, subprotocol=subprotocol)
            session.hello()
            async with asyncio.timeout(5):
                while not session.offline:
                    session.receive(await ws.recv())
        await ws.send(message)
        if expected is None:  # still up: a ping is answered
            await ws.send(codec.encode(Ping(99)))
            async with asyncio.timeout(5):
                while True:
                    frame = codec.decode_server(await ws.recv())
                    if isinstance(frame, Pong) and frame.id == 99:
                        return
        failure = None
        try:
            async with asyncio.timeout(5):
                while True:
                    frame = codec.decode_server(await ws.recv())
                    if isinstance(frame, Failure):
                        failure = frame
        except ConnectionClosed:
            pass
        assert ws.close_code == expected, (ws.close_code, expected, message[:60])
        if expected != 1009:  # websockets refuses an oversized frame before we see it
            assert failure is not None and failure.code == (401 if expected == 1008 else 500)


async def loopback_fuzz(n_mutated: int, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    cases: list[tuple[str, bytes | str, bool]] = []
    for subprotocol in (MSGPACK, JSON):
        pool = corpus(subprotocol, "client") + [m for _, m, _ in targeted(subprotocol, "client")]
        for _, message, _ in targeted(subprotocol, "client"):
            if isinstance(message, bytes) and subprotocol == JSON:
                continue  # websockets sends bytes as binary: covered by the decoder tests
            cases.append((subprotocol, message, True))
            cases.append((subprotocol, message, False))
        for _ in range(n_mutated):
            message = mutate(rnd, pool[rnd.randrange(len(pool))], pool)
            if isinstance(message, str) and subprotocol == MSGPACK and rnd.random() < 0.8:
                message = message.encode("utf-8", "surrogatepass")
            cases.append((subprotocol, message, rnd.random() < 0.5))
    outcomes: dict[int | None, int] = {}
    async with ReferenceServer(tenants={"t1": "token1"}, ping_interval=None, compression=None,
                               max_size=MAX_SIZE, close_timeout=1) as server:
        last = server.publish_many("t1", Workload(3).take(5)).stop - 1
        tasks_before = len(server._tasks)
        gc.collect()
        tracemalloc.start()
        try:
            mem0 = None
            for i, (subprotocol, message, first) in enumerate(cases):
                if isinstance(message, str):
                    try:
                        message.encode()
                    except UnicodeEncodeError:
                        continue  # not sendable as a text frame
                if i == len(cases) // 10:
                    gc.collect()
                    mem0 = tracemalloc.get_traced_memory()[0]
                expected = oracle(subprotocol, message, first, last)
                outcomes[expected] = outcomes.get(expected, 0) + 1
                async with asyncio.timeout(20):  # a hang fails, it does not stall the run
                    await send_bad(server.url, subprotocol, message, first, expected, last)
            await asyncio.sleep(0.05)
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - (mem0 or 0)
        finally:
            tracemalloc.stop()
        # the server is healthy: a normal socket connects and gets every event
        sock = Socket(server.url, "t1", "token1", config=SocketConfig(connect_timeout=5))
        await sock.connect()
        async with asyncio.timeout(5):
            while sock.last_seq < last:
                await asyncio.sleep(0.005)
        await sock.end()
        assert server.stats()["t1"]["max_concurrent"] == 1
        async with asyncio.timeout(5):
            while len(server._tasks) > tasks_before:
                await asyncio.sleep(0.01)
    return {"inputs": len(cases), "outcomes": outcomes, "growth_bytes": growth}


async def test_server_input_path_over_loopback_short():
    report = await loopback_fuzz(60, seed=5)
    assert report["growth_bytes"] < 512 * 1024, report


@pytest.mark.soak
async def test_server_input_path_over_loopback_soak():
    report = await loopback_fuzz(1_000, seed=6)
    print(f"\nloopback: {report}")
    assert report["growth_bytes"] < 512 * 1024, report


# -- differential: the two merge cores ------------------------------------------------------


def differential(n_events: int, seed: int) -> dict[str, int]:
    """Same stream, same scope operations, into both cores: same releases, same seqs."""
    try:
        c_core = importlib.import_module("rsocket._buffer")
    except ImportError:
        pytest.skip("compiled core not built")
    py_core = importlib.import_module("rsocket._buffer_py")
    rnd = random.Random(seed)
    workload = Workload(seed)
    config = BufferConfig(auto_flush=False, max_buffer_items=rnd.choice([7, 50, 1000]),
                          max_history_cache=500)
    out: dict[str, list[Any]] = {"c": [], "py": []}
    bufs = {}
    for name, core in (("c", c_core), ("py", py_core)):
        ev = event_buffer_class(core)(config=config)
        ev.process(lambda batch, seqs, name=name: out[name].append((seqs, batch)),
                   with_seqs=True)
        bufs[name] = ev
    seq = releases = 0
    try:
        while seq < n_events:
            action = rnd.random()
            if action < 0.04:
                for ev in bufs.values():
                    ev.buffer()
            elif action < 0.08:
                for ev in bufs.values():
                    ev.flush()
            elif action < 0.085:
                for ev in bufs.values():
                    ev.flush(force=True)
            else:
                name, data = next(workload)
                seq += 1
                for ev in bufs.values():
                    ev.emit(name, copy.deepcopy(data), seq=seq)  # merging mutates payloads
            if len(out["c"]) > 200 or len(out["py"]) > 200 or seq >= n_events:
                assert len(out["c"]) == len(out["py"]), seq
                for (sc, bc), (sp, bp) in zip(out["c"], out["py"], strict=True):
                    assert sc == sp, (sc, sp)
                    assert bc == bp, (seq, sc)
                releases += len(out["c"])
                out["c"].clear()
                out["py"].clear()
        for ev in bufs.values():
            ev.destroy()
        assert len(out["c"]) == len(out["py"])
        for (sc, bc), (sp, bp) in zip(out["c"], out["py"], strict=True):
            assert sc == sp and bc == bp
        releases += len(out["c"])
    finally:
        for ev in bufs.values():
            ev.destroy()
    return {"events": seq, "releases": releases}


def test_differential_cores_short():
    for seed in (1, 2, 3):
        report = differential(15_000, seed)
        assert report["releases"] > 0


@pytest.mark.soak
def test_differential_cores_soak():
    """>= 1,000,000 events over several seeds and batch limits."""
    total = 0
    for seed in range(10, 15):
        report = differential(200_000, seed)
        total += report["events"]
        print(f"\ndifferential seed {seed}: {report}")
    assert total >= 1_000_000
