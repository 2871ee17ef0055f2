"""Which merge core to load: ``RSOCKET_NO_EXTENSIONS`` and the interpreter decide."""

from __future__ import annotations

import os
import sys

__all__ = ["NO_EXTENSIONS", "env_flag"]


def env_flag(name: str) -> bool:
    """True when ``name`` is 1/true/yes (empty, 0, false, no and unset are False)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


NO_EXTENSIONS = env_flag("RSOCKET_NO_EXTENSIONS") or sys.implementation.name != "cpython"
