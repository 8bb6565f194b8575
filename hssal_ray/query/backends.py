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
is faster than ``IndexFlatL2.search`` and bounded in memory. Rows with NaN/inf get label ``-1``
there and :meth:`predict` raises :class:`~hssal_ray.errors.DataError` naming them.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Protocol

import numpy as np
import torch

from hssal_ray.errors import DataError, MissingOptionalDependencyError
from hssal_ray.query.kmeans_ops import (
    SMALL_WORK,  # noqa: F401
    ArrayLike,
    _blocks,
    _checked_predict,
    _nearest,
    _nonfinite_error,
    _to_torch,
    assign_chunked,
    init_centers,
    limit_threads,
)

__all__ = [
    "KMeansLike",
    "make_kmeans",
    "resolve_backend",
    "assign_chunked",
    "init_centers",
    "limit_threads",
    "TorchKMeans",
    "BACKENDS",
    "FIT_ROWS_PER_CENTROID",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "faiss", "sklearn", "cuml")


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


def _cuda_visible() -> bool:
    return bool(torch.cuda.is_available())


#: k-means on many rows is fit on at most this many rows per centroid, then every row is assigned
#: (faiss' default sampling rule; HAL's coarse level and TypiClust at archive scale)
FIT_ROWS_PER_CENTROID = 256


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
        from hssal_ray._faiss import import_faiss

        faiss = import_faiss()

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
