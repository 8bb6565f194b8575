"""The query interface: the :class:`Pool`, the :class:`QueryStrategy` ABC and the name registry.

Every strategy has one abstract method, ``select(pool, budget) -> row indices``, and follows the
scikit-learn conventions: ``__init__`` only stores keyword parameters (``random_state`` among
them), diagnostics set by ``select`` end with an underscore (``info_``), ``__repr__`` shows the
parameters. Validation shared by all strategies lives here: budget, empty/excluded pool, shapes
and NaN/inf rows.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from hssal_ray.errors import BudgetError, ConfigError, DataError, EmptyPoolError
from hssal_ray.query import uncertainty as unc

__all__ = [
    "Pool",
    "QueryStrategy",
    "register",
    "get_strategy_class",
    "available_strategies",
    "strategy_from_config",
    "nonfinite_rows",
    "top_k",
]

logger = logging.getLogger(__name__)


@dataclass
class Pool:
    """The unlabeled pool a strategy selects from (numpy arrays, row-aligned).

    Attributes:
        ids: (n,) sample ids (str, object dtype).
        embeddings: (n, d) L2-normalised embeddings (fp16 or fp32), or None. A torch tensor (CPU or
            CUDA) also works for the embedding strategies: HAL then runs its k-means on that device.
            A :class:`~hssal_ray.query.rowsource.RowSource` reads rows when indexed (the frozen
            loop's query: the store's rows, not the scores file's column).
        probs: (n, C) class probabilities, or None.
        scores: uncertainty columns, name (``u_badge``, ...) -> (n,) float.
        confident: (n,) bool, weak and strong views both confidently pseudo-labeled, or None.
        exclude: (n,) bool, rows that are already labeled and must never be selected, or None.
        pred: (n,) int predicted class, or None.
        labels: (n,) int the oracle's class of each labeled row, -1 for the others, or None (the
            loop sets it from ``labeled.parquet``; HAL's ``alloc_purity`` reads it).
    """

    ids: np.ndarray
    embeddings: Any = None  # np.ndarray | torch.Tensor | RowSource | None
    probs: np.ndarray | None = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    confident: np.ndarray | None = None
    exclude: np.ndarray | None = None
    pred: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.ids))

    def available(self) -> np.ndarray:
        """Row indices that may be selected (not excluded), ascending, (m,) int64."""
        if self.exclude is None:
            return np.arange(len(self), dtype=np.int64)
        return np.flatnonzero(~np.asarray(self.exclude, dtype=bool)).astype(np.int64)

    def uncertainty(self, name: str) -> np.ndarray:
        """The ``u_<name>`` column (n,) float32, computed from ``probs`` (and embeddings) when absent.

        Raises:
            DataError: the column is missing and cannot be computed from what the pool holds.
        """
        col = unc.score_column(name)
        if col in self.scores:
            return np.asarray(self.scores[col], dtype=np.float32)
        if self.probs is None or name in unc.NEEDS_COLUMN or (name == "badge" and self.embeddings is None):
            have = ", ".join(sorted(self.scores)) or "none"
            raise DataError(f"the pool has no {col!r} column and cannot compute it (score columns: {have})")
        fn = {"entropy": unc.entropy, "margin": unc.margin, "least_confidence": unc.least_confidence}
        return unc.badge_norm(self.probs, self.embeddings) if name == "badge" else fn[name](self.probs)


def nonfinite_rows(arr: Any, chunk_size: int = 8192) -> np.ndarray:
    """Row indices of ``arr`` ((n,) or (n, d), numpy or torch, any float dtype) holding NaN/inf.

    Rows are reduced in float32 chunks: a row sum is non-finite iff the row holds NaN/inf (fp16/fp32
    rows cannot overflow float32 unless the values are already ~1e32, which is bad data too).

    Returns:
        (k,) int64 row indices, ascending.
    """
    import torch

    from hssal_ray.query.rowsource import is_row_source

    if is_row_source(arr):  # block by block, as read: the whole matrix is never held
        found = [s + nonfinite_rows(rows, chunk_size) for s, rows in arr.blocks(chunk_size)]
        return np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)
    if isinstance(arr, torch.Tensor):
        t = arr.detach()
    else:
        a = np.asarray(arr)
        if not np.issubdtype(a.dtype, np.floating):
            return np.zeros(0, dtype=np.int64)
        if a.ndim == 1:
            return np.flatnonzero(~np.isfinite(a)).astype(np.int64)
        with warnings.catch_warnings():  # read-only (Arrow-backed) arrays are only read
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(np.ascontiguousarray(a))
    if not t.is_floating_point():
        return np.zeros(0, dtype=np.int64)
    if t.ndim == 1:
        return torch.nonzero(~torch.isfinite(t)).flatten().cpu().numpy().astype(np.int64)
    bad = []
    # float16 -> float32 through a preallocated block: reductions with dtype= on fp16 are ~50x slower
    buf = torch.empty((min(chunk_size, t.shape[0]), t.shape[1]), dtype=torch.float32, device=t.device)
    for s in range(0, t.shape[0], chunk_size):
        m = min(chunk_size, t.shape[0] - s)
        if t.dtype == torch.float32:
            r = t[s : s + m].sum(1)
        else:
            buf[:m].copy_(t[s : s + m])
            r = buf[:m].sum(1)
        nz = torch.nonzero(~torch.isfinite(r)).flatten()
        if nz.numel():
            bad.append(nz.cpu().numpy() + s)
    return np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, dtype=np.int64)


def _rows_error(what: str, rows: np.ndarray, ids: np.ndarray | None = None) -> DataError:
    shown = ", ".join(f"{int(r)}" + (f" ({ids[r]})" if ids is not None else "") for r in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return DataError(f"{what} has NaN or inf in {len(rows)} rows: {shown}{more}")


def find_rows(sorted_rows: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where rows ``rows`` sit in the ascending ``sorted_rows``: ``(positions, found)``.

    ``found[i]`` says whether ``rows[i]`` is there; where it is not, ``positions[i]`` is a valid
    index of ``sorted_rows`` (when it has any rows) that holds another row.
    """
    rows = np.asarray(rows, dtype=np.int64)
    p = np.minimum(np.searchsorted(sorted_rows, rows), max(len(sorted_rows) - 1, 0))
    found = sorted_rows[p] == rows if len(sorted_rows) else np.zeros(len(rows), dtype=bool)
    return p, found


def top_k(values: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``k`` largest ``values``, largest first, ties broken by lower position.

    Args:
        values: (m,) scores.
        k: how many (0 <= k <= m).
        rows: optional (m,) tie-break keys instead of the positions (e.g. pool row ids).

    Returns:
        (k,) int64 positions into ``values``.
    """
    m = len(values)
    if k >= m:
        part = np.arange(m)
    else:
        part = np.argpartition(-values, k - 1)[:k] if k > 0 else np.zeros(0, dtype=np.int64)
        thr = values[part].min() if k > 0 else np.inf
        # Ties at the threshold: keep the lowest positions so the result does not depend on
        # argpartition's internal order.
        above = np.flatnonzero(values > thr)
        at = np.flatnonzero(values == thr)[: k - len(above)]
        part = np.concatenate([above, at])
    keys = rows[part] if rows is not None else part
    return part[np.lexsort((keys, -values[part]))].astype(np.int64)


class QueryStrategy(ABC):
    """A query strategy: picks ``budget`` rows of a :class:`Pool`.

    Subclasses implement :meth:`select` and call :meth:`_validate` first. ``requires_embeddings``
    tells the loop which pool columns to load (no ``isinstance`` special cases there).
    """

    name: ClassVar[str] = ""
    requires_embeddings: ClassVar[bool] = False
    #: parameter -> allowed values (tuple) or a predicate, checked by :meth:`_check_params`.
    _parameter_constraints: ClassVar[dict[str, tuple[Any, ...] | Callable[[Any], bool]]] = {}

    @abstractmethod
    def select(self, pool: Pool, budget: int) -> np.ndarray:
        """Choose rows to label.

        Args:
            pool: the pool; rows with ``exclude`` True are never returned.
            budget: how many rows (1 <= budget <= available rows).

        Returns:
            (budget,) int64 unique row indices into ``pool``, in priority order.

        Raises:
            BudgetError, EmptyPoolError, DataError: see :meth:`_validate`.
        """

    # -- sklearn-style plumbing ---------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    @classmethod
    def _param_defaults(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {k: p.default for k, p in sig.parameters.items() if k != "self"}

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, name -> value."""
        return {k: getattr(self, k) for k in self._param_names()}

    def __repr__(self) -> str:
        def show(v: Any) -> str:
            return getattr(v, "__qualname__", None) or repr(v) if callable(v) else repr(v)

        args = ", ".join(f"{k}={show(v)}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_params(self) -> None:
        """Raise :class:`ConfigError` for a parameter outside its constraint."""
        for k, allowed in self._parameter_constraints.items():
            v = getattr(self, k)
            ok = v in allowed if isinstance(allowed, tuple) else bool(allowed(v))
            if not ok:
                valid = ", ".join(map(repr, allowed)) if isinstance(allowed, tuple) else "see the docstring"
                raise ConfigError(f"{type(self).__name__}: invalid {k}={v!r} (valid: {valid})")

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng(self.random_state if hasattr(self, "random_state") else None)

    def _validate(self, pool: Pool, budget: int, *, check_embeddings: bool = True) -> np.ndarray:
        """Shared checks; returns the available row indices (m,) int64, ascending.

        Raises:
            EmptyPoolError: no rows, or every row excluded.
            BudgetError: budget not an int in ``[1, available]``.
            DataError: misaligned columns, missing embeddings, NaN/inf rows.
            ConfigError: a parameter outside its constraint.
        """
        self._check_params()
        n = len(pool)
        if n == 0:
            raise EmptyPoolError("the pool is empty: nothing to select from")
        for what, arr in (
            ("embeddings", pool.embeddings),
            ("probs", pool.probs),
            ("confident", pool.confident),
            ("exclude", pool.exclude),
            ("pred", pool.pred),
            *pool.scores.items(),
        ):
            if arr is not None and len(arr) != n:
                raise DataError(f"pool column {what!r} has {len(arr)} rows but ids has {n}")
        avail = pool.available()
        if avail.size == 0:
            raise EmptyPoolError(f"all {n} rows of the pool are excluded (already labeled)")
        if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
            raise BudgetError(f"budget must be an int, got {type(budget).__name__}")
        if budget <= 0 or budget > avail.size:
            raise BudgetError(
                f"budget {budget} must be between 1 and the {avail.size} available rows "
                f"({n} in the pool, {n - avail.size} excluded)"
            )
        if self.requires_embeddings:
            if pool.embeddings is None or pool.embeddings.ndim != 2:
                raise DataError(f"{type(self).__name__} needs a 2-D embeddings array in the pool")
            if check_embeddings:
                bad = nonfinite_rows(pool.embeddings)
                if bad.size:
                    raise _rows_error("embeddings", bad, pool.ids)
        for what, arr in (("probs", pool.probs), *pool.scores.items()):
            if arr is not None:
                bad = nonfinite_rows(arr)
                if bad.size:
                    raise _rows_error(what, bad, pool.ids)
        return avail

    def _finish(self, pool: Pool, picks: np.ndarray, budget: int) -> np.ndarray:
        """Check the output contract (an internal error here is a bug, not bad input)."""
        picks = np.asarray(picks, dtype=np.int64)
        if picks.shape != (budget,) or np.unique(picks).size != budget:
            raise RuntimeError(
                f"{type(self).__name__} returned {picks.size} picks ({np.unique(picks).size} "
                f"unique) for budget {budget}"
            )
        if pool.exclude is not None and np.asarray(pool.exclude)[picks].any():
            raise RuntimeError(f"{type(self).__name__} selected an excluded row")
        return picks


S = TypeVar("S", bound=type[QueryStrategy])
_REGISTRY: dict[str, type[QueryStrategy]] = {}


def register(name: str) -> Callable[[S], S]:
    """Class decorator: register a strategy under a config name (raises on duplicates)."""

    def deco(cls: S) -> S:
        if name in _REGISTRY:
            raise ValueError(
                f"query strategy {name!r} is already registered ({_REGISTRY[name].__qualname__})"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_strategies() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_REGISTRY)


def get_strategy_class(name: str) -> type[QueryStrategy]:
    """The class registered under ``name``; :class:`ConfigError` listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown query strategy {name!r}; valid: {', '.join(available_strategies())}"
        ) from None


def strategy_from_config(cfg: Any, random_state: int | None = None, **overrides: Any) -> QueryStrategy:
    """Build the strategy named by ``cfg.strategy`` with the parameters it takes from ``cfg``.

    ``cfg`` is any object with the ``QueryConfig`` attributes (``strategy``, ``uncertainty``,
    ``coarse_k``, ``candidate_ratio``, ``fine_method``, ``pick``, ``coarse_fit_sample``,
    ``kmeans_backend``, ``kmeans_iters``, ``ssl_aware``); a missing attribute takes the strategy's
    default. Each strategy reads only the attributes that match its constructor parameters.

    Args:
        cfg: the query config (a dataclass or e.g. a ``SimpleNamespace``).
        random_state: seed of the strategy.
        **overrides: extra constructor arguments, e.g. ``map_fn`` for HAL's Ray runner.

    Raises:
        ConfigError: unknown strategy, a value outside its range, or an override it does not take.
    """
    cls = get_strategy_class(getattr(cfg, "strategy", "hal"))
    defaults = cls._param_defaults()
    params = {k: getattr(cfg, k, d) for k, d in defaults.items() if k not in ("random_state", "map_fn")}
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ConfigError(f"{cls.__name__} does not take {sorted(unknown)}; it takes {sorted(defaults)}")
    params.update(overrides)
    strategy = cls(**params, random_state=random_state)
    strategy._check_params()
    logger.info("query strategy: %r", strategy)
    return strategy
