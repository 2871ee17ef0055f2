"""Every script in examples/ runs as written, against the reference server (and
Redis where it needs one); the README's code blocks are taken from them."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from rsocket.testing import ReferenceServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TENANTS = {f"t{i}": "secret" for i in range(1, 7)}  # the examples' default token
pytestmark = pytest.mark.server_options(tenants=TENANTS, ping_interval=20.0, traffic=20)


async def run_example(name: str, *args: str, timeout: float = 60.0) -> str:
    """Run ``examples/name`` to its end; its stdout (stderr goes in the failure message)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / name), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, f"{name} exited {process.returncode}:\n{err.decode()[-3000:]}"
    return out.decode()


async def test_event_buffer():
    out = await run_example("event_buffer.py")
    assert "'unreadCount': 3" in out  # two events, one consolidated batch


async def test_one_socket(server: ReferenceServer):
    out = await run_example("one_socket.py", "--url", server.url, "--seconds", "1")
    assert "connection.update {'connection': 'connecting'}" in out  # handler registered first
    assert "connection.update {'connection': 'open'" in out
    assert re.search(r"sent message 3EB0\w+", out)
    assert re.search(r"stopped at seq [1-9]", out)


async def test_pool_bot_resumes_where_it_stopped(server: ReferenceServer, tmp_path: Path):
    cursors = str(tmp_path / "cursors.json")
    args = ("--url", server.url, "--tenants", "t1,t2", "--cursors", cursors, "--seconds", "1")
    first = await run_example("pool_bot.py", *args)
    assert "t1: open" in first and "t2: open" in first  # the state hook
    last = int(re.search(r"t1: \d+ events processed, last seq (\d+)", first)[1])
    assert last > 0
    second = await run_example("pool_bot.py", *args)
    start = int(re.search(r"t1: seqs (\d+)\.\.", second)[1])
    assert start == last + 1  # resumed from the file: nothing again, nothing skipped


async def test_pool_bot_reports_a_bad_token(server: ReferenceServer, tmp_path: Path):
    out = await run_example("pool_bot.py", "--url", server.url, "--tenants", "t1",
                            "--token", "wrong", "--cursors", str(tmp_path / "c.json"),
                            "--seconds", "1")
    assert "t1: connection error: 401 bad token" in out  # on_error
    assert "t1: logged_out (401)" in out  # on_state


async def test_reply_bot_answers_through_the_account(server: ReferenceServer):
    server.stop_traffic()
    message = {"key": {"remoteJid": "5511900000001@s.whatsapp.net", "id": "ABC", "fromMe": False},
               "message": {"conversation": "hello"}, "messageTimestamp": 1}
    server.publish("t1", "messages.upsert", {"messages": [message], "type": "notify"})
    out = await run_example("reply_bot.py", "--url", server.url, "--seconds", "1.5")
    assert "t1: replied to 5511900000001@s.whatsapp.net" in out
    replies = [data["messages"][0] for name, data in server.retained("t1")
               if name == "messages.upsert" and data["messages"][0]["key"]["fromMe"]]
    assert [r["message"]["conversation"] for r in replies] == ["you said: hello"]


async def test_reply_bot_run_twice_replies_once(server: ReferenceServer):
    """A restart delivers the same messages again (no saved cursor here): each reply
    carries an id derived from its message, so it is one message all the same."""
    server.stop_traffic()
    for i in range(3):
        message = {"key": {"remoteJid": f"551190000000{i}@s.whatsapp.net", "id": f"M{i}",
                           "fromMe": False},
                   "message": {"extendedTextMessage": {"text": f"hi {i}"}}, "messageTimestamp": 1}
        server.publish("t1", "messages.upsert", {"messages": [message], "type": "notify"})
    for _ in range(2):
        out = await run_example("reply_bot.py", "--url", server.url, "--seconds", "1.5")
        assert out.count("t1: replied to") == 3
    replies = [data["messages"][0] for name, data in server.retained("t1")
               if name == "messages.upsert" and data["messages"][0]["key"]["fromMe"]]
    assert sorted(r["message"]["conversation"] for r in replies) == [
        "you said: hi 0", "you said: hi 1", "you said: hi 2"]


async def test_prometheus_metrics(server: ReferenceServer):
    pytest.importorskip("prometheus_client")
    out = await run_example("prometheus_metrics.py", "--url", server.url, "--port", "0",
                            "--seconds", "1")
    assert 'rsocket_connection_state{state="open",tenant="t1"} 1.0' in out
    assert "rsocket_buffers_live 2.0" in out


async def test_redis_workers_split_the_tenants(server: ReferenceServer, redis_server: Any):
    redis = redis_server.url.rsplit("/", 1)[0] + "/7"  # a database of its own
    tenants = "t1,t2,t3,t4"
    common = ("--redis", redis, "--url", server.url, "--tenants", tenants, "--ttl", "2",
              "--seconds", "5")
    a, b = await asyncio.gather(run_example("redis_workers.py", *common, "--worker", "A"),
                                run_example("redis_workers.py", *common, "--worker", "B"))

    def final(out: str) -> set[str]:
        *_, last = re.findall(r"runs \[(.*)\]", out)
        return {t.strip(" '") for t in last.split(",") if t.strip()}

    assert final(a) | final(b) == set(tenants.split(","))  # every tenant runs...
    assert not final(a) & final(b)  # ...on one worker

    import redis as redis_client

    client = redis_client.Redis.from_url(redis)
    try:
        assert all(client.xlen(f"rsocket:{t}") > 0 for t in tenants.split(","))
    finally:
        client.flushdb()
        client.close()


def test_readme_code_blocks_are_taken_from_the_examples():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sources = {p.name: p.read_text(encoding="utf-8") for p in EXAMPLES.glob("*.py")}
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        found = [name for name, text in sources.items() if block.strip() in text]
        assert found, f"README block not in any example:\n{block}"
    # the Node side of "Real accounts through Baileys" (run by bridge/test/accounts.test.js)
    node = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "bridge" / "examples").glob("*.js")}
    blocks = re.findall(r"```js\n(.*?)```", readme, re.S)
    assert blocks
    for block in blocks:
        assert any(block.strip() in text for text in node.values()), f"not in bridge/examples:\n{block}"
