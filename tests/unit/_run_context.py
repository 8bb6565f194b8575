"""A loaded :class:`RunContext` over a tiny synthetic run, shared by the stage and learner tests."""

from __future__ import annotations

from collections.abc import Sequence

from hssal_ray import _io
from hssal_ray.config import load_config
from hssal_ray.loop.context import RunContext


def run_context(tmp_path, base: Sequence[str], *extra: str) -> RunContext:
    """``RunContext`` of run ``r`` under ``tmp_path`` with overrides ``base`` + ``extra``, manifest loaded."""
    cfg = load_config(None, [*base, f"loop.run_dir={tmp_path}", "loop.name=r", *extra])
    ctx = RunContext(cfg, progress=lambda s: None)
    _io.makedirs(ctx.run_dir)
    ctx.load_catalog()
    return ctx
