"""HAL's batch does not depend on the CPU's SIMD width (AVX-512 here, AVX2 in a subprocess).

A matrix product rounds ``d(a, b)`` and ``d(b, a)`` differently, and the kernels differ between CPUs:
before :func:`~hssal_ray.query.hal_steps.typicality` made its distances symmetric and the boundary
check compared with a margin below its radius, half of these typical batches changed under AVX2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hssal_ray.query import HierarchicalQuery
from hssal_ray.query.hal_steps import typicality

from ._data import blob_pool

REPO = Path(__file__).resolve().parents[3]
SEEDS = 6

PROBE = """
import json, sys
from hssal_ray.query import HierarchicalQuery
from tests.unit.query._data import blob_pool
out = {}
for seed in range(int(sys.argv[1])):
    pool, _ = blob_pool(n=1500, d=64, n_blobs=20, n_classes=10, seed=seed, fp16=True)
    kw = dict(alloc_over="global", candidate_ratio=10, typical_scale="flat", boundary_check=True)
    kw["pick"] = "typical"
    q = HierarchicalQuery(uncertainty="margin", kmeans_backend="torch", random_state=seed, **kw)
    out[seed] = sorted(map(int, q.select(pool, 40)))
print(json.dumps(out))
"""


def _batches(env: dict[str, str]) -> dict[str, list[int]]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(SEEDS)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(r.stdout)


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() != "AVX512", reason="needs an AVX-512 CPU to compare with AVX2"
)
def test_hal_batches_are_the_same_with_avx2_and_avx512_kernels() -> None:
    wide = _batches({})
    narrow = _batches({"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"})
    assert len(wide) == SEEDS and wide == narrow


def _mutual_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, nn, mutual)``: n fp16-rounded unit vectors in 256-d, each row's nearest neighbour, and the
    rows whose nearest neighbour has them as its own (exact distances, float32 numpy)."""
    X = np.random.default_rng(seed).standard_normal((n, 256)).astype(np.float16).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    d = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = d.argmin(1)
    return X, nn, np.flatnonzero(nn[nn] == np.arange(n))


def test_mutual_nearest_neighbours_tie_exactly() -> None:
    X, nn, mutual = _mutual_pairs(400, seed=0)
    t = typicality(X, n_neighbors=1)
    assert mutual.size > 20
    assert (t[mutual] == t[nn[mutual]]).all()  # bit for bit: the pick rule's tie-break decides between them
    # the same numbers as the chunked path up to rounding (the bound only changes how they are computed)
    from hssal_ray.query.hal_steps import reference_typicality

    np.testing.assert_allclose(t, reference_typicality(X, X, np.arange(len(X)), 1), rtol=1e-5)


def test_mutual_nearest_neighbours_tie_exactly_above_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from hssal_ray.query import hal_steps

    monkeypatch.setattr(hal_steps, "SYMMETRIC_ROWS", 150)  # the blocked path on a small set
    X, nn, mutual = _mutual_pairs(530, seed=1)
    assert mutual.size > 20
    for chunk in (64, 100, 530):  # blocks that split the pairs across the diagonal and off it
        t = typicality(X, n_neighbors=1, chunk_size=chunk)
        assert (t[mutual] == t[nn[mutual]]).all()
    ref = hal_steps.reference_typicality(X, X, np.arange(len(X)), 7)
    np.testing.assert_allclose(typicality(X, n_neighbors=7, chunk_size=64), ref, rtol=1e-5)
    assert (typicality(X[:1], chunk_size=64) == 1.0).all()


def test_the_profiles_hal_still_picks_one_per_fine_cluster() -> None:
    pool, _ = blob_pool(n=800, n_blobs=6, seed=1, fp16=True)
    q = HierarchicalQuery(
        uncertainty="margin",
        pick="typical",
        alloc_over="global",
        candidate_ratio=10,
        typical_scale="flat",
        boundary_check=True,
        kmeans_backend="torch",
        random_state=0,
    )
    picks = q.select(pool, 30)
    assert len(set(picks.tolist())) == 30 and q.info_["boundary"]["radius"] > 0
