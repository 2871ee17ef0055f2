"""The event buffer alone: a burst of chat events becomes one consolidated batch."""

from __future__ import annotations

from rsocket import BufferConfig, EventBuffer

ev = EventBuffer(config=BufferConfig(max_buffer_items=1000))
ev.process(lambda batch: print(batch))           # one call per consolidated batch

ev.buffer()                                       # open a buffering scope
ev.emit("chats.upsert", [{"id": "123@s.whatsapp.net", "unreadCount": 1}])
ev.emit("chats.update", [{"id": "123@s.whatsapp.net", "unreadCount": 2}])
ev.flush()                                        # one batch: chats.upsert, unreadCount 3
ev.destroy()                                      # final flush, listeners removed
