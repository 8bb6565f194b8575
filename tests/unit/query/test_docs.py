"""Every public class, function and method of hssal_ray.query has a docstring."""

from __future__ import annotations

import inspect

import pytest

import hssal_ray.query as q
from hssal_ray.query import backends, base, baselines, hierarchical, scores_io, uncertainty

MODULES = [backends, base, baselines, hierarchical, scores_io, uncertainty]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_public_api_is_documented(module: object) -> None:
    assert inspect.getdoc(module)
    missing = []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not inspect.getdoc(obj):
                missing.append(name)
            if inspect.isclass(obj):
                missing += [
                    f"{name}.{m}"
                    for m, f in vars(obj).items()
                    if inspect.isfunction(f) and not m.startswith("_") and not inspect.getdoc(f)
                ]
    assert not missing, f"undocumented: {missing}"


def test_package_all_resolves() -> None:
    assert len(set(q.__all__)) == len(q.__all__)
    for name in q.__all__:
        assert hasattr(q, name), name
