"""Query strategies' constructor defaults agree with ``hssal_ray.config.QueryConfig``'s.

A strategy built directly (``HierarchicalQuery()``) must behave as one built from a default config
(``strategy_from_config(QueryConfig())``): the config holds the defaults, the constructors mirror them.
"""

from __future__ import annotations

import dataclasses

import pytest

from hssal_ray.config import QueryConfig
from hssal_ray.query import strategy_from_config
from hssal_ray.query.base import available_strategies, get_strategy_class

CONFIG_DEFAULTS = {f.name: getattr(QueryConfig(), f.name) for f in dataclasses.fields(QueryConfig)}
# constructor parameters that are not config keys: the seed, HAL's Ray runner, TypiClust's kNN size and
# cluster cap (its reference implementation's constants)
NOT_CONFIG = {"random_state", "map_fn", "n_neighbors", "max_clusters"}


@pytest.mark.parametrize("name", available_strategies())
def test_constructor_defaults_equal_the_config_defaults(name: str) -> None:
    params = get_strategy_class(name)._param_defaults()
    shared = {k: d for k, d in params.items() if k in CONFIG_DEFAULTS}
    assert shared == {k: CONFIG_DEFAULTS[k] for k in shared}
    assert set(params) - set(shared) <= NOT_CONFIG, "a strategy parameter with no config key"


@pytest.mark.parametrize("name", ["hal", "hal_flat"])
def test_hal_from_the_default_config_is_hal_with_no_arguments(name: str) -> None:
    built = strategy_from_config(dataclasses.replace(QueryConfig(), strategy=name), random_state=0)
    assert built.get_params() == get_strategy_class(name)(random_state=0).get_params()
