"""The standard event mix: deterministic Baileys-shaped events (stdlib only).

This mirrors ``benchmarks/workload/gen_workload.py`` (the benchmarks' workload
generator, which is not shipped with the package): same mix, same shapes, and
for one seed ``Workload(seed).take(n)`` yields exactly the events of
``gen_workload.py --events n --seed seed``. Keep the two in step; a test
compares them.

    messages.upsert 40%   messages.update 20%   message-receipt.update 15%
    chats.update 8%       contacts.upsert 5%    messages.reaction 4%
    messaging-history.set 3% (20 chats, 20 contacts, 50 messages; ~30% of ids seen before)
    chats.upsert 2%       chats.delete 1%       contacts.update 1%    groups.update 1%
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ..events import BUFFERABLE_EVENTS

__all__ = ["MIX", "Workload"]

MIX = [
    ("messages.upsert", 40), ("messages.update", 20), ("message-receipt.update", 15),
    ("chats.update", 8), ("contacts.upsert", 5), ("messages.reaction", 4),
    ("messaging-history.set", 3), ("chats.upsert", 2), ("chats.delete", 1),
    ("contacts.update", 1), ("groups.update", 1),
]  # fmt: skip
N_CHATS, N_CONTACTS, RECENT = 2000, 5000, 500
if not {n for n, _ in MIX} <= set(BUFFERABLE_EVENTS):  # the mix draws from the one list
    raise RuntimeError("the workload mix names an event that is not bufferable")
_NAMES = [n for n, _ in MIX]
_WEIGHTS = [w for _, w in MIX]
_CHUNK = 1000  # names drawn at a time by the endless iterator


class Workload:
    """Endless, deterministic stream of ``(name, data)`` events.

    Iterate it (``next(w)``) for an endless stream, or call :meth:`take` on a
    fresh instance for the reference file's first ``n`` events. Payloads share
    message-key dicts the way the reference does; copy them before mutating.

    Args:
        seed: random seed; the same seed gives the same events.
    """

    def __init__(self, seed: int = 1) -> None:
        self.r = random.Random(seed)
        self.t = 1_700_000_000
        self.msg_n = 0
        self.recent: list[dict[str, Any]] = []  # recently upserted message keys
        self.history_ids: list[dict[str, Any]] = []
        self._names: deque[str] = deque()

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self

    def __next__(self) -> tuple[str, Any]:
        if not self._names:
            self._names.extend(self.r.choices(_NAMES, _WEIGHTS, k=_CHUNK))
        name = self._names.popleft()
        return name, self.event(name)

    def take(self, n: int) -> Iterator[tuple[str, Any]]:
        """Yield ``n`` events, drawing all ``n`` names first, like the reference script."""
        for name in self.r.choices(_NAMES, _WEIGHTS, k=n):
            yield name, self.event(name)

    def chat_id(self) -> str:
        n = self.r.randrange(N_CHATS)
        return f"{5511900000000 + n}@s.whatsapp.net" if n % 10 else f"{120363000000000000 + n}@g.us"

    def contact_id(self) -> str:
        return f"{5511900000000 + self.r.randrange(N_CONTACTS)}@s.whatsapp.net"

    def new_key(self) -> dict[str, Any]:
        self.msg_n += 1
        jid = self.chat_id()
        key: dict[str, Any] = {
            "remoteJid": jid, "id": f"3EB0{self.msg_n:016X}", "fromMe": self.r.random() < 0.2,
        }  # fmt: skip
        if jid.endswith("@g.us"):
            key["participant"] = self.contact_id()
        return key

    def old_key(self) -> dict[str, Any]:
        if not self.recent:
            return self.new_key()
        return dict(self.r.choice(self.recent))

    def message(self, key: dict[str, Any] | None = None) -> dict[str, Any]:
        self.t += 1
        key = key or self.new_key()
        self.recent.append(key)
        if len(self.recent) > RECENT:
            self.recent.pop(0)
        return {"key": key, "messageTimestamp": self.t,
                "message": {"conversation": f"hello {self.msg_n}"}}  # fmt: skip

    def chat(self, cid: str | None = None) -> dict[str, Any]:
        return {"id": cid or self.chat_id(), "conversationTimestamp": self.t,
                "unreadCount": self.r.randrange(0, 4), "name": f"chat {self.r.randrange(1000)}"}  # fmt: skip

    def contact(self) -> dict[str, Any]:
        cid = self.contact_id()
        return {"id": cid, "name": f"name {cid[:6]}", "notify": f"n{self.r.randrange(100)}"}

    def history(self) -> dict[str, Any]:
        def maybe_old(
            make: Callable[[], dict[str, Any]], pool: list[dict[str, Any]]
        ) -> dict[str, Any]:
            if pool and self.r.random() < 0.3:
                return self.r.choice(pool)
            item = make()
            pool.append(item)
            return item

        chats = [maybe_old(self.chat, self.history_ids) for _ in range(20)]
        return {"chats": [dict(c) for c in chats], "contacts": [self.contact() for _ in range(20)],
                "messages": [self.message() for _ in range(50)], "isLatest": self.r.random() < 0.1,
                "syncType": 2, "progress": self.r.randrange(100)}  # fmt: skip

    def event(self, name: str) -> Any:
        """A payload for event ``name`` (advances the stream's state)."""
        r = self.r
        if name == "messages.upsert":
            return {"messages": [self.message()], "type": "notify"}
        if name == "messages.update":
            return [{"key": self.old_key(), "update": {"status": r.choice([2, 3, 4])}}]
        if name == "message-receipt.update":
            return [{"key": self.old_key(),
                     "receipt": {"userJid": self.contact_id(), "readTimestamp": self.t}}]  # fmt: skip
        if name == "chats.update":
            return [{"id": self.chat_id(), "unreadCount": r.randrange(0, 3),
                     "conversationTimestamp": self.t}]  # fmt: skip
        if name == "contacts.upsert":
            return [self.contact()]
        if name == "messages.reaction":
            return [{"key": self.old_key(), "reaction": {
                "key": {"remoteJid": self.contact_id(), "id": f"R{self.msg_n}", "fromMe": False},
                "text": r.choice(["\u2764", "\U0001F44D", "\U0001F602", ""])}}]  # fmt: skip
        if name == "messaging-history.set":
            return self.history()
        if name == "chats.upsert":
            return [self.chat()]
        if name == "chats.delete":
            return [self.chat_id()]
        if name == "contacts.update":
            return [{"id": self.contact_id(), "notify": f"n{r.randrange(100)}"}]
        if name == "groups.update":
            return [{"id": f"{120363000000000000 + r.randrange(N_CHATS)}@g.us",
                     "subject": f"group {r.randrange(100)}"}]  # fmt: skip
        raise ValueError(f"unknown event name {name!r}")
