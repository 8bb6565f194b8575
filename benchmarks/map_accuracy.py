"""Can a user trust the map accuracy ``python -m hssal_ray.assess`` reports? Coverage on real maps.

    python -m benchmarks.map_accuracy                      # UCM and SIRI-WHU, ~10 min on 2 cores
    python -m benchmarks.map_accuracy --datasets ucm --draws 500
    python -m benchmarks.map_accuracy --scale 1000000     # the CLI's time and memory on a 1M-chip map
    python -m benchmarks.map_accuracy --plan --draws 1000  # does `assess plan`'s n give the width it plans?
    python -m benchmarks.map_accuracy --other --draws 1000  # another map assessed from the same sample

For each data set: the product's loop (``configs/ucm_cpu.yaml``, seed 0, 8% of the training labels)
and ``python -m hssal_ray.predict --local`` over the whole archive give a real map; its true accuracy
and areas are known because the archive is labeled. Then:

* once, the product's CLI end to end: ``python -m hssal_ray.assess sample`` + the labels a person would
  give (the archive's labels, written into the filled template) + ``... estimate``: estimate vs truth;
* ``--draws`` times, the product's own sampling and estimators (:func:`hssal_ray.assess.allocate`,
  :func:`~hssal_ray.assess.draw`, :func:`~hssal_ray.assess.estimate`,
  :func:`~hssal_ray.assess.estimators.intervals`: what the CLI calls) with fresh seeds: how often each
  reported 95% interval holds the truth (coverage), its mean width, the bias and RMSE of overall accuracy,
  for proportional and minimum-per-class allocation, on the map as it is and on a long-tailed part of it
  (the chips of true class k kept with probability ``ratio ** (-k / (C - 1))``, classes in a seeded order:
  the rarest class keeps 1/``--imbalance`` of its chips; the predictions are the same).

What a user has without a labeled sample is reported beside it: the map's mean confidence (the model's
own estimate of its accuracy).

``--scale N`` instead writes a synthetic prediction folder of N chips (30 classes, 10 parts, as
``hssal_ray.predict`` writes them) and times ``assess sample`` (n = 1,500) and ``assess estimate`` (labels
90% equal to the map's class) as separate processes: wall seconds and peak RSS
(``map_accuracy_scale.{md,json}``).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import md_table, timed_process, write_result

__all__ = ["population_truth", "coverage", "main"]

DATASETS = {"ucm": "../shared/data/ucm", "siri_whu": "../shared/data/siri_whu"}
METHODS = ("normal", "product")


def population_truth(pred: np.ndarray, ref: np.ndarray, c: int) -> dict[str, np.ndarray | float]:
    """The map's true overall, user's and producer's accuracy and area shares (all chips known)."""
    cm = np.zeros((c, c), np.int64)
    np.add.at(cm, (pred, ref), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "overall": float(np.trace(cm) / cm.sum()),
            "users": np.diag(cm) / cm.sum(axis=1),
            "producers": np.diag(cm) / cm.sum(axis=0),
            "area": cm.sum(axis=0) / cm.sum(),
        }


def coverage(
    pred: np.ndarray, ref: np.ndarray, c: int, n: int, min_per_class: int, draws: int, seed0: int
) -> dict[str, Any]:
    """Coverage and width of both interval methods and the error of overall accuracy over ``draws``
    stratified samples of the map ``pred`` (truth ``ref``)."""
    from hssal_ray.assess import allocate, draw, estimate
    from hssal_ray.assess.estimators import intervals, normal_intervals

    truth = population_truth(pred, ref, c)
    strata = np.bincount(pred, minlength=c)
    sizes = allocate(strata, n, min_per_class)
    tally = _Tally(truth)
    for s in range(draws):
        idx = draw(pred, sizes, seed0 + s)
        e = estimate(pred[idx], ref[idx], strata)
        tally.oa.append(e.overall)
        for method, ci in (("normal", normal_intervals(e)), ("product", intervals(e, seed=s))):
            for name, (lo, hi) in ci.items():
                tally.add(method, name, lo, hi)
    out: dict[str, Any] = {
        "n": int(sizes.sum()),
        "min_per_class": min_per_class,
        "sample_sizes": sizes.tolist(),
    }
    return tally.summary(out, rare=int(np.argmin(np.bincount(ref, minlength=c))))


class _Tally:
    """Whether each draw's intervals held the truth, and their widths, per (method, figure)."""

    def __init__(self, truth: dict[str, Any]) -> None:
        self.truth = truth
        self.hits: dict[tuple[str, str], list[np.ndarray]] = {}
        self.widths: dict[tuple[str, str], list[np.ndarray]] = {}
        self.oa: list[float] = []

    def add(self, method: str, name: str, lo: Any, hi: Any) -> None:
        t = np.asarray(self.truth[name], dtype=np.float64)
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        ok = np.isfinite(lo) & np.isfinite(t)
        self.hits.setdefault((method, name), []).append(
            np.where(ok, (lo <= t + 1e-12) & (t <= hi + 1e-12), np.nan)
        )
        self.widths.setdefault((method, name), []).append(np.where(ok, hi - lo, np.nan))

    def summary(self, out: dict[str, Any], rare: int | None = None) -> dict[str, Any]:
        """``out`` plus bias and RMSE of overall accuracy, and coverage, width, the share without an
        interval, the worst class's coverage (and the rarest true class's) per (method, figure)."""
        oa, true = np.asarray(self.oa), self.truth["overall"]
        out.update(
            true_overall=true,
            overall_bias=float(np.mean(oa) - true),
            overall_rmse=float(np.sqrt(np.mean((oa - true) ** 2))),
        )
        for (method, name), hv in self.hits.items():
            h = np.asarray(hv, dtype=np.float64)
            key = f"{method}.{name}"
            out[f"{key}_coverage"] = _mean(h)
            out[f"{key}_width"] = _mean(np.asarray(self.widths[method, name], dtype=np.float64))
            out[f"{key}_undefined"] = float(np.mean(np.isnan(h)))
            if h.ndim == 2:  # per class: the worst class and the rarest true class
                per = np.array([_mean(h[:, j]) for j in range(h.shape[1])], dtype=np.float64)
                out[f"{key}_coverage_worst"] = float(np.nanmin(per)) if np.isfinite(per).any() else None
                if rare is not None:
                    out[f"{key}_coverage_rarest"] = _mean(h[:, rare])
        return out


def planned(
    pred: np.ndarray,
    ref: np.ndarray,
    conf: np.ndarray,
    c: int,
    halfwidth: float,
    class_halfwidth: float | None,
    min_per_class: int,
    draws: int,
    seed0: int,
) -> list[dict[str, Any]]:
    """``assess plan``'s sample size checked on a real map: plan with each class's mean confidence (what
    the CLI does) and with its true user's accuracy (a perfect guess), then draw ``draws`` samples of the
    planned size and measure the intervals the estimate reports (overall: Wilson at the effective n;
    user's: Wilson)."""
    from hssal_ray.assess import allocate, draw, estimate
    from hssal_ray.assess.estimators import overall_interval
    from hssal_ray.assess.planning import plan_sample

    truth = population_truth(pred, ref, c)
    strata = np.bincount(pred, minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(pred, weights=conf, minlength=c) / strata
    out = []
    for source, u in (("mean confidence", mean_conf), ("true user's accuracy", truth["users"])):
        plan = plan_sample(
            strata, u, halfwidth=halfwidth, class_halfwidth=class_halfwidth, min_per_class=min_per_class
        )
        sizes = allocate(strata, plan.n, plan.min_per_class)
        oa_half, hit, ua_half = [], [], []
        for s in range(draws):
            idx = draw(pred, sizes, seed0 + s)
            e = estimate(pred[idx], ref[idx], strata)
            lo, hi = overall_interval(e)
            oa_half.append((float(hi) - float(lo)) / 2)
            hit.append(float(lo) <= truth["overall"] + 1e-12 and truth["overall"] <= float(hi) + 1e-12)
            ua_half.append((e.users_high - e.users_low) / 2)
        oa_half_a = np.asarray(oa_half)
        ua = np.asarray(ua_half)
        row: dict[str, Any] = {
            "planned_from": source,
            "target": halfwidth,
            "class_target": class_halfwidth,
            "n": plan.n,
            "min_per_class": plan.min_per_class,
            "expected_halfwidth": plan.overall_halfwidth,
            "halfwidth_mean": float(oa_half_a.mean()),
            "halfwidth_p90": float(np.quantile(oa_half_a, 0.9)),
            "within_target": float(np.mean(oa_half_a <= halfwidth + 1e-12)),
            "overall_coverage": float(np.mean(hit)),
        }
        if class_halfwidth is not None:
            per_class = np.nanmean(ua, axis=0)
            row["class_halfwidth_worst_mean"] = float(np.nanmax(per_class))
            row["class_within_target"] = float(np.nanmean(ua <= class_halfwidth + 1e-12))
        out.append(row)
    return out


def other_coverage(
    a: np.ndarray, b: np.ndarray, ref: np.ndarray, c: int, n: int, min_per_class: int, draws: int, seed0: int
) -> dict[str, Any]:
    """Coverage and width of the intervals of map ``b``'s accuracy (``assess estimate --map``: Stehman's
    estimators, :func:`hssal_ray.assess.other_map.estimate_other_map`) over ``draws`` samples stratified
    by map ``a``, beside the normal interval ``estimate +- 1.96 SE``."""
    from hssal_ray.assess import allocate, draw
    from hssal_ray.assess.estimators import Z95
    from hssal_ray.assess.other_map import estimate_other_map, stratified_ratio

    truth = population_truth(b, ref, c)
    truth["change"] = truth["overall"] - float(np.mean(a == ref))  # what `assess curve` reports per round
    sizes, b_sizes = np.bincount(a, minlength=c), np.bincount(b, minlength=c)
    n_i = allocate(sizes, n, min_per_class)
    agree = float(np.mean(a == b))
    tally = _Tally(truth)
    for s in range(draws):
        idx = draw(a, n_i, seed0 + s)
        o = estimate_other_map(a[idx], ref[idx], b[idx], sizes, b_sizes, agree)
        tally.oa.append(o.overall)
        for name in ("overall", "users", "producers"):
            est = np.asarray(getattr(o, name), dtype=np.float64)
            half = Z95 * np.asarray(getattr(o, f"se_{name}"), dtype=np.float64)
            tally.add("normal", name, np.clip(est - half, 0, 1), np.clip(est + half, 0, 1))
            tally.add("product", name, getattr(o, f"{name}_low"), getattr(o, f"{name}_high"))
        d = (b[idx] == ref[idx]).astype(np.float64) - (a[idx] == ref[idx])
        change, var, _ = stratified_ratio(a[idx], d, np.ones(len(idx)), sizes)
        half = Z95 * np.sqrt(var)
        tally.add("product", "change", change - half, change + half)  # the paired difference's interval
    return tally.summary(
        {
            "n": int(n_i.sum()),
            "min_per_class": min_per_class,
            "agreement": agree,
            "sampled_overall": float(np.mean(a == ref)),
        }
    )


def _method_tables(rows: list[dict[str, Any]], per: list[str]) -> list[str]:
    """One Markdown table per interval method of the figures ``per`` (``<method>.<figure>`` in ``rows``)."""
    md = []
    for method in METHODS:
        renamed = [{**r, **{k: r.get(f"{method}.{k}") for k in per}} for r in rows]
        md += [
            f"**{method}**",
            "",
            md_table(renamed, ["dataset", "population", "n", "min_per_class", *per]),
            "",
        ]
    return md


def _mean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


def _long_tail(ref: np.ndarray, c: int, imbalance: float, seed: int) -> np.ndarray:
    """Positions kept: class k (in a seeded order) keeps each chip with probability imbalance**(-k/(c-1))."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(c)
    keep_p = np.empty(c)
    keep_p[order] = imbalance ** (-np.arange(c) / max(c - 1, 1))
    return np.flatnonzero(rng.random(len(ref)) < keep_p[ref])


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}); see {log}")
    return time.perf_counter() - t0


def _map(ds: str, data: str, work: Path, config: str) -> tuple[Path, dict[str, float]]:
    """The product's run and its prediction of the whole archive (reused when already there)."""
    py = sys.executable
    secs: dict[str, float] = {}
    run, pred = work / ds, work / f"{ds}_pred"
    state = run / "state.json"
    if not state.exists() or json.loads(state.read_text()).get("status") != "done":
        secs["loop_s"] = _run(
            [py, "-m", "hssal_ray.loop", "--config", config, f"data.root={data}", f"loop.run_dir={work}",
             f"loop.name={ds}", "loop.report=false"],
            work / f"{ds}_loop.log",
        )  # fmt: skip
    secs["predict_s"] = _run(
        [py, "-m", "hssal_ray.predict", str(run), "--data", data, "--out", str(pred), "--local"],
        work / f"{ds}_predict.log",
    )
    return pred, secs


def _end_to_end(
    pred: Path,
    work: Path,
    ds: str,
    truth_of: dict[str, int],
    classes: list[str],
    n: int,
    other: Path | None = None,
) -> dict:
    """The CLI once: sample, the archive's labels as the person's answer, estimate (with ``other``: also
    ``--map other``, whose overall accuracy is returned instead)."""
    import pyarrow.parquet as pq

    out = work / f"{ds}_assess"
    if out.exists():  # a fresh sample of this map (a folder holding another map's sample is refused)
        import shutil

        shutil.rmtree(out)
    py = sys.executable
    _run([py, "-m", "hssal_ray.assess", "sample", str(pred), "--out", str(out), "--n", str(n),
          "--min-per-class", "10", "--no-images"], work / f"{ds}_assess_sample.log")  # fmt: skip
    rows = pq.read_table(out / "sample.parquet").to_pylist()
    labels = work / f"{ds}_assess_labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "label"])
        w.writerows([r["ref"], classes[truth_of[r["sample_id"]]]] for r in rows)
    extra = ["--map", str(other)] if other is not None else []
    _run([py, "-m", "hssal_ray.assess", "estimate", str(out), "--labels", str(labels), *extra],
         work / f"{ds}_assess_estimate.log")  # fmt: skip
    name = f"assessment-of-{other.name}.json" if other is not None else "assessment.json"
    return json.loads((out / name).read_text())["overall_accuracy"]


def scale(chips: int, work: Path, classes: int = 30, n: int = 1500) -> dict[str, Any]:
    """Time the CLI on a synthetic map of ``chips`` chips (the parts and ``predict.json`` of a real one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hssal_ray.prediction_files import PART_KEY

    pred = work / f"scale_{chips}" / "pred"
    parts = pred / "predictions.parquet"
    parts.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = -(-chips // 10)
    for k, start in enumerate(range(0, chips, per)):
        m = min(per, chips - start)
        t = pa.table(
            {
                "sample_id": [f"scene{k:03d}/shard-00000.parquet:{i}" for i in range(m)],
                "class_id": pa.array(rng.integers(0, classes, m), pa.int32()),
                "confidence": pa.array(rng.random(m), pa.float32()),
            }
        )
        tag = json.dumps({"rows": m, "weights": "synthetic"}).encode()
        pq.write_table(t.replace_schema_metadata({PART_KEY: tag}), parts / f"part-{k:05d}.parquet")
    names = [f"class{i}" for i in range(classes)]
    info = {"run": "", "round": 0, "weights_digest": "synthetic", "classes": names, "data": "",
            "images": chips, "chunks": k + 1, "bad_samples": 0}  # fmt: skip
    (pred / "predict.json").write_text(json.dumps(info))
    out = pred.parent / "assess"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    py = sys.executable
    sample = timed_process(
        [py, "-m", "hssal_ray.assess", "sample", str(pred), "--out", str(out), "--n", str(n), "--no-images"]
    )
    rows = pq.read_table(out / "sample.parquet").to_pylist()
    labels = pred.parent / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "label"])
        for r in rows:
            c = r["map_class_id"] if rng.random() < 0.9 else int(rng.integers(0, classes))
            w.writerow([r["sample_id"], f"class{c}"])
    est = timed_process([py, "-m", "hssal_ray.assess", "estimate", str(out), "--labels", str(labels)])
    return {"chips": chips, "classes": classes, "n": n, "sample": sample, "estimate": est}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.map_accuracy", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--config", default="configs/ucm_cpu.yaml")
    p.add_argument("--work", default="runs/benchmarks/map_accuracy")
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 400])
    p.add_argument("--min-per-class", type=int, nargs="+", default=[0, 10])
    p.add_argument("--imbalance", type=float, default=20.0)
    p.add_argument("--tag", default="map_accuracy")
    p.add_argument(
        "--scale", type=int, default=None, help="time the CLI on a synthetic map of this many chips"
    )
    p.add_argument(
        "--plan", action="store_true", help="check `assess plan`'s sample sizes (map_accuracy_plan.{md,json})"
    )
    p.add_argument(
        "--other",
        action="store_true",
        help="check `assess estimate --map`: round 0's map assessed from samples of round 3's "
        "(map_accuracy_other.{md,json})",
    )
    args = p.parse_args(argv)
    if args.scale:
        r = scale(args.scale, Path(args.work))
        md = (
            f"`python -m hssal_ray.assess` on a synthetic map of {r['chips']:,} chips, {r['classes']} "
            f"classes, n = {r['n']} (each a separate process, imports included):\n\n"
            + md_table(
                [{"step": k, **r[k]} for k in ("sample", "estimate")], ["step", "wall_s", "peak_rss_mb"]
            )
            + "\n"
        )
        write_result(f"{args.tag}_scale", r, md, module="benchmarks.map_accuracy")
        print(md)
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.plan:
        return _plan_main(args, work)
    if args.other:
        return _other_main(args, work)
    results: dict[str, Any] = {"draws": args.draws, "imbalance": args.imbalance, "datasets": {}}
    rows = []
    for ds in args.datasets:
        pred_dir, secs, names, lab, ids, pred, ref = _labeled_map(ds, work, args.config)
        c = len(names)
        conf = float(np.mean(_confidence(pred_dir)))
        e2e = _end_to_end(pred_dir, work, ds, lab, names, args.sizes[0])
        truth = population_truth(pred, ref, c)
        entry: dict[str, Any] = {
            "chips": len(ids),
            "true_overall": truth["overall"],
            "mean_confidence": conf,
            "cli_estimate": e2e,
            "seconds": secs,
            "designs": [],
        }
        pops = {
            "as is": np.arange(len(ids)),
            f"long tail 1:{args.imbalance:g}": _long_tail(ref, c, args.imbalance, 7),
        }
        for pop, keep in pops.items():
            pp, rr = pred[keep], ref[keep]
            for n in args.sizes:
                for m in args.min_per_class:
                    r = coverage(pp, rr, c, n, m, args.draws, seed0=1000)
                    r.update(dataset=ds, population=pop, chips=len(keep))
                    entry["designs"].append(r)
                    rows.append(r)
                    print(
                        f"{ds} {pop} n={n} min={m}: coverage OA / PA / area, normal "
                        f"{r['normal.overall_coverage']:.3f} / {r['normal.producers_coverage']:.3f} / "
                        f"{r['normal.area_coverage']:.3f}, product {r['product.overall_coverage']:.3f} / "
                        f"{r['product.producers_coverage']:.3f} / {r['product.area_coverage']:.3f}",
                        flush=True,
                    )
        results["datasets"][ds] = entry
    head = [
        "dataset",
        "population",
        "chips",
        "n",
        "min_per_class",
        "true_overall",
        "overall_bias",
        "overall_rmse",
    ]
    per = [
        "overall_coverage",
        "users_coverage",
        "users_coverage_worst",
        "producers_coverage",
        "producers_coverage_worst",
        "area_coverage",
        "area_coverage_worst",
        "area_coverage_rarest",
        "overall_width",
        "producers_width",
        "area_width",
    ]
    md = [
        f"Coverage of 95% intervals over {args.draws} stratified samples per row (per-class figures pooled "
        "over classes; `worst`: the class with the lowest coverage; `rarest`: the rarest true class). A 95% "
        "interval should hold the truth in about 0.95 of samples; `width`: its mean width. `normal`: "
        "estimate +- 1.96 SE for every figure (Olofsson et al. 2014); `product`: what `python -m "
        "hssal_ray.assess` reports (`hssal_ray.assess.estimators.intervals`: Wilson's interval at the "
        "design's effective sample size for overall accuracy, Wilson's for user's accuracy, the error "
        "matrix's posterior for producer's accuracy and area).",
        "",
        md_table(rows, head),
        "",
    ]
    md += _method_tables(rows, per)
    md += [
        "| data set | chips | true map accuracy | CLI estimate (n = "
        f"{args.sizes[0]}, min 10 per class) | the model's mean confidence |",
        "|---|---:|---:|---:|---:|",
    ]
    for ds, e in results["datasets"].items():
        ci = e["cli_estimate"]
        md.append(
            f"| {ds} | {e['chips']} | {e['true_overall']:.3f} | {ci['estimate']:.3f} "
            f"({ci['low']:.3f}-{ci['high']:.3f}) | {e['mean_confidence']:.3f} |"
        )
    results["rows"] = rows
    write_result(args.tag, results, "\n".join(md) + "\n", module="benchmarks.map_accuracy")
    print("\n".join(md))
    return 0


def _labeled_map(
    ds: str, work: Path, config: str
) -> tuple[Path, dict[str, float], list[str], dict, list, Any, Any]:
    """The product's map of ``ds`` (:func:`_map`) beside the archive's labels, both in the map's order."""
    from hssal_ray.assess import read_map
    from hssal_ray.data.catalog import scan

    data = DATASETS[ds]
    pred_dir, secs = _map(ds, data, work, config)
    mt = read_map(str(pred_dir))
    cat = scan(data, test_fraction=0.0)
    names = list(cat.class_names)
    assert names == mt.classes, (names, mt.classes)
    lab = dict(
        zip(cat.table.column("sample_id").to_pylist(), cat.table.column("label").to_pylist(), strict=True)
    )
    ids = mt.ids.to_pylist()
    ref = np.array([lab[s] for s in ids], dtype=np.int64)
    return pred_dir, secs, names, lab, ids, mt.class_id, ref


def _confidence(pred_dir: Path) -> np.ndarray:
    """Every chip's confidence, in the map's order (sorted by sample id, as :func:`read_map` sorts)."""
    import pyarrow.dataset as pds

    t = pds.dataset(str(pred_dir / "predictions.parquet")).to_table(columns=["sample_id", "confidence"])
    return t.sort_by("sample_id")["confidence"].to_numpy()


PLAN_TARGETS = ((0.03, None), (0.02, None), (0.02, 0.10))
"""(overall, every class's user's accuracy) half-widths ``--plan`` checks."""


def _plan_main(args: argparse.Namespace, work: Path) -> int:
    """``--plan``: each target on each map (as is and long-tailed), planned by confidence and by truth."""
    rows = []
    cli = {}
    for ds in args.datasets:
        pred_dir, _, names, _, _, pred, ref = _labeled_map(ds, work, args.config)
        c = len(names)
        conf = _confidence(pred_dir)
        out = subprocess.run(
            [sys.executable, "-m", "hssal_ray.assess", "plan", str(pred_dir), "--halfwidth", "0.02",
             "--min-per-class", "10", "--json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        cli[ds] = json.loads(out.stdout)
        pops = {
            "as is": np.arange(len(pred)),
            f"long tail 1:{args.imbalance:g}": _long_tail(ref, c, args.imbalance, 7),
        }
        for pop, keep in pops.items():
            for h, ch in PLAN_TARGETS:
                for r in planned(pred[keep], ref[keep], conf[keep], c, h, ch, 10, args.draws, seed0=5000):
                    r.update(
                        dataset=ds,
                        population=pop,
                        chips=len(keep),
                        true_overall=float(np.mean(pred[keep] == ref[keep])),
                    )
                    rows.append(r)
                    print(
                        f"{ds} {pop} +-{h} ({r['planned_from']}): n {r['n']}, "
                        f"expected +-{r['expected_halfwidth']:.4f}, "
                        f"measured +-{r['halfwidth_mean']:.4f}, within {r['within_target']:.2f}",
                        flush=True,
                    )
        # the CLI's plan is the library's plan on the whole map
        as_is = next(r for r in rows if (r["dataset"], r["population"], r["target"], r["class_target"],
                     r["planned_from"]) == (ds, "as is", 0.02, None, "mean confidence"))  # fmt: skip
        assert cli[ds]["n"] == as_is["n"], (cli[ds]["n"], as_is["n"])
    cols = ["dataset", "population", "chips", "true_overall", "target", "class_target", "planned_from", "n",
            "min_per_class", "expected_halfwidth", "halfwidth_mean", "halfwidth_p90", "within_target",
            "overall_coverage", "class_halfwidth_worst_mean", "class_within_target"]  # fmt: skip
    md = [
        f"`python -m hssal_ray.assess plan` on the product's maps: the sample size it plans for a target 95% "
        f"half-width (`target`: overall accuracy; `class_target`: every class's user's accuracy), with "
        f"at least 10 chips a class, then {args.draws} stratified samples of that size drawn and estimated "
        "as `assess sample` / `estimate` do. `planned_from`: each class's anticipated user's accuracy, the "
        "model's mean confidence (what the CLI uses) or the truth (a perfect guess). `expected_halfwidth`: "
        "what the plan promises; `halfwidth_mean` / `_p90`: the overall half-width the estimates reported "
        "(mean, 90th percentile); `within_target`: the share of samples whose half-width met the target; "
        "`class_halfwidth_worst_mean`: the class with the widest mean user's-accuracy half-width; "
        "`class_within_target`: the share of (class, sample) pairs that met the class target.",
        "",
        md_table(rows, cols),
        "",
        "The CLI (`assess plan PRED --halfwidth 0.02 --min-per-class 10`) plans n = "
        + ", ".join(f"{cli[ds]['n']} on {ds}" for ds in cli)
        + ", the same as the library on the whole map (checked).",
    ]
    write_result(f"{args.tag}_plan", {"rows": rows, "cli": cli, "draws": args.draws}, "\n".join(md) + "\n",
                 module="benchmarks.map_accuracy")  # fmt: skip
    print("\n".join(md))
    return 0


def _other_main(args: argparse.Namespace, work: Path) -> int:
    """``--other``: the map of the run's round 0 (``predict --round 0``) assessed from samples stratified
    by the final map (round 3), on each data set, as is and long-tailed, with the change between the two
    maps (``assess curve``'s paired difference); and once through the CLI."""
    from hssal_ray.assess import read_map

    rows, cli = [], {}
    for ds in args.datasets:
        pred_dir, _, names, lab, _, a, ref = _labeled_map(ds, work, args.config)
        c = len(names)
        early = work / f"{ds}_pred_round0"
        _run([sys.executable, "-m", "hssal_ray.predict", str(work / ds), "--data", DATASETS[ds], "--out",
              str(early), "--round", "0", "--local"], work / f"{ds}_predict_round0.log")  # fmt: skip
        b = read_map(str(early)).class_id
        e2e = _end_to_end(pred_dir, work, ds, lab, names, args.sizes[0], other=early)
        cli[ds] = {"estimate": e2e, "true_overall": float(np.mean(b == ref))}
        pops = {
            "as is": np.arange(len(a)),
            f"long tail 1:{args.imbalance:g}": _long_tail(ref, c, args.imbalance, 7),
        }
        for pop, keep in pops.items():
            for n in args.sizes:
                for m in args.min_per_class:
                    r = other_coverage(a[keep], b[keep], ref[keep], c, n, m, args.draws, seed0=7000)
                    r.update(dataset=ds, population=pop, chips=len(keep))
                    rows.append(r)
                    print(
                        f"{ds} {pop} n={n} min={m}: round 0's map, coverage OA / UA / PA normal "
                        f"{r['normal.overall_coverage']:.3f} / {r['normal.users_coverage']:.3f} / "
                        f"{r['normal.producers_coverage']:.3f}, "
                        f"product {r['product.overall_coverage']:.3f} / "
                        f"{r['product.users_coverage']:.3f} / {r['product.producers_coverage']:.3f}",
                        flush=True,
                    )
    head = ["dataset", "population", "chips", "n", "min_per_class", "agreement", "true_overall",
            "overall_bias", "overall_rmse"]  # fmt: skip
    per = ["overall_coverage", "overall_width", "users_coverage", "users_coverage_worst", "users_width",
           "producers_coverage", "producers_coverage_worst", "producers_width"]  # fmt: skip
    md = [
        f"`python -m hssal_ray.assess estimate ASSESS --labels FILE --map PRED2` checked on real maps: the "
        f"sample is stratified by the run's final map (round 3), the map assessed is round 0's (`predict "
        f"--round 0`, the model after the cold start), {args.draws} samples per row; `agreement`: the share "
        "of chips the two maps give one class. Coverage of the 95% intervals (per-class figures pooled; "
        "`worst`: the class with the lowest); `normal`: Stehman's (2014) estimate +- 1.96 SE; `product`: "
        "what `assess` reports (Wilson's interval at the effective sample size: for overall accuracy at a "
        "per-stratum smoothed variance, for user's and producer's capped at the chips the figure rests on).",
        "",
        md_table(rows, head),
        "",
    ]
    md += _method_tables(rows, per)
    md += [
        "**the change in overall accuracy from the sampled map to the other** (`assess curve`'s paired "
        "difference: the stratified mean of `right_other - right_sampled` on the same chips, +- 1.96 SE)",
        "",
        md_table(
            [{**r, "true_change": r["true_overall"] - r["sampled_overall"]} for r in rows],
            [
                "dataset",
                "population",
                "n",
                "min_per_class",
                "true_change",
                "product.change_coverage",
                "product.change_width",
            ],
        ),  # fmt: skip
        "",
    ]
    md += ["| data set | round 0's map, true accuracy | CLI estimate from the round-3 sample (n = "
           f"{args.sizes[0]}, min 10 per class) |", "|---|---:|---:|"]  # fmt: skip
    for ds, e in cli.items():
        est = e["estimate"]
        md.append(
            f"| {ds} | {e['true_overall']:.3f} | {est['estimate']:.3f} ({est['low']:.3f}-{est['high']:.3f}) |"
        )
    write_result(f"{args.tag}_other", {"rows": rows, "cli": cli, "draws": args.draws}, "\n".join(md) + "\n",
                 module="benchmarks.map_accuracy")  # fmt: skip
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
