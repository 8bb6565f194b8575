"""K-means backends behind one factory with the scikit-learn API.

``make_kmeans(backend, n_clusters=..., max_iter=..., random_state=...)`` returns an object with
``fit(X) -> self``, ``predict(X)``, ``cluster_centers_``, ``labels_`` and ``inertia_``, whatever the
backend, so the query strategies stay backend-agnostic (cuML follows the same API by design).

Backends:

* ``faiss``: ``faiss.Kmeans`` for the fit (fast multi-threaded CPU Lloyd), seeded by our k-means++.
* ``torch``: our chunked Lloyd loop with k-means++ (or random) init; runs on CUDA when given CUDA
  tensors or ``device="cuda"``; never materialises more than one ``chunk_size`` float32 block of the
  input, so fp16 inputs are converted block by block.
* ``sklearn``: ``sklearn.cluster.KMeans`` (``n_init=1``).
* ``cuml``: ``cuml.KMeans``; CUDA torch tensors are handed over zero-copy through DLPack/cupy.

``predict`` of the CPU backends uses the shared chunked assignment :func:`assign_chunked` (one
float32 block at a time, preallocated buffers, ``argmin ||c||^2 - 2 x.c``): on a 2-core machine it
is ~4x faster than ``IndexFlatL2.search`` and bounded in memory. Rows with NaN/inf get label ``-1``
there and :meth:`predict` raises :class:`~hssal_ray.errors.DataError` naming them.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch

from hssal_ray.errors import DataError, MissingOptionalDependencyError

__all__ = [
    "KMeansLike",
    "make_kmeans",
    "resolve_backend",
    "assign_chunked",
    "init_centers",
    "limit_threads",
    "TorchKMeans",
    "BACKENDS",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "faiss", "sklearn", "cuml")
ArrayLike = np.ndarray | torch.Tensor


class KMeansLike(Protocol):
    """What every backend returns (scikit-learn's KMeans API)."""

    cluster_centers_: np.ndarray
    labels_: np.ndarray
    inertia_: float

    def fit(self, X: Any) -> KMeansLike:
        """Fit on ``X`` (n, d); returns self."""
        ...

    def predict(self, X: Any) -> np.ndarray:
        """Nearest centre index of each row of ``X`` (n, d) -> (n,)."""
        ...


#: Below this many multiply-adds per pass (n * k * d) a problem runs single-threaded: OpenMP
#: fork/join costs more than it saves there, and on oversubscribed machines (shared CI cores)
#: the barrier waits dominate (measured: HAL on a 300-row pool 0.7 s with 2 threads, 0.01 s with 1).
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


def _cuda_visible() -> bool:
    return bool(torch.cuda.is_available())


def resolve_backend(backend: str = "auto") -> str:
    """Resolve ``auto`` to a concrete backend and check the named one is usable.

    ``auto`` = ``cuml`` if cuML and cupy import and a CUDA GPU is visible, else ``faiss`` if
    installed, else ``torch``.

    Raises:
        ValueError: unknown backend name.
        MissingOptionalDependencyError: ``cuml``/``faiss`` requested but not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        has = importlib.util.find_spec
        if has("cuml") is not None and has("cupy") is not None and _cuda_visible():
            return "cuml"
        return "faiss" if has("faiss") is not None else "torch"
    if backend in ("cuml", "faiss") and importlib.util.find_spec(backend) is None:
        raise MissingOptionalDependencyError(backend, purpose=f"the {backend} k-means backend")
    return backend


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
    Xt = _to_torch(X)
    with limit_threads(float(Xt.shape[0]) * len(centers) * Xt.shape[1]):
        return _assign(Xt, centers, chunk_size, device, return_distances)


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
    C = torch.as_tensor(np.asarray(centers) if not isinstance(centers, torch.Tensor) else centers)
    C = C.to(device=dev, dtype=torch.float32)
    n = Xt.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=dev)
    sq = torch.empty(n, dtype=torch.float32, device=dev) if return_distances else None
    dist = torch.empty((max(1, min(chunk_size, n)), C.shape[0]), dtype=torch.float32, device=dev)
    for s, xb in _blocks(Xt, dev, chunk_size):
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
    lowers the potential most; the candidates are scored in one (m, trials) matmul.

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


class _KMeansBase:
    """Parameters, ``__repr__`` and the chunked ``predict`` shared by the backends."""

    def __init__(
        self, n_clusters: int = 8, max_iter: int = 20, random_state: int | None = None, chunk_size: int = 2048
    ) -> None:
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.random_state = random_state
        self.chunk_size = chunk_size

    def __repr__(self) -> str:
        names = [k for k in vars(self) if not k.endswith("_") and not k.startswith("_")]
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in names)})"

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Nearest centre of each row of ``X`` (n, d), streamed in chunks. Returns (n,) int64."""
        return _checked_predict(X, self.cluster_centers_, self.chunk_size, getattr(self, "device", None))

    def _float32(self, X: ArrayLike) -> np.ndarray:
        arr = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] < max(self.n_clusters, 1) or self.n_clusters < 1:
            raise ValueError(f"n_samples={len(arr)} should be >= n_clusters={self.n_clusters} >= 1")
        bad = np.flatnonzero(~np.isfinite(arr.sum(1)))
        if bad.size:
            raise _nonfinite_error(bad)
        return arr


class TorchKMeans(_KMeansBase):
    """Chunked Lloyd k-means in torch (CPU or CUDA), scikit-learn API.

    Args:
        n_clusters: k.
        max_iter: Lloyd iterations at most.
        random_state: seed of the initialisation.
        init: ``"k-means++"`` (D^2 seeding on at most ``init_size`` rows) or ``"random"`` rows.
        tol: stop when the squared centre shift, relative to the data variance, is below ``tol``.
        chunk_size: rows per float32 block.
        device: ``"cpu"``, ``"cuda"`` or None (= where ``X`` lives).
        init_size: rows sampled for k-means++ seeding (like MiniBatchKMeans' ``init_size``);
            None = ``min(n, max(2_000, 20 * n_clusters))``.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        max_iter: int = 20,
        random_state: int | None = None,
        init: str = "k-means++",
        tol: float = 1e-4,
        chunk_size: int = 2048,
        device: str | None = None,
        init_size: int | None = None,
    ) -> None:
        super().__init__(n_clusters, max_iter, random_state, chunk_size)
        self.init = init
        self.tol = tol
        self.device = device
        self.init_size = init_size

    def fit(self, X: ArrayLike) -> TorchKMeans:
        """Fit on ``X`` (n, d); sets ``cluster_centers_`` (k, d), ``labels_`` (n,), ``inertia_``.

        Raises:
            ValueError: fewer rows than clusters.
            DataError: rows with NaN/inf.
        """
        Xt = _to_torch(X)
        with limit_threads(float(Xt.shape[0]) * self.n_clusters * Xt.shape[1]):
            return self._fit(Xt)

    def _fit(self, Xt: torch.Tensor) -> TorchKMeans:
        n, d = Xt.shape
        k = self.n_clusters
        if k < 1 or n < k:
            raise ValueError(f"n_samples={n} should be >= n_clusters={k} >= 1")
        dev = torch.device(self.device) if self.device is not None else Xt.device
        rng = np.random.default_rng(self.random_state)
        centers = init_centers(Xt, k, rng, self.init, self.init_size, dev)
        if not bool(torch.isfinite(centers).all()):
            bad = torch.nonzero(~torch.isfinite(centers).all(1)).flatten()
            raise DataError(f"k-means input contains NaN or inf values (seed rows {bad.tolist()[:5]})")
        dist = torch.empty((max(1, min(self.chunk_size, n)), k), dtype=torch.float32, device=dev)
        labels = torch.empty(n, dtype=torch.int64, device=dev)
        mind = torch.empty(n, dtype=torch.float32, device=dev)
        xnorm = torch.empty(n, dtype=torch.float32, device=dev)
        threshold = 0.0
        n_iter = 0
        converged = False
        for it in range(self.max_iter + 1):
            sums = torch.zeros((k, d), dtype=torch.float32, device=dev)
            for s, xb in _blocks(Xt, dev, self.chunk_size):
                m = xb.shape[0]
                if it == 0:
                    xnorm[s : s + m] = (xb * xb).sum(1)
                mind[s : s + m], labels[s : s + m] = _nearest(xb, centers, dist)
                sums.index_add_(0, labels[s : s + m], xb)
            if it == 0:
                bad = torch.nonzero(~torch.isfinite(xnorm)).flatten().cpu().numpy()
                if bad.size:
                    raise _nonfinite_error(bad)
                # sklearn's tolerance: tol * mean per-feature variance of the data.
                total_var = float(xnorm.mean() - (sums.sum(0) / n).square().sum())
                threshold = self.tol * max(total_var, 0.0) / d
            if it == self.max_iter or converged:
                break  # labels/mind now belong to the final centres
            counts = torch.bincount(labels, minlength=k)
            new = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
            empty = torch.nonzero(counts == 0).flatten()
            if empty.numel():
                # Relocate empty clusters onto the points farthest from their centre (as sklearn).
                far = torch.topk(mind + xnorm, int(empty.numel())).indices
                new[empty] = Xt[far.to(Xt.device)].to(dev, torch.float32)
            shift = float((new - centers).square().sum())
            centers = new
            n_iter = it + 1
            converged = shift <= threshold
        self.cluster_centers_ = centers.cpu().numpy()
        self.labels_ = labels.cpu().numpy()
        self.inertia_ = float((mind + xnorm).clamp(min=0).sum())
        self.n_iter_ = n_iter
        return self


class FaissKMeans(_KMeansBase):
    """``faiss.Kmeans`` Lloyd fit on all rows (no subsampling), chunked torch ``predict``.

    Args:
        n_clusters: k.
        max_iter: Lloyd iterations.
        random_state: seed (None -> 1234, faiss' default).
        chunk_size: rows per float32 block in ``predict`` and in the final assignment.
        init: ``"k-means++"`` (our greedy k-means++ on ``init_size`` rows, passed to faiss as
            ``init_centroids``) or ``"random"`` (faiss' own random-row seeding).
        init_size: rows sampled for k-means++ seeding.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        max_iter: int = 20,
        random_state: int | None = None,
        chunk_size: int = 2048,
        init: str = "k-means++",
        init_size: int | None = None,
    ) -> None:
        super().__init__(n_clusters, max_iter, random_state, chunk_size)
        self.init = init
        self.init_size = init_size

    def fit(self, X: ArrayLike) -> FaissKMeans:
        """Fit on ``X`` (n, d) (converted to one float32 array: faiss needs it)."""
        import faiss

        arr = self._float32(X)
        n, d = arr.shape
        with limit_threads(float(n) * self.n_clusters * d):
            seed = 1234 if self.random_state is None else int(self.random_state) % (2**31)
            km = faiss.Kmeans(
                d,
                self.n_clusters,
                niter=self.max_iter,
                seed=seed,
                verbose=False,
                max_points_per_centroid=max(n, 1),
                min_points_per_centroid=1,
            )
            if self.init == "k-means++":  # faiss only seeds with random rows; seed it with ours
                rng = np.random.default_rng(self.random_state)
                c0 = init_centers(_to_torch(arr), self.n_clusters, rng, "k-means++", self.init_size)
                km.train(arr, init_centroids=np.ascontiguousarray(c0.numpy(), dtype=np.float32))
            else:
                km.train(arr)
            self.cluster_centers_ = np.asarray(km.centroids, dtype=np.float32).reshape(self.n_clusters, d)
            labels, sq = assign_chunked(
                arr, self.cluster_centers_, chunk_size=self.chunk_size, return_distances=True
            )
        self.labels_ = labels
        self.inertia_ = float(np.sum(sq, dtype=np.float64))
        return self


class SklearnKMeans(_KMeansBase):
    """``sklearn.cluster.KMeans`` (k-means++, ``n_init=1``) with chunked ``predict``."""

    def fit(self, X: ArrayLike) -> SklearnKMeans:
        """Fit on ``X`` (n, d) as float32."""
        from sklearn.cluster import KMeans

        km = KMeans(self.n_clusters, max_iter=self.max_iter, random_state=self.random_state, n_init=1)
        km.fit(self._float32(X))
        self.cluster_centers_ = km.cluster_centers_.astype(np.float32)
        self.labels_ = km.labels_.astype(np.int64)
        self.inertia_ = float(km.inertia_)
        return self


class CumlKMeans(_KMeansBase):
    """``cuml.KMeans`` on the GPU; torch CUDA tensors are passed zero-copy via DLPack/cupy.

    Raises:
        MissingOptionalDependencyError: on ``fit``/``predict`` when cuml or cupy is missing.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        max_iter: int = 20,
        random_state: int | None = None,
        chunk_size: int = 262_144,
    ) -> None:
        super().__init__(n_clusters, max_iter, random_state, chunk_size)

    @staticmethod
    def _modules() -> tuple[Any, Any]:
        try:
            import cuml
            import cupy
        except ImportError as e:  # the message names the missing package
            raise MissingOptionalDependencyError(e.name or "cuml", purpose="the cuml k-means backend") from e
        return cuml, cupy

    @staticmethod
    def _to_cupy(cupy: Any, X: Any) -> Any:
        if isinstance(X, torch.Tensor):
            t = X.detach()
            t = t if t.is_cuda else t.cuda()
            t = t if t.dtype == torch.float32 else t.float()
            return cupy.from_dlpack(t.contiguous())  # zero-copy for contiguous float32 CUDA tensors
        return cupy.asarray(np.asarray(X, dtype=np.float32))

    def fit(self, X: ArrayLike) -> CumlKMeans:
        """Fit on ``X`` (n, d) on the GPU."""
        cuml, cupy = self._modules()
        km = cuml.KMeans(
            n_clusters=self.n_clusters,
            max_iter=self.max_iter,
            random_state=1 if self.random_state is None else self.random_state,
            init="scalable-k-means++",
            n_init=1,
            output_type="cupy",
        )
        km.fit(self._to_cupy(cupy, X))
        self._model = km
        self.cluster_centers_ = cupy.asnumpy(km.cluster_centers_).astype(np.float32)
        self.labels_ = cupy.asnumpy(km.labels_).astype(np.int64)
        self.inertia_ = float(km.inertia_)
        return self

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Nearest centre of each row, in GPU chunks of ``chunk_size`` rows. Returns (n,) int64."""
        _, cupy = self._modules()
        out = np.empty(X.shape[0], dtype=np.int64)
        for s in range(0, X.shape[0], self.chunk_size):
            Xc = self._to_cupy(cupy, X[s : s + self.chunk_size])
            out[s : s + Xc.shape[0]] = cupy.asnumpy(self._model.predict(Xc))
        return out


def make_kmeans(
    backend: str = "auto",
    n_clusters: int = 8,
    max_iter: int = 20,
    random_state: int | None = None,
    **params: Any,
) -> KMeansLike:
    """Build a k-means estimator with the scikit-learn API on the chosen backend.

    Args:
        backend: ``auto`` | ``torch`` | ``faiss`` | ``sklearn`` | ``cuml`` (see :func:`resolve_backend`).
        n_clusters: k.
        max_iter: Lloyd iterations.
        random_state: seed; the same seed gives the same result on the same machine.
        **params: backend-specific extras (``chunk_size``; torch: ``init``, ``tol``, ``device``,
            ``init_size``; faiss: ``init``, ``init_size``).

    Returns:
        An unfitted estimator: ``fit(X) -> self``, ``predict(X) -> (n,)``, ``cluster_centers_``,
        ``labels_``, ``inertia_``.
    """
    name = resolve_backend(backend)
    if backend == "auto":
        logger.info("k-means backend: auto -> %s", name)
    else:
        logger.debug("k-means backend: %s", name)
    cls: dict[str, Any] = {
        "torch": TorchKMeans,
        "faiss": FaissKMeans,
        "sklearn": SklearnKMeans,
        "cuml": CumlKMeans,
    }
    return cls[name](n_clusters=n_clusters, max_iter=max_iter, random_state=random_state, **params)  # type: ignore[no-any-return]
