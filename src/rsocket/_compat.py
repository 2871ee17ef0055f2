"""The environment flags rsocket reads, and whether the compiled core may load.

Standard library only: ``setup.py`` loads this file before the package exists.
"""

from __future__ import annotations

import os
import sys

__all__ = ["NO_EXTENSIONS", "env_flag", "parse_flag"]

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"", "0", "false", "no"})


def parse_flag(text: str) -> bool | None:
    """True for 1/true/yes, False for 0/false/no or empty (any case, spaces
    ignored), None for anything else: the one reading of rsocket's flags."""
    word = text.strip().lower()
    return True if word in _TRUE else False if word in _FALSE else None


def env_flag(name: str) -> bool:
    """True when the variable ``name`` is 1/true/yes (anything else is False)."""
    return parse_flag(os.environ.get(name, "")) is True


NO_EXTENSIONS = env_flag("RSOCKET_NO_EXTENSIONS") or sys.implementation.name != "cpython"
