"""Quantities as people read them."""

from __future__ import annotations


def human_bytes(count: float) -> str:
    """A size in binary units: 512 B, 24.2 KiB, 1.3 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
