"""Events too large for one frame: split into parts (rsocket.split) and cut into
frames by bytes (ServerSession.events), both cores merging the parts back."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsocket import BufferConfig
from rsocket.protocol import (
    JSON,
    MSGPACK,
    Batch,
    ClientSession,
    Event,
    Hello,
    Oversize,
    Ready,
    Result,
    ServerSession,
)
from rsocket.split import split_event, split_events

from .whatsapp_payloads import history_set, image_upsert, message

size = msgspec.msgpack.encode


def joined(parts: list[tuple[str, Any]], field: str) -> list[Any]:
    return [item for _, data in parts for item in data[field]]


def test_a_small_event_is_one_part_untouched() -> None:
    data = {"messages": [message(1)], "type": "notify"}
    assert split_event("messages.upsert", data, 1 << 20) == [("messages.upsert", data)]


def test_a_history_set_is_cut_into_sets_with_its_metadata_on_each() -> None:
    data = history_set()
    assert len(size(data)) > 4 << 20  # a first login's sync: several MB
    parts = split_event("messaging-history.set", data, 256 * 1024)
    assert len(parts) > 8
    for name, part in parts:
        assert name == "messaging-history.set"
        assert len(size(part)) <= 256 * 1024
        assert list(part) == list(data)  # same fields, same order
        assert {k: v for k, v in part.items() if k not in ("chats", "contacts", "messages")} == {
            k: v for k, v in data.items() if k not in ("chats", "contacts", "messages")}
    for field in ("chats", "contacts", "messages"):
        assert joined(parts, field) == data[field]


def test_an_upsert_is_cut_into_upserts_of_its_type() -> None:
    data = image_upsert(100, thumbnail=15_000, type="append")
    parts = split_event("messages.upsert", data, 200_000)
    assert len(parts) >= 8
    assert all(part["type"] == "append" and part["messages"] for _, part in parts)
    assert all(len(size(part)) <= 200_000 for _, part in parts)
    assert joined(parts, "messages") == data["messages"]


def test_a_list_event_is_cut_into_shorter_lists() -> None:
    updates = [{"key": message(i)["key"], "update": {"status": 3}} for i in range(5000)]
    parts = split_event("messages.update", updates, 50_000)
    assert len(parts) > 3
    assert [u for _, part in parts for u in part] == updates


@pytest.mark.parametrize("data", [
    {"messages": [message(1, thumbnail=300_000)], "type": "notify"},  # one item too big
    {"id": "g@g.us", "subject": "x" * 400_000},  # no list to share out
])
def test_what_cannot_be_split_stays_whole(data: Any) -> None:
    name = "messages.upsert" if "messages" in data else "groups.update"
    assert split_event(name, data, 100_000) == [(name, data)]


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        split_event("messages.upsert", {"messages": []}, 0)


# -- the parts merge back into what the whole would have been, on both cores ------------


SIZES = st.integers(0, 4000)


@st.composite
def big_events(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["messaging-history.set", "messages.upsert", "chats.upsert"]))
    n = draw(st.integers(0, 40))
    if kind == "messaging-history.set":
        return kind, history_set(chats=draw(st.integers(0, 20)), contacts=draw(st.integers(0, 20)),
                                 messages=n, text=draw(SIZES), seed=draw(st.integers(0, 3)))
    if kind == "messages.upsert":
        return kind, {"messages": [message(i % 7, text=draw(SIZES)) for i in range(n)],
                      "type": draw(st.sampled_from(["notify", "append"]))}
    return kind, [{"id": f"{i % 9}@s.whatsapp.net", "unreadCount": i, "name": "x" * (i * 97)}
                  for i in range(n)]


def released(EventBuffer: type, events: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    ev = EventBuffer(config=BufferConfig(max_buffer_items=100_000, auto_flush=False))
    out: list[dict[str, Any]] = []
    ev.process(out.append)
    ev.buffer()
    for name, data in events:
        ev.emit(name, copy.deepcopy(data))
    ev.flush()
    ev.destroy()
    return out


# the EventBuffer fixture is a class (the core's), not state: sharing it across examples is fine
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=big_events(), limit=st.integers(2_000, 60_000))
def test_parts_merge_into_the_same_batch_as_the_whole(EventBuffer: type, event: Any,
                                                       limit: int) -> None:
    name, data = event
    parts = split_event(name, data, limit)
    assert released(EventBuffer, parts) == released(EventBuffer, [(name, data)])


small_events = st.sampled_from([
    ("chats.update", [{"id": "1@s.whatsapp.net", "unreadCount": 2}]),
    ("groups.update", [{"id": "g@g.us", "subject": "s" * 3000}]),
    ("messages.upsert", {"messages": [], "type": "notify"}),
    ("connection.update", {"connection": "open"}),
    ("chats.upsert", [{"id": 2**70}]),  # not encodable: stays whole, reported later
    ("chats.delete", {"1@s.whatsapp.net"}),  # not encodable either
])


@settings(max_examples=60, deadline=None)
@given(events=st.lists(st.one_of(big_events(), small_events), max_size=150),
       limit=st.integers(1, 60_000))
def test_a_run_of_events_splits_as_each_event_alone(events: list[tuple[str, Any]],
                                                     limit: int) -> None:
    assert split_events(events, limit) == [
        part for name, data in events for part in split_event(name, data, limit)]


def test_split_events_refuses_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        split_events([], 0)


# -- frames cut by bytes -------------------------------------------------------------


def server_for(subprotocol: str, max_frame: int) -> ServerSession:
    session = ServerSession(subprotocol=subprotocol)
    client = ClientSession("t", "k", subprotocol=subprotocol, max_size=max_frame)
    session.receive(client.hello())
    assert session.max_frame == max_frame
    session.ready("s", True, 0)
    return session


@settings(max_examples=80, deadline=None)
@given(
    subprotocol=st.sampled_from([MSGPACK, JSON]),
    lengths=st.lists(st.integers(0, 3000), min_size=1, max_size=40),
    max_frame=st.integers(300, 20_000),
)
def test_frames_never_exceed_max_frame_and_carry_every_seq_once(
    subprotocol: str, lengths: list[int], max_frame: int
) -> None:
    events = [("chats.delete", ["x" * n]) for n in lengths]
    session = server_for(subprotocol, max_frame)
    client = ClientSession("t", "k", subprotocol=subprotocol, max_size=max_frame)
    client.hello()
    client.receive(session.codec.encode(Ready("s", True, 0)))
    seen: dict[int, Any] = {}
    for frame_message in session.events(1, events):
        wire = frame_message.encode() if isinstance(frame_message, str) else frame_message
        assert len(wire) <= max_frame
        (frame,) = client.receive(frame_message)
        if isinstance(frame, Batch):
            seen.update({frame.first + i: (e.name, e.data) for i, e in enumerate(frame.events)})
        elif isinstance(frame, Event):
            seen[frame.seq] = (frame.name, frame.data)
        else:
            assert isinstance(frame, Oversize) and frame.size > max_frame
            alone = session.codec.encode(Event(frame.seq, *events[frame.seq - 1]))
            assert len(alone.encode() if isinstance(alone, str) else alone) == frame.size
            seen[frame.seq] = None
    assert sorted(seen) == list(range(1, len(events) + 1))
    assert all(seen[i] in (None, (n, d)) for i, (n, d) in enumerate(events, 1))
    assert session.last_sent == client.last_seq == len(events)


def test_a_hello_without_max_frame_gets_the_legacy_limit() -> None:
    session = ServerSession()
    session.receive(session.codec.encode(Hello("t", "k")))
    assert session.max_frame == 1 << 20


def test_a_result_larger_than_max_frame_becomes_an_error_result() -> None:
    session = server_for(MSGPACK, 1000)
    frame = session.codec.decode_server(session.result(3, True, bytes(5000)))
    assert isinstance(frame, Result) and frame.id == 3 and not frame.ok
    assert "exceeds the client's max_frame 1000" in (frame.error or "")
