"""Query strategies: HAL (hierarchical active learning) and baselines, behind one interface.

``strategy_from_config(cfg, random_state).select(pool, budget)`` returns the row indices to label;
``load_pool(path)`` reads a scores file into a :class:`Pool`. See docs/ARCHITECTURE.md "Active learning".
"""

from hssal_ray.query.backends import assign_chunked, make_kmeans, resolve_backend
from hssal_ray.query.base import (
    Pool,
    QueryStrategy,
    available_strategies,
    get_strategy_class,
    register,
    strategy_from_config,
)
from hssal_ray.query.baselines import (
    BadgeQuery,
    CoresetQuery,
    EntropyQuery,
    MarginQuery,
    RandomQuery,
    TypiClustQuery,
)
from hssal_ray.query.hierarchical import (
    FlatHierarchicalQuery,
    HierarchicalQuery,
    allocate_budget,
    auto_coarse_k,
)
from hssal_ray.query.scores_io import load_pool, write_scores
from hssal_ray.query.uncertainty import (
    UNCERTAINTIES,
    badge_norm,
    compute_all,
    disagreement,
    entropy,
    least_confidence,
    margin,
)

__all__ = [
    "Pool",
    "QueryStrategy",
    "register",
    "get_strategy_class",
    "available_strategies",
    "strategy_from_config",
    "HierarchicalQuery",
    "FlatHierarchicalQuery",
    "RandomQuery",
    "EntropyQuery",
    "MarginQuery",
    "TypiClustQuery",
    "CoresetQuery",
    "BadgeQuery",
    "allocate_budget",
    "auto_coarse_k",
    "make_kmeans",
    "resolve_backend",
    "assign_chunked",
    "load_pool",
    "write_scores",
    "UNCERTAINTIES",
    "badge_norm",
    "entropy",
    "margin",
    "least_confidence",
    "disagreement",
    "compute_all",
]
