"""The ``evaluate`` stage: test the round's model, write its ``metrics.jsonl`` row, decide if it is the last.

The accuracy comes from the run's learner (:meth:`hssal_ray.learners.base.Learner.evaluate`), on
``data.eval_split``, for the eval model and the other weights (EMA vs online). The row also
carries the round's training figures (``train_metrics.json``) and wall times. ``num_labeled``
counts the labeled images the round could train on; labeled images listed in ``bad_samples.csv``
are counted apart (``num_labeled_unreadable``)
and still count against ``loop.total_budget`` (they were asked for). :func:`is_final_round` is the
one rule for the last round by count; after it the run is ``done`` and the report is built (``loop.report``).
With ``loop.stop_kappa`` the score stage may end a run earlier (its predictions have settled), so a
round that is not last by count is reported to ``ctx.on_round`` (Ray Tune) there, once that is decided.
"""

from __future__ import annotations

import logging
import time

from hssal_ray import _io
from hssal_ray.config import ExperimentConfig
from hssal_ray.config.loop import label_count
from hssal_ray.loop.context import RunContext
from hssal_ray.loop.metrics import read_metrics
from hssal_ray.state import LabeledSet, RunState, round_dir

__all__ = ["run", "is_final_round", "build_report", "finish", "resume_stage"]

log = logging.getLogger(__name__)

#: the training figures of ``train_metrics.json`` copied into the round's metrics row
TRAIN_FIGURES = (
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


def is_final_round(
    cfg: ExperimentConfig, round_idx: int, num_labeled: int, pool_remaining: int, n_train: int
) -> bool:
    """Whether round ``round_idx`` is the run's last: the one rule the loop and Tune both apply.

    Last when ``loop.rounds`` query rounds are done, when ``loop.total_budget`` labels are reached
    (a fraction is resolved against the ``n_train`` training rows), or when the unlabeled pool is
    exhausted (nothing left to query).
    """
    total = label_count(cfg.loop.total_budget, n_train)
    return round_idx >= cfg.loop.rounds or (total > 0 and num_labeled >= total) or pool_remaining <= 0


def resume_stage(
    cfg: ExperimentConfig,
    state: RunState,
    rows: list[dict],
    asked: int,
    pool_remaining: int,
    n_train: int,
) -> str | None:
    """Where a finished run goes on when this invocation's loop settings no longer end it, else None.

    A run that ended at its last round's ``evaluate`` (by count: ``loop.rounds``, ``loop.total_budget``)
    goes on at that round's ``score``; one that ended at its ``score`` (its predictions settled,
    ``loop.stop_kappa``) at its ``query``. It goes on only if neither rule ends it now, with the
    labels it has (``asked``, unreadable ones included) and the pool that is left: e.g.
    ``--resume RUN loop.rounds=6`` after 3 rounds, or ``loop.stop_kappa=0`` after a settled stop.
    """
    from hssal_ray.rounds.stability import kappas_of, settled

    if state.status != "done" or not state.history or not rows or int(rows[-1]["round"]) != state.round:
        return None
    ended = state.history[-1][1]
    if ended not in ("evaluate", "score") or is_final_round(cfg, state.round, asked, pool_remaining, n_train):
        return None
    if ended == "score" and settled(kappas_of(rows), cfg.loop.stop_kappa, cfg.loop.stop_window) is not None:
        return None
    return "score" if ended == "evaluate" else "query"


def run(ctx: RunContext, state: RunState, t0: float) -> None:
    """Evaluate round ``state.round``, record its row, then advance (or finish the run).

    Once the row is written, ``ctx.on_round`` (if set) gets all ``metrics.jsonl`` rows so far: Ray
    Tune reports through it.
    """
    from hssal_ray.data.pipeline import collect_bad_samples

    cfg = ctx.cfg
    r = state.round
    ev = ctx.learner.evaluate(r)
    collect_bad_samples(ctx.run_dir)
    labeled = LabeledSet.load(ctx.run_dir)
    unreadable = len(set(labeled.ids) & ctx.bad_ids())
    usable = len(labeled) - unreadable
    train_m = _io.read_json(_io.join(round_dir(ctx.run_dir, r), "train_metrics.json"))
    n_train = ctx.split("train").num_rows
    times = {f"wall_s.{s}": secs for (rr, s, secs) in state.history if rr == r and s in ("train",)}
    times["wall_s.evaluate"] = time.perf_counter() - t0
    row = {
        "round": r,
        "num_labeled": usable,
        "num_labeled_unreadable": unreadable,
        "label_fraction": usable / max(n_train, 1),
        "n_train": n_train,
        "strategy": cfg.query.strategy,
        "ssl": cfg.ssl.enabled,
        "eval_model": cfg.ssl.eval_model,
        "eval_split": cfg.data.eval_split,
        **{k: v for k, v in ev.items()},
        **{k: train_m[k] for k in TRAIN_FIGURES if k in train_m},
        **times,
    }
    ctx.update_metrics(r, row, replace=True)
    pool_remaining = ctx.pool_rows(labeled).num_rows
    final = is_final_round(cfg, r, len(labeled), pool_remaining, n_train)
    if final and pool_remaining == 0 and r < cfg.loop.rounds:
        ctx.progress("[hssal] the unlabeled pool is exhausted: stopping")
    ctx.update_metrics(r, {"pool_remaining": pool_remaining, "final": bool(final)})
    lost = f"; {unreadable} more labeled but unreadable" if unreadable else ""
    if ev.get("test_samples") == 0:  # an archive nobody labeled: no split to test on
        acc = (
            f"no labeled {cfg.data.eval_split} images (the map's accuracy: python -m hssal_ray.predict, "
            "then python -m hssal_ray.assess; every round's: assess curve, docs/MAP_ACCURACY.md)"
        )
    else:
        acc = (
            f"{cfg.data.eval_split} accuracy {ev['test_accuracy']:.4f} "
            f"({cfg.ssl.eval_model}; online {ev.get('test_accuracy_online', float('nan')):.4f}, "
            f"EMA {ev.get('test_accuracy_ema', float('nan')):.4f})"
        )
    ctx.progress(
        f"[hssal] round {r} evaluate: {time.perf_counter() - t0:.1f} s; {usable} labels "
        f"({row['label_fraction']:.1%}{lost}), {acc}, mask rate {train_m.get('mask_rate', float('nan')):.2f}"
    )
    if ctx.on_round is not None and (final or cfg.loop.stop_kappa <= 0):
        ctx.on_round(read_metrics(ctx.run_dir))  # else the score stage reports, once it has decided
    if final:
        finish(ctx, state, "evaluate", time.perf_counter() - t0)
    else:
        state.advance(ctx.run_dir, "evaluate", time.perf_counter() - t0)
        build_report(ctx)


def finish(ctx: RunContext, state: RunState, stage: str, seconds: float) -> None:
    """End the run after ``stage`` of its last round: ``state.json`` says done, the report is built."""
    state.history.append([state.round, stage, round(seconds, 3)])
    state.stage, state.status = "done", "done"
    state.save(ctx.run_dir)
    build_report(ctx)


def build_report(ctx: RunContext) -> None:
    """Rebuild ``RUN/report/`` when ``loop.report`` is on; a failing report only logs a warning."""
    if not ctx.cfg.loop.report:
        return
    try:
        from hssal_ray.report import build_report as _build

        _build([ctx.run_dir], _io.join(ctx.run_dir, "report"))
    except Exception as e:  # a report must never kill a training run
        log.warning("report failed: %s", e)
