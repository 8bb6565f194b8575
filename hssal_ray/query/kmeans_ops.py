"""The chunked k-means arithmetic every backend shares: assignment, k-means++ seeding, thread limits.

:func:`assign_chunked` streams the rows one float32 block at a time into preallocated buffers
(``argmin ||c||^2 - 2 x.c``), so memory stays bounded whatever the input size or dtype; rows with
NaN/inf get label ``-1`` and :func:`_checked_predict` raises :class:`~hssal_ray.errors.DataError`
naming them.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from hssal_ray.errors import DataError

ArrayLike = np.ndarray | torch.Tensor

#: Below this many multiply-adds per pass (n * k * d) a problem runs single-threaded: OpenMP
#: fork/join costs more than it saves there, and on oversubscribed machines (shared CI cores)
#: the barrier waits dominate (a small HAL pool runs far faster on one thread).
SMALL_WORK = 20_000_000


@contextmanager
def limit_threads(work: float) -> Iterator[None]:
    """Run torch and faiss single-threaded inside the block when ``work < SMALL_WORK``.

    The thread counts are process-global: do not run other torch/faiss work concurrently from
    other Python threads inside the block (Ray tasks and the serial fine stage do not).
    """
    if work >= SMALL_WORK or torch.get_num_threads() == 1:
        yield
        return
    prev = torch.get_num_threads()
    faiss = sys.modules.get("faiss")
    fprev = faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
        if faiss is not None and fprev is not None:
            faiss.omp_set_num_threads(fprev)


def _to_torch(X: ArrayLike) -> torch.Tensor:
    if isinstance(X, torch.Tensor):
        return X.detach()
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array (n_samples, n_features), got shape {arr.shape}")
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    if arr.dtype not in (np.float16, np.float32, np.float64):
        arr = arr.astype(np.float32)
    with warnings.catch_warnings():  # read-only arrays (e.g. Arrow-backed) are only ever read here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _nonfinite_error(rows: np.ndarray, what: str = "rows") -> DataError:
    shown = ", ".join(str(int(r)) for r in rows[:5])
    more = f" (and {len(rows) - 5} more)" if len(rows) > 5 else ""
    return DataError(f"{len(rows)} {what} contain NaN or inf values: rows {shown}{more}")


def assign_chunked(
    X: ArrayLike,
    centers: ArrayLike,
    *,
    chunk_size: int = 2048,
    device: str | torch.device | None = None,
    return_distances: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Nearest-centre assignment streamed in float32 blocks.

    Args:
        X: (n, d) float16/32/64 numpy array or torch tensor (CPU or CUDA); never copied whole.
        centers: (k, d) centres.
        chunk_size: rows per block; peak extra memory is about ``chunk_size * (d + k) * 4`` bytes.
        device: where to compute; default: ``X``'s device.
        return_distances: also return the squared distance to the nearest centre.

    Returns:
        ``(labels, sqdist)``: labels (n,) int64 with ``-1`` for rows holding NaN/inf; sqdist (n,)
        float32 or None.
    """
    from hssal_ray.query.rowsource import is_row_source

    if is_row_source(X):  # read block by block: the blocks _blocks would convert, the same float32
        dev = torch.device(device) if device is not None else torch.device("cpu")
        n, d = X.shape
        with limit_threads(float(n) * len(centers) * d):
            return _assign_blocks(n, _source_blocks(X, dev, chunk_size), centers, dev, return_distances)
    Xt = _to_torch(X)
    with limit_threads(float(Xt.shape[0]) * len(centers) * Xt.shape[1]):
        return _assign(Xt, centers, chunk_size, device, return_distances)


def _source_blocks(X: Any, dev: torch.device, chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`_blocks` of a :class:`~hssal_ray.query.rowsource.RowSource` (each block read when reached)."""
    n, d = X.shape
    m0 = max(1, min(chunk_size, n))
    buf = torch.empty((m0, d), dtype=torch.float32, device=dev)
    for s, rows in X.blocks(m0):
        m = len(rows)
        buf[:m].copy_(torch.from_numpy(np.ascontiguousarray(rows)))
        yield s, buf[:m]


def _blocks(Xt: torch.Tensor, dev: torch.device, chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, float32 block on dev)``; non-float32/off-device input goes through one buffer."""
    n = Xt.shape[0]
    m0 = max(1, min(chunk_size, n))
    direct = Xt.dtype == torch.float32 and Xt.device == dev
    buf = None if direct else torch.empty((m0, Xt.shape[1]), dtype=torch.float32, device=dev)
    for s in range(0, n, m0):
        m = min(m0, n - s)
        if buf is None:
            yield s, Xt[s : s + m]
        else:
            buf[:m].copy_(Xt[s : s + m])  # into a preallocated block: ~10x faster than .float()
            yield s, buf[:m]


def _nearest(xb: torch.Tensor, C: torch.Tensor, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min_c ||c||^2 - 2 x.c, argmin)`` of a block; ``C`` is (k, d), ``dist`` a (>= m, k) buffer."""
    db = dist[: xb.shape[0]]
    torch.addmm((C * C).sum(1), xb, C.T, beta=1.0, alpha=-2.0, out=db)
    return db.min(1)


def _assign(
    Xt: torch.Tensor, centers: ArrayLike, chunk_size: int, device: Any, return_distances: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    dev = torch.device(device) if device is not None else Xt.device
    return _assign_blocks(Xt.shape[0], _blocks(Xt, dev, chunk_size), centers, dev, return_distances)


def _assign_blocks(
    n: int,
    blocks: Iterator[tuple[int, torch.Tensor]],
    centers: ArrayLike,
    dev: torch.device,
    return_distances: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Nearest centre of every row of ``blocks`` (``(start, float32 block on dev)``, ``n`` rows in all)."""
    C = torch.as_tensor(np.asarray(centers) if not isinstance(centers, torch.Tensor) else centers)
    C = C.to(device=dev, dtype=torch.float32)
    labels = torch.empty(n, dtype=torch.int64, device=dev)
    sq = torch.empty(n, dtype=torch.float32, device=dev) if return_distances else None
    dist: torch.Tensor | None = None
    for s, xb in blocks:
        if dist is None:  # the first block is the largest
            dist = torch.empty((max(1, xb.shape[0]), C.shape[0]), dtype=torch.float32, device=dev)
        mins, lab = _nearest(xb, C, dist)
        finite = torch.isfinite(mins)  # NaN/inf anywhere in a row makes its distances non-finite
        labels[s : s + xb.shape[0]] = torch.where(finite, lab, torch.full_like(lab, -1))
        if sq is not None:
            sq[s : s + xb.shape[0]] = (mins + (xb * xb).sum(1)).clamp_(min=0)
    return labels.cpu().numpy(), (sq.cpu().numpy() if sq is not None else None)


def _checked_predict(X: ArrayLike, centers: np.ndarray, chunk_size: int, device: Any = None) -> np.ndarray:
    labels, _ = assign_chunked(X, centers, chunk_size=chunk_size, device=device)
    bad = np.flatnonzero(labels < 0)
    if bad.size:
        raise _nonfinite_error(bad)
    return labels


def init_centers(
    Xt: torch.Tensor,
    k: int,
    rng: np.random.Generator,
    init: str = "k-means++",
    init_size: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Initial centres: greedy k-means++ (as scikit-learn) on a subsample, or random rows.

    Greedy k-means++ draws ``2 + log k`` D^2-weighted candidates per step and keeps the one that
    lowers the potential most; the candidates are scored in one (m, trials) matmul. Written here
    rather than calling ``sklearn.cluster.kmeans_plusplus`` because it runs on torch tensors (the
    GPU path seeds on the device) and, measured on CPU (``benchmarks/results/kmeans_init.md``), it
    is 1.3-1.6x faster than scikit-learn's at an equal or lower potential.

    Args:
        Xt: (n, d) data, any float dtype/device.
        k: number of centres.
        rng: numpy generator (the only source of randomness).
        init: ``"k-means++"`` or ``"random"``.
        init_size: rows sampled for seeding; None = ``min(n, max(2_000, 20 * k))``.
        device: where to compute (default: ``Xt``'s device).

    Returns:
        (k, d) float32 centres on ``device``.
    """
    dev = device if device is not None else Xt.device
    n = Xt.shape[0]
    if init == "random":
        idx = np.sort(rng.choice(n, size=k, replace=False))
        return Xt[torch.from_numpy(idx).to(Xt.device)].to(dev, torch.float32)
    if init != "k-means++":
        raise ValueError(f"init must be 'k-means++' or 'random', got {init!r}")
    m = max(k, min(init_size or max(2_000, 20 * k), n))
    sub = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    S = Xt[torch.from_numpy(sub).to(Xt.device)].to(dev, torch.float32)
    snorm = (S * S).sum(1)
    trials = 2 + int(np.log(k))
    centers = torch.empty((k, S.shape[1]), dtype=torch.float32, device=dev)
    first = int(rng.integers(m))
    centers[0] = S[first]
    d2 = (snorm - 2 * S @ S[first] + snorm[first]).clamp_(min=0)
    for j in range(1, k):
        cum = np.cumsum(d2.double().cpu().numpy())
        if not cum[-1] > 0:  # only duplicates of chosen centres left: uniform
            cand = rng.integers(m, size=trials)
        else:
            cand = np.minimum(np.searchsorted(cum, rng.random(trials) * cum[-1]), m - 1)
        ct = torch.from_numpy(cand).to(dev)
        D = (snorm[:, None] - 2 * S @ S[ct].T + snorm[ct][None, :]).clamp_(min=0)
        D = torch.minimum(D, d2[:, None])
        best = int(torch.argmin(D.sum(0)))
        centers[j] = S[int(cand[best])]
        d2 = D[:, best].contiguous()
    return centers
