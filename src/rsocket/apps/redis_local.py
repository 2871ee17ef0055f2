"""A throwaway ``redis-server`` on loopback, for ``rsocket demo --workers`` and the tests.

Started on a free 127.0.0.1 port with persistence off, in a temporary
directory; ``stop()`` ends it and removes the directory.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

__all__ = ["LocalRedis", "RedisUnavailable", "free_port", "ping"]


class RedisUnavailable(RuntimeError):
    """No ``redis-server`` binary, or it did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when a Redis answers PING on host:port (raw RESP, no client needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class LocalRedis:
    """A ``redis-server`` on a free 127.0.0.1 port, persistence off; ``stop()`` ends it.

    Raises:
        RedisUnavailable: no ``redis-server`` binary, or it did not answer in time.
    """

    def __init__(self, binary: str | None = None, *, startup_timeout: float = 10.0,
                 persist: bool = False) -> None:
        binary = binary or shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable(
                "no Redis: pass --redis URL, or install redis-server "
                "(Debian/Ubuntu: apt-get install redis-server)"
            )
        self.binary = binary
        self.startup_timeout = startup_timeout
        #: an append-only file fsynced at every write: restart() keeps the data
        self.persist = persist
        self.dir = tempfile.TemporaryDirectory(prefix="rsocket-redis-")
        self.port = free_port()
        self._launch()

    def _launch(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
             "--dir", self.dir.name, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.startup_timeout
        while not ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RedisUnavailable(f"redis-server did not start on 127.0.0.1:{self.port}")
            time.sleep(0.02)

    def restart(self) -> None:
        """SIGKILL the server and start it again on the same port (a crash and a
        restart: with ``persist`` its data is back, else it starts empty)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self._launch()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)  # a paused server must hear SIGTERM
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.dir.cleanup()
