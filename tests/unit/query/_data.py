"""Synthetic pools shared by the query tests (tiny, seeded)."""

from __future__ import annotations

import dataclasses

import numpy as np

from hssal_ray.query import Pool, compute_all


def blob_pool(
    n: int = 600, d: int = 16, n_blobs: int = 8, n_classes: int = 5, seed: int = 0, fp16: bool = True
) -> tuple[Pool, np.ndarray]:
    """A pool of L2-normalised Gaussian blobs with random class probabilities.

    Returns:
        (pool, blob label of each row (n,)).
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_blobs, d))
    lab = rng.integers(0, n_blobs, n)
    X = centers[lab] + 0.2 * rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    logits = rng.standard_normal((n, n_classes)) * 2.0
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    emb = X.astype(np.float16 if fp16 else np.float32)
    pool = Pool(
        ids=np.array([f"s{i:05d}" for i in range(n)], dtype=object),
        embeddings=emb,
        probs=P.astype(np.float32),
        scores=compute_all(P, emb),
        confident=rng.random(n) < 0.3,
    )
    return pool, lab


def with_labeled(pool: Pool, rows: np.ndarray) -> Pool:
    """``pool`` with the rows ``rows`` (indices) labeled (its ``exclude``), every other field kept."""
    exclude = np.zeros(len(pool), dtype=bool)
    exclude[np.asarray(rows, dtype=np.int64)] = True
    return dataclasses.replace(pool, exclude=exclude)


#: HAL with the profile's allocation (``alloc_over: global``) on a 6-blob pool: the reference the
#: coarse-weighing options (``alloc_flips``, ``alloc_purity``) are compared with
GLOBAL_HAL = {
    "uncertainty": "margin",
    "coarse_k": 6,
    "alloc_over": "global",
    "candidate_ratio": 10,
    "random_state": 0,
}
