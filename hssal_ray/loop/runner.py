"""The resumable closed-loop driver: train -> evaluate -> score -> query -> label, round after round.

``state.json`` names the next stage; every stage writes its outputs (atomically) before the
state advances, and every stage is idempotent, so re-running the same command after a crash,
a SIGKILL or a human hand-off continues at the first unfinished stage and ends with the same
labeled set as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from hssal_ray import _io
from hssal_ray.config import (
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    science_fields,
)
from hssal_ray.errors import DataError, StateError
from hssal_ray.state import LabeledSet, RunState, round_dir

__all__ = ["LoopRunner", "science_sha", "read_metrics", "is_final_round"]

log = logging.getLogger(__name__)


def science_sha(cfg: ExperimentConfig) -> str:
    """Hash of the fields that determine the run's results (those not marked runtime in config.py)."""
    d = science_fields(cfg)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_final_round(cfg: ExperimentConfig, round_idx: int, num_labeled: int, pool_remaining: int) -> bool:
    """Whether round ``round_idx`` is the run's last: the one rule the loop and Tune both apply.

    Last when ``loop.rounds`` query rounds are done, when ``loop.total_budget`` labels are reached,
    or when the unlabeled pool is exhausted (nothing left to query).
    """
    return (
        round_idx >= cfg.loop.rounds
        or (cfg.loop.total_budget > 0 and num_labeled >= cfg.loop.total_budget)
        or pool_remaining <= 0
    )


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (one per evaluated round), in round order."""
    p = _io.join(run_dir, "metrics.jsonl")
    if not _io.exists(p):
        return []
    rows = [json.loads(line) for line in _io.read_text(p).splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["round"])


class LoopRunner:
    """Runs (or resumes) one closed-loop experiment in its run directory.

    Args:
        cfg: The resolved experiment config.
        progress: Called with one summary line per finished stage/round (default: stderr).
        on_round: Called after every evaluated round with all ``metrics.jsonl`` rows so far
            (Ray Tune reports through this).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        progress: Callable[[str], None] | None = None,
        on_round: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_round = on_round
        self.run_dir = cfg.run_path
        self.progress = progress or (lambda s: print(s, file=sys.stderr, flush=True))
        self._catalog: Any = None
        self._oracle: Any = None
        self._lease: Any = None  # the run directory's RunLease while run() holds it

    # ------------------------------------------------------------------ setup
    def _setup(self) -> RunState:
        state = RunState.load(self.run_dir)
        sha = science_sha(self.cfg)
        if state is not None and state.config_sha and state.config_sha != sha:
            raise StateError(
                f"run directory {self.run_dir} was started with a different config "
                "(science settings changed). "
                "Use another loop.name, or `--resume RUN` to continue it with its own config."
            )
        _io.makedirs(self.run_dir)
        if state is None or state.status != "done":  # a finished run's files stay untouched
            _io.atomic_write_text(_io.join(self.run_dir, "config.yaml"), config_to_yaml(self.cfg))
        self._load_catalog()
        if state is None:
            state = RunState(config_sha=sha, seed=self.cfg.seed)
            state.save(self.run_dir)
        return state

    def _load_catalog(self) -> None:
        from hssal_ray.data.catalog import Catalog, scan

        path = _io.join(self.run_dir, "manifest.parquet")
        if _io.exists(path):
            self._catalog = Catalog.load(path)
            return
        root = self.cfg.data.root
        if root is None:
            from hssal_ray.data.synthetic import make_synthetic_rs

            root = _io.join(self.run_dir, "synthetic_data")
            if not _io.exists(_io.join(root, ".complete")):
                make_synthetic_rs(
                    root,
                    num_classes=self.cfg.data.synthetic_classes,
                    per_class=self.cfg.data.synthetic_per_class,
                    size=self.cfg.data.synthetic_size,
                    seed=self.cfg.seed,
                    bands=self.cfg.data.bands,
                    fmt="png" if self.cfg.data.bands in (1, 3, 4) else "tif",
                )
                _io.atomic_write_text(_io.join(root, ".complete"), "ok\n")
            self.progress(f"[hssal] no data.root given: generated the synthetic demo dataset in {root}")
        layout = {"imagefolder": "imagefolder", "flat": "flat", "shards": "shards"}.get(
            self.cfg.data.layout, "auto"
        )
        cat = scan(
            root,
            test_fraction=self.cfg.data.test_fraction,
            seed=self.cfg.seed,
            layout=layout,
            val_fraction=self.cfg.data.val_fraction,
        )
        cat.save(path)
        _io.atomic_write_json(_io.join(self.run_dir, "classes.json"), list(cat.class_names))
        self._catalog = Catalog.load(path)
        self.progress(f"[hssal] catalog: {cat.summary()}")

    @property
    def catalog(self) -> Any:
        """The run's manifest (``hssal_ray.data.catalog.Catalog``)."""
        return self._catalog

    def _split(self, split: str) -> pa.Table:
        return self.catalog.split_table(split)  # no copy when every row is in the split

    def _bad_ids(self) -> set[str]:
        p = _io.join(self.run_dir, "bad_samples.csv")
        if not _io.exists(p):
            return set()
        return {r["sample_id"] for r in csv.DictReader(io.StringIO(_io.read_text(p)))}

    def _labeled_rows(self, labeled: LabeledSet) -> pa.Table:
        """Manifest rows of the labeled set, carrying the ORACLE's labels (in labeled order)."""
        train = self._split("train")
        lab = labeled.labels()
        mask = pc.is_in(train.column("sample_id"), value_set=pa.array(list(lab), pa.string()))
        rows = train.filter(mask)
        labels = pa.array([lab[s] for s in rows.column("sample_id").to_pylist()], pa.int32())
        return rows.set_column(rows.schema.get_field_index("label"), "label", labels)

    def _pool_rows(self, labeled: LabeledSet) -> pa.Table:
        return self._train_rows_without(set(labeled.ids) | self._bad_ids())

    def _train_rows_without(self, exclude: set[str]) -> pa.Table:
        train = self._split("train")
        if not exclude:
            return train
        mask = pc.invert(
            pc.is_in(train.column("sample_id"), value_set=pa.array(sorted(exclude), pa.string()))
        )
        return train.filter(mask)

    def _scored_rows(self) -> pa.Table:
        """What the score stage scores: the unlabeled pool *and* the labeled set.

        The query stage marks the labeled rows (``Pool.exclude``) so that no strategy selects them,
        while coreset starts from them as centres and TypiClust skips the clusters holding them.
        """
        return self._train_rows_without(self._bad_ids())

    def _oracle_for(self) -> Any:
        if self._oracle is not None:
            return self._oracle
        names = list(self.catalog.class_names)
        if self.cfg.oracle.kind == "simulated":
            from hssal_ray.oracle import SimulatedOracle

            t = self.catalog.table
            gt = {
                s: int(lbl)
                for s, lbl in zip(
                    t.column("sample_id").to_pylist(), t.column("label").to_pylist(), strict=True
                )
                if lbl is not None and lbl >= 0
            }
            self._oracle = SimulatedOracle(gt, names)
        else:
            from hssal_ray.oracle import human_oracle_from_config

            ids = self.catalog.table.column("sample_id")
            self._oracle = human_oracle_from_config(self.cfg.oracle, names, self._load_image_hwc, ids)
        return self._oracle

    def _load_image_hwc(self, sample_id: str) -> np.ndarray:
        from hssal_ray.data.catalog import load_bytes
        from hssal_ray.data.decode import decode_image

        t = self.catalog.table
        row = t.filter(pc.equal(t.column("sample_id"), sample_id))
        data = load_bytes(self.catalog.root, self.catalog.kind, row)[0]
        if data is None:
            raise DataError(f"cannot read {sample_id}")
        img = decode_image(data, bands=self.cfg.data.bands)
        return np.transpose(img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, 0), (1, 2, 0))

    # ------------------------------------------------------------------ public
    def run(
        self, labels_file: str | None = None, *, force_unlock: bool = False, lease_wait_s: float = 0.0
    ) -> RunState:
        """Run until the loop is done or waits for human labels, holding the run directory's lease.

        Args:
            labels_file: A human label file answering the pending query (``--labels``).
            force_unlock: Take the lease over even if another driver seems to hold it.
            lease_wait_s: Wait this long for a held lease to free up before refusing.

        Raises:
            LeaseHeldError: Another driver runs this run directory (nothing was written).
            LeaseLostError: Another driver took the run over meanwhile (this one stopped).
        """
        from hssal_ray.loop.lease import RunLease

        lease = RunLease(
            self.run_dir, timeout_s=self.cfg.loop.lease_timeout_s, force=force_unlock, wait_s=lease_wait_s
        )
        with lease:
            self._lease = lease
            try:
                return self._run(labels_file)
            finally:
                self._lease = None

    def _check_lease(self) -> None:
        """Stop (``LeaseLostError``) if another driver took the run over; called before state writes."""
        if self._lease is not None:
            self._lease.check()

    def _run(self, labels_file: str | None) -> RunState:
        state = self._setup()
        state.set_write_guard(self._check_lease)
        if state.status == "done":
            self.progress(
                f"[hssal] run {self.run_dir} is already finished ({state.round} rounds); nothing to do"
            )
            return state
        if labels_file is not None:
            self._import_labels(state, labels_file)
        elif state.status == "awaiting_labels" and getattr(self._oracle_for(), "pulls_labels", False):
            state.status = "running"  # in memory: the label stage pulls the answer (saved once it advances)
        from hssal_ray._ray import ensure_ray

        ensure_ray(self.cfg.resources)
        while state.status == "running":
            t0 = time.perf_counter()
            stage = state.stage
            _fault_delay(stage, state.round)
            self._check_lease()
            r = state.round
            getattr(self, f"_stage_{stage}")(state, t0)
            if stage in ("train", "score", "query"):
                self.progress(
                    f"[hssal] round {r} {stage}: {time.perf_counter() - t0:.1f} s{self._figure(r, stage)}"
                )
        return state

    def _figure(self, r: int, stage: str) -> str:
        """The key figure of a finished stage for its console line."""
        row = next((m for m in read_metrics(self.run_dir) if m["round"] == r), {})
        if stage == "train":
            p = _io.join(round_dir(self.run_dir, r), "train_metrics.json")
            m = _io.read_json(p) if _io.exists(p) else {}
            return f" ({int(m.get('step', 0))} steps, loss {m.get('loss', float('nan')):.3f})"
        if stage == "query":
            return f" ({self.cfg.query.strategy}, mean u {row.get('query_mean_u', float('nan')):.3f})"
        return ""

    # ------------------------------------------------------------------ stages
    def _pending_query(self, state: RunState) -> tuple[str, list[str], int]:
        """Directory, ids and ``round_added`` of the batch the oracle must answer now."""
        if state.stage == "init":
            d = _io.join(self.run_dir, "cold_start")
            return d, _read_query_ids(d), 0
        d = round_dir(self.run_dir, state.round)
        return d, _read_query_ids(d), state.round + 1

    def _import_labels(self, state: RunState, labels_file: str) -> None:
        if state.status != "awaiting_labels":
            raise StateError(
                f"run {self.run_dir} is not waiting for labels "
                f"(status {state.status!r}, stage {state.stage!r})"
            )
        oracle = self._oracle_for()
        if not hasattr(oracle, "import_labels"):
            raise StateError("--labels only applies to runs with oracle.kind=human or label_studio")
        d, ids, _ = self._pending_query(state)
        oracle.import_labels(d, ids, labels_file)  # validates first; raises before writing anything
        state.status = "running"
        state.save(self.run_dir)

    def _stage_init(self, state: RunState, t0: float) -> None:
        from hssal_ray.loop.cold_start import select_cold_start

        d = _io.join(self.run_dir, "cold_start")
        if not _io.exists(_io.join(d, "query.csv")):
            ids = select_cold_start(self)
            _write_query(d, ids, None, None)
        self._label(state, t0)

    def _label(self, state: RunState, t0: float) -> None:
        d, ids, round_added = self._pending_query(state)
        oracle = self._oracle_for()
        answer = oracle.collect(d, ids)
        if answer is None:
            oracle.request(d, ids, {"run_dir": self.run_dir, "round": state.round})
            state.status = "awaiting_labels"
            state.save(self.run_dir)
            text = oracle.instructions(d) if hasattr(oracle, "instructions") else ""
            self.progress(f"[hssal] waiting for labels of {len(ids)} samples.\n{text}")
            return
        if not answer.labels:
            raise StateError(f"the oracle answered none of the {len(ids)} queried samples in {d}")
        labeled = LabeledSet.load(self.run_dir).with_round(round_added, answer.labels, answer.source)
        labeled.save(self.run_dir)
        secs = time.perf_counter() - t0
        if state.stage == "init":
            state.advance(self.run_dir, "init", secs)
            self.progress(f"[hssal] cold start: {len(labeled)} labeled samples ({self.cfg.loop.cold_start})")
        else:
            self._update_metrics(state.round, {"wall_s.label": secs, "num_answered": answer.num_answered})
            state.advance(self.run_dir, "label", secs, next_round=True)

    def _stage_label(self, state: RunState, t0: float) -> None:
        self._label(state, t0)

    def _stage_train(self, state: RunState, t0: float) -> None:
        from hssal_ray.ssl.trainer import fit_round

        labeled = LabeledSet.load(self.run_dir)
        r = state.round
        prev = round_dir(self.run_dir, r - 1) if r > 0 else None
        init_dir = _io.join(prev, "checkpoint") if (prev and self.cfg.ssl.warm_start) else None
        if init_dir is not None and init_dir and not _io.is_uri(init_dir):
            init_dir = os.path.abspath(init_dir)
        if self.cfg.ssl.finetune == "frozen":
            from hssal_ray.frozen import rounds

            metrics = rounds.train(self, r, init_dir)
        else:
            metrics = fit_round(
                self.cfg,
                root=self.catalog.root,
                kind=self.catalog.kind,
                labeled=self._labeled_rows(labeled),
                pool=self._pool_rows(labeled),
                num_classes=len(self.catalog.class_names),
                round_idx=r,
                run_dir=self.run_dir,
                init_dir=init_dir,
            ).metrics
        train_metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        train_metrics["stage_started_at"] = time.time() - (time.perf_counter() - t0)
        train_metrics["stage_ended_at"] = time.time()
        _io.atomic_write_json(_io.join(round_dir(self.run_dir, r), "train_metrics.json"), train_metrics)
        state.advance(self.run_dir, "train", time.perf_counter() - t0)

    def _stage_evaluate(self, state: RunState, t0: float) -> None:
        from hssal_ray.data.pipeline import collect_bad_samples
        from hssal_ray.scoring import evaluate_split

        r = state.round
        rd = round_dir(self.run_dir, r)
        if self.cfg.ssl.finetune == "frozen":
            from hssal_ray.frozen import rounds

            ev = rounds.evaluate(self, r)
        else:
            ev = evaluate_split(
                self.cfg,
                self._split(self.cfg.data.eval_split),
                root=self.catalog.root,
                kind=self.catalog.kind,
                ckpt_dir=_io.join(rd, "checkpoint"),
                num_classes=len(self.catalog.class_names),
                run_dir=self.run_dir,
            )
        collect_bad_samples(self.run_dir)
        labeled = LabeledSet.load(self.run_dir)
        train_m = _io.read_json(_io.join(rd, "train_metrics.json"))
        n_train = self._split("train").num_rows
        times = {f"wall_s.{s}": secs for (rr, s, secs) in state.history if rr == r and s in ("train",)}
        times["wall_s.evaluate"] = time.perf_counter() - t0
        row = {
            "round": r,
            "num_labeled": len(labeled),
            "label_fraction": len(labeled) / max(n_train, 1),
            "strategy": self.cfg.query.strategy,
            "ssl": self.cfg.ssl.enabled,
            "eval_model": self.cfg.ssl.eval_model,
            "eval_split": self.cfg.data.eval_split,
            **{k: v for k, v in ev.items()},
            **{
                k: train_m[k]
                for k in (
                    "loss",
                    "sup_loss",
                    "unsup_loss",
                    "mask_rate",
                    "pseudo_label_acc",
                    "images_per_s_per_worker",
                    "step",
                    "global_step",
                    "ema_initial_weight",
                )
                if k in train_m
            },
            **times,
        }
        self._update_metrics(r, row, replace=True)
        pool_remaining = self._pool_rows(labeled).num_rows
        final = is_final_round(self.cfg, r, len(labeled), pool_remaining)
        if final and pool_remaining == 0 and r < self.cfg.loop.rounds:
            self.progress("[hssal] the unlabeled pool is exhausted: stopping")
        self._update_metrics(r, {"pool_remaining": pool_remaining, "final": bool(final)})
        self.progress(
            f"[hssal] round {r} evaluate: {time.perf_counter() - t0:.1f} s; {len(labeled)} labels "
            f"({row['label_fraction']:.1%}), test accuracy {ev['test_accuracy']:.4f} "
            f"(online {ev.get('test_accuracy_online', float('nan')):.4f}), "
            f"mask rate {train_m.get('mask_rate', float('nan')):.2f}"
        )
        if self.on_round is not None:
            self.on_round(read_metrics(self.run_dir))
        if final:
            state.history.append([r, "evaluate", round(time.perf_counter() - t0, 3)])
            state.stage, state.status = "done", "done"
            state.save(self.run_dir)
            self._report()
            self.progress(f"[hssal] done: {self.run_dir}")
        else:
            state.advance(self.run_dir, "evaluate", time.perf_counter() - t0)
            self._report()

    def _stage_score(self, state: RunState, t0: float) -> None:
        from hssal_ray.data.pipeline import collect_bad_samples
        from hssal_ray.scoring import score_pool

        r = state.round
        rd = round_dir(self.run_dir, r)
        if self.cfg.ssl.finetune == "frozen":
            from hssal_ray.frozen import rounds

            rounds.score(self, r, _io.join(rd, "scores.parquet"))
        else:
            score_pool(
                self.cfg,
                self._scored_rows(),
                root=self.catalog.root,
                kind=self.catalog.kind,
                ckpt_dir=_io.join(rd, "checkpoint"),
                num_classes=len(self.catalog.class_names),
                run_dir=self.run_dir,
                out_path=_io.join(rd, "scores.parquet"),
            )
        collect_bad_samples(self.run_dir)
        secs = time.perf_counter() - t0
        self._update_metrics(r, {"wall_s.score": secs})
        state.advance(self.run_dir, "score", secs)

    def _stage_query(self, state: RunState, t0: float) -> None:
        from hssal_ray.loop.query_stage import run_query

        r = state.round
        rd = round_dir(self.run_dir, r)
        labeled = LabeledSet.load(self.run_dir)
        budget = self.cfg.query.budget
        if self.cfg.loop.total_budget:
            budget = min(budget, self.cfg.loop.total_budget - len(labeled))
        ids, u, coarse, info = run_query(
            self.cfg, _io.join(rd, "scores.parquet"), budget, set(labeled.ids), r
        )
        _write_query(rd, ids, u, coarse)
        secs = time.perf_counter() - t0
        self._update_metrics(r, {"wall_s.query": secs, **info})
        state.advance(self.run_dir, "query", secs)

    # ------------------------------------------------------------------ outputs
    def _update_metrics(self, r: int, values: dict[str, Any], replace: bool = False) -> None:
        self._check_lease()
        rows = {m["round"]: m for m in read_metrics(self.run_dir)}
        row = {} if replace else dict(rows.get(r, {"round": r}))
        for k, v in values.items():
            if k.startswith("wall_s."):
                row.setdefault("wall_s", {})[k.split(".", 1)[1]] = round(float(v), 3)
            else:
                row[k] = v
        if not replace and r in rows:
            row = {**rows[r], **row, "wall_s": {**rows[r].get("wall_s", {}), **row.get("wall_s", {})}}
        rows[r] = row
        text = "".join(json.dumps(rows[k], default=_json_num) + "\n" for k in sorted(rows))
        _io.atomic_write_text(_io.join(self.run_dir, "metrics.jsonl"), text)

    def _report(self) -> None:
        if not self.cfg.loop.report:
            return
        try:
            from hssal_ray.report import build_report

            build_report([self.run_dir], _io.join(self.run_dir, "report"))
        except Exception as e:  # a report must never kill a training run
            log.warning("report failed: %s", e)


def _fault_delay(stage: str, r: int) -> None:
    """Testing hook: ``HSSAL_FAULT_DELAY="train@1=60"`` holds stage ``train`` of round 1 open 60 s.

    Lets fault-injection tests SIGKILL the driver reliably *inside* a stage.
    """
    spec = os.environ.get("HSSAL_FAULT_DELAY", "")
    for item in filter(None, spec.split(",")):
        where, _, secs = item.partition("=")
        st, _, rr = where.partition("@")
        if st == stage and rr and int(rr) == r:
            log.warning("HSSAL_FAULT_DELAY: holding stage %s of round %d for %s s", stage, r, secs)
            time.sleep(float(secs or 0))


def _json_num(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o).__name__)


def _write_query(d: str, ids: list[str], u: list[float] | None, coarse: list[int] | None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["sample_id", "rank", "u", "coarse_cluster"])
    for i, sid in enumerate(ids):
        w.writerow([sid, i + 1, "" if u is None else f"{u[i]:.6g}", "" if coarse is None else int(coarse[i])])
    _io.atomic_write_text(_io.join(d, "query.csv"), buf.getvalue())


def _read_query_ids(d: str) -> list[str]:
    p = _io.join(d, "query.csv")
    if not _io.exists(p):
        raise StateError(f"query file missing: {p}")
    return [r["sample_id"] for r in csv.DictReader(io.StringIO(_io.read_text(p)))]


def load_run_config(run_dir: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config a run was started with (``RUN/config.yaml``), with optional overrides."""
    from hssal_ray.config import apply_overrides

    p = _io.join(run_dir, "config.yaml")
    if not _io.exists(p):
        raise StateError(f"{run_dir} is not a run directory (no config.yaml)")
    values = yaml.safe_load(_io.read_text(p)) or {}
    cfg = config_from_dict(apply_overrides(values, overrides))
    parent, name = (
        os.path.split(os.path.normpath(run_dir))
        if not _io.is_uri(run_dir)
        else run_dir.rstrip("/").rsplit("/", 1)
    )
    if cfg.run_path != run_dir:
        d = config_to_dict(cfg)
        d["loop"]["run_dir"], d["loop"]["name"] = parent or ".", name
        cfg = config_from_dict(d)
    return cfg
