"""Text for progress lines: one way to say how long something took or will take."""

from __future__ import annotations

__all__ = ["duration"]


def duration(secs: float) -> str:
    """``45 s``, ``33 min``, ``2 h 5 min``, ``8 d 7 h`` (negative times count as 0)."""
    secs = max(0.0, secs)
    if secs < 120:
        return f"{secs:.0f} s"
    if secs < 7200:
        return f"{secs / 60:.0f} min"
    if secs < 172800:
        return f"{int(secs // 3600)} h {int(secs % 3600 // 60)} min"
    return f"{int(secs // 86400)} d {int(secs % 86400 // 3600)} h"
