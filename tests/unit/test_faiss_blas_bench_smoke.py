"""``python -m benchmarks.faiss_blas --smoke``: both OpenBLAS settings run the product's faiss steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hssal_ray._faiss import bundled_openblas


@pytest.mark.skipif(bundled_openblas() is None, reason="no OpenBLAS bundled with faiss here")
def test_faiss_blas_smoke(tmp_path: Path) -> None:
    from benchmarks.faiss_blas import main

    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "faiss_blas_smoke.json").read_text())
    assert [r["step"] for r in data["rows"]] == ["cold_start", "graph", "hal_coarse"]
    # one column per setting, even where both settings load the same kernels (the CI machine's Zen)
    assert len([k for k in data["rows"][0] if "cpu_s" in k]) == 2
    lib, prod = data["settings"]["library"], data["settings"]["product"]
    assert lib["kernels"] and prod["kernels"]
    for s in ("cold_start", "graph", "hal_coarse"):
        assert lib["steps"][s]["cpu_s"] > 0 and prod["steps"][s]["cpu_s"] > 0
        assert len(lib["steps"][s]["digest"]) == 16
    assert data["ratio_total"] > 0
    assert "all three steps" in (tmp_path / "faiss_blas_smoke.md").read_text()
