"""``python -m hssal_ray.query`` end to end on a small generated scores file (subprocess)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hssal_ray.query.__main__ import main
from hssal_ray.query.scores_io import write_scores

from ._data import blob_pool

REPO = Path(__file__).resolve().parents[3]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "hssal_ray.query", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


@pytest.fixture(scope="module")
def scores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pool, _ = blob_pool(n=400)
    path = tmp_path_factory.mktemp("cli") / "scores"
    write_scores(str(path), pool.ids, pool.embeddings, pool.probs, pool.scores, pool.confident, num_parts=2)
    return path


def test_cli_writes_csv_and_honours_exclude(scores: Path, tmp_path: Path) -> None:
    (tmp_path / "labeled.csv").write_text(
        "sample_id\n" + "\n".join(f"s{i:05d}" for i in range(0, 400, 2)) + "\n"
    )
    out = tmp_path / "query.csv"
    r = _run(
        str(scores),
        "--strategy",
        "hal",
        "--budget",
        "12",
        "--out",
        str(out),
        "--seed",
        "1",
        "--exclude",
        str(tmp_path / "labeled.csv"),
        "--candidate-ratio",
        "2",
        "--backend",
        "torch",
    )
    assert r.returncode == 0, r.stderr
    assert "read " in r.stderr and "select " in r.stderr and "200 excluded" in r.stderr
    rows = list(csv.DictReader(out.open()))
    assert [list(rows[0])] == [["sample_id", "rank", "u", "coarse_cluster"]]
    assert [int(x["rank"]) for x in rows] == list(range(12))
    assert all(int(x["sample_id"][1:]) % 2 == 1 for x in rows)  # none of the labeled (even) ids
    u = np.array([float(x["u"]) for x in rows])
    assert (np.diff(u) <= 1e-6).all() and all(int(x["coarse_cluster"]) >= 0 for x in rows)


def test_cli_prints_to_stdout_for_a_baseline(scores: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(scores), "--strategy", "entropy", "--budget", "5"]) == 0  # in-process: fast
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "sample_id,rank,u,coarse_cluster" and len(lines) == 6
    assert lines[1].endswith(",-1")


def test_cli_errors_are_one_line_exit_2(
    scores: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(scores), "--strategy", "hal", "--budget", "401"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: budget 401")
    assert main([str(tmp_path / "missing.parquet"), "--budget", "3"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read scores file")


def test_cli_config_gives_the_loops_strategy_and_flags_override_it(
    scores: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hssal_ray.config import load_config
    from hssal_ray.query.base import strategy_from_config
    from hssal_ray.query.scores_io import exclude_mask, load_pool, read_id_list

    labeled = tmp_path / "labeled.csv"
    labeled.write_text("sample_id\n" + "\n".join(f"s{i:05d}" for i in range(0, 400, 9)) + "\n")
    profile = str(REPO / "configs" / "ucm_cpu.yaml")

    def batch(*extra: str) -> list[str]:
        argv = [str(scores), "--budget", "12", "--seed", "3", "--exclude", str(labeled), "--backend", "torch"]
        assert main([*argv, *extra]) == 0
        return [line.split(",")[0] for line in capsys.readouterr().out.strip().splitlines()[1:]]

    def expected(*overrides: str) -> list[str]:
        cfg = load_config(profile, ["query.kmeans_backend=torch", *overrides]).query
        pool = load_pool(str(scores))
        pool.exclude = exclude_mask(pool.ids, read_id_list(str(labeled)))
        picks = strategy_from_config(cfg, random_state=3).select(pool, 12)
        return [str(pool.ids[i]) for i in picks]

    # the profile's HAL (alloc_over global, pick auto, boundary check, ...) is what the CLI runs
    got = batch("--config", profile)
    assert got == expected() and len(set(got)) == 12
    assert got != batch()  # QueryConfig's defaults are another strategy
    # --set and the flags override the config, in that order
    assert batch("--config", profile, "--set", "query.alloc_over=pool", "--pick", "uncertain") == expected(
        "query.alloc_over=pool", "query.pick=uncertain"
    )
    assert main([str(scores), "--budget", "3", "--set", "loop.rounds=2"]) == 2
    assert "only query.* settings" in capsys.readouterr().err
    assert main([str(scores), "--budget", "3", "--set", "query.typical_scale=wide"]) == 2
    assert capsys.readouterr().err.startswith("error: query.typical_scale")


def test_cli_reads_the_disagreement_column_when_hal_weighs_by_flips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hssal_ray.query import HierarchicalQuery
    from hssal_ray.query.scores_io import load_pool

    pool, _ = blob_pool(n=300, seed=2)
    rng = np.random.default_rng(0)
    pool.scores["u_disagreement"] = np.where(rng.random(300) < 0.2, 1.5, 0.1).astype(np.float32)
    path = tmp_path / "scores"
    write_scores(str(path), pool.ids, pool.embeddings, pool.probs, pool.scores, pool.confident)
    argv = [
        str(path),
        "--budget",
        "9",
        "--seed",
        "1",
        "--backend",
        "torch",
        "--set",
        "query.alloc_flips=true",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    got = [line.split(",")[0] for line in capsys.readouterr().out.strip().splitlines()[1:]]
    full = load_pool(str(path))
    want = HierarchicalQuery(alloc_flips=True, kmeans_backend="torch", random_state=1).select(full, 9)
    assert got == [str(full.ids[i]) for i in want]
