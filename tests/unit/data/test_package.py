"""The package's public names resolve (lazily) and the two CLIs answer --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hssal_ray.data as data


def test_all_names_resolve():
    for name in data.__all__:
        assert getattr(data, name) is not None
    assert sorted(dir(data)) == sorted(data.__all__)
    with pytest.raises(AttributeError):
        data.nothing_here  # noqa: B018


@pytest.mark.parametrize("module", ["hssal_ray.data.shard", "hssal_ray.data.download"])
def test_cli_help(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage: python -m " + module in out.stdout
