"""Run reports: learning curves, per-round tables, query class histograms, coarse-cluster coverage.

``python -m hssal_ray.report RUN [RUN ...] --out DIR`` or :func:`build_report`.
"""

from hssal_ray.report.build import CURVE_FILE, HTML_FILE, MARKDOWN_FILE, ROUNDS_CSV_FILE, build_report

__all__ = ["build_report", "CURVE_FILE", "HTML_FILE", "MARKDOWN_FILE", "ROUNDS_CSV_FILE"]
