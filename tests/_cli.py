"""Assertions on what the CLI (``hssal_ray.cli.loop_main`` in this process) printed."""

from __future__ import annotations

import pytest

from hssal_ray.cli import EXIT_ERROR


def one_error_line(
    capsys: pytest.CaptureFixture[str], rc: int, *fragments: str, in_stderr: bool = False
) -> str:
    """The single ``error:`` line of a failed call (exit ``EXIT_ERROR``, no traceback), holding ``fragments``.

    ``in_stderr``: the fragments may stand anywhere in stderr (a hint printed after the line).
    """
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert rc == EXIT_ERROR, err
    assert len(lines) == 1 and "Traceback" not in err, err
    where = err if in_stderr else lines[0]
    for frag in fragments:
        assert frag in where, (frag, where)
    return lines[0]
