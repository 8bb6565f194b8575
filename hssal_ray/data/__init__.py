"""Data layer: catalog (manifest), decoding, augmentation, synthetic data, sharding, downloads.

The functions here are pure (no Ray); :mod:`hssal_ray.data.pipeline` streams them through Ray Data.
Names are imported lazily so that ``python -m hssal_ray.data.download`` or a catalog scan does not
pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Catalog",
    "scan",
    "load_bytes",
    "ImageDecodeError",
    "decode_image",
    "decode_batch",
    "augment_batch",
    "default_mean_std",
    "make_synthetic_rs",
    "make_corrupt_files",
    "write_shards",
    "download_dataset",
    "DATASETS",
]

_WHERE = {
    "Catalog": "catalog",
    "scan": "catalog",
    "load_bytes": "fetch",
    "ImageDecodeError": "decode",
    "decode_image": "decode",
    "decode_batch": "decode",
    "augment_batch": "transforms",
    "default_mean_std": "transforms",
    "make_synthetic_rs": "synthetic",
    "make_corrupt_files": "synthetic",
    "write_shards": "shard",
    "download_dataset": "download",
    "DATASETS": "datasets",
}

if TYPE_CHECKING:  # pragma: no cover
    from hssal_ray.data.catalog import Catalog, scan
    from hssal_ray.data.datasets import DATASETS
    from hssal_ray.data.decode import ImageDecodeError, decode_batch, decode_image
    from hssal_ray.data.download import download_dataset
    from hssal_ray.data.fetch import load_bytes
    from hssal_ray.data.shard import write_shards
    from hssal_ray.data.synthetic import make_corrupt_files, make_synthetic_rs
    from hssal_ray.data.transforms import augment_batch, default_mean_std


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
