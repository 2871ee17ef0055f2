"""Events too large for one frame, split into parts of the same kind.

A first login's ``messaging-history.set`` is several MB, and a reconnect can
bring hundreds of media messages in one ``messages.upsert``: more than a
client may accept in one frame. A server splits such an event when it appends
it to a tenant's log, so every part has a seq of its own and every connection
replays the same parts (``docs/PROTOCOL.md``, "Frame size"):

* ``messaging-history.set``: its ``chats``, ``contacts`` and ``messages`` are
  cut into several sets, each with the set's other fields (``isLatest``,
  ``syncType``, ``progress``, ...); every part has the three lists, empty
  where it has none of them;
* ``messages.upsert``: its ``messages`` into several upserts of the same
  ``type`` (and other fields);
* an event whose payload is a list (``chats.upsert``, ``messages.update``,
  ...): into shorter lists.

The buffer merges the parts back exactly as it would have merged the whole
event, in order. An item larger than the limit on its own stays whole (the
server then sends ``oversize`` for it if the client cannot take it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

__all__ = ["DEFAULT_MAX_EVENT", "split_event", "split_events"]

#: Payload bytes (msgpack) above which an event is split into parts. A quarter
#: of the smallest frame a client is assumed to accept (1 MiB), so that parts fit
#: on either subprotocol (JSON carries bytes as base64, a third larger).
DEFAULT_MAX_EVENT = 256 * 1024

#: event name -> the list fields its parts share out (the other fields go on each part)
_SPLIT_FIELDS = {
    "messaging-history.set": ("chats", "contacts", "messages"),
    "messages.upsert": ("messages",),
}

_size = msgspec.msgpack.Encoder().encode

#: events measured together by :func:`split_events`
_RUN = 64


def split_event(name: str, data: Any, limit: int = DEFAULT_MAX_EVENT) -> list[tuple[str, Any]]:
    """``(name, data)`` as parts whose payloads each encode (msgpack) to at most
    ``limit`` bytes, where the event's shape allows it; ``[(name, data)]`` when it
    fits, cannot be split, or is not encodable (the server reports that later)."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    splittable = _SPLIT_FIELDS.get(name)
    if splittable is None and not isinstance(data, list):
        return [(name, data)]  # a shape that cannot be split: not even measured
    try:
        if len(_size(data)) <= limit:
            return [(name, data)]
    except (TypeError, ValueError, OverflowError):
        return [(name, data)]
    if isinstance(data, list):
        items: list[tuple[str | None, Any]] = [(None, item) for item in data]
        fields: tuple[str, ...] = ()
        overhead = 5  # the array header, at its largest
    elif splittable is not None and isinstance(data, dict):
        fields = tuple(f for f in splittable if isinstance(data.get(f), list))
        items = [(field, item) for field in fields for item in data[field]]
        # every part carries the other fields, the list fields' names and their headers
        skeleton = {key: [] if key in fields else value for key, value in data.items()}
        overhead = len(_size(skeleton)) + 4 * len(fields)
    else:
        return [(name, data)]
    budget = limit - overhead
    parts: list[list[tuple[str | None, Any]]] = []
    current: list[tuple[str | None, Any]] = []
    used = 0
    for item in items:
        n = len(_size(item[1]))
        if current and used + n > budget:
            parts.append(current)
            current, used = [], 0
        current.append(item)
        used += n
    if current:
        parts.append(current)
    if len(parts) < 2:
        return [(name, data)]
    if not fields:
        return [(name, [item for _, item in part]) for part in parts]
    return [(name, {key: [item for f, item in part if f == key] if key in fields else value
                     for key, value in data.items()})
            for part in parts]


def split_events(events: Sequence[tuple[str, Any]],
                 limit: int = DEFAULT_MAX_EVENT) -> list[tuple[str, Any]]:
    """``split_event`` over a run of events, each part in order: the same list as
    ``[part for name, data in events for part in split_event(name, data, limit)]``.

    Faster on a server's usual traffic, where nearly every event fits: the
    payloads of a run are measured in one encoding (a msgpack array is its
    items' bytes after a header, so no item of a run that fits can exceed
    ``limit``), and only a run that does not fit is halved down to its events.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    out: list[tuple[str, Any]] = []
    for first in range(0, len(events), _RUN):
        _split_run(events[first:first + _RUN], limit, out)
    return out


def _split_run(run: Sequence[tuple[str, Any]], limit: int, out: list[tuple[str, Any]]) -> None:
    try:
        fits = len(_size([data for _, data in run])) <= limit
    except (TypeError, ValueError, OverflowError):
        fits = False  # one of them is not encodable: split_event decides, one by one
    if fits:
        out.extend(run)
    elif len(run) == 1:
        out.extend(split_event(*run[0], limit))
    else:
        half = len(run) // 2
        _split_run(run[:half], limit, out)
        _split_run(run[half:], limit, out)
