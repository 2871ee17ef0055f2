"""Merge rules of the event buffer, written from docs/BUFFER.md.

Every test builds fresh Baileys-shaped payloads (merging may mutate them),
opens one buffering scope, emits, flushes and checks the released batch.
"""

from __future__ import annotations

import gc
import json
import pickle
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from rsocket import MessageStatus
from rsocket._rules import wire_name

J = "5511999990001@s.whatsapp.net"  # a 1:1 chat
J2 = "5511999990002@s.whatsapp.net"
J3 = "5511999990003@s.whatsapp.net"
G = "120363040000000001@g.us"  # a group
P1 = "5511988880001@s.whatsapp.net"  # group participants
P2 = "5511988880002@s.whatsapp.net"

Batch = dict[str, Any]


# -- payload builders (always fresh dicts) ---------------------------------------


def mkey(mid: str, jid: str = J, from_me: bool = False, participant: str | None = None) -> dict:
    key: dict[str, Any] = {"remoteJid": jid, "id": mid, "fromMe": from_me}
    if participant is not None:
        key["participant"] = participant
    return key


def kstr(key: dict) -> str:
    return f"{key['remoteJid']},{key['id']},{'1' if key['fromMe'] else '0'}"


def msg(
    mid: str,
    jid: str = J,
    from_me: bool = False,
    ts: int = 1_700_000_000,
    content: dict | None = None,
    **extra: Any,
) -> dict:
    m: dict[str, Any] = {
        "key": mkey(mid, jid, from_me),
        "message": {"conversation": f"text of {mid}"} if content is None else content,
        "messageTimestamp": ts,
        "pushName": "Ana",
    }
    m.update(extra)
    return m


def upsert(*messages: dict, type_: str = "notify") -> dict:
    return {"messages": list(messages), "type": type_}


def history(
    chats: list | None = None,
    contacts: list | None = None,
    messages: list | None = None,
    **extra: Any,
) -> dict:
    data: dict[str, Any] = {
        "chats": chats or [],
        "contacts": contacts or [],
        "messages": messages or [],
    }
    data.update(extra)
    return data


def reaction(target: dict, text: str | None, *, by: dict, ts: int = 1_700_000_100) -> dict:
    r: dict[str, Any] = {"key": by, "senderTimestampMs": ts}
    if text is not None:
        r["text"] = text
    return {"key": target, "reaction": r}


def receipt(target: dict, user: str, **fields: Any) -> dict:
    return {"key": target, "receipt": {"userJid": user, **fields}}


def always(value: bool | None) -> Callable[[Any], bool | None]:
    return lambda data: value


# -- fixtures and release helpers ------------------------------------------------


@pytest.fixture
def ev(make_buffer: Callable[..., Any]) -> Any:
    return make_buffer(max_buffer_items=1000, max_history_cache=1000)


@pytest.fixture
def batches(ev: Any) -> list[Batch]:
    out: list[Batch] = []
    ev.process(out.append)
    return out


def release(ev: Any, batches: list[Batch]) -> Batch:
    """Close the (single) open scope; exactly one batch must be released."""
    before = len(batches)
    assert ev.flush() is True
    assert len(batches) == before + 1, "expected exactly one released batch"
    return batches[-1]


def release_nothing(ev: Any, batches: list[Batch]) -> None:
    before = len(batches)
    assert ev.flush() is True
    assert len(batches) == before, f"expected no batch, got {batches[before:]}"


def hist_chats(batch: Batch) -> dict[str, dict]:
    return {c["id"]: c for c in batch["messaging-history.set"]["chats"]}


def hist_messages(batch: Batch) -> list[dict]:
    return batch["messaging-history.set"]["messages"]


def upserted(batch: Batch) -> list[dict]:
    return batch["messages.upsert"]["messages"]


# == section 3: what a batch may hold ===========================================


def test_batch_maps_event_name_to_payload(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 1}])
    assert release(ev, batches) == {"chats.update": [{"id": J, "unreadCount": 1}]}


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("chats.upsert", []),
        ("chats.update", []),
        ("messages.update", []),
        ("messages.reaction", []),
        ("messages.upsert", {"messages": [], "type": "notify"}),
        ("messaging-history.set", {"chats": [], "contacts": [], "messages": []}),
    ],
)
def test_empty_payload_is_never_delivered_buffered(ev, batches, event, payload):
    ev.buffer()
    assert ev.emit(event, payload) is False  # "nothing in it" -> dropped
    release_nothing(ev, batches)
    assert ev.stats().flush_count == 0  # an empty release is not counted


def test_empty_payload_is_never_delivered_directly(ev, batches):
    assert ev.emit("chats.update", []) is False
    assert batches == []


def test_a_str_subclass_event_name_is_merged_as_its_value(ev, batches):
    """An application's StrEnum of event names buffers and merges on both cores."""
    import enum

    class Name(enum.StrEnum):
        CHATS_UPDATE = "chats.update"

    ev.buffer()
    ev.emit(Name.CHATS_UPDATE, [{"id": "c1", "unreadCount": 1}])
    ev.emit(Name.CHATS_UPDATE, [{"id": "c1", "name": "x"}])
    assert not batches  # buffered, not delivered at once
    batch = release(ev, batches)
    assert batch == {"chats.update": [{"id": "c1", "unreadCount": 1, "name": "x"}]}


def test_non_bufferable_event_is_delivered_at_once_while_buffering(ev, batches):
    ev.buffer()
    assert ev.emit("connection.update", {"connection": "open"}) is True
    assert batches == [{"connection.update": {"connection": "open"}}]
    release_nothing(ev, batches)


def test_emit_inside_handler_goes_to_next_batch(ev):
    seen: list[Batch] = []

    def handler(batch: Batch) -> None:
        seen.append(batch)
        if len(seen) == 1:
            ev.buffer()
            ev.emit("chats.update", [{"id": J2, "unreadCount": 1}])

    ev.process(handler)
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 1}])
    assert ev.flush() is True
    assert seen == [{"chats.update": [{"id": J, "unreadCount": 1}]}]
    assert ev.flush() is True
    assert seen[1] == {"chats.update": [{"id": J2, "unreadCount": 1}]}


# == merge_chat(a, b) ============================================================

CHAT_EVENTS = ["chats.upsert", "chats.update"]


def merged_chat(ev, batches, event: str, a: dict, b: dict) -> dict:
    ev.buffer()
    ev.emit(event, [{"id": J, **a}])
    ev.emit(event, [{"id": J, **b}])
    [chat] = release(ev, batches)[event]
    return chat


@pytest.mark.parametrize("event", CHAT_EVENTS)
def test_merge_chat_null_over_negative_drops_unread_count(ev, batches, event):
    chat = merged_chat(ev, batches, event, {"unreadCount": -1}, {"unreadCount": None})
    assert "unreadCount" not in chat


@pytest.mark.parametrize("event", CHAT_EVENTS)
def test_merge_chat_null_over_positive_overwrites(ev, batches, event):
    # Literal reading: the null rule only applies over a negative count; otherwise
    # "every key of b overwrites a", so the null is kept.
    chat = merged_chat(ev, batches, event, {"unreadCount": 3}, {"unreadCount": None})
    assert "unreadCount" in chat
    assert chat["unreadCount"] is None


@pytest.mark.parametrize("event", CHAT_EVENTS)
def test_merge_chat_counts_add_up(ev, batches, event):
    chat = merged_chat(ev, batches, event, {"unreadCount": 2}, {"unreadCount": 3})
    assert chat["unreadCount"] == 5


@pytest.mark.parametrize("event", CHAT_EVENTS)
def test_merge_chat_negative_a_counts_as_zero(ev, batches, event):
    chat = merged_chat(ev, batches, event, {"unreadCount": -1}, {"unreadCount": 2})
    assert chat["unreadCount"] == 2


@pytest.mark.parametrize("event", CHAT_EVENTS)
def test_merge_chat_zero_b_adds_rather_than_resets(ev, batches, event):
    chat = merged_chat(ev, batches, event, {"unreadCount": 3}, {"unreadCount": 0})
    assert chat["unreadCount"] == 3  # max(0, 0) + max(3, 0)


@pytest.mark.parametrize("event", CHAT_EVENTS)
def test_merge_chat_negative_b_overwrites(ev, batches, event):
    chat = merged_chat(ev, batches, event, {"unreadCount": 4}, {"unreadCount": -1})
    assert chat["unreadCount"] == -1


@pytest.mark.parametrize("event", CHAT_EVENTS)
def test_merge_chat_absent_count_keeps_a(ev, batches, event):
    chat = merged_chat(ev, batches, event, {"unreadCount": 2}, {"archived": True})
    assert chat["unreadCount"] == 2


@pytest.mark.parametrize("event", CHAT_EVENTS)
def test_merge_chat_keys_of_b_overwrite_a(ev, batches, event):
    chat = merged_chat(
        ev,
        batches,
        event,
        {"name": "Old", "archived": False, "muteEndTime": 10},
        {"name": "New", "archived": True},
    )
    assert chat == {"id": J, "name": "New", "archived": True, "muteEndTime": 10}


# == conditional chat updates in chats.update =====================================


def test_update_without_conditional_is_decided_true(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 1}])
    assert J in ev.pending.chat_updates
    assert not ev.pending.chat_conditionals
    assert release(ev, batches)["chats.update"] == [{"id": J, "unreadCount": 1}]


def test_conditional_true_is_merged_without_the_conditional_key(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 1}])
    ev.emit("chats.update", [{"id": J, "unreadCount": 2, "conditional": always(True)}])
    assert release(ev, batches)["chats.update"] == [{"id": J, "unreadCount": 3}]


def test_conditional_receives_the_pending_batch(ev, batches):
    seen: list[Any] = []

    def cond(data: Any) -> bool:
        seen.append(data)
        return True

    ev.buffer()
    ev.emit("chats.update", [{"id": J, "archived": True, "conditional": cond}])
    assert seen and seen[0] is ev.pending
    release(ev, batches)


def test_conditional_false_is_discarded(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 1}])
    ev.emit("chats.update", [{"id": J, "unreadCount": 5, "conditional": always(False)}])
    assert release(ev, batches) == {"chats.update": [{"id": J, "unreadCount": 1}]}


def test_conditional_false_alone_releases_nothing(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 5, "conditional": always(False)}])
    release_nothing(ev, batches)


def test_conditional_none_goes_to_chat_conditionals_in_arrival_order(ev, batches):
    first = {"id": J, "name": "first", "conditional": always(None)}
    second = {"id": J, "name": "second", "conditional": always(None)}
    ev.buffer()
    ev.emit("chats.update", [first])
    ev.emit("chats.update", [second])
    assert [u["name"] for u in ev.pending.chat_conditionals[J]] == ["first", "second"]
    assert J not in ev.pending.chat_updates
    ev.flush()


def test_undecided_update_never_overwrites_a_decided_one(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "name": "decided"}])
    ev.emit("chats.update", [{"id": J, "name": "undecided", "conditional": always(None)}])
    assert ev.pending.chat_updates[J] == {"id": J, "name": "decided"}
    assert len(ev.pending.chat_conditionals[J]) == 1


def test_undecided_update_never_holds_back_a_decided_one(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "name": "undecided", "conditional": always(None)}])
    ev.emit("chats.update", [{"id": J, "archived": True}])
    assert release(ev, batches)["chats.update"] == [{"id": J, "archived": True}]


def test_conditional_true_merges_into_pending_upsert(ev, batches):
    ev.buffer()
    ev.emit("chats.upsert", [{"id": J, "name": "Ana", "unreadCount": 1}])
    ev.emit("chats.update", [{"id": J, "unreadCount": 1, "conditional": always(True)}])
    batch = release(ev, batches)
    assert batch == {"chats.upsert": [{"id": J, "name": "Ana", "unreadCount": 2}]}


def test_conditional_true_merges_into_history_chat(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": J, "name": "Ana"}]))
    ev.emit("chats.update", [{"id": J, "archived": True, "conditional": always(True)}])
    batch = release(ev, batches)
    assert "chats.update" not in batch
    assert hist_chats(batch)[J] == {"id": J, "name": "Ana", "archived": True}


# -- re-asking undecided conditionals at release ------------------------------------


class Toggle:
    """A condition whose answer the test sets; it records what it saw."""

    def __init__(self, answer: bool | None = None) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self, data: Any) -> bool | None:
        self.calls += 1
        return self.answer


def test_release_reasks_true_and_releases_in_chats_update(ev, batches):
    cond = Toggle(None)
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "archived": True, "conditional": cond}])
    cond.answer = True
    batch = release(ev, batches)
    assert batch == {"chats.update": [{"id": J, "archived": True}]}
    assert not ev.pending.chat_conditionals


def test_release_reasks_true_merged_into_decided_update(ev, batches):
    cond = Toggle(None)
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 2, "name": "decided"}])
    ev.emit("chats.update", [{"id": J, "unreadCount": 1, "name": "late", "conditional": cond}])
    cond.answer = True
    batch = release(ev, batches)
    assert batch == {"chats.update": [{"id": J, "unreadCount": 3, "name": "late"}]}


def test_release_reasks_false_and_drops(ev, batches):
    cond = Toggle(None)
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 2}])
    ev.emit("chats.update", [{"id": J, "unreadCount": 9, "conditional": cond}])
    cond.answer = False
    assert release(ev, batches) == {"chats.update": [{"id": J, "unreadCount": 2}]}
    assert not ev.pending.chat_conditionals
    ev.buffer()
    release_nothing(ev, batches)


def test_release_reasks_none_and_carries_unreleased(ev, batches):
    cond = Toggle(None)
    ev.buffer()
    ev.emit("chats.update", [{"id": J2, "archived": True}])
    ev.emit("chats.update", [{"id": J, "unreadCount": 4, "conditional": cond}])
    calls_before = cond.calls
    assert release(ev, batches) == {"chats.update": [{"id": J2, "archived": True}]}
    assert cond.calls == calls_before + 1  # asked once more at release
    assert len(ev.pending.chat_conditionals[J]) == 1  # carried into the next batch

    cond.answer = True
    ev.buffer()
    assert release(ev, batches) == {"chats.update": [{"id": J, "unreadCount": 4}]}
    assert not ev.pending.chat_conditionals


def test_carried_conditional_alone_releases_nothing(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 4, "conditional": always(None)}])
    release_nothing(ev, batches)
    ev.buffer()
    release_nothing(ev, batches)


def test_undecided_conditional_is_dropped_at_destroy(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 4, "conditional": always(None)}])
    ev.destroy()
    assert all("chats.update" not in b for b in batches)


# == absorbing pending updates into a new chat ======================================


def test_upsert_absorbs_decided_update_chat_values_win_counts_add(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 2, "name": "upd", "muteEndTime": 5}])
    ev.emit("chats.upsert", [{"id": J, "unreadCount": 1, "name": "chat"}])
    assert J not in ev.pending.chat_updates
    batch = release(ev, batches)
    assert batch == {
        "chats.upsert": [{"id": J, "unreadCount": 3, "name": "chat", "muteEndTime": 5}]
    }


def test_upsert_absorbs_conditionals_true_false_none(ev, batches):
    yes, no = Toggle(None), Toggle(None)
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "name": "yes", "conditional": yes}])
    ev.emit("chats.update", [{"id": J, "archived": True, "conditional": no}])
    ev.emit("chats.update", [{"id": J, "pinned": 1, "conditional": always(None)}])
    yes.answer, no.answer = True, False
    ev.emit("chats.upsert", [{"id": J, "name": "chat", "unreadCount": 0}])

    chat = ev.pending.chat_upserts[J]
    assert chat["name"] == "yes"  # the True update is merged over c
    assert "archived" not in chat  # False: dropped
    assert "pinned" not in chat  # None: kept aside
    assert "conditional" not in chat
    assert [u["pinned"] for u in ev.pending.chat_conditionals[J]] == [1]


def test_absorb_applies_true_conditionals_in_arrival_order(ev, batches):
    toggles = [Toggle(None), Toggle(None)]
    ev.buffer()
    for name, cond in zip(("c1", "c2"), toggles, strict=True):
        ev.emit("chats.update", [{"id": J, "name": name, "conditional": cond}])
    for cond in toggles:
        cond.answer = True
    ev.emit("chats.upsert", [{"id": J}])
    assert ev.pending.chat_upserts[J]["name"] == "c2"


def test_absorb_decides_first_then_conditionals(ev, batches):
    seen: dict[str, Any] = {}

    def cond(data: Any) -> bool | None:
        chat = data.chat_upserts.get(J)
        if chat is None:
            return None
        seen["name"] = chat.get("name")
        seen["decided_still_pending"] = J in data.chat_updates
        return True

    ev.buffer()
    ev.emit("chats.update", [{"id": J, "name": "decided"}])
    ev.emit("chats.update", [{"id": J, "muteEndTime": 7, "conditional": cond}])
    ev.emit("chats.upsert", [{"id": J}])
    assert seen == {"name": "decided", "decided_still_pending": False}
    assert release(ev, batches) == {
        "chats.upsert": [{"id": J, "name": "decided", "muteEndTime": 7}]
    }


def test_absorbing_condition_sees_the_new_chat(ev, batches):
    def cond(data: Any) -> bool | None:
        return True if J in data.chat_upserts else None

    ev.buffer()
    ev.emit("chats.update", [{"id": J, "archived": True, "conditional": cond}])
    assert J in ev.pending.chat_conditionals
    ev.emit("chats.upsert", [{"id": J, "name": "Ana"}])
    assert release(ev, batches) == {"chats.upsert": [{"id": J, "name": "Ana", "archived": True}]}


def test_history_chat_absorbs_pending_update(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 2, "archived": True}])
    ev.emit("messaging-history.set", history(chats=[{"id": J, "unreadCount": 1, "name": "A"}]))
    batch = release(ev, batches)
    assert "chats.update" not in batch
    assert hist_chats(batch)[J] == {"id": J, "unreadCount": 3, "archived": True, "name": "A"}


# == messaging-history.set =======================================================


def test_history_chat_already_in_batch_copies_end_of_history_transfer_type(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": J, "name": "first"}]))
    ev.emit(
        "messaging-history.set",
        history(chats=[{"id": J, "name": "second", "endOfHistoryTransferType": 1}]),
    )
    chats = hist_chats(release(ev, batches))
    assert chats[J]["name"] == "first"  # only the transfer type is copied
    assert chats[J]["endOfHistoryTransferType"] == 1


def test_history_chat_in_cache_is_skipped(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": J}]))
    release(ev, batches)
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": J}, {"id": J2}]))
    assert list(hist_chats(release(ev, batches))) == [J2]


def test_history_chat_only_in_cache_releases_nothing(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": J}]))
    release(ev, batches)
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": J}]))
    release_nothing(ev, batches)  # a history set with nothing in it is never delivered


def test_history_contacts_in_batch_merge_non_null_fields(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(contacts=[{"id": J, "name": "Ana", "notify": "a"}]))
    ev.emit(
        "messaging-history.set",
        history(contacts=[{"id": J, "name": None, "notify": "b", "verifiedName": "V"}]),
    )
    [contact] = release(ev, batches)["messaging-history.set"]["contacts"]
    assert contact == {"id": J, "name": "Ana", "notify": "b", "verifiedName": "V"}


def test_history_contact_cached_without_names_is_skipped(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(contacts=[{"id": J, "notify": "Ana"}]))
    release(ev, batches)
    ev.buffer()
    ev.emit("messaging-history.set", history(contacts=[{"id": J, "imgUrl": "x"}]))
    release_nothing(ev, batches)


@pytest.mark.parametrize("field", ["notify", "name", "verifiedName"])
def test_history_contact_cached_with_a_name_is_stored_again(ev, batches, field):
    ev.buffer()
    ev.emit("messaging-history.set", history(contacts=[{"id": J}]))
    release(ev, batches)
    ev.buffer()
    ev.emit("messaging-history.set", history(contacts=[{"id": J, field: "Ana"}]))
    contacts = release(ev, batches)["messaging-history.set"]["contacts"]
    assert contacts == [{"id": J, field: "Ana"}]


def test_history_contact_cache_key_is_prefixed(ev, batches):
    # The chat id J is cached as "J", the contact as "c:J": they do not collide.
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": J}]))
    release(ev, batches)
    ev.buffer()
    ev.emit("messaging-history.set", history(contacts=[{"id": J}]))
    assert release(ev, batches)["messaging-history.set"]["contacts"] == [{"id": J}]
    assert ev.stats().history_cache_size == 2


def test_history_message_in_batch_is_not_replaced(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M1", content={"conversation": "a"})]))
    ev.emit("messaging-history.set", history(messages=[msg("M1", content={"conversation": "b"})]))
    [m] = hist_messages(release(ev, batches))
    assert m["message"] == {"conversation": "a"}


def test_history_message_in_cache_is_skipped(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M1")]))
    release(ev, batches)
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M1"), msg("M2")]))
    assert [m["key"]["id"] for m in hist_messages(release(ev, batches))] == ["M2"]


class Tag(str):
    """A str subclass: equal to its characters' str, compared with ``==``."""


@pytest.mark.parametrize("make", [str, Tag])
def test_one_history_cache_holds_message_keys_and_chat_ids_alike(ev, batches, make):
    """Baileys keeps chat ids and message keys' strings in one cache. The compiled
    core keeps a message key as its bytes (no str made): a chat id equal to that
    string, or a message key equal to a cached chat id, is still found there."""
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M1")]))
    release(ev, batches)
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": make(kstr(mkey("M1")))}]))
    release_nothing(ev, batches)  # M1's key string is cached: the chat is skipped
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": make(kstr(mkey("M2")))}]))
    release(ev, batches)
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M2"), msg("M3")]))
    assert [m["key"]["id"] for m in hist_messages(release(ev, batches))] == ["M3"]


def test_message_keys_evicted_from_the_history_cache_are_taken_again(make_buffer):
    ev = make_buffer(max_history_cache=2)
    batches: list[Batch] = []
    ev.process(batches.append)
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg(f"M{i}") for i in range(4)]))
    release(ev, batches)
    ev.buffer()  # M0 and M1 were evicted by M2 and M3
    ev.emit("messaging-history.set", history(messages=[msg("M3"), msg("M0")]))
    assert [m["key"]["id"] for m in hist_messages(release(ev, batches))] == ["M0"]
    assert ev.stats().history_cache_size == 2


@pytest.mark.parametrize("at", [0, 1, 2])
def test_a_history_message_without_a_key_raises_after_those_before_it_merge(ev, batches, at):
    """The compiled core probes each key one message ahead of its merge: a bad one
    still raises only once the messages before it are merged, as in order."""
    messages = [msg("M1"), msg("M2"), msg("M3")]
    messages.insert(at, {"message": {"conversation": "no key"}})
    ev.buffer()
    with pytest.raises(TypeError, match="KeyError: 'key'"):
        ev.emit("messaging-history.set", history(messages=messages))
    merged = [m["key"]["id"] for m in messages[:at]]
    assert list(ev.pending.history_messages) == [kstr(mkey(mid)) for mid in merged]
    ev.flush()
    assert [m["key"]["id"] for batch in batches for m in hist_messages(batch)] == merged


def test_history_messages_in_a_tuple_merge_as_in_a_list(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=(msg("M1"), msg("M2"), msg("M1"))))
    assert [m["key"]["id"] for m in hist_messages(release(ev, batches))] == ["M1", "M2"]


class Name(str):
    """A str subclass as a field name: equal to the name, but not a str's object."""


def named(source: str, payload: Any) -> Any:
    """``payload`` with its field names as ``source`` makes them: msgspec's own
    objects, json's and pickle's (one per document), Python's interned ones, or a
    str subclass."""
    if source == "msgspec":
        return msgspec.msgpack.decode(msgspec.msgpack.encode(payload))
    if source == "json":
        return json.loads(json.dumps(payload))
    if source == "pickle":
        return pickle.loads(pickle.dumps(payload))
    if source == "subclass" and isinstance(payload, dict):
        return {Name(k): named(source, v) for k, v in payload.items()}
    return payload


SOURCES = ("msgspec", "json", "pickle", "literal", "subclass")


def test_keys_merge_alike_whatever_decoder_made_their_names(ev, batches):
    """The compiled core reads a key's names by pointer, learning the objects another
    decoder put in their place; names from each source, interleaved, merge as one."""
    messages = [named(source, msg(f"M{i}")) for i, source in enumerate(SOURCES * 2)]
    messages += [named(source, msg("M0")) for source in SOURCES]  # M0 again, every way
    # M2 again, its key with a field outside its identity, as long as "id"
    messages.append(named("json", {**msg("M2"), "key": {**mkey("M2"), "ab": "X1"}}))
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=messages))
    for source in SOURCES:
        ev.emit("messages.update", [named(source, {"key": mkey("U1"), "update": {"status": 3}})])
    batch = release(ev, batches)
    assert [m["key"]["id"] for m in hist_messages(batch)] == [f"M{i}" for i in range(10)]
    [update] = batch["messages.update"]
    assert update["key"]["id"] == "U1"


def test_history_messages_from_an_iterator_merge_as_they_come(ev, batches):
    def messages():
        yield msg("M1")
        yield msg("M2")
        raise ValueError("the source broke")

    ev.buffer()
    with pytest.raises(ValueError, match="the source broke"):
        ev.emit("messaging-history.set", history(messages=messages()))
    ev.flush()
    assert [m["key"]["id"] for batch in batches for m in hist_messages(batch)] == ["M1", "M2"]


@pytest.mark.parametrize("names", ["msgspec", "json"])
def test_an_evicted_key_whose_del_rewrites_the_next_message_is_seen(make_buffer, names):
    """The compiled core probes a key one message ahead; when evicting a cache key runs
    its ``__del__`` and that rewrites the next message's key, the merge still sees the
    rewritten key, as the pure core does. Names as msgspec makes them, or as another
    decoder does (fresh strs, learnt by the first compare)."""

    def W(name: str) -> str:  # the names the probe ahead compares by pointer
        return wire_name(name) if names == "msgspec" else json.loads(json.dumps(name))

    ev = make_buffer(max_history_cache=1)

    def key(mid: str) -> dict:
        return {W("remoteJid"): J, W("id"): mid, W("fromMe"): False}

    messages = [{W("key"): key("M0"), W("message"): {}}, {W("key"): key("M1"), W("message"): {}}]

    class Rewriting(str):
        def __del__(self) -> None:
            messages[1][W("key")][W("id")] = "CHANGED"

    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{W("id"): Rewriting("chat@s.whatsapp.net")}]))
    ev.flush()
    gc.collect()  # only the history cache holds the chat id now
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=messages))
    assert list(ev.pending.history_messages) == [kstr(mkey("M0")), kstr(mkey("CHANGED"))]


def test_history_is_latest_defaults_to_false(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M1")]))
    assert release(ev, batches)["messaging-history.set"]["isLatest"] is False


def test_history_is_latest_is_sticky(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M1")], isLatest=True))
    ev.emit("messaging-history.set", history(messages=[msg("M2")], isLatest=False))
    ev.emit("messaging-history.set", history(messages=[msg("M3")]))
    assert release(ev, batches)["messaging-history.set"]["isLatest"] is True


def test_history_sync_fields_copied_when_present(ev, batches):
    ev.buffer()
    ev.emit(
        "messaging-history.set",
        history(messages=[msg("M1")], syncType=2, progress=40, peerDataRequestSessionId="s1"),
    )
    ev.emit("messaging-history.set", history(messages=[msg("M2")], progress=80))
    hs = release(ev, batches)["messaging-history.set"]
    assert (hs["syncType"], hs["progress"], hs["peerDataRequestSessionId"]) == (2, 80, "s1")


def test_history_set_missing_lists_read_as_empty(ev, batches):
    ev.buffer()
    assert ev.emit("messaging-history.set", {"messages": [msg("M1")]}) is True
    hs = release(ev, batches)["messaging-history.set"]
    # Released shapes are Baileys': the three lists are always there.
    assert hs["chats"] == []
    assert hs["contacts"] == []
    assert [m["key"]["id"] for m in hs["messages"]] == ["M1"]


def test_history_set_ignores_unknown_keys(ev, batches):
    # Literal reading of "Only chats, contacts and messages are read".
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M1")], lids=[{"x": 1}]))
    assert "lids" not in release(ev, batches)["messaging-history.set"]


# == chats.upsert / chats.update / chats.delete =====================================


def test_chats_upsert_stores_new_chat(ev, batches):
    ev.buffer()
    ev.emit("chats.upsert", [{"id": J, "name": "Ana", "conversationTimestamp": 1700000000}])
    assert release(ev, batches) == {
        "chats.upsert": [{"id": J, "name": "Ana", "conversationTimestamp": 1700000000}]
    }


def test_chats_upsert_merges_into_history_chat(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": J, "name": "Ana"}]))
    ev.emit("chats.upsert", [{"id": J, "archived": True}])
    batch = release(ev, batches)
    assert "chats.upsert" not in batch
    assert hist_chats(batch)[J] == {"id": J, "name": "Ana", "archived": True}


def test_chats_update_merges_into_pending_upsert(ev, batches):
    ev.buffer()
    ev.emit("chats.upsert", [{"id": J, "name": "Ana"}])
    ev.emit("chats.update", [{"id": J, "archived": True}])
    assert release(ev, batches) == {"chats.upsert": [{"id": J, "name": "Ana", "archived": True}]}


def test_chats_delete_drops_all_pending_entries_of_the_chat(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": J}]))
    ev.emit("chats.upsert", [{"id": J2}])
    ev.emit("chats.update", [{"id": J3, "archived": True}])
    ev.emit("chats.update", [{"id": G, "archived": True, "conditional": always(None)}])
    ev.emit("chats.delete", [J3, J2, J, G])
    assert not ev.pending.chat_conditionals
    batch = release(ev, batches)
    assert batch == {"chats.delete": [J3, J2, J, G]}


def test_chats_delete_then_upsert_releases_only_the_upsert(ev, batches):
    ev.buffer()
    ev.emit("chats.delete", [J])
    ev.emit("chats.upsert", [{"id": J, "name": "back"}])
    assert release(ev, batches) == {"chats.upsert": [{"id": J, "name": "back"}]}


def test_chats_upsert_then_delete_releases_only_the_delete(ev, batches):
    ev.buffer()
    ev.emit("chats.upsert", [{"id": J, "name": "gone"}])
    ev.emit("chats.delete", [J])
    assert release(ev, batches) == {"chats.delete": [J]}


def test_chats_update_removes_pending_delete(ev, batches):
    ev.buffer()
    ev.emit("chats.delete", [J])
    ev.emit("chats.update", [{"id": J, "unreadCount": 1}])
    assert release(ev, batches) == {"chats.update": [{"id": J, "unreadCount": 1}]}


@pytest.mark.parametrize("answer", [False, None])
def test_chats_update_removes_pending_delete_whatever_its_condition(ev, batches, answer):
    # docs/BUFFER.md: a chats.update "always leaves chat_deletes", even for a discarded/undecided update.
    ev.buffer()
    ev.emit("chats.delete", [J, J2])
    ev.emit("chats.update", [{"id": J, "unreadCount": 1, "conditional": always(answer)}])
    assert list(ev.pending.chat_deletes) == [J2]
    assert release(ev, batches) == {"chats.delete": [J2]}


def test_history_chat_after_delete_keeps_the_delete(ev, batches):
    ev.buffer()
    ev.emit("chats.delete", [J])
    ev.emit("messaging-history.set", history(chats=[{"id": J, "name": "old"}]))
    batch = release(ev, batches)
    assert batch["chats.delete"] == [J]
    assert list(hist_chats(batch)) == [J]


def test_chats_delete_keeps_insertion_order_and_dedups(ev, batches):
    ev.buffer()
    ev.emit("chats.delete", [J2, J])
    ev.emit("chats.delete", [J3, J2])
    assert release(ev, batches) == {"chats.delete": [J2, J, J3]}


# == contacts.upsert / contacts.update =============================================


def test_contacts_upsert_merges_non_null_fields(ev, batches):
    ev.buffer()
    ev.emit("contacts.upsert", [{"id": J, "name": "Ana", "notify": "a"}])
    ev.emit("contacts.upsert", [{"id": J, "name": None, "notify": "b", "imgUrl": "u"}])
    assert release(ev, batches) == {
        "contacts.upsert": [{"id": J, "name": "Ana", "notify": "b", "imgUrl": "u"}]
    }


def test_contacts_upsert_merges_into_history_contact(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(contacts=[{"id": J, "name": "Ana"}]))
    ev.emit("contacts.upsert", [{"id": J, "name": None, "verifiedName": "Ana Ltd"}])
    batch = release(ev, batches)
    assert "contacts.upsert" not in batch
    assert batch["messaging-history.set"]["contacts"] == [
        {"id": J, "name": "Ana", "verifiedName": "Ana Ltd"}
    ]


def test_contacts_upsert_folds_pending_update_upsert_wins(ev, batches):
    ev.buffer()
    ev.emit("contacts.update", [{"id": J, "name": "from update", "imgUrl": "changed"}])
    ev.emit("contacts.upsert", [{"id": J, "name": "from upsert", "notify": "ana"}])
    assert J not in ev.pending.contact_updates
    batch = release(ev, batches)
    assert batch == {
        "contacts.upsert": [
            {"id": J, "name": "from upsert", "imgUrl": "changed", "notify": "ana"}
        ]
    }


def test_contacts_upsert_null_field_does_not_hide_folded_update(ev, batches):
    ev.buffer()
    ev.emit("contacts.update", [{"id": J, "name": "from update"}])
    ev.emit("contacts.upsert", [{"id": J, "name": None, "notify": "ana"}])
    [contact] = release(ev, batches)["contacts.upsert"]
    assert contact["name"] == "from update"  # only the upsert's non-null fields win
    assert contact["notify"] == "ana"


def test_contacts_update_merges_into_pending_upsert(ev, batches):
    ev.buffer()
    ev.emit("contacts.upsert", [{"id": J, "name": "Ana"}])
    ev.emit("contacts.update", [{"id": J, "imgUrl": "changed"}])
    assert release(ev, batches) == {
        "contacts.upsert": [{"id": J, "name": "Ana", "imgUrl": "changed"}]
    }


def test_contacts_update_merges_into_history_contact(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(contacts=[{"id": J, "name": "Ana"}]))
    ev.emit("contacts.update", [{"id": J, "imgUrl": "changed"}])
    batch = release(ev, batches)
    assert "contacts.update" not in batch
    assert batch["messaging-history.set"]["contacts"] == [
        {"id": J, "name": "Ana", "imgUrl": "changed"}
    ]


def test_contacts_update_merges_updates(ev, batches):
    ev.buffer()
    ev.emit("contacts.update", [{"id": J, "imgUrl": "u1", "notify": "a"}])
    ev.emit("contacts.update", [{"id": J, "imgUrl": "u2"}])
    assert release(ev, batches) == {
        "contacts.update": [{"id": J, "imgUrl": "u2", "notify": "a"}]
    }


# == messages.upsert ==============================================================


def test_messages_upsert_released_with_its_type(ev, batches):
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1"), msg("M2"), type_="append"))
    batch = release(ev, batches)
    assert batch["messages.upsert"]["type"] == "append"
    assert [m["key"]["id"] for m in upserted(batch)] == ["M1", "M2"]


def test_messages_upsert_keeps_first_timestamp_and_new_content(ev, batches):
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1", ts=100, content={"conversation": "old"})))
    ev.emit("messages.upsert", upsert(msg("M1", ts=200, content={"conversation": "new"})))
    [m] = upserted(release(ev, batches))
    assert m["messageTimestamp"] == 100
    assert m["message"] == {"conversation": "new"}


def test_messages_upsert_applies_and_drops_pending_update(ev, batches):
    key = mkey("M1")
    ev.buffer()
    ev.emit("messages.update", [{"key": key, "update": {"status": 3, "starred": True}}])
    ev.emit("messages.upsert", upsert(msg("M1")))
    batch = release(ev, batches)
    assert "messages.update" not in batch
    [m] = upserted(batch)
    assert (m["status"], m["starred"]) == (3, True)


def test_messages_upsert_replaces_history_entry(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M1", ts=100)]))
    ev.emit("messages.upsert", upsert(msg("M1", ts=300, content={"conversation": "edited"})))
    batch = release(ev, batches)
    assert "messages.upsert" not in batch
    [m] = hist_messages(batch)
    assert m["message"] == {"conversation": "edited"}
    assert m["messageTimestamp"] == 100


def test_message_key_string_form(ev, batches):
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1", jid=J, from_me=True)))
    ev.emit("messages.update", [{"key": mkey("M2", jid=G, participant=P1), "update": {"status": 4}}])
    # Literal reading: the batch's mappings are keyed by the string form of section 2.
    assert list(ev.pending.message_upserts) == [f"{J},M1,1"]
    assert list(ev.pending.message_updates) == [f"{G},M2,0"]


def test_message_keyed_mappings_are_live_read_only_views_by_key_string(ev, batches):
    """Both cores: ``ev.pending``'s message mappings answer by key string (the
    compiled core keeps them in C tables and shows views), and a holder of one
    sees it empty after the release."""
    ev.buffer()
    first, second = mkey("M1", jid=J, from_me=True), mkey("M2", jid=G, participant=P1)
    ev.emit("messages.upsert", upsert(msg("M1", jid=J, from_me=True)))
    ev.emit("message-receipt.update", [{"key": second, "receipt": {"userJid": P1}}])
    ev.emit("messages.reaction", [{"key": second, "reaction": {"key": mkey("R", jid=P2),
                                                               "text": "+"}}])
    upserts, receipts = ev.pending.message_upserts, ev.pending.message_receipts
    assert kstr(first) in upserts and kstr(second) not in upserts and len(upserts) == 1
    assert upserts[kstr(first)]["key"] == first
    assert receipts[kstr(second)] == {"key": second, "userReceipt": [{"userJid": P1}]}
    assert [r["text"] for r in ev.pending.message_reactions[kstr(second)]["reactions"]] == ["+"]
    assert dict(ev.pending.message_deletes) == {} and "nope" not in upserts
    with pytest.raises(KeyError):
        upserts["nope"]
    ev.flush()
    assert len(batches) == 1
    assert len(upserts) == 0 and list(receipts) == [] and not ev.pending.message_reactions


@pytest.mark.parametrize(
    "jid, mid",
    [
        ("5511999990001@s.whatsapp.net", "X" * 400),  # longer than the probe buffer
        ("chat-é@s.whatsapp.net", "M1"),  # Latin-1, not ASCII
        ("chat-☃@s.whatsapp.net", "M1"),  # two bytes a character
        ("a,b", "c"),  # commas: the string form decides, as in Baileys
    ],
)
def test_any_message_key_merges_by_its_string_form(ev, batches, jid, mid):
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg(mid, jid=jid)))
    ev.emit("messages.update", [{"key": mkey(mid, jid=jid), "update": {"status": 4}}])
    ev.emit("message-receipt.update", [{"key": mkey(mid, jid=jid), "receipt": {"userJid": P1}}])
    ev.emit("messages.update", [{"key": {"remoteJid": "a", "id": "b,c", "fromMe": False},
                                 "update": {"starred": True}}])
    assert list(ev.pending.message_upserts) == [f"{jid},{mid},0"]
    ev.flush()
    (got,) = upserted(batches[0])
    assert got["status"] == 4 and got["userReceipt"] == [{"userJid": P1}]
    # "a,b,c,0" is one key string however its commas split remoteJid and id
    assert got.get("starred") is (True if jid == "a,b" else None)


def test_many_removals_keep_insertion_order(ev, batches):
    """Deletes leave holes in the compiled tables; growth compacts them. The
    release order is still insertion order, as in a dict."""
    ev.buffer()
    ids = [f"M{i}" for i in range(3000)]
    ev.emit("messages.upsert", upsert(*(msg(i) for i in ids)))
    ev.emit("messages.delete", {"keys": [mkey(i) for i in ids[::2]]})
    ev.emit("messages.upsert", upsert(*(msg(i) for i in ids[::3])))
    ev.flush()
    expected = [i for i in ids if int(i[1:]) % 2] + [i for i in ids[::3] if not int(i[1:]) % 2]
    assert [m["key"]["id"] for m in upserted(batches[0])] == expected


def test_message_key_ignores_participant_and_distinguishes_from_me(ev, batches):
    ev.buffer()
    a = msg("M1", jid=G)
    a["key"]["participant"] = P1
    b = msg("M1", jid=G)
    b["key"]["participant"] = P2
    c = msg("M1", jid=G, from_me=True)
    ev.emit("messages.upsert", upsert(a, b, c))
    released = upserted(release(ev, batches))
    assert sorted(kstr(m["key"]) for m in released) == [f"{G},M1,0", f"{G},M1,1"]


# == messages.update ==============================================================


def test_messages_update_merges_into_pending_upsert(ev, batches):
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1")))
    ev.emit("messages.update", [{"key": mkey("M1"), "update": {"status": 3}}])
    batch = release(ev, batches)
    assert "messages.update" not in batch
    assert upserted(batch)[0]["status"] == 3


def test_messages_update_merges_into_history_message(ev, batches):
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M1")]))
    ev.emit("messages.update", [{"key": mkey("M1"), "update": {"starred": True}}])
    batch = release(ev, batches)
    assert "messages.update" not in batch
    assert hist_messages(batch)[0]["starred"] is True


def test_messages_update_merges_pending_updates(ev, batches):
    ev.buffer()
    ev.emit("messages.update", [{"key": mkey("M1"), "update": {"status": 3, "starred": True}}])
    ev.emit("messages.update", [{"key": mkey("M1"), "update": {"status": 4}}])
    assert release(ev, batches) == {
        "messages.update": [{"key": mkey("M1"), "update": {"status": 4, "starred": True}}]
    }


# -- READ status and the chat's unread counter --------------------------------------

READ = int(MessageStatus.READ)


def read_after(ev, batches, message: dict, *, chat_event: str = "chats.update",
               unread: int = 2, status: int = READ) -> dict:
    """Pending chat with ``unread`` + pending message, then a status update: the chat."""
    ev.buffer()
    ev.emit(chat_event, [{"id": message["key"]["remoteJid"], "unreadCount": unread}])
    ev.emit("messages.upsert", upsert(message))
    ev.emit("messages.update", [{"key": dict(message["key"]), "update": {"status": status}}])
    [chat] = release(ev, batches)[chat_event]
    return chat


@pytest.mark.parametrize("chat_event", ["chats.update", "chats.upsert"])
def test_read_decrements_unread_count(ev, batches, chat_event):
    chat = read_after(ev, batches, msg("M1"), chat_event=chat_event)
    assert chat["unreadCount"] == 1


def test_read_decrement_to_zero_deletes_the_key(ev, batches):
    chat = read_after(ev, batches, msg("M1"), unread=1)
    assert "unreadCount" not in chat


def test_read_on_history_message_decrements_pending_chat(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 2}])
    ev.emit("messaging-history.set", history(messages=[msg("M1")]))
    ev.emit("messages.update", [{"key": mkey("M1"), "update": {"status": READ}}])
    assert release(ev, batches)["chats.update"] == [{"id": J, "unreadCount": 1}]


def test_read_does_not_touch_history_chat(ev, batches):
    # Literal reading: only chat_updates / chat_upserts are decremented.
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": J, "unreadCount": 2}]))
    ev.emit("messages.upsert", upsert(msg("M1")))
    ev.emit("messages.update", [{"key": mkey("M1"), "update": {"status": READ}}])
    assert hist_chats(release(ev, batches))[J]["unreadCount"] == 2


def test_read_without_pending_message_does_not_decrement(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "unreadCount": 2}])
    ev.emit("messages.update", [{"key": mkey("M1"), "update": {"status": READ}}])
    batch = release(ev, batches)
    assert batch["chats.update"] == [{"id": J, "unreadCount": 2}]
    assert batch["messages.update"] == [{"key": mkey("M1"), "update": {"status": READ}}]


@pytest.mark.parametrize("status", [MessageStatus.DELIVERY_ACK, MessageStatus.PLAYED])
def test_non_read_status_does_not_decrement(ev, batches, status):
    assert read_after(ev, batches, msg("M1"), status=int(status))["unreadCount"] == 2


def test_read_of_from_me_message_does_not_decrement(ev, batches):
    assert read_after(ev, batches, msg("M1", from_me=True))["unreadCount"] == 2


def test_read_of_stub_message_does_not_decrement(ev, batches):
    stub = msg("M1", messageStubType=20, messageStubParameters=["x"])
    assert read_after(ev, batches, stub)["unreadCount"] == 2


@pytest.mark.parametrize("unread", [0, -1])
def test_read_leaves_non_positive_count_alone(ev, batches, unread):
    assert read_after(ev, batches, msg("M1"), unread=unread)["unreadCount"] == unread


@pytest.mark.parametrize(
    "content",
    [
        {"protocolMessage": {"type": 0, "key": {"id": "X"}}},
        {"reactionMessage": {"key": {"id": "X"}, "text": "👍"}},
        {"pollUpdateMessage": {"pollCreationMessageKey": {"id": "X"}}},
        {"senderKeyDistributionMessage": {"groupId": G}},
        {"senderKeyDistributionMessage": {"groupId": G}, "messageContextInfo": {}},
        {"messageContextInfo": {}},
        {"conversation": "hi", "protocolMessage": {"type": 0}},
        {},
        {"call": {}},
        {"messageSecret": "c2VjcmV0", "messageContextInfo": {}},
        {"ephemeralMessage": {}},
        {"viewOnceMessage": {"message": None}},
        "conversation",
        {"viewOnceMessageV2Extension": {"message": {"protocolMessage": {"type": 0}}}},
    ],
    ids=[
        "protocol", "reaction", "pollUpdate", "senderKeyOnly", "senderKey+contextInfo",
        "contextInfoOnly", "text+protocol", "empty", "call", "secret+contextInfo",
        "wrapper-without-message", "wrapper-null-message", "not-a-map",
        "protocol-in-viewOnceV2Extension",
    ],
)
def test_read_of_unreal_message_does_not_decrement(ev, batches, content):
    assert read_after(ev, batches, msg("M1", content=content))["unreadCount"] == 2


@pytest.mark.parametrize("excluded", ["protocolMessage", "reactionMessage", "pollUpdateMessage"])
def test_read_of_message_with_empty_excluded_part_does_not_decrement(ev, batches, excluded):
    # "none of protocolMessage, reactionMessage, pollUpdateMessage": the key being
    # there is enough, even with an empty body (protobuf-to-JSON drops default fields,
    # e.g. a REVOKE protocolMessage with type 0 and no key decodes to {}).
    content = {excluded: {}}
    assert read_after(ev, batches, msg("M1", content=content))["unreadCount"] == 2


def test_read_of_message_without_content_does_not_decrement(ev, batches):
    bare = msg("M1")
    del bare["message"]
    assert read_after(ev, batches, bare)["unreadCount"] == 2


@pytest.mark.parametrize(
    "content",
    [
        {"conversation": "hi"},
        {"extendedTextMessage": {"text": "hi"}},
        {"senderKeyDistributionMessage": {"groupId": G}, "conversation": "hi"},
        {"imageMessage": {"mimetype": "image/jpeg"}, "messageContextInfo": {}},
        {"conversation": ""},
        {"conversation": "hi", "protocolMessage": None, "reactionMessage": None},
        {"ephemeralMessage": None, "viewOnceMessage": {"message": {"conversation": "hi"}}},
    ],
    ids=[
        "conversation", "extendedText", "senderKey+text", "image+contextInfo",
        "empty-conversation", "null-excluded-parts", "first-present-wrapper",
    ],
)
def test_read_of_real_message_decrements(ev, batches, content):
    assert read_after(ev, batches, msg("M1", content=content))["unreadCount"] == 1


WRAPPERS = [
    "ephemeralMessage",
    "viewOnceMessage",
    "documentWithCaptionMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "editedMessage",
]


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_read_unwraps_wrapper_to_real_content(ev, batches, wrapper):
    content = {wrapper: {"message": {"extendedTextMessage": {"text": "hi"}}}}
    assert read_after(ev, batches, msg("M1", content=content))["unreadCount"] == 1


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("inner", ["protocolMessage", "reactionMessage", "pollUpdateMessage"])
def test_read_unwraps_wrapper_to_excluded_content(ev, batches, wrapper, inner):
    content = {wrapper: {"message": {inner: {"key": {"id": "X"}}}}}
    assert read_after(ev, batches, msg("M1", content=content))["unreadCount"] == 2


def test_read_of_call_message_keeps_unread_count(ev, batches):
    # the issue's repro: Baileys' isRealMessage says a `call` is not a real message
    m = msg("M1", content={"call": {}})
    ev.buffer()
    ev.emit("messages.upsert", upsert(m))
    ev.emit("chats.update", [{"id": J, "unreadCount": 1}])
    ev.emit("messages.update", [{"key": mkey("M1"), "update": {"status": READ}}])
    assert release(ev, batches)["chats.update"] == [{"id": J, "unreadCount": 1}]


def nest(content: dict, depth: int) -> dict:
    for _ in range(depth):
        content = {"ephemeralMessage": {"message": content}}
    return content


def test_read_unwraps_at_most_five_wrappers(ev, batches):
    # normalizeMessageContent stops after 5 unwraps: a 6th wrapper is itself the content,
    # and `ephemeralMessage` is a *Message key, so the protocol message inside is not seen
    deep = msg("M1", content=nest({"protocolMessage": {"type": 0}}, 6))
    assert read_after(ev, batches, deep)["unreadCount"] == 1


def test_read_unwraps_five_wrappers_to_excluded_content(ev, batches):
    deep = msg("M1", content=nest({"protocolMessage": {"type": 0}}, 5))
    assert read_after(ev, batches, deep)["unreadCount"] == 2


# == messages.delete and the {jid, all: true} barrier ================================


def test_messages_delete_records_each_key_once(ev, batches):
    ev.buffer()
    ev.emit("messages.delete", {"keys": [mkey("M1"), mkey("M2")]})
    ev.emit("messages.delete", {"keys": [mkey("M1")]})
    assert release(ev, batches) == {"messages.delete": {"keys": [mkey("M1"), mkey("M2")]}}


def test_messages_delete_drops_pending_upsert_and_update(ev, batches):
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1"), msg("M3")))
    ev.emit("messages.update", [{"key": mkey("M2"), "update": {"status": 3}}])
    ev.emit("messages.delete", {"keys": [mkey("M1"), mkey("M2")]})
    batch = release(ev, batches)
    assert "messages.update" not in batch
    assert [m["key"]["id"] for m in upserted(batch)] == ["M3"]
    assert batch["messages.delete"] == {"keys": [mkey("M1"), mkey("M2")]}


def test_delete_all_barrier_releases_pending_then_delivers_itself(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "archived": True}])
    ev.emit("messages.upsert", upsert(msg("M1")))
    assert ev.emit("messages.delete", {"jid": J, "all": True}) is True
    assert len(batches) == 2
    assert set(batches[0]) == {"chats.update", "messages.upsert"}
    assert batches[1] == {"messages.delete": {"jid": J, "all": True}}
    assert ev.is_buffering()
    release_nothing(ev, batches)


def test_delete_all_barrier_keeps_depth(ev, batches):
    ev.buffer()
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "archived": True}])
    ev.emit("messages.delete", {"jid": J, "all": True})
    ev.emit("chats.update", [{"id": J2, "archived": True}])
    assert ev.flush() is False  # depth 2 -> 1
    assert ev.flush() is True
    assert batches[-1] == {"chats.update": [{"id": J2, "archived": True}]}
    assert len(batches) == 3


def test_delete_all_barrier_with_nothing_pending(ev, batches):
    ev.buffer()
    ev.emit("messages.delete", {"jid": J, "all": True})
    assert batches == [{"messages.delete": {"jid": J, "all": True}}]


# == messages.reaction ============================================================


def test_reaction_on_pending_upsert_goes_to_reactions_list(ev, batches):
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1", jid=G)))
    ev.emit("messages.reaction", [reaction(mkey("M1", jid=G), "👍", by=mkey("R1", G, False, P1))])
    batch = release(ev, batches)
    assert "messages.reaction" not in batch
    [m] = upserted(batch)
    assert m["reactions"] == [
        {"key": mkey("R1", G, False, P1), "text": "👍", "senderTimestampMs": 1_700_000_100}
    ]


def test_reaction_without_upsert_is_released_flat(ev, batches):
    target = mkey("M1", jid=G)
    ev.buffer()
    ev.emit("messages.reaction", [reaction(target, "👍", by=mkey("R1", G, False, P1))])
    ev.emit("messages.reaction", [reaction(target, "❤️", by=mkey("R2", G, False, P2))])
    released = release(ev, batches)["messages.reaction"]
    assert released == [
        {"key": target, "reaction": {"key": mkey("R1", G, False, P1), "text": "👍",
                                     "senderTimestampMs": 1_700_000_100}},
        {"key": target, "reaction": {"key": mkey("R2", G, False, P2), "text": "❤️",
                                     "senderTimestampMs": 1_700_000_100}},
    ]


def test_reaction_on_history_message_is_released_flat(ev, batches):
    # Literal reading: only a pending *upsert* takes reactions.
    target = mkey("M1")
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M1")]))
    ev.emit("messages.reaction", [reaction(target, "👍", by=mkey("R1", J))])
    batch = release(ev, batches)
    assert [r["reaction"]["text"] for r in batch["messages.reaction"]] == ["👍"]
    assert "reactions" not in hist_messages(batch)[0]


def test_reaction_one_per_author_newest_wins(ev, batches):
    target = mkey("M1", jid=G)
    ev.buffer()
    ev.emit("messages.reaction", [reaction(target, "👍", by=mkey("R1", G, False, P1), ts=1)])
    ev.emit("messages.reaction", [reaction(target, "😂", by=mkey("R2", G, False, P1), ts=2)])
    released = release(ev, batches)["messages.reaction"]
    assert [(r["reaction"]["text"], r["reaction"]["key"]["id"]) for r in released] == [("😂", "R2")]


def test_reaction_one_per_author_on_pending_upsert(ev, batches):
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1", jid=G)))
    ev.emit("messages.reaction", [reaction(mkey("M1", G), "👍", by=mkey("R1", G, False, P1))])
    ev.emit("messages.reaction", [reaction(mkey("M1", G), "😂", by=mkey("R2", G, False, P1))])
    ev.emit("messages.reaction", [reaction(mkey("M1", G), "❤️", by=mkey("R3", G, False, P2))])
    [m] = upserted(release(ev, batches))
    assert sorted(r["text"] for r in m["reactions"]) == sorted(["😂", "❤️"])


def test_reaction_author_me_for_from_me_whatever_participant(ev, batches):
    target = mkey("M1", jid=G)
    ev.buffer()
    ev.emit("messages.reaction", [reaction(target, "👍", by=mkey("R1", G, True, P1))])
    ev.emit("messages.reaction", [reaction(target, "🙏", by=mkey("R2", G, True, P2))])
    released = release(ev, batches)["messages.reaction"]
    assert [r["reaction"]["text"] for r in released] == ["🙏"]


def test_reaction_author_participant_else_remote_jid(ev, batches):
    target = mkey("M1", jid=G)
    ev.buffer()
    # participant P1 ...
    ev.emit("messages.reaction", [reaction(target, "👍", by=mkey("R1", G, False, P1))])
    # ... and a key without participant whose remoteJid is P1: the same author.
    ev.emit("messages.reaction", [reaction(target, "🔥", by=mkey("R2", P1, False))])
    # remoteJid G without participant: another author.
    ev.emit("messages.reaction", [reaction(target, "😮", by=mkey("R3", G, False))])
    released = release(ev, batches)["messages.reaction"]
    assert sorted(r["reaction"]["text"] for r in released) == sorted(["🔥", "😮"])


def test_reaction_per_message_key(ev, batches):
    ev.buffer()
    ev.emit("messages.reaction", [reaction(mkey("M1"), "👍", by=mkey("R1", J))])
    ev.emit("messages.reaction", [reaction(mkey("M2"), "👍", by=mkey("R2", J))])
    released = release(ev, batches)["messages.reaction"]
    assert [r["key"]["id"] for r in released] == ["M1", "M2"]


def test_reaction_missing_text_becomes_empty_string(ev, batches):
    ev.buffer()
    ev.emit("messages.reaction", [reaction(mkey("M1"), "👍", by=mkey("R1", J))])
    ev.emit("messages.reaction", [reaction(mkey("M1"), None, by=mkey("R2", J))])
    [r] = release(ev, batches)["messages.reaction"]
    assert r["reaction"]["text"] == ""


@pytest.mark.parametrize("text", [None, ""], ids=["missing", "empty"])
def test_reaction_removal_on_pending_upsert_removes_the_authors_reaction(ev, batches, text):
    # Baileys' updateMessageWithReaction: an empty text is a removal, never a reaction
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1", jid=G)))
    ev.emit("messages.reaction", [reaction(mkey("M1", G), "👍", by=mkey("R1", G, False, P1))])
    ev.emit("messages.reaction", [reaction(mkey("M1", G), "❤️", by=mkey("R2", G, False, P2))])
    ev.emit("messages.reaction", [reaction(mkey("M1", G), text, by=mkey("R3", G, False, P1))])
    [m] = upserted(release(ev, batches))
    assert [(r["key"]["participant"], r["text"]) for r in m["reactions"]] == [(P2, "❤️")]


def test_reaction_removal_of_the_only_reaction_on_pending_upsert_leaves_none(ev, batches):
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1")))
    ev.emit("messages.reaction", [reaction(mkey("M1"), "👍", by=mkey("R1", J))])
    ev.emit("messages.reaction", [reaction(mkey("M1"), "", by=mkey("R2", J))])
    batch = release(ev, batches)
    [m] = upserted(batch)
    assert m["reactions"] == []
    assert "messages.reaction" not in batch


def test_reaction_removal_without_a_reaction_on_pending_upsert_adds_nothing(ev, batches):
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1")))
    ev.emit("messages.reaction", [reaction(mkey("M1"), None, by=mkey("R1", J))])
    [m] = upserted(release(ev, batches))
    assert m["reactions"] == []


def test_reaction_removal_off_pending_upsert_reaches_the_app_as_empty_text(ev, batches):
    # not pending in the batch: the removal is kept (Baileys loses it here)
    ev.buffer()
    ev.emit("messages.reaction", [reaction(mkey("M1"), "👍", by=mkey("R1", J))])
    ev.emit("messages.reaction", [reaction(mkey("M1"), "", by=mkey("R2", J))])
    [r] = release(ev, batches)["messages.reaction"]
    assert (r["reaction"]["key"]["id"], r["reaction"]["text"]) == ("R2", "")


# == message-receipt.update ========================================================


def test_receipt_on_pending_upsert_goes_to_user_receipt(ev, batches):
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1", jid=G, from_me=True)))
    target = mkey("M1", jid=G, from_me=True)
    ev.emit("message-receipt.update", [receipt(target, P1, receiptTimestamp=10)])
    ev.emit("message-receipt.update", [receipt(target, P2, receiptTimestamp=11)])
    ev.emit("message-receipt.update", [receipt(target, P1, readTimestamp=20)])
    batch = release(ev, batches)
    assert "message-receipt.update" not in batch
    [m] = upserted(batch)
    assert m["userReceipt"] == [
        {"userJid": P1, "receiptTimestamp": 10, "readTimestamp": 20},
        {"userJid": P2, "receiptTimestamp": 11},
    ]


def test_receipt_on_history_message_is_released_flat(ev, batches):
    # Literal reading: only a pending *upsert* takes receipts.
    target = mkey("M1", from_me=True)
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg("M1", from_me=True)]))
    ev.emit("message-receipt.update", [receipt(target, J, readTimestamp=5)])
    batch = release(ev, batches)
    assert batch["message-receipt.update"] == [
        {"key": target, "receipt": {"userJid": J, "readTimestamp": 5}}
    ]
    assert "userReceipt" not in hist_messages(batch)[0]


def test_receipt_without_upsert_one_per_user_later_fields_merged(ev, batches):
    target = mkey("M1", jid=G, from_me=True)
    ev.buffer()
    ev.emit("message-receipt.update", [receipt(target, P1, receiptTimestamp=10)])
    ev.emit("message-receipt.update", [receipt(target, P1, readTimestamp=20, receiptTimestamp=12)])
    ev.emit("message-receipt.update", [receipt(target, P2, playedTimestamp=30)])
    assert release(ev, batches) == {
        "message-receipt.update": [
            {"key": target, "receipt": {"userJid": P1, "receiptTimestamp": 12, "readTimestamp": 20}},
            {"key": target, "receipt": {"userJid": P2, "playedTimestamp": 30}},
        ]
    }


# == groups.update ===============================================================


def test_groups_update_later_fields_win(ev, batches):
    ev.buffer()
    ev.emit("groups.update", [{"id": G, "subject": "First", "desc": "d"}])
    ev.emit("groups.update", [{"id": G, "subject": "Second", "announce": True}])
    assert release(ev, batches) == {
        "groups.update": [{"id": G, "subject": "Second", "desc": "d", "announce": True}]
    }


# == release order ===============================================================

RELEASE_ORDER = [
    "messaging-history.set",
    "chats.upsert",
    "chats.update",
    "chats.delete",
    "messages.upsert",
    "messages.update",
    "messages.delete",
    "messages.reaction",
    "message-receipt.update",
    "contacts.upsert",
    "contacts.update",
    "groups.update",
]


def emit_one_of_each_reversed(ev) -> None:
    ev.emit("groups.update", [{"id": G, "subject": "g"}])
    ev.emit("contacts.update", [{"id": J3, "imgUrl": "u"}])
    ev.emit("contacts.upsert", [{"id": J2, "name": "Bea"}])
    ev.emit("message-receipt.update", [receipt(mkey("M5", from_me=True), J, readTimestamp=1)])
    ev.emit("messages.reaction", [reaction(mkey("M4"), "👍", by=mkey("R4", J))])
    ev.emit("messages.delete", {"keys": [mkey("M3")]})
    ev.emit("messages.update", [{"key": mkey("M2"), "update": {"status": 3}}])
    ev.emit("messages.upsert", upsert(msg("M1")))
    ev.emit("chats.delete", ["deleted@s.whatsapp.net"])
    ev.emit("chats.update", [{"id": J2, "archived": True}])
    ev.emit("chats.upsert", [{"id": J, "name": "Ana"}])
    ev.emit("messaging-history.set", history(chats=[{"id": J3}]))


def test_release_order_of_batch(ev, batches):
    ev.buffer()
    emit_one_of_each_reversed(ev)
    assert list(release(ev, batches)) == RELEASE_ORDER


def test_release_order_of_per_event_handlers(ev, batches):
    calls: list[str] = []
    for name in RELEASE_ORDER:
        ev.on(name, lambda payload, name=name: calls.append(name))
    ev.buffer()
    emit_one_of_each_reversed(ev)
    release(ev, batches)
    assert calls == RELEASE_ORDER


# == history cache ===============================================================


def hist_chat_ids(batch: Batch) -> list[str]:
    return [c["id"] for c in batch["messaging-history.set"]["chats"]]


def emit_history_alone(ev, batches, **lists: Any) -> Batch | None:
    before = len(batches)
    ev.buffer()
    ev.emit("messaging-history.set", history(**lists))
    assert ev.flush() is True
    return batches[-1] if len(batches) > before else None


def test_history_cache_evicts_the_oldest(make_buffer):
    ev = make_buffer(max_buffer_items=1000, max_history_cache=3)
    batches: list[Batch] = []
    ev.process(batches.append)
    ids = ["a@s.whatsapp.net", "b@s.whatsapp.net", "c@s.whatsapp.net", "d@s.whatsapp.net"]
    a, b, c, d = ids
    emit_history_alone(ev, batches, chats=[{"id": a}, {"id": b}, {"id": c}])
    assert ev.stats().history_cache_size == 3
    assert hist_chat_ids(emit_history_alone(ev, batches, chats=[{"id": d}])) == [d]  # evicts a
    assert ev.stats().history_cache_size == 3
    assert emit_history_alone(ev, batches, chats=[{"id": b}]) is None  # b still held
    assert hist_chat_ids(emit_history_alone(ev, batches, chats=[{"id": a}])) == [a]


def test_history_cache_re_adding_a_held_key_keeps_its_place(make_buffer):
    ev = make_buffer(max_buffer_items=1000, max_history_cache=3)
    batches: list[Batch] = []
    ev.process(batches.append)
    x, y, z = "x@s.whatsapp.net", "y@s.whatsapp.net", "z@s.whatsapp.net"
    emit_history_alone(
        ev, batches, contacts=[{"id": x, "notify": "X"}, {"id": y, "notify": "Y"},
                               {"id": z, "notify": "Z"}],
    )
    # a named contact is stored again: "c:x" is re-added, and keeps its (oldest) place
    emit_history_alone(ev, batches, contacts=[{"id": x, "notify": "X2"}])
    assert ev.stats().history_cache_size == 3
    emit_history_alone(ev, batches, chats=[{"id": J}])  # evicts the oldest: "c:x"
    assert emit_history_alone(ev, batches, contacts=[{"id": y}]) is None  # "c:y" still held
    released = emit_history_alone(ev, batches, contacts=[{"id": x}])
    assert released is not None
    assert released["messaging-history.set"]["contacts"] == [{"id": x}]


def test_history_cache_is_shared_and_never_exceeds_its_bound(make_buffer):
    ev = make_buffer(max_buffer_items=1000, max_history_cache=2)
    batches: list[Batch] = []
    ev.process(batches.append)
    ev.buffer()
    ev.emit("messaging-history.set", history(chats=[{"id": J}]))
    ev.emit("messaging-history.set", history(contacts=[{"id": J2}]))
    ev.emit("messaging-history.set", history(messages=[msg("M1")]))
    release(ev, batches)
    assert ev.stats().history_cache_size == 2
    # the chat id was the oldest of the three shared entries: evicted
    assert hist_chat_ids(emit_history_alone(ev, batches, chats=[{"id": J}])) == [J]
    assert ev.stats().history_cache_size == 2


def test_history_cache_bound_inside_one_scope(make_buffer):
    ev = make_buffer(max_buffer_items=1000, max_history_cache=3)
    batches: list[Batch] = []
    ev.process(batches.append)
    ev.buffer()
    ev.emit("messaging-history.set", history(messages=[msg(f"M{i}") for i in range(10)]))
    assert ev.stats().history_cache_size == 3
    # evicted keys still deduplicate within the batch: history_messages holds them
    ev.emit("messaging-history.set", history(messages=[msg("M0", content={"conversation": "x"})]))
    released = hist_messages(release(ev, batches))
    assert [m["key"]["id"] for m in released] == [f"M{i}" for i in range(10)]
    assert released[0]["message"] == {"conversation": "text of M0"}


# == overflow ====================================================================


def count_items(batch: Batch) -> int:
    return len(batch["chats.update"])


def test_overflow_releases_10_10_5_and_stays_buffering(make_buffer):
    ev = make_buffer(max_buffer_items=10, max_history_cache=100)
    batches: list[Batch] = []
    ev.process(batches.append)
    ev.buffer()
    for i in range(25):
        assert ev.emit("chats.update", [{"id": f"{i}@s.whatsapp.net", "unreadCount": 1}])
        assert ev.is_buffering()
    assert [count_items(b) for b in batches] == [10, 10]
    assert ev.flush() is True
    assert [count_items(b) for b in batches] == [10, 10, 5]
    assert ev.stats().flush_count == 3


def test_overflow_not_triggered_at_exactly_max(make_buffer):
    ev = make_buffer(max_buffer_items=10, max_history_cache=100)
    batches: list[Batch] = []
    ev.process(batches.append)
    ev.buffer()
    for i in range(10):
        ev.emit("chats.update", [{"id": f"{i}@s.whatsapp.net", "unreadCount": 1}])
    assert batches == []
    assert ev.flush() is True
    assert [count_items(b) for b in batches] == [10]


def test_overflow_counts_emit_calls_not_merged_items(make_buffer):
    ev = make_buffer(max_buffer_items=10, max_history_cache=100)
    batches: list[Batch] = []
    ev.process(batches.append)
    ev.buffer()
    for _ in range(11):
        ev.emit("chats.update", [{"id": J, "unreadCount": 1}])
    assert batches == [{"chats.update": [{"id": J, "unreadCount": 10}]}]
    assert ev.flush() is True
    assert batches[-1] == {"chats.update": [{"id": J, "unreadCount": 1}]}


def test_overflow_keeps_depth(make_buffer):
    ev = make_buffer(max_buffer_items=10, max_history_cache=100)
    batches: list[Batch] = []
    ev.process(batches.append)
    ev.buffer()
    ev.buffer()
    for i in range(11):
        ev.emit("messages.upsert", upsert(msg(f"M{i}")))
    assert len(batches) == 1
    assert len(upserted(batches[0])) == 10
    assert ev.flush() is False
    assert ev.flush() is True
    assert [len(upserted(b)) for b in batches] == [10, 1]


# == messages.upsert type change ====================================================


def test_upsert_type_change_releases_pending_batch_first(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "archived": True}])
    ev.emit("messages.upsert", upsert(msg("M1"), type_="notify"))
    ev.emit("messages.upsert", upsert(msg("M2"), type_="append"))
    assert len(batches) == 1
    assert set(batches[0]) == {"chats.update", "messages.upsert"}
    assert batches[0]["messages.upsert"]["type"] == "notify"
    assert [m["key"]["id"] for m in upserted(batches[0])] == ["M1"]
    assert ev.is_buffering()
    batch = release(ev, batches)
    assert batch["messages.upsert"]["type"] == "append"
    assert [m["key"]["id"] for m in upserted(batch)] == ["M2"]


def test_upsert_type_change_never_mixes_and_keeps_order_and_depth(ev, batches):
    ev.buffer()
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("M1"), type_="notify"))
    ev.emit("messages.upsert", upsert(msg("M2"), type_="append"))
    ev.emit("messages.upsert", upsert(msg("M3"), type_="append"))
    ev.emit("messages.upsert", upsert(msg("M4"), type_="notify"))
    assert ev.flush() is False
    assert ev.flush() is True
    assert [(b["messages.upsert"]["type"], [m["key"]["id"] for m in upserted(b)])
            for b in batches] == [("notify", ["M1"]), ("append", ["M2", "M3"]), ("notify", ["M4"])]
    assert ev.stats().flush_count == 3


def test_upsert_without_pending_upserts_does_not_release(ev, batches):
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "archived": True}])
    ev.emit("messages.upsert", upsert(msg("M1"), type_="append"))
    assert batches == []
    assert set(release(ev, batches)) == {"chats.update", "messages.upsert"}


# == re-entrant handlers: a release's handler emits ==================================


def test_reentrant_emit_during_overflow_release_gets_its_own_batch(make_buffer):
    # the repro: max 1 emit per batch, a handler emits on the first batch only
    ev = make_buffer(max_buffer_items=1, max_history_cache=100)
    batches: list[Batch] = []

    def handler(batch: Batch) -> None:
        batches.append(batch)
        if len(batches) == 1:
            ev.emit("groups.update", [{"id": "900@g.us"}])

    ev.process(handler)
    ev.buffer()
    ev.emit("chats.upsert", [{"id": "J1"}])
    ev.emit("chats.upsert", [{"id": "J2"}])
    assert ev.flush() is True
    assert batches == [
        {"chats.upsert": [{"id": "J1"}]},
        {"groups.update": [{"id": "900@g.us"}]},
        {"chats.upsert": [{"id": "J2"}]},
    ]
    assert ev.is_buffering() is False
    assert ev.stats().flush_count == 3


def test_reentrant_upsert_during_type_change_release_keeps_types_apart(make_buffer):
    ev = make_buffer(max_buffer_items=1000, max_history_cache=100)
    batches: list[Batch] = []

    def handler(batch: Batch) -> None:
        batches.append(batch)
        if len(batches) == 1:
            ev.emit("messages.upsert", upsert(msg("C"), type_="notify"))

    ev.process(handler)
    ev.buffer()
    ev.emit("messages.upsert", upsert(msg("A"), type_="notify"))
    ev.emit("messages.upsert", upsert(msg("B"), type_="append"))
    assert ev.flush() is True
    assert [(b["messages.upsert"]["type"], [m["key"]["id"] for m in upserted(b)])
            for b in batches] == [("notify", ["A"]), ("notify", ["C"]), ("append", ["B"])]


def test_reentrant_emit_during_barrier_release_comes_after_the_delete(ev):
    """Emitted by a handler while the barrier releases, so after the delete: it stays
    pending and comes with the next release (Baileys' order)."""
    batches: list[Batch] = []

    def handler(batch: Batch) -> None:
        batches.append(batch)
        if len(batches) == 1:
            ev.emit("chats.update", [{"id": J2, "archived": True}])

    ev.process(handler)
    ev.buffer()
    ev.emit("chats.update", [{"id": J, "archived": True}])
    ev.emit("messages.delete", {"jid": J, "all": True})
    assert [list(b) for b in batches] == [["chats.update"], ["messages.delete"]]
    assert ev.flush() is True
    assert [list(b) for b in batches[2:]] == [["chats.update"]]
    assert [b["chats.update"][0]["id"] for b in (batches[0], batches[2])] == [J, J2]


def test_pending_mappings_are_emptied_in_place_at_a_release(ev):
    """Both cores: a conditional (or handler) holding a mapping of ev.pending sees it
    empty after the release, not the released contents."""
    ev.process(lambda batch: None)
    ev.buffer()
    ev.emit("chats.upsert", [{"id": J}])
    held = ev.pending.chat_upserts
    assert list(held) == [J]
    ev.flush()
    assert held == {} and ev.pending.chat_upserts is held


def test_a_history_set_that_deduplicates_to_nothing_leaves_no_flags_behind(ev):
    batches: list[Batch] = []
    ev.process(batches.append)
    ev.buffer()
    ev.emit("messaging-history.set", {"chats": [{"id": J}], "isLatest": True})
    ev.flush()
    ev.buffer()  # the same chat again (cached): nothing, but its flags...
    ev.emit("messaging-history.set", {"chats": [{"id": J}], "isLatest": True,
                                      "syncType": 2, "progress": 40})
    ev.flush()
    ev.buffer()  # ...must not reach the next, unrelated set
    ev.emit("messaging-history.set", {"chats": [{"id": J2}]})
    ev.flush()
    history = [b["messaging-history.set"] for b in batches]
    assert len(history) == 2
    assert history[1]["isLatest"] is False
    assert "syncType" not in history[1] and "progress" not in history[1]


def test_handler_destroying_the_buffer_during_an_overflow_release_drops_the_event(make_buffer):
    ev = make_buffer(max_buffer_items=1, max_history_cache=100)
    batches: list[Batch] = []

    def handler(batch: Batch) -> None:
        batches.append(batch)
        ev.destroy()

    ev.process(handler)
    ev.buffer()
    assert ev.emit("chats.upsert", [{"id": "J1"}]) is True
    assert ev.emit("chats.upsert", [{"id": "J2"}]) is False  # the buffer is gone: dropped
    assert batches == [{"chats.upsert": [{"id": "J1"}]}]
    assert ev.destroyed
