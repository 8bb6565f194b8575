"""Another map of the same archive assessed with the labels of a sample drawn from the first.

``python -m hssal_ray.assess estimate ASSESS --labels FILE --map PRED2 [--map PRED3 ...]``: the
assessment's reference labels, drawn stratified by the map of ``design.json``, also measure any other
prediction of the same chips (a later round's model, another run): overall, user's and producer's
accuracy with 95% intervals by Stehman's (2014) estimators (:mod:`hssal_ray.assess.other_map`), written
to ``ASSESS/assessment-of-<name>.json`` / ``.md``. Which round's map to publish, or whether more rounds
of active learning helped, is then read off one labeled sample, with no new labels.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hssal_ray import _io
from hssal_ray.assess.maptable import MapTable, read_map
from hssal_ray.assess.other_map import OtherMapEstimates, estimate_other_map
from hssal_ray.assess.report import created, fmt, interval
from hssal_ray.errors import StateError

GAP = "too few labeled chips of the class"
"""Why a figure of the other map has no interval."""

__all__ = ["load_other", "assess_other_map", "render_other", "other_file"]


def other_file(out: str, pred_dir: str, suffix: str) -> str:
    """``ASSESS/assessment-of-<name>.<suffix>`` of another map (its folder's name, made file-safe)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", pred_dir.rstrip("/").rsplit("/", 1)[-1]) or "map"
    return _io.join(out, f"assessment-of-{name}.{suffix}")


def load_other(other_dir: str, first: MapTable, design: dict[str, Any]) -> MapTable:
    """The other map, checked to be a map of the same chips with the same classes.

    Raises:
        StateError: It is not a finished prediction, or not of the same chips and classes.
    """
    other = read_map(other_dir)
    if other.classes != first.classes:
        raise StateError(f"{other_dir} predicts other classes ({other.classes}) than {design['predictions']}")
    if len(other.ids) != len(first.ids) or not other.ids.equals(first.ids):
        raise StateError(
            f"{other_dir} is not a map of the chips {design['predictions']} maps ({len(other.ids)} chips, "
            f"{len(first.ids)} there, or other ids): a sample of one archive assesses maps of it only"
        )
    return other


def assess_other_map(
    out: str,
    design: dict[str, Any],
    first: MapTable,
    other: MapTable,
    sample_ids: list[str],
    strata: np.ndarray,
    ref: np.ndarray,
    source: str,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Assess the map ``other`` (:func:`load_other`) with the labeled chips of the sample; write its files.

    Args:
        out: The assessment folder.
        design: Its ``design.json``.
        first: The map the sample was drawn from.
        other: The other map.
        sample_ids, strata, ref: The labeled chips, their stratum (the first map's class) and reference
            class.
        source: Where the labels came from (for the report).
        progress: Where one line goes.
    """
    pos = pc.index_in(pa.array(sample_ids, pa.string()), value_set=other.ids).to_numpy(zero_copy_only=False)
    agreement = float(np.mean(first.class_id == other.class_id))
    e = estimate_other_map(
        strata, ref, other.class_id[pos], np.asarray(design["strata_sizes"]), other.sizes, agreement
    )
    result = _result(design, other, e, source, len(sample_ids))
    _io.atomic_write_json(other_file(out, other.pred_dir, "json"), result)
    _io.atomic_write_text(other_file(out, other.pred_dir, "md"), render_other(result))
    oa = result["overall_accuracy"]
    progress(
        f"[hssal] {other.pred_dir} (round {other.info.get('round')}): overall accuracy {fmt(oa, GAP)} "
        f"from the same {len(sample_ids)} labeled chips; {other_file(out, other.pred_dir, 'md')}"
    )
    return result


def _result(
    design: dict[str, Any], other: MapTable, e: OtherMapEstimates, source: str, labeled: int
) -> dict[str, Any]:
    return {
        "map": other.pred_dir,
        "run": other.info.get("run"),
        "round": other.info.get("round"),
        "weights_digest": other.info.get("weights_digest"),
        "sample_of": design["predictions"],
        "sample_round": design.get("round"),
        "labels": source,
        "labeled": labeled,
        "agreement_with_sampled_map": e.agreement,
        "overall_accuracy": interval(e.overall, e.se_overall, e.overall_low, e.overall_high),
        "per_class": [
            {
                "class": name,
                "map_chips": int(other.sizes[k]),
                "sampled_as_class": int(e.counts[k].sum()),
                "users_accuracy": interval(e.users[k], e.se_users[k], e.users_low[k], e.users_high[k]),
                "producers_accuracy": interval(
                    e.producers[k], e.se_producers[k], e.producers_low[k], e.producers_high[k]
                ),
            }
            for k, name in enumerate(other.classes)
        ],
        "error_matrix_counts": e.counts.tolist(),
        "method": "Stehman (2014): stratified estimators when the strata (the sampled map's classes) differ "
        "from the map's classes; overall accuracy a stratified mean, user's and producer's accuracy "
        "combined ratio estimators, with a finite-population correction; 95% intervals: Wilson's at "
        "the effective sample size, capped at the chips the figure rests on",
        "created": created(),
    }


def render_other(r: dict[str, Any]) -> str:
    """``assessment-of-<name>.md``."""
    lines = [
        f"# Accuracy of the map {r['map']}, from the sample of {r['sample_of']}",
        "",
        f"Run {r.get('run')}, round {r.get('round')} (weights {r.get('weights_digest')}). The "
        f"{r['labeled']} chips labeled for the sample of round {r.get('sample_round')}'s map "
        f"({r['labels']}), stratified by that map's classes; the two maps give one class to "
        f"{r['agreement_with_sampled_map']:.1%} of the chips. Method: {r['method']}.",
        "",
        f"**Overall accuracy: {fmt(r['overall_accuracy'], GAP)}** (in brackets: the 95% interval)",
        "",
        "| class | chips in this map | sampled chips this map calls it | user's accuracy "
        "| producer's accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in r["per_class"]:
        lines.append(
            f"| {c['class']} | {c['map_chips']:,} | {c['sampled_as_class']} "
            f"| {fmt(c['users_accuracy'], GAP)} | {fmt(c['producers_accuracy'], GAP)} |"
        )
    lines += [
        "",
        "The areas of the classes do not depend on the map: they are those of the sample's own assessment "
        "(assessment.md).",
    ]
    return "\n".join(lines) + "\n"
