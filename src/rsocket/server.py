"""Alias of :mod:`rsocket.testing.reference` (the reference server), for existing imports."""

from __future__ import annotations

from .testing.reference import FAULTS, ReferenceServer

__all__ = ["FAULTS", "ReferenceServer"]
