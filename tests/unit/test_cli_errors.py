"""Bad config files and a file system that refuses a write: one ``error:`` line, exit 2, no traceback.

In-process through the real entry point :func:`hssal_ray.cli.loop_main`, without Ray.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest

from hssal_ray.cli import SMOKE_OVERRIDES, loop_main
from hssal_ray.config import config_from_dict, config_to_yaml, load_config
from hssal_ray.errors import ConfigError
from hssal_ray.loop.run_config import load_run_config
from tests._cli import one_error_line

# --------------------------------------------------------------------------- config files


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", "is not UTF-8 text"),
        (b"loop:\n  name: a\n\tbad: [", "is not valid YAML"),
        (
            b"query:\n  budget: 5\nseed: 1\nquery:\n  budget: 50\n",
            "key 'query' is given twice (lines 1 and 4)",
        ),
        (
            b"query:\n  budget: 5\n  strategy: hal\n  budget: 50\n",
            "key 'budget' is given twice (lines 2 and 4)",
        ),
        (b"query: {budget: 5, budget: 6}\n", "key 'budget' is given twice (line 1)"),
        (b"[" * 700 + b"]" * 700, "nested too deeply"),  # PyYAML's scanner is quadratic in the depth
    ],
    ids=["binary", "bad-yaml", "dup-section", "dup-key", "dup-flow", "deep"],
)
def test_bad_config_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expect: str
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(content)
    one_error_line(capsys, loop_main(["--config", str(cfg)]), str(cfg), expect)


def test_config_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_error_line(capsys, loop_main(["--config", str(tmp_path)]), str(tmp_path), "is a directory")


def test_merge_keys_still_override() -> None:
    from hssal_ray.config.loading import parse_yaml

    doc = parse_yaml("base: &b {budget: 5, strategy: hal}\nquery:\n  <<: *b\n  budget: 7\n")
    assert doc["query"] == {"budget": 7, "strategy": "hal"}


def test_run_config_with_a_key_given_twice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    run.mkdir()
    text = config_to_yaml(load_config(None, [f"loop.run_dir={tmp_path}", "loop.name=r"]))
    (run / "config.yaml").write_text(text + "seed: 5\n")
    rc = loop_main(["--resume", str(run)])
    one_error_line(
        capsys, rc, "config.yaml", f"'seed' is given twice (lines 1 and {len(text.splitlines()) + 1})"
    )


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/abs", "", " x", "a\\b", "x\n"])
def test_run_name_must_be_one_plain_folder_name(name: str) -> None:
    with pytest.raises(ConfigError, match="loop.name: must be one plain folder name"):
        config_from_dict({"loop": {"name": name}})
    assert config_from_dict({"loop": {"name": "run-1_a.b c"}}).loop.name == "run-1_a.b c"


def test_run_name_dot_dot_escapes_no_more(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = loop_main(["loop.name=..", f"loop.run_dir={tmp_path / 'runs'}"])
    one_error_line(capsys, rc, "loop.name", "'..'")
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "runs").exists()


def test_resume_of_the_current_folder_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "myrun"
    run.mkdir()
    (run / "config.yaml").write_text(config_to_yaml(load_config(None, ["loop.run_dir=elsewhere"])))
    monkeypatch.chdir(run)
    cfg = load_run_config(".")
    assert (cfg.loop.name, cfg.loop.run_dir) == ("myrun", str(tmp_path))


def test_total_budget_below_the_cold_start_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"loop.total_budget: must be >= loop.initial_labeled \(20\)"):
        load_config(None, ["loop.total_budget=10"])
    assert load_config(None, ["loop.total_budget=20"]).loop.total_budget == 20
    assert load_config(None, ["loop.total_budget=0"]).loop.total_budget == 0


# --------------------------------------------------------------------------- the disk refuses a write


def _new_run(tmp_path: Path) -> list[str]:
    return [*SMOKE_OVERRIDES, f"loop.run_dir={tmp_path}", "loop.name=r"]


def test_disk_full_while_writing_the_state_is_one_line_and_resumable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from ``fsync`` of the state file's temp file (a write error names no file)."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".state.json."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr("hssal_ray._ray.ensure_ray", lambda resources: pytest.fail("Ray was started"))
    run = tmp_path / "r"
    line = one_error_line(capsys, loop_main(_new_run(tmp_path)), f"error: {run / 'state.json'}: ")
    assert "No space left on device; free space on that file system" in line
    assert "re-run the same command to resume" in line
    assert not (run / "state.json").exists() and not list(run.glob(".state.json.*"))  # no temp file left
    # with space again, the same command creates the state and goes on
    monkeypatch.setattr(os, "fsync", real_fsync)
    monkeypatch.setattr("hssal_ray._ray.ensure_ray", lambda resources: None)
    monkeypatch.setattr("hssal_ray.loop.runner.LoopRunner._stage_init", _interrupt)
    assert loop_main(_new_run(tmp_path)) == 130
    assert json.loads((run / "state.json").read_text())["stage"] == "init"


def _interrupt(*args: object) -> None:
    raise KeyboardInterrupt


def test_read_only_file_system_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EROFS when the state file's temp file is created (its error names the temp file)."""
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: object, prefix: str = "", dir: str = "", **kw: object):  # type: ignore[no-untyped-def]
        if prefix == ".state.json.":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, prefix + "x.tmp"))
        return real_mkstemp(*args, prefix=prefix, dir=dir, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr("hssal_ray._ray.ensure_ray", lambda resources: pytest.fail("Ray was started"))
    line = one_error_line(
        capsys,
        loop_main(_new_run(tmp_path)),
        f"error: {tmp_path / 'r' / 'state.json'}: Read-only file system",
    )
    assert "remount it read-write or set loop.run_dir elsewhere" in line


def test_other_os_errors_are_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kw: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("hssal_ray.loop.runner.LoopRunner._setup", broken)
    with pytest.raises(OSError, match="Input/output error"):
        loop_main(_new_run(tmp_path))
