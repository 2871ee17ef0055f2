"""Event names: the one list every layer derives from.

Both merge cores build their dispatch from :data:`BUFFERABLE_EVENTS`, the
protocol checks its payload schemas against it, and the standard workload
draws from it; each of them asserts at import that it covers exactly these
names, so adding an event is a change here first.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["BAILEYS_EVENTS", "BUFFERABLE_EVENTS", "CONNECTION_UPDATE", "check_covers"]

#: Events the buffer merges, in release order (docs/BUFFER.md).
BUFFERABLE_EVENTS: tuple[str, ...] = (
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
)

#: The socket's own state updates (never buffered); the same name over the wire
#: is the upstream account's state (docs/PROTOCOL.md, "Payloads").
CONNECTION_UPDATE = "connection.update"

#: Every event name of Baileys' ``BaileysEventMap`` (6.17 and 7.0): what a server
#: relaying a Baileys socket may send; those not bufferable pass through unmerged.
#: Names outside it are unknown (a typo, or a newer Baileys): the wire drops them as
#: invalid, ``on()`` warns once.
BAILEYS_EVENTS = frozenset({
    *BUFFERABLE_EVENTS,
    CONNECTION_UPDATE,
    "creds.update",
    "chats.phoneNumberShare",
    "presence.update",
    "messages.media-update",
    "groups.upsert",
    "group-participants.update",
    "group.join-request",
    "blocklist.set",
    "blocklist.update",
    "call",
    "labels.edit",
    "labels.association",
    # added by Baileys 7 (LID addressing, newsletters, app-state settings)
    "messaging-history.status",
    "lid-mapping.update",
    "group.member-tag.update",
    "newsletter.reaction",
    "newsletter.view",
    "newsletter-participants.update",
    "newsletter-settings.update",
    "message-capping.update",
    "chats.lock",
    "settings.update",
})


def check_covers(names: Iterable[str], what: str) -> None:
    """Raise ``RuntimeError`` unless ``names`` are exactly :data:`BUFFERABLE_EVENTS`
    (run at import by every table keyed by event name, so none can drift)."""
    got, want = set(names), set(BUFFERABLE_EVENTS)
    if got != want:
        raise RuntimeError(
            f"{what} does not match rsocket.events.BUFFERABLE_EVENTS: "
            f"missing {sorted(want - got)}, extra {sorted(got - want)}"
        )
