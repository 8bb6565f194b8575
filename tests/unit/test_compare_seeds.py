"""``benchmarks.compare_seeds``: identical cells counted bit for bit, the rest measured, bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.compare_seeds import compare, main
from benchmarks.seed_pool import pool_summaries


def _result(path: Path, per_method: dict[str, dict[str, list[float]]], labels=(20, 40, 60, 80)) -> str:
    summary = {m: {"num_labeled": list(labels), "per_seed": seeds} for m, seeds in per_method.items()}
    path.write_text(json.dumps({"summary": summary}))
    return str(path)


def test_compare_counts_identical_cells_and_the_moves(tmp_path: Path) -> None:
    a = _result(
        tmp_path / "a.json",
        {"m": {"0": [0.5, 0.6, 0.7, 0.8], "1": [0.5, 0.61, 0.7, 0.8], "2": [0.4, 0.5, 0.6, 0.7]}},
    )
    b1 = _result(
        tmp_path / "b1.json", {"m": {"0": [0.5, 0.6, 0.7, 0.8]}, "other": {"0": [0.1, 0.2, 0.3, 0.4]}}
    )
    b2 = _result(tmp_path / "b2.json", {"m": {"1": [0.5, 0.6, 0.7, 0.82]}})
    got = compare(
        pool_summaries([f"{a}:m"], require=None), pool_summaries([f"{b1}:m,other", f"{b2}:m"], None)
    )
    assert list(got) == ["m"]  # only what both sides hold; seed 2 has no partner
    m = got["m"]
    assert (m["seeds"], m["cells"], m["identical"], m["seeds_identical"]) == (2, 6, 4, 1)
    assert m["max_diff"] == pytest.approx(2.0) and m["mean_diff"] == pytest.approx([0.5, 0.0, -1.0])
    full = _result(tmp_path / "f.json", {"full": {"0": [0.9], "1": [0.91]}}, labels=(800,))
    one = compare(pool_summaries([f"{full}:full"], None), pool_summaries([f"{full}:full"], None))["full"]
    assert (one["cells"], one["identical"], one["num_labeled"]) == (2, 2, [800])  # one budget: that cell
    out = tmp_path / "rep"
    assert main(["--a", f"{a}:m", "--b", f"{b1}:m", f"{b2}:m", "--out", str(out)]) == 0
    md = (tmp_path / "rep.md").read_text()
    assert "**4 of 6 (67%)**" in md and "| m | 1 / 2 | 4 / 6 | 2.0 | +0.50 / +0.00 / -1.00 |" in md


def test_other_budgets_and_missing_methods_are_errors(tmp_path: Path, capsys) -> None:
    a = _result(tmp_path / "a.json", {"m": {"0": [0.5, 0.6, 0.7, 0.8]}})
    b = _result(tmp_path / "b.json", {"m": {"0": [0.5, 0.6, 0.7, 0.8]}}, labels=(20, 40, 60, 90))
    assert main(["--a", f"{a}:m", "--b", f"{b}:m"]) == 2
    assert "budgets differ" in capsys.readouterr().err
    assert main(["--a", f"{a}:nope", "--b", f"{b}:m"]) == 2
    assert "has no 'nope'" in capsys.readouterr().err


def test_the_report_says_where_each_side_ran_and_whether_the_embeddings_were_the_same(tmp_path: Path) -> None:
    from benchmarks.compare_seeds import provenance, same_store

    def stamp(path: str, fingerprint: str | None, isa: list[str] | None) -> None:
        data = json.loads(Path(path).read_text())
        data["device"] = {"cpu": "Xeon", "git_commit": "abc1234"}
        if isa is not None:
            data["device"].update(
                cpu_isa=isa, cpu_capability="AVX512", faiss_blas={"library": "Prescott", "used": "SkylakeX"}
            )
        if fingerprint is not None:
            data["store"] = {"key": "k", "path": "p", "fingerprint": fingerprint}
        Path(path).write_text(json.dumps(data))

    seeds = {"m": {"0": [0.5, 0.6, 0.7, 0.8]}}
    a, b, old = (_result(tmp_path / f"{n}.json", seeds) for n in ("a", "b", "old"))
    stamp(a, "f" * 20, ["avx2", "avx512f"])
    stamp(b, "f" * 20, ["avx2"])
    stamp(old, None, None)  # a result from before the record
    pa_, pb, po = provenance([f"{a}:m", f"{a}:m"]), provenance([f"{b}:m"]), provenance([f"{old}:m"])
    assert len(pa_) == 1 and pa_[0]["ISA flags"] == "avx2, avx512f" and pa_[0]["kernels"] == "AVX512"
    assert pa_[0]["faiss BLAS"] == "SkylakeX" and po[0]["faiss BLAS"] == "not recorded"
    assert po[0]["store content"] == "not recorded" and po[0]["ISA flags"] == "not recorded"
    assert same_store(pa_, pb) == "yes" and same_store(pa_, po).startswith("unknown")
    stamp(b, "0" * 20, ["avx2"])
    assert same_store(pa_, provenance([f"{b}:m"])) == "no"
    out = tmp_path / "rep"
    assert main(["--a", f"{a}:m", "--b", f"{b}:m", "--out", str(out)]) == 0
    md = (tmp_path / "rep.md").read_text()
    assert (
        "same embeddings on both sides: **no**" in md
        and f"| a | {a} | {'f' * 20} | Xeon | AVX512 | SkylakeX |" in md
    )
    assert json.loads((tmp_path / "rep.json").read_text())["_provenance"]["b"][0]["store content"] == "0" * 20
