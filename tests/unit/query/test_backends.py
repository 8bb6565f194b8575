"""K-means backends: sklearn-API parity, determinism, chunked predict, errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from hssal_ray.errors import DataError, MissingOptionalDependencyError
from hssal_ray.query.backends import assign_chunked, make_kmeans, resolve_backend

HAS_CUML = importlib.util.find_spec("cuml") is not None and importlib.util.find_spec("cupy") is not None


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=1500, centers=6, n_features=12, cluster_std=0.8, random_state=3)
    return X.astype(np.float32), y


@pytest.mark.parametrize("backend", ["torch", "faiss", "sklearn"])
def test_cpu_backends_recover_blobs(backend: str, blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = blobs
    km = make_kmeans(backend, n_clusters=6, max_iter=50, random_state=0).fit(X)
    assert km.cluster_centers_.shape == (6, 12)
    assert km.labels_.shape == (1500,)
    assert adjusted_rand_score(y, km.labels_) > 0.95
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    assert km.inertia_ > 0


def test_backends_agree_with_each_other(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = blobs
    labels = {
        b: make_kmeans(b, n_clusters=6, max_iter=50, random_state=1).fit(X).labels_
        for b in ("torch", "faiss", "sklearn")
    }
    assert adjusted_rand_score(labels["torch"], labels["faiss"]) > 0.95
    assert adjusted_rand_score(labels["torch"], labels["sklearn"]) > 0.95


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_deterministic_and_fp16_input(backend: str, blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = blobs
    a = make_kmeans(backend, n_clusters=6, random_state=7).fit(X.astype(np.float16))
    b = make_kmeans(backend, n_clusters=6, random_state=7).fit(X.astype(np.float16))
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert adjusted_rand_score(y, a.labels_) > 0.95


def test_torch_tensor_input_and_chunked_predict(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = blobs
    km = make_kmeans("torch", n_clusters=6, random_state=0, chunk_size=100).fit(torch.from_numpy(X))
    full, _ = assign_chunked(X, km.cluster_centers_, chunk_size=10_000)
    np.testing.assert_array_equal(km.predict(X), full)
    labels, sq = assign_chunked(
        X.astype(np.float16), km.cluster_centers_, chunk_size=77, return_distances=True
    )
    assert sq is not None and sq.shape == (1500,) and (sq >= 0).all()
    assert (labels == full).mean() > 0.99


def test_empty_clusters_with_duplicates() -> None:
    X = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)  # 3 distinct points, k = 5
    for backend in ("torch", "faiss"):
        km = make_kmeans(backend, n_clusters=5, random_state=0).fit(X)
        assert km.labels_.shape == (30,) and set(np.unique(km.labels_)) <= set(range(5))


def test_nan_rows_raise_data_error(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X = blobs[0].copy()
    X[[4, 9]] = np.nan
    for backend in ("torch", "faiss", "sklearn"):
        with pytest.raises(DataError, match="NaN"):
            make_kmeans(backend, n_clusters=3, random_state=0).fit(X)
    km = make_kmeans("torch", n_clusters=3, random_state=0).fit(blobs[0])
    with pytest.raises(DataError, match="rows 4, 9"):
        km.predict(X)
    labels, _ = assign_chunked(X, km.cluster_centers_)
    assert labels[4] == -1 and labels[9] == -1 and (np.delete(labels, [4, 9]) >= 0).all()


def test_too_few_rows_and_unknown_backend() -> None:
    with pytest.raises(ValueError, match="n_clusters"):
        make_kmeans("torch", n_clusters=5).fit(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="valid"):
        make_kmeans("nope", n_clusters=2)


def test_auto_resolves_to_a_cpu_backend_here() -> None:
    expected = "cuml" if HAS_CUML and torch.cuda.is_available() else "faiss"
    assert resolve_backend("auto") == expected


@pytest.mark.skipif(HAS_CUML, reason="cuml is installed")
def test_cuml_missing_raises_typed_error() -> None:
    with pytest.raises(MissingOptionalDependencyError, match="cuml"):
        make_kmeans("cuml", n_clusters=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_backend_on_cuda_matches_cpu(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = blobs
    km = make_kmeans("torch", n_clusters=6, random_state=0).fit(torch.from_numpy(X).cuda().half())
    assert adjusted_rand_score(y, km.labels_) > 0.95
    np.testing.assert_array_equal(km.predict(torch.from_numpy(X).cuda()), km.labels_)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUML and torch.cuda.is_available()), reason="needs cuml, cupy and a CUDA GPU")
def test_cuml_agrees_with_sklearn(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = blobs
    gpu = make_kmeans("cuml", n_clusters=6, max_iter=50, random_state=0).fit(torch.from_numpy(X).cuda())
    cpu = make_kmeans("sklearn", n_clusters=6, max_iter=50, random_state=0).fit(X)
    assert adjusted_rand_score(cpu.labels_, gpu.labels_) > 0.95
    assert adjusted_rand_score(y, gpu.predict(X)) > 0.95
