"""The run's learning curve on an unlabeled archive, from one labeled sample: ``assess curve ASSESS``.

On an archive nobody has labeled, the loop has no test split: whether the last rounds of labeling still
made the classifier better is a guess (the kappa stop rule says whether its predictions still move, not
whether they got better). An assessment sample answers it. Every round's model classifies only the
labeled chips of the sample (a few hundred images, not the archive; the frozen encoder's features once
for every round of a frozen run), and Stehman's (2014) estimators
(:mod:`hssal_ray.assess.other_map`) turn each round's classes into its overall accuracy on the whole
archive with a 95% interval, and the change from one round to the next into a paired difference on the
same chips with its own interval (much narrower than the two intervals side by side).

The labels are those of the last ``estimate`` (``ASSESS/sample/labels.csv``); the run is the one the
sampled map came from (or ``run``). Writes ``ASSESS/curve.json`` and ``ASSESS/curve.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hssal_ray import _io
from hssal_ray.assess.estimators import Z95, estimate, overall_interval
from hssal_ray.assess.other_map import estimate_other_map, stratified_ratio
from hssal_ray.assess.report import created, number
from hssal_ray.errors import StateError

__all__ = ["learning_curve", "render_curve", "round_classes", "CURVE_JSON", "CURVE_MD"]

log = logging.getLogger(__name__)

CURVE_JSON = "curve.json"
CURVE_MD = "curve.md"
CURVE_PNG = "curve.png"


def round_classes(
    run_dir: str,
    rounds: Sequence[int],
    data: str,
    ids: list[str],
    scratch: str,
    progress: Callable[[str], None] = log.info,
) -> dict[int, np.ndarray]:
    """Each round's class of the chips ``ids`` of the archive ``data``, by that round's evaluation model
    (``python -m hssal_ray.predict``'s model and forward: :class:`hssal_ray.predict.Predictor`);
    chips that cannot be decoded are listed under ``scratch``.

    The chips are decoded once; a frozen run's encoder (the same weights in every round) runs once and
    each round's head reads its features, which gives the classes the full forward gives.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    from hssal_ray.data.catalog import scan
    from hssal_ray.predict import Predictor, _local_batches
    from hssal_ray.run_model import FrozenClassifier

    gpu = torch.cuda.is_available()  # the same forward as predict's actors: one GPU when there is one
    first = Predictor(run_dir, rounds[0], 1, gpu)
    cfg = first.cfg
    cat = scan(data, test_fraction=0.0, follow_symlinks=cfg.data.follow_symlinks)
    table = cat.table.select(["sample_id", "source", "row", "label"])
    table = table.filter(pc.is_in(table.column("sample_id"), value_set=pa.array(ids, pa.string())))
    missing = set(ids) - set(table.column("sample_id").to_pylist())
    if missing:
        raise StateError(
            f"{len(missing)} labeled chips are not in the archive {data} any more: {sorted(missing)[:3]}"
        )
    bad = _io.join(scratch, "curve_bad_samples")
    batches = list(_local_batches(cfg, cat, table, bad, cfg.ssl.eval_batch_size))
    order = [str(s) for b in batches for s in b["sample_id"]]
    if len(order) != len(ids):
        raise StateError(f"{len(ids) - len(order)} labeled chips cannot be decoded any more (see {bad})")
    where = {s: i for i, s in enumerate(order)}
    feats: list[torch.Tensor] | None = None
    out: dict[int, np.ndarray] = {}
    for k in rounds:
        p = first if k == rounds[0] else Predictor(run_dir, k, 1, gpu)
        if isinstance(p.model, FrozenClassifier):
            if feats is None:  # the encoder once: every round of a frozen run has the same one
                feats = [_features(p, b["x_none"]) for b in batches]
            with torch.no_grad(), torch.autocast(p.device.type, dtype=p.amp, enabled=p.amp is not None):
                cls = np.concatenate([p.model.head(f).float().argmax(1).cpu().numpy() for f in feats])
        else:
            cls = np.concatenate([p(b).column("class_id").to_numpy() for b in batches])
        out[k] = cls[[where[s] for s in ids]].astype(np.int64)
        progress(f"[hssal] curve: round {k} classified the {len(ids)} labeled chips")
    return out


def _features(p: Any, x: np.ndarray) -> Any:
    """The frozen encoder's pooled features of a batch, as :meth:`Scorer._forward` computes them."""
    import torch

    with torch.no_grad(), torch.autocast(p.device.type, dtype=p.amp, enabled=p.amp is not None):
        return p.model.backbone(p._tensor(x))


def learning_curve(
    strata: np.ndarray,
    ref: np.ndarray,
    classes_by_round: dict[int, np.ndarray],
    sizes: np.ndarray,
    labels_by_round: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Each round's overall accuracy and the change from the round before (plain numpy).

    Args:
        strata: Each labeled chip's stratum (the sampled map's class).
        ref: Its reference class.
        classes_by_round: ``round -> each labeled chip's class by that round's model``.
        sizes: ``N_h``, chips of each stratum in the archive.
        labels_by_round: ``round -> labels the model was trained on`` (for the table).

    Returns:
        One row per round: ``round``, ``labels``, ``per_class`` (user's and producer's accuracy with
        their intervals), ``overall_accuracy`` (estimate, se, low, high: Wilson's
        interval of :func:`~hssal_ray.assess.other_map.estimate_other_map`), ``change`` from the round
        before (the stratified mean of ``right_k - right_(k-1)`` on the same chips, its SE and
        ``estimate +- 1.96 SE``, or ``+- 3 / n`` when no labeled chip changed; ``changed``: labeled chips
        whose rightness differs between the two).
    """
    rows: list[dict[str, Any]] = []
    prev: np.ndarray | None = None
    ones = np.ones(len(ref))
    c = len(sizes)
    for k in sorted(classes_by_round):
        cls = classes_by_round[k]
        e = estimate_other_map(strata, ref, cls, sizes, np.full(c, np.inf), float("nan"))
        low, high = e.overall_low, e.overall_high
        if np.array_equal(cls, strata):  # the sampled map's own round: its own interval, as `estimate`'s
            lo, hi = overall_interval(estimate(strata, ref, sizes))
            low, high = float(lo), float(hi)
        right = (cls == ref).astype(np.float64)
        row: dict[str, Any] = {
            "round": int(k),
            "labels": (labels_by_round or {}).get(k),
            "overall_accuracy": {
                "estimate": number(e.overall),
                "se": number(e.se_overall),
                "low": number(low),
                "high": number(high),
            },
            "change": None,
            "per_class": [
                {
                    "users_accuracy": {"estimate": number(u), "low": number(ul), "high": number(uh)},
                    "producers_accuracy": {"estimate": number(pa), "low": number(pl), "high": number(ph)},
                }
                for u, ul, uh, pa, pl, ph in zip(
                    e.users,
                    e.users_low,
                    e.users_high,
                    e.producers,
                    e.producers_low,
                    e.producers_high,
                    strict=True,
                )
            ],
        }
        if prev is not None:
            d = right - prev
            est, var, _ = stratified_ratio(strata, d, ones, sizes)
            se = math.sqrt(var) if math.isfinite(var) else float("nan")
            # no labeled chip changed: the SE is 0, yet some chips of the archive may have; the rule of
            # three (Hanley & Lippman-Hand 1983) bounds the share that changed, and so the change, by 3 / n
            half = Z95 * se if np.count_nonzero(d) else 3.0 / len(d)
            row["change"] = {
                "estimate": number(est),
                "se": number(se),
                "low": number(est - half),
                "high": number(est + half),
                "changed": int(np.count_nonzero(d)),
            }
        rows.append(row)
        prev = right
    return rows


def render_curve(r: dict[str, Any]) -> str:
    """``curve.md``."""
    lines = [
        f"# Learning curve of the run {r['run']}, from the accuracy sample {r['assessment']}",
        "",
        f"Every round's model classified the {r['labeled']} chips labeled for the sample "
        f"({r['labels']}); overall accuracy on the whole archive with its 95% interval (Stehman 2014), and "
        "the change from the round before measured on the same chips (paired: its interval is much "
        "narrower than the two accuracies' side by side).",
        "",
        "| round | labels | overall accuracy (95% CI) | change from the round before (95% CI) "
        "| chips whose answer changed |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in r["rounds"]:
        oa = row["overall_accuracy"]
        ch = row["change"]
        change = (
            ""
            if ch is None
            else f"{100 * ch['estimate']:+.1f} points ({100 * ch['low']:+.1f} to {100 * ch['high']:+.1f})"
        )
        changed = "" if ch is None else str(ch["changed"])
        labels = "" if row["labels"] is None else f"{row['labels']:,}"
        lines.append(
            f"| {row['round']} | {labels} | {oa['estimate']:.3f} ({oa['low']:.3f}-{oa['high']:.3f}) "
            f"| {change} | {changed} |"
        )
    lines += [
        "",
        "A change whose interval holds 0 is not measured by this sample: more rounds may not have helped, or "
        "the sample is too small to tell (extend it: `plan --from`, `sample --extend`).",
    ]
    return "\n".join(lines) + "\n"


def labels_by_round(run_dir: str) -> dict[int, int]:
    """``round -> num_labeled`` from the run's ``metrics.jsonl`` (empty when it has none)."""
    import json

    path = _io.join(run_dir, "metrics.jsonl")
    if not _io.exists(path):
        return {}
    out = {}
    for line in _io.read_text(path).splitlines():
        try:
            m = json.loads(line)
            out[int(m["round"])] = int(m["num_labeled"])
        except (ValueError, KeyError, TypeError):
            continue
    return out


def assess_curve(
    out: str,
    *,
    run: str | None = None,
    rounds: Sequence[int] | None = None,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """The learning curve of a run from the labels of the assessment ``out`` (module docstring).

    Args:
        out: An assessment folder with an estimate.
        run: The run whose rounds to assess (default: the one the sampled map came from).
        rounds: Which rounds (default: every round with a checkpoint).
        progress: Where one-line progress goes.

    Returns:
        The content of ``curve.json``.

    Raises:
        StateError: No estimate yet, a run of other classes, a round without a checkpoint, or labeled
            chips the archive no longer has.
    """
    from hssal_ray.assess.workflow import DESIGN_FILE, SAMPLE_DIR, _sample_table
    from hssal_ray.oracle.base import LABELS_FILE
    from hssal_ray.oracle.labels import parse_label_file
    from hssal_ray.prediction_files import SUMMARY
    from hssal_ray.run_model import run_model, trained_rounds

    dpath, lpath = _io.join(out, DESIGN_FILE), _io.join(out, SAMPLE_DIR, LABELS_FILE)
    if not _io.exists(dpath) or not _io.exists(lpath):
        raise StateError(
            f"{out} has no estimate yet: run `python -m hssal_ray.assess estimate {out} --labels FILE` "
            "(its labels are the curve's)"
        )
    design = _io.read_json(dpath)
    sample = _sample_table(out, design)
    ids = sample.column("sample_id").to_pylist()
    answer = parse_label_file(lpath, query_ids=ids, class_names=design["classes"], partial="continue")
    done = [s for s in ids if s in answer.labels]
    stratum = dict(zip(ids, sample.column("map_class_id").to_pylist(), strict=True))
    run = run or str(design.get("run") or "")
    if not run:
        raise StateError(f"{out}'s map names no run: give --run RUN")
    have = trained_rounds(run)
    picked = list(rounds) if rounds else have
    if not picked or any(k not in have for k in picked):
        raise StateError(f"{run} has checkpoints of rounds {have}, not of {sorted(set(picked) - set(have))}")
    if run_model(run, picked[0]).classes != design["classes"]:
        raise StateError(f"{run} classifies into other classes than the sampled map")
    data = str(_io.read_json(_io.join(design["predictions"], SUMMARY))["data"])
    classes = round_classes(run, picked, data, done, out, progress)
    rows = learning_curve(
        np.array([stratum[s] for s in done], dtype=np.int64),
        np.array([answer.labels[s] for s in done], dtype=np.int64),
        classes,
        np.asarray(design["strata_sizes"], dtype=np.int64),
        labels_by_round(run),
    )
    result = {
        "assessment": out,
        "run": run,
        "labels": lpath,
        "labeled": len(done),
        "rounds": rows,
        "method": "each round's model on the labeled chips; overall accuracy by Stehman's (2014) stratified "
        "estimator with Wilson's interval at a smoothed variance; the change from the round before as the "
        "stratified mean of the paired difference, estimate +- 1.96 SE",
        "created": created(),
    }
    from hssal_ray.report._plots import assessed_curve_png

    _io.atomic_write_json(_io.join(out, CURVE_JSON), result)
    _io.atomic_write_text(_io.join(out, CURVE_MD), render_curve(result))
    _io.atomic_write_bytes(
        _io.join(out, CURVE_PNG), assessed_curve_png(rows, f"{run}: accuracy on the archive")
    )
    progress(
        f"[hssal] learning curve of {len(rows)} rounds from {len(done)} labeled chips: "
        f"{_io.join(out, CURVE_MD)}"
    )
    return result
