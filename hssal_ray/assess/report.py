"""How the assessment's figures are written: JSON numbers and intervals, and their text in the tables."""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = ["number", "interval", "fmt", "created"]


def number(x: float | None) -> float | None:
    """``x`` as a JSON number, None when it is missing or not finite."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def interval(est: float, se: float, low: float, high: float, scale: float = 1.0) -> dict[str, float | None]:
    """``{"estimate", "se", "low", "high"}`` times ``scale`` (every one None without an estimate)."""
    if not math.isfinite(est):
        return {"estimate": None, "se": None, "low": None, "high": None}
    return {
        "estimate": est * scale,
        "se": number(se * scale),
        "low": number(low * scale),
        "high": number(high * scale),
    }


def fmt(ci: dict[str, Any], gap: str = "1 chip", digits: int = 3) -> str:
    """``0.912 (0.880-0.936)``; ``-`` without an estimate; ``(no interval: <gap>)`` without an interval."""
    if ci["estimate"] is None:
        return "-"
    if ci["low"] is None:
        return f"{ci['estimate']:.{digits}f} (no interval: {gap})"
    return f"{ci['estimate']:.{digits}f} ({ci['low']:.{digits}f}-{ci['high']:.{digits}f})"


def created() -> str:
    """The time a result file is written, UTC, ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
