"""Cursor stores: where a tenant resumes from, across processes."""

from __future__ import annotations

from typing import Any

import pytest

from rsocket.manager import ConnectionManager, Cursor, FileSeqStore
from rsocket.testing import ReferenceServer, Workload

from .helpers import FAST, until


def manager(srv: ReferenceServer, tenant: str = "t1", **kw: Any) -> ConnectionManager:
    return ConnectionManager(tenant, srv.url, f"token{tenant[1:]}", **{**FAST, **kw})


async def test_file_seq_store_lets_a_new_process_resume(server, tmp_path):
    path = tmp_path / "cursors.json"
    server.publish_many("t1", Workload(4).take(30))
    m = manager(server, seq_store=FileSeqStore(path))
    await m.start()
    await until(lambda: m.socket.last_seq == 30)
    await m.destroy()
    assert await FileSeqStore(path).load("t1") == Cursor(m.socket.epoch, 30)
    server.publish_many("t1", Workload(5).take(10))
    seqs: list[int] = []
    m2 = manager(server, seq_store=FileSeqStore(path))
    m2.process(lambda b, s: seqs.extend(s), with_seqs=True)
    await m2.start()
    await until(lambda: m2.socket.last_seq == 40)
    assert seqs == list(range(31, 41))
    await m2.destroy()


async def test_file_seq_store_rejects_a_corrupt_file(tmp_path):
    path = tmp_path / "cursors.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cursors"):
        await FileSeqStore(path).load("t1")
