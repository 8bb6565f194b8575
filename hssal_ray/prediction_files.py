"""What ``python -m hssal_ray.predict`` writes, by name: importable without torch (``hssal_ray.assess``
reads prediction folders in a process that never loads a model)."""

from __future__ import annotations

__all__ = ["PARTS", "PART_KEY", "SUMMARY"]

PARTS = "predictions.parquet"
"""The folder of prediction parts under ``PRED`` (a Parquet/GeoParquet dataset), ``part-NNNNN.parquet``."""

PART_KEY = b"hssal_predict"
"""Each part's schema-metadata key: its chunk and the weights' digest (JSON), so a rerun redoes only
what another weights or chunking would change."""

SUMMARY = "predict.json"
"""The run, round, weights' digest, class names and counts, written once every part is."""
