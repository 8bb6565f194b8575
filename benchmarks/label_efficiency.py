"""Label efficiency on real UCM: HSSAL against SSL-only, AL-only and supervised baselines.

    python -m benchmarks.label_efficiency --data ../shared/data/ucm --profile cpu --seeds 3 \
        --out benchmarks/results

Every method runs the same closed loop on the same split (catalog split seed 0), backbone, step
budget and cold start (seeded random, identical for all methods of a seed):
round 0 trains on 2% of the training labels, then each round queries ~2% more (simulated oracle)
and retrains (warm start), ending at 8%. The EMA model is evaluated on the test split after every
round. Full supervision (all training labels, same total steps) is the reference.

Why in-process: one closed loop per method and seed, 30+ loops, must fit in ~2 h on 2 CPU cores.
The Ray loop (``python -m hssal_ray.loop``) spends ~40 s a round starting Train workers and
re-decoding JPEGs; here the images are decoded once and every round calls the same library code
the Ray loop runs, in one process: ``hssal_ray.ssl.steps.train_step`` (FixMatch, EMA, thresholds),
``hssal_ray.data.transforms.augment_batch`` (weak/strong views), ``hssal_ray.scoring.scores_table``
-> Parquet -> ``hssal_ray.query.load_pool`` -> ``strategy_from_config(...).select`` (the query).
The recipe (model, image size, steps, batch, thresholds, HAL settings) is read from the loop's
config file (``configs/ucm_cpu.yaml`` for ``--profile cpu``, ``configs/ucm.yaml`` for ``gpu``).

``--val-fraction F`` holds out F of the *training* split as a validation set (never the test
split) and reports accuracy on it: used to tune the recipe (benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

#: method -> (semi-supervised?, query strategy); "full" trains on every training label.
METHODS: dict[str, tuple[bool, str]] = {
    "full_supervision": (False, "full"),
    "supervised_random": (False, "random"),
    "ssl_random": (True, "random"),
    "supervised_hal": (False, "hal"),
    "ssl_entropy": (True, "entropy"),
    "ssl_typiclust": (True, "typiclust"),
    "ssl_badge": (True, "badge"),
    "hssal": (True, "hal"),
    "hssal_flat": (True, "hal_flat"),
}
PRIMARY = ("full_supervision", "supervised_random", "ssl_random", "supervised_hal", "hssal")
PROFILES = {"cpu": "configs/ucm_cpu.yaml", "gpu": "configs/ucm.yaml"}


# --------------------------------------------------------------------------- data


def load_images(cfg: Any, root: str, val_fraction: float) -> dict[str, Any]:
    """Decode the split once: uint8 ``(N, C, S, S)`` arrays, labels and ids for train and test."""
    from tqdm import tqdm

    from hssal_ray.data.catalog import load_bytes, scan
    from hssal_ray.data.decode import decode_batch

    cat = scan(root, test_fraction=cfg.data.test_fraction, seed=0)
    out: dict[str, Any] = {"classes": list(cat.class_names)}
    for split in ("train", "test"):
        t = cat.split_table(split)
        ids, xs, ys, bad = [], [], [], []
        for i in tqdm(range(0, t.num_rows, 128), desc=f"decode {split}", file=sys.stderr, leave=False):
            rows = t.slice(i, 128)
            sids = rows["sample_id"].to_pylist()
            imgs, good, bad_b = decode_batch(
                load_bytes(cat.root, cat.kind, rows), sids, bands=cfg.data.bands, size=cfg.data.image_size
            )
            labels = np.asarray(rows["label"].to_pylist())
            ids += [sids[j] for j in good]
            ys.append(labels[good])
            xs.append(imgs)
            bad += bad_b
        out[split] = (np.asarray(ids, dtype=object), np.concatenate(xs), np.concatenate(ys).astype(np.int64))
        out[f"bad_{split}"] = bad
    if val_fraction > 0:  # tune on the training split only: a held-out part of it plays "test"
        ids, x, y = out["train"]
        rng = np.random.default_rng(12345)
        val = np.zeros(len(ids), bool)
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            val[rng.choice(rows, size=max(1, round(val_fraction * len(rows))), replace=False)] = True
        out["train"], out["test"] = (ids[~val], x[~val], y[~val]), (ids[val], x[val], y[val])
    return out


# --------------------------------------------------------------------------- one loop


class Trainer:
    """One method's model across rounds (warm start: weights and EMA carry over, optimizer is fresh)."""

    def __init__(self, cfg: Any, num_classes: int, device: str, seed: int) -> None:
        import torch

        from hssal_ray.ssl.train_loop import build_train_state

        torch.manual_seed(seed)
        self.cfg, self.num_classes, self.device = cfg, num_classes, torch.device(device)
        self.state = build_train_state(cfg, num_classes, self.device, total_steps=cfg.ssl.steps_per_round)

    def fit(
        self, x: np.ndarray, y: np.ndarray, labeled: np.ndarray, pool: np.ndarray, steps: int, seed: int
    ) -> dict:
        """``steps`` optimiser steps on rows ``labeled`` (+ ``pool`` unlabeled when SSL is on)."""
        import torch

        from hssal_ray.data.transforms import augment_batch
        from hssal_ray.ssl.steps import train_step
        from hssal_ray.ssl.train_loop import build_optimization

        cfg, s = self.cfg, self.state
        # warm start: weights and EMA carry over, each round gets a fresh optimizer and schedule
        s.optimizer, s.scheduler = build_optimization(cfg, s.model, steps)
        mean, std, size = cfg.data.mean, cfg.data.std, cfg.data.image_size
        bs, ssl_on = cfg.ssl.batch_size, cfg.ssl.enabled and cfg.ssl.lambda_u > 0 and len(pool) > 0
        rng = np.random.default_rng(seed)

        def stream(rows: np.ndarray, per_step: int) -> np.ndarray:
            n = steps * per_step
            idx = np.concatenate([rng.permutation(rows) for _ in range(-(-n // len(rows)))])[:n]
            return idx.reshape(steps, per_step)

        lab = stream(labeled, bs)
        unl = stream(pool, bs * cfg.ssl.uratio) if ssl_on else None
        seeds = rng.integers(0, 2**62, size=(steps, 3, max(bs, bs * cfg.ssl.uratio)), dtype=np.int64)
        sums: dict[str, float] = {}
        for t in range(steps):
            rl = lab[t]
            bl = {
                "x": torch.from_numpy(augment_batch(x[rl], seeds[t, 0, :bs], "weak", size, mean, std)),
                "y": torch.from_numpy(y[rl]),
            }
            bu = None
            if unl is not None:
                ru, k = unl[t], len(unl[t])
                bu = {
                    "x_weak": torch.from_numpy(
                        augment_batch(x[ru], seeds[t, 1, :k], "weak", size, mean, std)
                    ),
                    "x_strong": torch.from_numpy(
                        augment_batch(x[ru], seeds[t, 2, :k], "strong", size, mean, std)
                    ),
                    "y": torch.from_numpy(y[ru]),  # diagnostic only (pseudo-label accuracy)
                }
            m = train_step(s, bl, bu, cfg.ssl, self.device)
            for key in ("sup_loss", "unsup_loss", "mask_rate", "pseudo_label_acc_all"):
                v = m.get(key)
                if v is not None and not math.isnan(v) and t >= steps // 2:
                    sums[key] = sums.get(key, 0.0) + v / (steps - steps // 2)
        return sums

    def predict(self, x: np.ndarray, view_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """EMA model: L2-normalised embeddings and probabilities (``view_seed``: a strong view)."""
        import torch

        from hssal_ray.data.transforms import augment_batch

        cfg, model = self.cfg, self.state.ema.module.eval()
        embs, probs = [], []
        with torch.inference_mode():
            for i in range(0, len(x), cfg.ssl.eval_batch_size):
                xb = x[i : i + cfg.ssl.eval_batch_size]
                kind, sd = (
                    ("none", np.zeros(len(xb), np.int64))
                    if view_seed is None
                    else ("strong", view_seed + np.arange(i, i + len(xb)))
                )
                t = torch.from_numpy(
                    augment_batch(xb, sd, kind, cfg.data.image_size, cfg.data.mean, cfg.data.std)
                )
                e, logits = model.forward_features_logits(t.to(self.device))
                embs.append(torch.nn.functional.normalize(e.float(), dim=1).cpu().numpy())
                probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(embs), np.concatenate(probs)


def query(
    cfg: Any, trainer: Trainer, data: dict, labeled: np.ndarray, budget: int, seed: int, rnd: int
) -> np.ndarray:
    """Score the pool, write the scores Parquet, load it as a Pool and run the strategy's select."""
    import pyarrow.parquet as pq

    from hssal_ray.query import load_pool, strategy_from_config
    from hssal_ray.scoring import scores_table
    from hssal_ray.ssl.trainer import derive_seed

    ids, x, _ = data["train"]
    pool_rows = np.setdiff1d(np.arange(len(ids)), labeled)
    emb, probs = trainer.predict(x[pool_rows])
    strong = cfg.query.uncertainty == "disagreement" or cfg.query.ssl_aware
    probs_s = (
        trainer.predict(x[pool_rows], view_seed=derive_seed(seed, rnd, "strong") % 2**40)[1]
        if strong
        else None
    )
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "scores.parquet")
        pq.write_table(
            scores_table(ids[pool_rows], emb, probs, probs_s, cfg.ssl.p_cutoff), path, use_dictionary=False
        )
        pool = load_pool(path)
    strat = strategy_from_config(cfg.query, random_state=derive_seed(seed, rnd, "query") % (2**31))
    picked = strat.select(pool, min(budget, len(pool_rows)))
    row_of = {s: i for i, s in enumerate(ids)}
    return np.asarray([row_of[s] for s in pool.ids[picked]], dtype=np.int64)


def run_method(
    base: Any, method: str, data: dict, schedule: list[int], seed: int, device: str
) -> dict[str, Any]:
    """One closed loop (or the fully-supervised reference); returns per-round accuracies."""
    from hssal_ray.ssl.trainer import derive_seed

    ssl_on, strategy = METHODS[method]
    cfg = replace(
        base,
        ssl=replace(base.ssl, enabled=ssl_on),
        query=replace(base.query, strategy=strategy) if strategy != "full" else base.query,
    )
    ids, x, y = data["train"]
    _, xt, yt = data["test"]
    steps = cfg.ssl.steps_per_round
    trainer = Trainer(cfg, len(data["classes"]), device, derive_seed(seed, "init") % 2**31)
    # the same seeded random cold start for every method of a seed
    labeled = np.sort(np.random.default_rng([seed, 0xC01D]).choice(len(ids), size=schedule[0], replace=False))
    plan = [len(ids)] if strategy == "full" else schedule
    rows = []
    for rnd, target in enumerate(plan):
        t0 = time.perf_counter()
        if strategy == "full":
            labeled, steps = np.arange(len(ids)), steps * len(schedule)
        elif rnd > 0:
            labeled = np.sort(
                np.concatenate(
                    [labeled, query(cfg, trainer, data, labeled, target - len(labeled), seed, rnd)]
                )
            )
        t_query = time.perf_counter() - t0
        pool = np.setdiff1d(np.arange(len(ids)), labeled)
        if not cfg.ssl.warm_start and rnd > 0:
            trainer = Trainer(cfg, len(data["classes"]), device, derive_seed(seed, "init", rnd) % 2**31)
        m = trainer.fit(x, y, labeled, pool, steps, derive_seed(seed, rnd, "train") % 2**63)
        acc = float((trainer.predict(xt)[1].argmax(1) == yt).mean())
        rows.append(
            {
                "round": rnd,
                "num_labeled": int(len(labeled)),
                "label_fraction": len(labeled) / len(ids),
                "test_accuracy": acc,
                "classes_covered": int(len(np.unique(y[labeled]))),
                "query_s": t_query,
                "round_s": time.perf_counter() - t0,
                **m,
            }
        )
        print(
            f"  {method:18s} seed {seed} round {rnd}: {len(labeled):4d} labels  acc {acc:.4f}  "
            f"mask {m.get('mask_rate', float('nan')):.2f}  ({rows[-1]['round_s']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return {"method": method, "seed": seed, "rounds": rows}


# --------------------------------------------------------------------------- report


def summarize(runs: list[dict], schedule: list[int], n_train: int) -> dict[str, Any]:
    full = [r["rounds"][-1]["test_accuracy"] for r in runs if r["method"] == "full_supervision"]
    full_mean = float(np.mean(full)) if full else float("nan")
    out = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        if method == "full_supervision":
            accs = np.asarray([[r["rounds"][-1]["test_accuracy"]] for r in rs])
            labels = [n_train]
        else:
            accs = np.asarray([[row["test_accuracy"] for row in r["rounds"]] for r in rs])
            labels = [row["num_labeled"] for row in rs[0]["rounds"]]
        mean, std = accs.mean(0), accs.std(0)
        out[method] = {
            "num_labeled": labels,
            "label_fraction": [n / n_train for n in labels],
            "accuracy_mean": mean.tolist(),
            "accuracy_std": std.tolist(),
            "seeds": [r["seed"] for r in rs],
            "pct_of_full_supervision": (100 * mean / full_mean).tolist(),
        }
    return out


def write_outputs(out_dir: Path, result: dict[str, Any], tag: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    s, prof = result["summary"], result["profile"]
    fracs = [f"{100 * f:.0f}%" for f in result["label_fractions"]]
    md = [
        f"# Label efficiency on UCM ({result['profile_name']} profile)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Profile: {prof['model']} from scratch, {prof['image_size']} px, "
        f"{prof['steps_per_round']} steps per round (batch {prof['batch_size']} labeled + "
        f"{prof['batch_size'] * prof['uratio']} unlabeled, p_cutoff {prof['p_cutoff']}, "
        f"{prof['threshold_mode']} thresholds), warm start; query {prof['query']}. "
        f"Evaluation: {result['evaluated_on']}. "
        f"Wall time {result['wall_s'] / 60:.1f} min on {result['device']}.",
        "",
        "Accuracy (mean ± std over seeds) at each label fraction; last column: % of full supervision at 8%.",
        "",
        "| method | seeds | " + " | ".join(fracs) + " | % of full @ 8% |",
        "|---|---|" + "---|" * len(fracs) + "---|",
    ]
    full = s.get("full_supervision")
    for method, m in s.items():
        if method == "full_supervision":
            continue
        cells = [f"{a:.3f} ± {d:.3f}" for a, d in zip(m["accuracy_mean"], m["accuracy_std"], strict=True)]
        md.append(
            f"| {method} | {len(m['seeds'])} | "
            + " | ".join(cells)
            + f" | {m['pct_of_full_supervision'][-1]:.1f}% |"
        )
    if full:
        md.append(
            f"| full_supervision (100% labels) | {len(full['seeds'])} | "
            + " | ".join([""] * (len(fracs) - 1))
            + f" | {full['accuracy_mean'][0]:.3f} ± "
            f"{full['accuracy_std'][0]:.3f} | 100% |"
        )
    md += ["", "Checks (mean accuracy): " + "; ".join(result["checks"]), ""]
    (out_dir / f"{tag}.md").write_text("\n".join(md) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, m in s.items():
        x = [100 * f for f in m["label_fraction"]]
        if method == "full_supervision":
            ax.axhline(m["accuracy_mean"][0], color="k", ls="--", lw=1, label="full supervision (100%)")
            continue
        lw = 2.5 if method == "hssal" else 1.2
        ax.errorbar(
            x, m["accuracy_mean"], yerr=m["accuracy_std"], marker="o", ms=3, lw=lw, capsize=2, label=method
        )
    ax.set_xlabel("% of training labels")
    ax.set_ylabel("test accuracy" if "test" in result["evaluated_on"] else "validation accuracy")
    ax.set_title(f"UCM label efficiency ({result['profile_name']} profile)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / f"{tag}.png", dpi=120)
    print("\n".join(md))


def checks(summary: dict[str, Any]) -> list[str]:
    out = []
    h = summary.get("hssal")
    for other in ("ssl_random", "supervised_hal"):
        o = summary.get(other)
        if h and o:
            fr = [
                f"{100 * f:.0f}%"
                for f, a, b in zip(h["label_fraction"], h["accuracy_mean"], o["accuracy_mean"], strict=True)
                if a < b
            ]
            out.append(
                f"hssal >= {other} at every fraction: "
                + ("yes" if not fr else f"NO (below at {', '.join(fr)})")
            )
    if h and "full_supervision" in summary:
        out.append(f"hssal at 8% = {h['pct_of_full_supervision'][-1]:.1f}% of full supervision (goal >= 95%)")
    return out


# --------------------------------------------------------------------------- main

_SHARED: tuple[Any, ...] = ()


def _run_one(task: tuple[str, int]) -> dict[str, Any]:
    import torch

    cfg, data, schedule, device, threads = _SHARED
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    res = run_method(cfg, task[0], data, schedule, task[1], device)
    res["wall_s"] = time.perf_counter() - t0
    return res


def add_run_arguments(p: argparse.ArgumentParser, tag: str, jobs_help: str) -> None:
    """Arguments shared by the in-process UCM benchmarks: data, recipe, devices, outputs, overrides."""
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ucm"))
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument(
        "--config", default=None, help="loop config to take the recipe from (default: the profile's)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.0, help="tune on a held-out part of the training split"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads per job (default: cores / jobs)"
    )
    p.add_argument("--jobs", type=int, default=1, help=jobs_help)
    p.add_argument("--tag", default=tag, help="output file stem")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value (e.g. ssl.p_cutoff=0.9)")


def setup_run(args: argparse.Namespace) -> tuple[Any, str, str, int]:
    """(config, its path, device, torch threads per job) from :func:`add_run_arguments`' arguments."""
    import torch

    from hssal_ray.config import load_config

    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    torch.set_num_threads(threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg_path = args.config or str(REPO / PROFILES[args.profile])
    return load_config(cfg_path, [f"data.root={args.data}", *args.overrides]), cfg_path, device, threads


def evaluated_on(val_fraction: float) -> str:
    """What the reported accuracy is measured on (``--val-fraction`` 0: the test split)."""
    if val_fraction:
        return f"validation = {val_fraction:.0%} of the training split (test split unused)"
    return "the test split (20% per class, catalog seed 0)"


def map_jobs(fn: Any, todo: list, jobs: int, device: str) -> list:
    """``[fn(t) for t in todo]``, in ``jobs`` forked processes on CPU (the children share the decoded
    images copy-on-write; no torch threads exist yet), in order."""
    if jobs > 1 and device == "cpu":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork")) as ex:
            return list(ex.map(fn, todo))
    return [fn(t) for t in todo]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(
        p,
        "label_efficiency",
        "loops run in parallel processes (CPU: 1 thread each is faster than 2 threads in one, "
        "and robust to other load)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for the primary methods")
    p.add_argument(
        "--secondary-seeds", type=int, default=None, help="seeds for the other methods (default: --seeds)"
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.04, 0.06, 0.08])
    args = p.parse_args(argv)

    cfg, cfg_path, device, threads = setup_run(args)
    t_all = time.perf_counter()
    load0 = os.getloadavg()
    data = load_images(cfg, args.data, args.val_fraction)
    n_train = len(data["train"][0])
    schedule = [max(1, round(f * n_train)) for f in args.fractions]
    print(
        f"[label_efficiency] {n_train} train / {len(data['test'][0])} eval images, schedule {schedule}, "
        f"recipe {cfg_path}, device {device}",
        file=sys.stderr,
        flush=True,
    )
    n_sec = args.secondary_seeds if args.secondary_seeds is not None else args.seeds
    todo = [
        (m, seed)
        for seed in range(max(args.seeds, n_sec))
        for m in args.methods
        if seed < (args.seeds if m in PRIMARY else n_sec)
    ]
    global _SHARED
    _SHARED = (cfg, data, schedule, device, threads)
    runs = map_jobs(_run_one, todo, args.jobs, device)
    summary = summarize(runs, schedule, n_train)
    prof = {
        "config": os.path.relpath(cfg_path, REPO),
        "overrides": args.overrides,
        "model": cfg.ssl.model,
        "image_size": cfg.data.image_size,
        "steps_per_round": cfg.ssl.steps_per_round,
        "batch_size": cfg.ssl.batch_size,
        "uratio": cfg.ssl.uratio,
        "p_cutoff": cfg.ssl.p_cutoff,
        "threshold_mode": cfg.ssl.threshold_mode,
        "lr": cfg.ssl.lr,
        "ema_m": cfg.ssl.ema_m,
        "query": f"{cfg.query.uncertainty} uncertainty, coarse_k {cfg.query.coarse_k} (0 = auto), "
        f"fine {cfg.query.fine_method}",
        "full_supervision_steps": cfg.ssl.steps_per_round * len(schedule),
    }
    result = {
        "benchmark": "label_efficiency",
        "command": "python -m benchmarks.label_efficiency "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": f"{platform.machine()} {device} ({os.cpu_count()} cores, "
        f"{args.jobs} jobs x {threads} torch threads)",
        "loadavg_before_after": [load0, os.getloadavg()],
        "profile_name": args.profile,
        "profile": prof,
        "evaluated_on": evaluated_on(args.val_fraction),
        "n_train": n_train,
        "schedule": schedule,
        "label_fractions": [n / n_train for n in schedule],
        "bad_samples": data["bad_train"] + data["bad_test"],
        "wall_s": time.perf_counter() - t_all,
        "summary": summary,
        "runs": runs,
    }
    result["checks"] = checks(summary)
    write_outputs(Path(args.out), result, args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
