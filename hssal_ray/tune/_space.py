"""Search spaces, trial configs, trial names and the learning-curve AUC (pure Python, no Ray).

A sweep's ``tune.search_space`` maps dotted config keys to one of::

    query.budget:   {grid: [5, 10, 20]}        # every value, in every combination (Tune grid_search)
    ssl.p_cutoff:   {choice: [0.8, 0.9, 0.95]} # one value drawn per sample
    ssl.lambda_u:   {uniform: [0.5, 2.0]}      # float in [lo, hi]
    ssl.lr:         {loguniform: [0.003, 0.3]} # float, log-uniform in [lo, hi]
    query.coarse_k: {randint: [2, 10]}         # int in [lo, hi)  (upper bound excluded, as in Tune)

A bare list is shorthand for ``{grid: [...]}``. Every key is checked against the config dataclasses
(with each grid/choice value and both bounds of a range) before Ray starts.

Rounds at a fixed total budget: when the space holds ``query.budget``, ``loop.initial_labeled`` or
``loop.total_budget`` and ``loop.total_budget > 0``, each trial's ``loop.rounds`` is set to
``ceil((total_budget - initial_labeled) / budget)``, so a smaller query size runs more rounds and
every trial ends at the same number of labels (the runner trims the last batch to the budget).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

from hssal_ray.config import ExperimentConfig, TuneConfig, config_from_dict, config_to_dict
from hssal_ray.config.loading import set_dotted
from hssal_ray.errors import ConfigError

__all__ = [
    "ParamSpec",
    "REPEAT_KEY",
    "parse_search_space",
    "check_search_space",
    "validate_space",
    "trial_config",
    "trial_name",
    "planned_labels",
    "label_axis",
    "max_reports",
    "learning_curve_auc",
    "round_metrics",
    "sweep_fingerprint",
]

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
REPEAT_KEY = "_repeat"
"""Param-space key carrying the repeat index (``tune.num_samples`` becomes a grid over it)."""

# Keys a trial may not override: where things run, the sweep itself, and the run's identity.
_FORBIDDEN = ("tune", "resources", "loop.name", "loop.run_dir", "oracle.kind")
# Keys whose values change how many rounds a trial runs.
_ROUND_KEYS = ("query.budget", "loop.initial_labeled", "loop.total_budget")


@dataclass(frozen=True)
class ParamSpec:
    """One searched config key.

    Args:
        key: Dotted config key, e.g. ``ssl.p_cutoff``.
        kind: One of ``grid``, ``choice``, ``uniform``, ``loguniform``, ``randint``.
        values: The grid/choice values, or ``(lo, hi)`` of a range.
    """

    key: str
    kind: str
    values: tuple[Any, ...]

    def candidates(self) -> list[Any]:
        """Values to validate (and to bound the number of rounds): all of a grid/choice, a range's ends."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        lo, hi = self.values
        return [lo, hi - 1] if self.kind == "randint" else [lo, hi]


def _plain(v: Any) -> Any:
    """numpy scalars (what Tune samples) -> Python scalars, recursively for lists."""
    if hasattr(v, "item") and not isinstance(v, (list, tuple, dict)):
        try:
            return v.item()
        except (TypeError, ValueError):  # pragma: no cover - arrays of size > 1
            return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def parse_search_space(space: Mapping[str, Any], errors: list[str] | None = None) -> list[ParamSpec]:
    """Parse ``tune.search_space`` into specs (syntax only; see :func:`validate_space` for the keys).

    Args:
        space: The ``tune.search_space`` mapping.
        errors: Collect problems here instead of raising (the well-formed specs are returned).

    Raises:
        ConfigError: Listing every malformed entry at once (when ``errors`` is None).
    """
    specs: list[ParamSpec] = []
    collect = errors is not None
    errors = [] if errors is None else errors
    for key, raw in space.items():
        where = f"tune.search_space['{key}']"
        if not isinstance(key, str) or not key or key.startswith(".") or key.endswith(".") or ".." in key:
            errors.append(f"{where}: keys are dotted config keys such as 'ssl.p_cutoff'")
            continue
        if key == REPEAT_KEY:
            errors.append(f"{where}: '{REPEAT_KEY}' is reserved (repeats come from tune.num_samples)")
            continue
        if any(key == f or key.startswith(f + ".") for f in _FORBIDDEN):
            errors.append(
                f"{where}: a trial may only change science settings, not {', '.join(_FORBIDDEN)} "
                "(the sweep sets each trial's loop.name and loop.run_dir itself)"
            )
            continue
        if isinstance(raw, list):
            raw = {"grid": raw}
        if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in KINDS:
            errors.append(f"{where}: expected one of {{{': [...]}, {'.join(KINDS)}: [...]}}, got {raw!r}")
            continue
        kind, vals = next(iter(raw.items()))
        if not isinstance(vals, list) or not vals:
            errors.append(f"{where}: {kind} needs a non-empty list, got {vals!r}")
            continue
        if kind in ("uniform", "loguniform", "randint"):
            num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
            if len(vals) != 2 or not num or not vals[0] < vals[1]:
                errors.append(f"{where}: {kind} needs [lo, hi] numbers with lo < hi, got {vals!r}")
                continue
            if kind == "loguniform" and vals[0] <= 0:
                errors.append(f"{where}: loguniform needs lo > 0, got {vals!r}")
                continue
            if kind == "randint" and not all(isinstance(v, int) for v in vals):
                errors.append(f"{where}: randint needs integers [lo, hi), got {vals!r}")
                continue
        specs.append(ParamSpec(key, kind, tuple(vals)))
    if errors and not collect:
        raise ConfigError("invalid search space:\n  " + "\n  ".join(errors))
    return specs


def _adapt_rounds(d: dict[str, Any], params: Mapping[str, Any]) -> None:
    loop, query = d["loop"], d["query"]
    if loop["total_budget"] > 0 and any(k in params for k in _ROUND_KEYS):
        # 1e-9: fractions (0.08 - 0.02) / 0.02 must give 3 rounds, not ceil(3.0000000000000004) = 4
        loop["rounds"] = max(
            0, math.ceil((loop["total_budget"] - loop["initial_labeled"]) / query["budget"] - 1e-9)
        )


def trial_config(
    base: ExperimentConfig | Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    run_dir: str | None = None,
    name: str | None = None,
    repeat: int = 0,
) -> ExperimentConfig:
    """The loop config of one trial: base config + sampled params (+ adapted rounds).

    Args:
        base: The sweep's base config (or its dict form).
        params: ``{dotted key: value}`` as sampled by Tune.
        run_dir: ``loop.run_dir`` of the trial (the sweep directory).
        name: ``loop.name`` of the trial (default: :func:`trial_name`).
        repeat: Repeat index (``tune.num_samples``); repeat k runs with ``seed + k`` unless
            ``seed`` itself is searched.

    Raises:
        ConfigError: A key or value the config rejects.
    """
    d = json.loads(json.dumps(config_to_dict(base) if isinstance(base, ExperimentConfig) else dict(base)))
    params = {k: _plain(v) for k, v in params.items() if k != REPEAT_KEY}
    for k, v in params.items():
        set_dotted(d, k, v, leaf_only=True)
    if repeat and "seed" not in params:
        d["seed"] = int(d.get("seed", 0)) + int(repeat)
    d.setdefault("loop", {})
    d.setdefault("query", {})
    # fill the defaults the rounds rule reads, then adapt
    defaults = config_to_dict(ExperimentConfig())
    for sec in ("loop", "query"):
        d[sec] = {**defaults[sec], **d[sec]}
    _adapt_rounds(d, params)
    if run_dir is not None:
        d["loop"]["run_dir"] = run_dir
    d["loop"]["name"] = name or trial_name(params, repeat)
    d["tune"] = config_to_dict(TuneConfig())  # a trial is a plain loop run
    return config_from_dict(d)


def check_search_space(base: ExperimentConfig) -> list[ParamSpec]:
    """Parse and validate ``base.tune.search_space``; one error lists every problem (syntax and keys).

    Raises:
        ConfigError: An empty space, malformed entries, unknown keys, wrong types, bad values.
    """
    if not base.tune.search_space:
        raise ConfigError(
            "tune.search_space is empty: give at least one key, e.g. query.budget: {grid: [5, 10]}"
        )
    errors: list[str] = []
    specs = parse_search_space(base.tune.search_space, errors)
    validate_space(base, specs, errors)
    return specs


def validate_space(
    base: ExperimentConfig, specs: Sequence[ParamSpec], errors: list[str] | None = None
) -> None:
    """Build a trial config for every candidate value of every key; raise one error listing all problems.

    Also rejects sweeps that cannot run unattended or that set ``loop.rounds`` twice.

    Args:
        base: The sweep's base config.
        specs: Parsed specs.
        errors: Problems found earlier (e.g. by :func:`parse_search_space`), reported together.

    Raises:
        ConfigError: Unknown keys, wrong types, out-of-range values.
    """
    errors = list(errors or [])
    if base.oracle.kind != "simulated":
        errors.append("a sweep needs oracle.kind=simulated (a human oracle would stop every trial)")
    keys = {s.key for s in specs}
    if "loop.rounds" in keys and base.loop.total_budget > 0 and keys & set(_ROUND_KEYS):
        errors.append(
            "loop.rounds is derived from loop.total_budget and query.budget in this sweep; "
            "search over loop.rounds only with loop.total_budget=0"
        )
    for s in specs:
        for v in s.candidates():
            try:
                trial_config(base, {s.key: v}, name="validate")
            except ConfigError as e:
                errors.append(f"tune.search_space['{s.key}'] = {v!r}: {e}")
                break
    if errors:
        raise ConfigError("invalid sweep:\n  " + "\n  ".join(errors))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "x".join(_fmt(x) for x in v)
    return str(v)


def trial_name(params: Mapping[str, Any], repeat: int = 0) -> str:
    """Stable, filesystem-safe run name of a trial, derived from its params only.

    The same params (and repeat index) always give the same name, so a restarted trial resumes
    its own run directory. Readable part: ``<last key part>=<value>`` joined by ``-``; the suffix
    is a hash of the exact values, so rounding in the readable part cannot collide.

    Example:
        >>> trial_name({"query.budget": 5, "ssl.p_cutoff": 0.9})
        'budget=5-p_cutoff=0.9_...'  # doctest: +SKIP
    """
    params = {k: _plain(v) for k, v in params.items() if k != REPEAT_KEY}
    canon = json.dumps({"params": params, "repeat": int(repeat)}, sort_keys=True, default=str)
    digest = hashlib.sha1(canon.encode()).hexdigest()[:8]
    slug = "-".join(f"{k.rsplit('.', 1)[-1]}={_fmt(params[k])}" for k in sorted(params)) or "base"
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", slug)[:80]
    prefix = f"r{int(repeat)}-" if repeat else ""
    return f"{prefix}{slug}_{digest}"


def label_axis(cfg: ExperimentConfig) -> str:
    """The ``metrics.jsonl`` field in the budgets' unit: ``label_fraction`` or ``num_labeled``."""
    from hssal_ray.config.loop import budget_unit

    return "label_fraction" if budget_unit(cfg.loop) == "fraction" else "num_labeled"


def planned_labels(cfg: ExperimentConfig) -> float:
    """Labels at the end of the trial's budget: ``initial + rounds * budget``, capped by ``total_budget``
    (in the budgets' unit: a count, or a fraction of the training split)."""
    n = cfg.loop.initial_labeled + cfg.loop.rounds * cfg.query.budget
    return min(n, cfg.loop.total_budget) if cfg.loop.total_budget > 0 else n


def max_reports(base: ExperimentConfig, specs: Sequence[ParamSpec]) -> int:
    """Most rounds (reports, incl. round 0) any trial of the space can run: ASHA's time horizon."""
    round_specs = [s for s in specs if s.key in (*_ROUND_KEYS, "loop.rounds")]
    best = 0
    for combo in product(*[s.candidates() for s in round_specs]):
        params = {s.key: v for s, v in zip(round_specs, combo, strict=True)}
        try:
            best = max(best, trial_config(base, params, name="horizon").loop.rounds)
        except ConfigError:
            continue
    return best + 1


def learning_curve_auc(points: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Normalised area under the accuracy-vs-labels curve.

    ``acc(n)`` interpolates the ``(num_labeled, accuracy)`` points linearly and is held flat
    before the first and after the last point. The AUC is its mean over the label range of the
    budget::

        auc = 1 / (end - start) * integral_{start}^{end} acc(n) dn

    with ``start`` = the cold-start size (``loop.initial_labeled``) and ``end`` = the labels at
    the end of the budget (:func:`planned_labels`). Holding the last accuracy to ``end`` makes a
    trial that ASHA stopped after a few rounds comparable with a finished one (it is scored as if
    it never improved again), and a curve that stays at accuracy ``a`` scores exactly ``a``. The
    same number results from label fractions instead of counts (the scale cancels). If
    ``end <= start`` (no query rounds) the AUC is the last accuracy.

    Args:
        points: ``(num_labeled, accuracy)`` per evaluated round.
        start: Left end of the label range.
        end: Right end of the label range.

    Returns:
        The AUC in accuracy units (in [0, 1] for accuracies in [0, 1]); NaN without points.
    """
    import numpy as np

    pts = sorted((float(n), float(a)) for n, a in points if a is not None and not math.isnan(float(a)))
    if not pts:
        return float("nan")
    if end <= start:
        return pts[-1][1]
    xs: list[float] = []
    ys: list[float] = []
    for x, y in pts:  # one value per x (the later round wins)
        if xs and xs[-1] == x:
            ys[-1] = y
        else:
            xs.append(x)
            ys.append(y)
    knots = sorted({start, end, *[x for x in xs if start < x < end]})
    vals = np.interp(knots, xs, ys)
    area = float(np.sum((vals[1:] + vals[:-1]) * np.diff(knots)) / 2.0)
    return area / (end - start)


def round_metrics(
    rows: Sequence[Mapping[str, Any]], start: float, end: float, x_key: str = "num_labeled"
) -> dict[str, Any]:
    """What a trial reports to Tune after a round, from the ``metrics.jsonl`` rows so far
    (``x_key``: the learning curve's x axis, in the unit of ``start`` and ``end``)."""
    last = rows[-1]
    acc = last.get("test_accuracy")
    return {
        "round": int(last["round"]),
        "num_labeled": int(last["num_labeled"]),
        "label_fraction": float(last.get("label_fraction", float("nan"))),
        "test_accuracy": float(acc) if acc is not None else float("nan"),
        "final_accuracy": float(acc) if acc is not None else float("nan"),
        "auc": learning_curve_auc([(r[x_key], r.get("test_accuracy")) for r in rows], start, end),
        "mask_rate": float(last.get("mask_rate", float("nan"))),
    }


def sweep_fingerprint(cfg: ExperimentConfig) -> str:
    """Hash of what makes two invocations the *same* sweep (all but where/how it runs)."""
    d = config_to_dict(cfg)
    d.pop("resources", None)
    for k in ("max_concurrent_trials", "cpus_per_trial", "gpus_per_trial", "storage"):
        d["tune"].pop(k, None)
    d["loop"].pop("run_dir", None)
    d["loop"].pop("report", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
