"""How accurate is the map? A stratified sample of a prediction for a person to label, then estimates.

``python -m hssal_ray.predict`` gives every chip of an archive a class: a map. Its accuracy cannot
be read off the run (the actively labeled chips are the hard ones, not a random sample) nor off a
test split (an archive nobody has labeled has none). :func:`draw_sample` draws a stratified random
sample of the map (strata = the map's classes, :func:`~hssal_ray.assess.estimators.allocate`) and
hands it to a person exactly as the loop hands over a query batch (``labels_template.csv``, a
contact sheet, Label Studio tasks), **without the map's class** (the person labels blind, so that
the map cannot steer the answer) and in a random order; :func:`estimate_accuracy` reads the labels
back (the loop's label-file rules: :func:`hssal_ray.oracle.labels.parse_label_file`) and writes the
map's overall, user's and producer's accuracy and each class's area with 95% intervals
(:func:`~hssal_ray.assess.estimators.estimate`).

The assessment folder ``ASSESS``::

    design.json        the map (predictions folder, run, round, weights digest, a digest of every
                       chip's class), strata sizes, sample sizes, seed
    sample.parquet     sample_id, map_class_id, rank (the order the person sees), ref
    sample/            the hand-off: labels_template.csv, contact_sheet.html, label_studio_tasks.json,
                       label_config.xml, INSTRUCTIONS.txt, query.csv (ranks), query.geojson (chips
                       with footprints); after the estimate, labels.csv (the labels read);
                       with Label Studio, label_studio_push.json (task ids, samples, image digests)
    label_studio.json  with Label Studio: the project the assessment created (URL, id, its random id)
    assessment.json    the estimates (every figure, the error matrix in counts and proportions)
    assessment.md      the same as tables

A sample is drawn once: drawing again into the same folder with other settings is refused (a person
may be labeling it), with the same settings it changes nothing (not even the template being filled).
``extend=True`` with a larger ``n`` adds a batch (``sample_2/``, ...: the same hand-off files, the new
chips only; ``sample.parquet`` gains its rows, tagged ``batch``); the estimate reads every batch.
The estimate refuses a map that changed since the sample was drawn (predictions redone with other
weights). ``draw_sample(..., label_studio=LabelStudioTarget(url))`` also imports the sample into a
Label Studio project (the loop's :class:`~hssal_ray.oracle.label_studio.LabelStudioOracle`: tasks
tagged with the assessment's random id, blind like the files), and ``estimate_accuracy(out, None)``
pulls the annotations from it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hssal_ray import _io
from hssal_ray.assess.estimators import Estimates, allocate, draw, estimate, intervals
from hssal_ray.assess.handoff import (
    TOKEN_ENV,
    LabelStudioTarget,
    SampleHandOff,
    image_loader,
    project_url,
    sample_label_studio,
)
from hssal_ray.assess.maptable import MapTable, chip_area_km2, class_confidence, read_map
from hssal_ray.assess.report import created, fmt, interval, number
from hssal_ray.errors import LabelFileError, StateError
from hssal_ray.loop.query_files import write_query
from hssal_ray.oracle._handoff import _basename, reveals_folder, task_ref
from hssal_ray.oracle.base import LABELS_FILE, OracleAnswer
from hssal_ray.oracle.human import INSTRUCTIONS_FILE, TASKS_FILE, TEMPLATE_FILE
from hssal_ray.oracle.label_studio import LabelStudioOracle

__all__ = [
    "read_map",
    "draw_sample",
    "estimate_accuracy",
    "plan_assessment",
    "render",
    "render_plan",
    "class_confidence",
    "MapTable",
    "LabelStudioTarget",
    "DESIGN_FILE",
    "SAMPLE_FILE",
]

log = logging.getLogger(__name__)

DESIGN_FILE = "design.json"
SAMPLE_FILE = "sample.parquet"
SAMPLE_DIR = "sample"
RESULT_JSON = "assessment.json"
RESULT_MD = "assessment.md"


def _design(mt: MapTable, n: int, min_per_class: int, seed: int) -> dict[str, Any]:
    sizes = allocate(mt.sizes, n, min_per_class)
    return {
        "predictions": mt.pred_dir,
        "run": mt.info.get("run"),
        "round": mt.info.get("round"),
        "weights_digest": mt.info.get("weights_digest"),
        "map_digest": mt.digest(),
        "classes": mt.classes,
        "chips": int(len(mt.ids)),
        "strata_sizes": mt.sizes.tolist(),
        "sample_sizes": sizes.tolist(),
        "n": int(n),
        "min_per_class": int(min_per_class),
        "seed": int(seed),
    }


def draw_sample(
    pred_dir: str,
    out: str,
    n: int,
    *,
    min_per_class: int = 50,
    seed: int = 0,
    images: bool = True,
    label_studio: LabelStudioTarget | None = None,
    extend: bool = False,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Draw the stratified sample of the map in ``pred_dir`` into ``out`` and hand it over for labeling.

    Args:
        pred_dir: A finished ``python -m hssal_ray.predict`` output folder.
        out: The assessment folder (module docstring).
        n: Sample size (all chips if the map has fewer).
        min_per_class: Chips at least per map class (the whole class if it has fewer).
        seed: The draw's seed.
        images: Embed thumbnails (read from the archive ``predict.json`` names, with the run's
            decoding settings); off, or the archive unreadable: the hand-off names the ids only.
        label_studio: Also import the sample into a Label Studio project (blind tasks, tagged with the
            assessment's id; a sample drawn before is imported as it is, its files unchanged).
        extend: ``out`` holds a smaller sample of this map with these settings: add chips to it (a
            new batch, ``sample_2/`` then ``sample_3/``, ...) until it is ``n``; the chips drawn and
            labeled before stay (each class's new chips are a random sample of its chips not yet
            drawn, so every class's sample stays a simple random sample).
        progress: Where one-line progress goes.

    Returns:
        The design (``design.json``).

    Raises:
        StateError: ``pred_dir`` is not a finished prediction, or ``out`` holds a sample drawn with
            other settings or from another map (or a larger one, with ``extend``).
        ValueError: ``n < 2`` or ``min_per_class < 0``; Label Studio without images.
    """
    if n < 2 or min_per_class < 0:
        raise ValueError(f"--n must be >= 2 and --min-per-class >= 0, got {n}, {min_per_class}")
    mt = read_map(pred_dir)
    present = int((mt.sizes > 0).sum())
    if n < min(2 * present, len(mt.ids)):
        raise ValueError(
            f"--n {n} is too small for a map of {present} classes: every class needs at least 2 sampled "
            f"chips for a standard error (--n {2 * present} at the least; 50 a class or more is usual)"
        )
    design = _design(mt, n, min_per_class, seed)
    dpath = _io.join(out, DESIGN_FILE)
    if _io.exists(dpath):  # drawn before: never redrawn, and no hand-off file rewritten (the template
        old = _io.read_json(dpath)  # may be being filled in place)
        keys = ("map_digest", "n", "min_per_class", "seed")
        diff = [k for k in keys if old.get(k) != design[k]]
        more = set(diff) <= {"n", "min_per_class"} and n > old["n"] and min_per_class >= old["min_per_class"]
        if extend and diff and more:
            return _extend(mt, out, old, n, min_per_class, images, label_studio, progress)
        if diff:
            said = ", ".join(f"{k} {old.get(k)} -> {design[k]}" for k in diff)
            raise StateError(
                f"{out} already holds a sample drawn with other settings or from another map ({said}); "
                + (
                    "to label more chips of it, add --extend (the chips drawn so far stay)"
                    if more
                    else "a person may be labeling it: use another --out folder, or delete that one first"
                )
            )
        progress(f"[hssal] {out} holds this sample already: {_io.join(out, SAMPLE_DIR, INSTRUCTIONS_FILE)}")
        if label_studio is not None:
            _import(out, old, label_studio, progress)
        return old
    load = _loader(mt, images, label_studio, progress)
    pos = draw(mt.class_id, np.asarray(design["sample_sizes"]), seed)
    design["hide_sample_id"] = reveals_folder(mt.ids)
    design["assessment_id"] = secrets.token_hex(8)
    design["chip_area_km2"] = chip_area_km2(mt)
    design["batches"] = [SAMPLE_DIR]
    table = _batch_table(out, mt, pos, SAMPLE_DIR)
    design["footprints"] = _hand_over(out, mt, design, table, load, label_studio, progress)
    _io.atomic_write_parquet(_io.join(out, SAMPLE_FILE), table)
    _io.atomic_write_json(dpath, design)
    _say_drawn(out, mt, design, table, progress)
    return design


def _import(
    out: str, design: dict[str, Any], label_studio: LabelStudioTarget, progress: Callable[[str], None]
) -> None:
    """Import a sample drawn before (every batch, its files as they are) into Label Studio."""
    for batch in _batches(design):
        tasks = _io.read_json(_io.join(out, batch, TASKS_FILE))
        if not all(t["data"].get("image") for t in tasks):
            raise ValueError(
                f"the sample in {out} was drawn without images (--no-images, or an unreadable archive): "
                "Label Studio tasks need them; draw it into another --out folder with --label-studio"
            )
    design.setdefault("assessment_id", secrets.token_hex(8))  # a sample drawn before ids were given
    oracle = sample_label_studio(out, design, _sample_refs(out, design), label_studio, progress=progress)
    for batch in _batches(design):
        design["label_studio"] = label_studio.record(oracle.push(_io.join(out, batch), out))
    _io.atomic_write_json(_io.join(out, DESIGN_FILE), design)
    progress(f"[hssal] the sample is in Label Studio: {project_url(design)}")


def _batches(design: dict[str, Any]) -> list[str]:
    """The sample's batch folders, in order (a design from before extensions has one)."""
    return list(design.get("batches") or [SAMPLE_DIR])


def _sample_table(out: str, design: dict[str, Any]) -> pa.Table:
    """``sample.parquet``'s rows of the design's batches (rows of an extension that did not finish
    are left out: it is drawn again, the same, by the next ``--extend``)."""
    t = _io.read_parquet(_io.join(out, SAMPLE_FILE))
    if "batch" not in t.column_names:
        t = t.append_column("batch", pa.array([SAMPLE_DIR] * t.num_rows, pa.string()))
    return t.filter(pc.is_in(t.column("batch"), value_set=pa.array(_batches(design), pa.string())))


def _sample_refs(out: str, design: dict[str, Any]) -> dict[str, str]:
    """``ref -> sample_id`` of every sampled chip."""
    t = _sample_table(out, design)
    return dict(zip(t.column("ref").to_pylist(), t.column("sample_id").to_pylist(), strict=True))


def _loader(
    mt: MapTable, images: bool, label_studio: LabelStudioTarget | None, progress: Callable[[str], None]
) -> Callable[[str], Any] | None:
    """The thumbnails' image loader (None without images), checked before anything is written (with
    Label Studio: the token too)."""
    if label_studio is not None:
        label_studio.token()
    load = image_loader(mt.info, progress) if images else None
    if label_studio is not None and load is None:
        raise ValueError(
            "Label Studio tasks need the chips' images and "
            + ("--no-images leaves them out" if not images else "the archive cannot be read (see above)")
            + ": drop --label-studio and hand the sample over by file, or make the archive readable"
        )
    return load


def _batch_table(out: str, mt: MapTable, pos: np.ndarray, batch: str) -> pa.Table:
    """One batch's rows of ``sample.parquet``: its chips in the order drawn (random), ranks from 1."""
    ids = mt.ids.take(pa.array(pos)).to_pylist()
    name = _basename(out)
    return pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "map_class_id": pa.array(mt.class_id[pos], pa.int32()),
            "rank": pa.array(np.arange(1, len(ids) + 1), pa.int32()),
            "ref": pa.array([task_ref(name, batch, i + 1) for i in range(len(ids))], pa.string()),
            "batch": pa.array([batch] * len(ids), pa.string()),
        }
    )


def _hand_over(
    out: str,
    mt: MapTable,
    design: dict[str, Any],
    table: pa.Table,
    load: Callable[[str], Any] | None,
    label_studio: LabelStudioTarget | None,
    progress: Callable[[str], None],
) -> int:
    """Write one batch's hand-off (and import it into Label Studio); returns its footprints."""
    batch = table.column("batch")[0].as_py()
    ids = table.column("sample_id").to_pylist()
    handoff = _io.join(out, batch)
    _io.makedirs(handoff)
    write_query(handoff, ids, None, None)  # the loop's query.csv: ids in rank order
    footprints = _write_footprints(mt, handoff, ids)
    templates = [_io.join(out, b, TEMPLATE_FILE) for b in _batches(design)]
    oracle: SampleHandOff
    if label_studio is None:
        oracle = SampleHandOff(
            out, mt.classes, load_image=load, hide_sample_id=design["hide_sample_id"], templates=templates
        )
    else:
        refs = dict(zip(table.column("ref").to_pylist(), ids, strict=True))
        oracle = sample_label_studio(out, design, refs, label_studio, load_image=load, progress=progress)
    oracle.request(handoff, ids, {"run_dir": out, "ranks": {s: i + 1 for i, s in enumerate(ids)}})
    if isinstance(oracle, LabelStudioOracle):
        design["label_studio"] = label_studio.record(oracle.push(handoff, out))  # type: ignore[union-attr]
    return footprints


def _say_drawn(
    out: str, mt: MapTable, design: dict[str, Any], table: pa.Table, progress: Callable[[str], None]
) -> None:
    batch = table.column("batch")[0].as_py()
    progress(
        f"[hssal] accuracy sample: {table.num_rows} chips to label in {_io.join(out, batch)} "
        f"({sum(design['sample_sizes'])} of {len(mt.ids)} in all), per map class "
        + ", ".join(
            f"{c} {k}/{N}" for c, k, N in zip(mt.classes, design["sample_sizes"], mt.sizes, strict=True)
        )
        + f"; label them blind: {_io.join(out, batch, INSTRUCTIONS_FILE)}"
        + (f" (in Label Studio: {project_url(design)})" if design.get("label_studio") else "")
    )


def _extend(
    mt: MapTable,
    out: str,
    design: dict[str, Any],
    n: int,
    min_per_class: int,
    images: bool,
    label_studio: LabelStudioTarget | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Add a batch to the sample in ``out`` so that it holds ``n`` chips, at least ``min_per_class``
    a class (:func:`draw_sample`)."""
    ls = design.get("label_studio")
    if label_studio is None and ls:  # the sample is in Label Studio: so is the new batch
        label_studio = LabelStudioTarget(ls["url"], ls.get("project_id"), ls.get("token_env") or TOKEN_ENV)
    load = _loader(mt, images, label_studio, progress)
    batches = _batches(design)
    batch = f"{SAMPLE_DIR}_{len(batches) + 1}"
    old = _sample_table(out, design)
    old_sizes = np.asarray(design["sample_sizes"], dtype=np.int64)
    sizes = np.maximum(allocate(mt.sizes, n, min_per_class), old_sizes)
    taken = np.zeros(len(mt.ids), dtype=bool)
    where = pc.index_in(old.column("sample_id"), value_set=mt.ids).to_numpy(zero_copy_only=False)
    taken[where] = True
    rng = np.random.default_rng([int(design["seed"]), len(batches) + 1])
    picked = []
    for i, add in enumerate(sizes - old_sizes):
        if add:
            free = np.flatnonzero((mt.class_id == i) & ~taken)
            picked.append(rng.choice(free, size=int(add), replace=False))
    pos = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    pos = pos[rng.permutation(len(pos))]
    design = {
        **design,
        "n": int(n),
        "min_per_class": int(min_per_class),
        "sample_sizes": sizes.tolist(),
        "batches": [*batches, batch],
    }
    table = _batch_table(out, mt, pos, batch)
    footprints = _hand_over(out, mt, design, table, load, label_studio, progress)
    design["footprints"] = int(design.get("footprints") or 0) + footprints
    _io.atomic_write_parquet(_io.join(out, SAMPLE_FILE), pa.concat_tables([old, table]))
    _io.atomic_write_json(_io.join(out, DESIGN_FILE), design)
    _say_drawn(out, mt, design, table, progress)
    return design


def _write_footprints(mt: MapTable, handoff: str, ids: list[str]) -> int:
    """``query.geojson`` of the sampled chips (geo-referenced archives): sample id and rank only."""
    from hssal_ray.data.geo import feature, write_geojson

    if not mt.info.get("geo"):
        return 0
    want = pa.array(ids, pa.string())
    geo: dict[str, bytes] = {}
    for part in mt.parts:
        t = _io.read_parquet(part, columns=["sample_id", "geometry"])
        t = t.filter(pc.is_in(t.column("sample_id"), value_set=want))
        geo.update(zip(t.column("sample_id").to_pylist(), t.column("geometry").to_pylist(), strict=True))
    rank = {s: i + 1 for i, s in enumerate(ids)}
    feats = (feature(geo[s], {"sample_id": s, "rank": rank[s]}) for s in ids if geo.get(s))
    return write_geojson(_io.join(handoff, "query.geojson"), feats)


LOWER_BY = 0.05
"""The plan's check: how wide the interval gets if every class is this much less accurate than anticipated."""


def plan_assessment(
    pred_dir: str | None,
    *,
    halfwidth: float = 0.02,
    class_halfwidth: float | None = None,
    min_per_class: int | None = None,
    accuracy: float | None = None,
    assessment: str | None = None,
) -> dict[str, Any]:
    """How many chips of the map in ``pred_dir`` to label for intervals of a given width
    (:func:`~hssal_ray.assess.planning.plan_sample`); reads the map, writes nothing.

    Args:
        pred_dir: A finished ``python -m hssal_ray.predict`` output folder (None: ``assessment``'s).
        halfwidth: Overall accuracy's 95% interval within +- this.
        class_halfwidth: Every class's user's accuracy within +- this (None: no target).
        min_per_class: The floor per map class (raised if ``class_halfwidth`` needs more); default 50,
            or the assessment's.
        accuracy: Every class's anticipated user's accuracy; None: each class's mean confidence.
        assessment: An assessment folder with an estimate (``--partial continue`` will do): plan from
            the user's accuracies its labels measured (Jeffreys' ``(x + 1/2) / (n + 1)``, so that a
            class with no error seen yet is not planned as perfect; the model's confidence where a
            class has no label), for an ``--extend`` of its sample.

    Returns:
        The plan (``n``, ``min_per_class``, the anticipated and expected figures, per class), and
        ``lower``: the expected half-width at that ``n`` if each class were :data:`LOWER_BY` less
        accurate, with the ``n`` that would then be needed; with ``assessment``, ``extend``: its
        folder, current size and seed.

    Raises:
        StateError: ``assessment`` has no estimate yet, or its map changed.
        ValueError: ``pred_dir`` is not ``assessment``'s map.
    """
    from hssal_ray.assess.planning import expected_halfwidths, plan_sample

    design = result = None
    if assessment is not None:
        design, result = _assessment_files(assessment)
        if pred_dir is not None and not _same_place(pred_dir, design["predictions"]):
            raise ValueError(f"{assessment} assesses the map {design['predictions']}, not {pred_dir}")
        pred_dir = design["predictions"]
    if pred_dir is None:
        raise ValueError("give the prediction folder, or --from an assessment folder")
    mt = read_map(pred_dir)
    sizes = mt.sizes
    conf = class_confidence(mt)
    u = np.where(sizes > 0, conf if accuracy is None else np.full(len(sizes), float(accuracy)), np.nan)
    source = "mean confidence" if accuracy is None else "given"
    if design is not None and result is not None:
        if mt.digest() != design["map_digest"]:
            raise StateError(f"the map in {pred_dir} changed since {assessment}'s sample was drawn")
        counts = np.asarray(result["error_matrix_counts"], dtype=np.float64)
        n_i = counts.sum(axis=1)
        measured = (np.diag(counts) + 0.5) / (n_i + 1)
        u = np.where((sizes > 0) & (n_i > 0), measured, u)
        source = f"the labeled sample ({int(n_i.sum())} chips)"
        min_per_class = max(min_per_class or 0, int(design["min_per_class"]))
    floor = 50 if min_per_class is None else min_per_class
    plan = plan_sample(sizes, u, halfwidth=halfwidth, class_halfwidth=class_halfwidth, min_per_class=floor)
    low = np.clip(u - LOWER_BY, 0.0, 1.0)
    low_half = expected_halfwidths(sizes, plan.sample_sizes, low)[1]
    low_plan = plan_sample(
        sizes, low, halfwidth=halfwidth, class_halfwidth=class_halfwidth, min_per_class=floor
    )
    out: dict[str, Any] = {
        "predictions": pred_dir,
        "chips": int(len(mt.ids)),
        "accuracy_from": source,
        "halfwidth": halfwidth,
        "class_halfwidth": class_halfwidth,
        "n": plan.n,
        "min_per_class": plan.min_per_class,
        "overall": plan.overall,
        "overall_halfwidth": plan.overall_halfwidth,
        "lower": {"by": LOWER_BY, "overall_halfwidth": low_half, "n": low_plan.n},
        "per_class": [
            {
                "class": c,
                "map_chips": int(N),
                "mean_confidence": number(k),
                "accuracy": number(a),
                "sampled": int(n),
                "users_halfwidth": number(h),
            }
            for c, N, k, a, n, h in zip(
                mt.classes, sizes, conf, u, plan.sample_sizes, plan.users_halfwidth, strict=True
            )
        ],
    }
    if design is not None:
        out["extend"] = {"assessment": assessment, "n": int(design["n"]), "seed": int(design["seed"])}
    return out


def _same_place(a: str, b: str) -> bool:
    """Whether two paths (or URIs) name one folder."""
    if a.rstrip("/") == b.rstrip("/"):
        return True
    return "://" not in a + b and os.path.realpath(a) == os.path.realpath(b)


def _assessment_files(out: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``design.json`` and ``assessment.json`` of an assessment folder with an estimate."""
    if not _io.exists(_io.join(out, DESIGN_FILE)):
        raise StateError(f"{out} holds no accuracy sample (no {DESIGN_FILE})")
    if not _io.exists(_io.join(out, RESULT_JSON)):
        raise StateError(
            f"{out} has no estimate yet: run `python -m hssal_ray.assess estimate {out} --labels FILE "
            "--partial continue` on the chips labeled so far, then plan from it"
        )
    return _io.read_json(_io.join(out, DESIGN_FILE)), _io.read_json(_io.join(out, RESULT_JSON))


def render_plan(p: dict[str, Any]) -> str:
    """The plan as the lines ``assess plan`` prints."""
    src = {"mean confidence": "each class's mean confidence", "given": "given"}.get(
        p["accuracy_from"], p["accuracy_from"]
    )
    target = f"+-{p['halfwidth']:.3f} overall" + (
        f", +-{p['class_halfwidth']:.3f} each class's user's accuracy" if p["class_halfwidth"] else ""
    )
    lo = p["lower"]
    lines = [
        f"Map {p['predictions']}: {p['chips']:,} chips. Target: {target} (95% intervals).",
        f"Anticipated user's accuracy: {src}; overall {p['overall']:.3f}.",
        "",
        f"**Label n = {p['n']:,} chips** (at least {p['min_per_class']} a class, the rest in proportion): "
        f"overall accuracy about {p['overall']:.3f} +- {p['overall_halfwidth']:.3f}.",
        f"If every class were {lo['by']:.2f} less accurate than anticipated: "
        f"+- {lo['overall_halfwidth']:.3f} at this n ({lo['n']:,} chips for the target).",
        "",
        "| class | chips in the map | mean confidence | anticipated user's accuracy | to label "
        "| expected +- |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in p["per_class"]:
        if not c["map_chips"]:
            continue
        lines.append(
            f"| {c['class']} | {c['map_chips']:,} | {c['mean_confidence']:.3f} | {c['accuracy']:.3f} "
            f"| {c['sampled']} | {c['users_halfwidth']:.3f} |"
        )
    ext = p.get("extend")
    if ext is None:
        cmd = (
            f"python -m hssal_ray.assess sample {shlex.quote(p['predictions'])} --out ASSESS --n {p['n']} "
            f"--min-per-class {p['min_per_class']}"
        )
        lines += ["", f"Draw it: {cmd}"]
    elif p["n"] <= ext["n"]:
        lines += [
            "",
            f"The sample in {ext['assessment']} ({ext['n']:,} chips) is large enough for the target.",
        ]
    else:
        cmd = (
            f"python -m hssal_ray.assess sample {shlex.quote(p['predictions'])} --out "
            f"{shlex.quote(ext['assessment'])} --n {p['n']} --min-per-class {p['min_per_class']} "
            f"--seed {ext['seed']} --extend"
        )
        lines += ["", f"Extend it by {p['n'] - ext['n']:,} chips: {cmd}"]
    return "\n".join(lines) + "\n"


def estimate_accuracy(
    out: str,
    labels: str | Sequence[str] | None,
    *,
    partial: str = "wait",
    wait_s: float = 0.0,
    other_maps: Sequence[str] = (),
    from_archive: bool = False,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Read the person's labels of the sample in ``out`` and write ``assessment.json`` / ``.md``.

    Args:
        out: The assessment folder :func:`draw_sample` wrote.
        labels: The filled ``labels_template.csv`` or a Label Studio export, or several (one per batch
            of an extended sample, in any order; a chip labeled in two must agree); None: pull the
            annotations from the Label Studio project the sample was imported into (the token from
            the environment variable ``design.json`` names), every time anew.
        partial: ``wait``: every sampled chip needs a label. ``continue``: estimate from the labeled
            ones (they then stand for their whole stratum: biased if the skipped chips differ).
        wait_s: With ``labels=None``: poll Label Studio this long for the missing annotations.
        from_archive: Take the archive's own labels instead of a person's (``labels`` unused): for a
            labeled benchmark archive or the demo, what the loop's simulated oracle is to a person.
        other_maps: Prediction folders of other maps of the same chips (another round, another run):
            each is assessed with the same labels too (:mod:`hssal_ray.assess.compare`), into
            ``assessment-of-<name>.json`` / ``.md``; the result lists them under ``other_maps``.
        progress: Where one-line progress goes.

    Returns:
        The content of ``assessment.json`` (plus ``other_maps``: the other maps' results).

    Raises:
        StateError: ``out`` holds no sample, or the map changed since it was drawn, or (Label Studio)
            the sample was never imported there or is not labeled yet.
        LabelFileError: A labels file or an annotation is invalid, or two disagree (nothing is written).
        LabelStudioError: The server cannot be reached or refuses the token.
        ValueError: With ``partial='continue'``, a map class with no labeled chip.
    """
    from hssal_ray.oracle.labels import parse_label_file, write_labels_csv

    dpath = _io.join(out, DESIGN_FILE)
    if not _io.exists(dpath) or not _io.exists(_io.join(out, SAMPLE_FILE)):
        raise StateError(
            f"{out} holds no accuracy sample: run `python -m hssal_ray.assess sample PRED --out {out}`"
        )
    design = _io.read_json(dpath)
    mt = read_map(design["predictions"])
    if mt.digest() != design["map_digest"]:
        raise StateError(
            f"the map in {design['predictions']} changed since the sample was drawn (predictions redone, "
            f"now round {mt.info.get('round')}, drawn on round {design.get('round')}): its accuracy is not "
            "what this sample measures; draw a new sample for the new map"
        )
    sample = _sample_table(out, design)
    ids = sample.column("sample_id").to_pylist()
    refs = dict(zip(sample.column("ref").to_pylist(), ids, strict=True))
    classes = design["classes"]
    gaps = "or estimate from the labels given: add --partial continue (biased if the skipped chips differ)"
    if from_archive:
        answer, source = _archive_labels(mt, ids, partial, gaps)
    elif labels is None:
        answer, source = _pull(out, design, sample, refs, partial, wait_s, gaps, progress)
    else:
        files = [labels] if isinstance(labels, str) else list(labels)
        source = ", ".join(files)
        answers = [
            parse_label_file(
                f,
                query_ids=ids,
                class_names=classes,
                partial=partial if len(files) == 1 else "continue",  # type: ignore[arg-type]
                refs=refs,
                partial_hint=gaps,
            )
            for f in files
        ]
        answer = _merge(answers, ids, partial, source, gaps)
    stratum = dict(zip(ids, sample.column("map_class_id").to_pylist(), strict=True))
    done = [s for s in ids if s in answer.labels]
    sizes = np.asarray(design["strata_sizes"], dtype=np.int64)
    strata = np.array([stratum[s] for s in done], dtype=np.int64)
    truth = np.array([answer.labels[s] for s in done], dtype=np.int64)
    try:
        e = estimate(strata, truth, sizes)
    except ValueError as err:
        raise ValueError(f"{source}: {err} (label at least 2 chips of every map class)") from None
    from hssal_ray.assess.compare import assess_other_map, load_other

    loaded = [load_other(other, mt, design) for other in other_maps]  # checked before anything is written
    write_labels_csv(_io.join(out, SAMPLE_DIR, LABELS_FILE), answer.labels, classes, order=ids)
    result = _result(design, e, source, len(done), answer.missing)
    _io.atomic_write_json(_io.join(out, RESULT_JSON), result)
    _io.atomic_write_text(_io.join(out, RESULT_MD), render(result))
    overall = fmt(result["overall_accuracy"], OVERALL_GAP)
    progress(
        f"[hssal] map accuracy from {len(done)} labeled chips: {overall} (in brackets: the 95% interval); "
        f"{_io.join(out, RESULT_MD)}"
    )
    others = [assess_other_map(out, design, mt, o, done, strata, truth, source, progress) for o in loaded]
    return {**result, "other_maps": others} if others else result


def _archive_labels(mt: MapTable, ids: list[str], partial: str, gaps: str) -> tuple[OracleAnswer, str]:
    """The archive's own labels of the sampled chips (``--labels-from-archive``).

    Raises:
        LabelFileError: The archive has no label for some chips (``partial='wait'``) or for any.
    """
    from hssal_ray.data.catalog import scan

    data = str(mt.info.get("data"))
    cat = scan(data, test_fraction=0.0)
    t = cat.table.select(["sample_id", "label"])
    t = t.filter(pc.is_in(t.column("sample_id"), value_set=pa.array(ids, pa.string())))
    names = list(cat.class_names)
    by_id = dict(zip(t.column("sample_id").to_pylist(), t.column("label").to_pylist(), strict=True))
    labels = {}
    for sid in ids:
        k = by_id.get(sid)
        if k is not None and k >= 0 and names[k] in mt.classes:
            labels[sid] = mt.classes.index(names[k])
    missing = [s for s in ids if s not in labels]
    source = f"the archive's own labels ({data})"
    if not labels or (missing and partial == "wait"):
        raise LabelFileError(
            f"{source}: {len(missing)} of {len(ids)} sampled chips have no label of the map's classes there "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); {gaps}"
        )
    return OracleAnswer(labels, missing, source="oracle"), source


def _merge(answers: list[OracleAnswer], ids: list[str], partial: str, source: str, gaps: str) -> OracleAnswer:
    """One answer from the answers of several files or batches (one answer: itself).

    Raises:
        LabelFileError: A chip labeled differently in two of them, or (``partial='wait'``) chips left
            without a label in all.
    """
    if len(answers) == 1:
        return answers[0]
    labels: dict[str, int] = {}
    clash = []
    for a in answers:
        for sid, c in a.labels.items():
            if labels.setdefault(sid, c) != c:
                clash.append(sid)
    if clash:
        raise LabelFileError(
            f"{source}: {len(clash)} sampled chip(s) have different labels in two of the answers "
            f"({', '.join(clash[:5])}{' ...' if len(clash) > 5 else ''}); make them agree. "
            "Nothing was written"
        )
    missing = [s for s in ids if s not in labels]
    if missing and partial == "wait":
        raise LabelFileError(
            f"{source}: {len(missing)} of {len(ids)} sampled chips have no label in any of them "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); label them, {gaps}. "
            "Nothing was written"
        )
    return OracleAnswer(labels, missing, source="human")


def _pull(
    out: str,
    design: dict[str, Any],
    sample: pa.Table,
    refs: dict[str, str],
    partial: str,
    wait_s: float,
    gaps: str,
    progress: Callable[[str], None],
) -> tuple[OracleAnswer, str]:
    """The validated answer from the sample's Label Studio project (every batch), and its source."""
    ls = design.get("label_studio")
    if not ls:
        raise StateError(
            f"the sample in {out} was not imported into Label Studio: import it with `python -m "
            f"hssal_ray.assess sample {design['predictions']} --out {out} --n {design['n']} --min-per-class "
            f"{design['min_per_class']} --seed {design['seed']} --label-studio URL`, or give --labels FILE"
        )
    target = LabelStudioTarget(ls["url"], ls.get("project_id"), ls.get("token_env") or TOKEN_ENV)
    oracle = sample_label_studio(out, design, refs, target, partial=partial, wait_s=wait_s, progress=progress)
    batch_of = sample.column("batch").to_pylist()
    ids = sample.column("sample_id").to_pylist()
    answers = []
    for batch in _batches(design):
        handoff = _io.join(out, batch)
        answer = oracle.collect(handoff, [s for s, b in zip(ids, batch_of, strict=True) if b == batch])
        if answer is None:
            raise StateError(
                f"the sample is not labeled yet in Label Studio ({batch}: {oracle.last_status(handoff)}): "
                f"label the rest, {gaps}, or wait for them: --wait-s SECONDS"
            )
        answers.append(answer)
    source = f"Label Studio project {ls.get('project')} at {ls['url']}"
    return _merge(answers, ids, partial, source, gaps), source


def _result(
    design: dict[str, Any], e: Estimates, labels: str, labeled: int, missing: Sequence[str]
) -> dict[str, Any]:
    N = int(design["chips"])
    km2 = design.get("chip_area_km2")
    ci = intervals(e, seed=int(design["seed"]))

    def one(name: str, i: int, scale: float = 1.0) -> dict[str, float | None]:
        low, high = ci[name]
        est, se = getattr(e, name)[i], getattr(e, f"se_{name}")[i]
        return interval(float(est), float(se), float(low[i]), float(high[i]), scale)

    per_class = [
        {
            "class": name,
            "map_chips": int(design["strata_sizes"][i]),
            "sampled": int(design["sample_sizes"][i]),
            "labeled": int(e.counts[i].sum()),
            "users_accuracy": one("users", i),
            "producers_accuracy": one("producers", i),
            "area_share": one("area", i),
            "area_chips": one("area", i, scale=N),
            **(
                {"map_km2": design["strata_sizes"][i] * km2, "area_km2": one("area", i, scale=N * km2)}
                if km2
                else {}
            ),
        }
        for i, name in enumerate(design["classes"])
    ]
    low, high = ci["overall"]
    return {
        "design": design,
        "labels": str(labels),
        "labeled": labeled,
        "unlabeled": list(missing),
        "overall_accuracy": interval(e.overall, e.se_overall, float(low), float(high)),
        "per_class": per_class,
        "error_matrix_counts": e.counts.tolist(),
        "error_matrix_proportions": [[round(float(v), 8) for v in row] for row in e.proportions],
        "method": "stratified estimators of Olofsson et al. (2014) with a finite-population correction; "
        "95% intervals: Wilson's at the design's effective sample size for overall accuracy (Korn & "
        "Graubard 1998), Wilson's for user's accuracy, the error matrix's posterior (Jeffreys prior on "
        "each stratum's accuracy) for producer's accuracy and area",
        "created": created(),
    }


OVERALL_GAP = "a class has 1 labeled chip"


def _amount(ci: dict[str, Any], digits: int) -> str:
    """``1,234 (1,100-1,380)`` of an area interval, ``-`` without one."""
    if ci["low"] is None:
        return "-"
    return f"{ci['estimate']:,.{digits}f} ({ci['low']:,.{digits}f}-{ci['high']:,.{digits}f})"


def render(result: dict[str, Any]) -> str:
    """``assessment.md``: the estimates as tables."""
    d = result["design"]
    oa = result["overall_accuracy"]
    km2 = d.get("chip_area_km2")
    lines = [
        f"# Accuracy of the map {d['predictions']}",
        "",
        f"Run {d.get('run')}, round {d.get('round')} (weights {d.get('weights_digest')}); "
        f"{d['chips']} chips. Stratified random sample by map class: {sum(d['sample_sizes'])} chips "
        f"(at least {d['min_per_class']} per class, the rest in proportion; seed {d['seed']}), "
        f"{result['labeled']} labeled "
        f"({result['labels']}). Method: {result['method']}.",
        "",
        f"**Overall accuracy: {fmt(oa, OVERALL_GAP)}** (in brackets: the 95% interval)",
        "",
        "| class | chips in the map | sampled / labeled | user's accuracy | producer's accuracy "
        "| chips of the class, estimated (95% CI) |"
        + (" area, km² (95% CI) | map's area, km² |" if km2 else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if km2 else ""),
    ]
    for c in result["per_class"]:
        line = (
            f"| {c['class']} | {c['map_chips']:,} | {c['sampled']} / {c['labeled']} "
            f"| {fmt(c['users_accuracy'])} | {fmt(c['producers_accuracy'])} "
            f"| {_amount(c['area_chips'], 0)} |"
        )
        if km2:
            line += f" {_amount(c['area_km2'], 2)} | {c['map_km2']:,.2f} |"
        lines.append(line)
    names = d["classes"]
    lines += [
        "",
        "User's accuracy: of the chips the map calls a class, the share that are it; producer's: of the",
        "chips that are a class, the share the map calls it. The estimated chips of a class correct the",
        "map's count for its errors (the error-adjusted area). In brackets: the 95% interval."
        + (f" One chip is {km2:.4g} km² of ground." if km2 else ""),
        "",
        "Error matrix, sampled chips (rows: map class, columns: reference class):",
        "",
        "| map \\ reference | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for name, row in zip(names, result["error_matrix_counts"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    if result["unlabeled"]:
        lines += ["", f"{len(result['unlabeled'])} sampled chips were left unlabeled (--partial continue)."]
    return "\n".join(lines) + "\n"
