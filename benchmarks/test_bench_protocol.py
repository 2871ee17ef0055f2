"""Wire protocol throughput: msgpack vs JSON, and the server pushing over loopback.

    pytest benchmarks/test_bench_protocol.py --benchmark-only

Inputs are the standard event mix (``rsocket.testing.workload``, seed 1), built outside
the timed part; figures are per event (``extra_info["events_per_s"]``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import connect

from rsocket.protocol import (
    SUBPROTOCOLS,
    Batch,
    BatchItem,
    ClientSession,
    Event,
    Ready,
    codec_for,
)
from rsocket.testing import ReferenceServer, Workload

N_EVENTS = 10_000
BATCH = 100
EVENTS = list(Workload(1).take(N_EVENTS))
FRAMES = [
    Batch(first + 1, [BatchItem(name, data) for name, data in EVENTS[first : first + BATCH]])
    for first in range(0, N_EVENTS, BATCH)
]


def per_event(benchmark: Any, events: int) -> None:
    benchmark.extra_info["events"] = events
    benchmark.extra_info["events_per_s"] = round(events / benchmark.stats.stats.min)


@pytest.mark.benchmark(group="protocol")
@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS, ids=["msgpack", "json"])
def test_encode_batch_frames(benchmark: Any, subprotocol: str) -> None:
    encode = codec_for(subprotocol).encode

    def run() -> None:
        for frame in FRAMES:
            encode(frame)

    benchmark(run)
    per_event(benchmark, N_EVENTS)


@pytest.mark.benchmark(group="protocol")
@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS, ids=["msgpack", "json"])
def test_decode_batch_frames(benchmark: Any, subprotocol: str) -> None:
    codec = codec_for(subprotocol)
    messages = [codec.encode(frame) for frame in FRAMES]
    decode = codec.decode_server

    def run() -> None:
        for message in messages:
            decode(message)

    benchmark(run)
    per_event(benchmark, N_EVENTS)


@pytest.mark.benchmark(group="protocol")
@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS, ids=["msgpack", "json"])
def test_client_session_receive(benchmark: Any, subprotocol: str) -> None:
    """What a socket pays per received batch before the buffer: decode and seq checks
    (payloads are checked where the core takes them, ``EventBuffer.ingest``)."""
    codec = codec_for(subprotocol)
    messages = [codec.encode(frame) for frame in FRAMES]
    ready = codec.encode(Ready("e", True, 0))

    def run() -> None:
        session = ClientSession("t1", "k", subprotocol=subprotocol)
        session.hello()
        session.receive(ready)
        for message in messages:
            session.receive(message)

    benchmark(run)
    per_event(benchmark, N_EVENTS)


E2E_EVENTS = 50_000


async def _push(subprotocol: str, frames: str) -> None:
    srv = ReferenceServer({"t1": "token1"}, compression=None)
    # Entered in order: the port is known once the server is started.
    async with srv, connect(srv.url, subprotocols=[subprotocol], compression=None) as ws:  # type: ignore[list-item]
        session = ClientSession("t1", "token1", subprotocol=subprotocol)
        await ws.send(session.hello())
        while not session.offline:
            session.receive(await ws.recv())
        if frames == "batch":
            srv.publish_many("t1", (EVENTS[i % N_EVENTS] for i in range(E2E_EVENTS)))
        else:
            for i in range(E2E_EVENTS):
                srv.publish("t1", *EVENTS[i % N_EVENTS])
        count = 0
        async with asyncio.timeout(120):
            while count < E2E_EVENTS:
                for result in session.receive(await ws.recv()):
                    if isinstance(result, Batch):
                        count += len(result.events)
                    elif isinstance(result, Event):
                        count += 1


@pytest.mark.benchmark(group="protocol-e2e")
@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS, ids=["msgpack", "json"])
@pytest.mark.parametrize("frames", ["batch", "event"])
def test_server_push_to_one_client(benchmark: Any, subprotocol: str, frames: str) -> None:
    """Publish to a connected client and count what it decodes, over loopback."""
    benchmark.pedantic(lambda: asyncio.run(_push(subprotocol, frames)), rounds=3, iterations=1)
    per_event(benchmark, E2E_EVENTS)
