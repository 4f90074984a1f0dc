"""Durations as progress lines show them (ETAs, run times)."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """12 s, 3 min 04 s, 2 h 05 min."""
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
