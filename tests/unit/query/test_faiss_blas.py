"""faiss's bundled OpenBLAS runs this CPU's kernels (``hssal_ray._faiss``), and only faiss's.

The rule is checked on its table; the import is checked for real, each case in a fresh interpreter
(OpenBLAS picks its kernels once, when the library is loaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hssal_ray._faiss import bundled_openblas, coretype_for, cpu_flags, library_coretype

AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "avx"}


@pytest.mark.parametrize(
    ("library", "flags", "expected"),
    [
        ("Prescott", AVX512, "SKYLAKEX"),
        ("PRESCOTT", AVX512, "SKYLAKEX"),
        ("Prescott", AVX512 - {"avx512vl"}, "HASWELL"),  # SKYLAKEX kernels need all five subsets
        ("Prescott", {"avx2", "fma", "avx"}, "HASWELL"),
        ("Prescott", {"avx2", "avx"}, "SANDYBRIDGE"),  # no FMA: no Haswell kernels
        ("Prescott", {"avx"}, "SANDYBRIDGE"),
        ("Prescott", {"sse3", "ssse3"}, None),  # a CPU Prescott suits: left alone
        ("SkylakeX", AVX512, None),  # a CPU the library knows: its own choice stands
        ("Haswell", AVX512, None),
        ("Zen", {"avx2", "fma", "avx"}, None),
        (None, AVX512, None),  # the library could not be asked
    ],
)
def test_only_a_fallback_to_prescott_is_overridden_and_only_with_kernels_the_cpu_runs(
    library, flags, expected
):
    assert coretype_for(library, frozenset(flags)) == expected


LIB = bundled_openblas() if sys.platform == "linux" else None
needs_lib = pytest.mark.skipif(LIB is None, reason="no OpenBLAS bundled with faiss here")

_CHILD = """
import json, os, numpy as np
from hssal_ray._faiss import describe, import_faiss, loaded_coretype
faiss = import_faiss()
km = faiss.Kmeans(8, 3, niter=2, seed=1, verbose=False)
km.train(np.random.default_rng(0).standard_normal((300, 8)).astype("float32"))
got = {"core": loaded_coretype(), "env": os.environ.get("OPENBLAS_CORETYPE"), "k": int(km.k)}
print(json.dumps({**got, "described": describe()}))
"""


def _import_in_child(code: str = _CHILD, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "HSSAL_FAISS_CORETYPE")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "stderr": out.stderr}


@needs_lib
def test_import_loads_the_kernels_the_rule_picks_and_leaves_the_environment_as_it_was():
    own = library_coretype(LIB)
    assert own, "the bundled OpenBLAS could not be asked for its kernels"
    got = _import_in_child()
    want = coretype_for(own, cpu_flags())
    assert got["k"] == 3
    assert got["described"] == {"library": own, "used": got["core"]}  # benchmarks record these
    assert got["env"] is None  # set for the import only: numpy's BLAS and child processes keep theirs
    if want is None:
        assert got["core"].lower() == own.lower()
    else:
        assert got["core"].lower() == want.lower()
    if {"avx2", "fma"} <= cpu_flags():
        assert got["core"].lower() != "prescott"


@needs_lib
def test_the_users_openblas_coretype_and_the_opt_out_are_respected():
    own = library_coretype(LIB)
    assert _import_in_child(HSSAL_FAISS_CORETYPE="library")["core"].lower() == own.lower()
    pinned = _import_in_child(OPENBLAS_CORETYPE="Prescott")
    assert pinned["core"].lower() == "prescott"
    assert pinned["env"] == "Prescott"  # the user's variable stays set


@needs_lib
def test_an_unknown_opt_out_value_is_named_and_the_rule_still_applies():
    got = _import_in_child(HSSAL_FAISS_CORETYPE="off")
    assert "HSSAL_FAISS_CORETYPE='off' is not 'auto' or 'library'" in got["stderr"]
    assert (
        got["core"].lower()
        == (coretype_for(library_coretype(LIB), cpu_flags()) or library_coretype(LIB)).lower()
    )


_LATE = """
import json, logging
logging.basicConfig(level=logging.WARNING)
import faiss  # before hssal_ray: the library picks its own kernels
from hssal_ray._faiss import import_faiss, loaded_coretype
assert import_faiss() is faiss and import_faiss() is faiss
print(json.dumps({"core": loaded_coretype()}))
"""


@needs_lib
def test_faiss_imported_before_hssal_ray_is_reported_once_when_it_runs_prescott():
    want = coretype_for(library_coretype(LIB), cpu_flags())
    got = _import_in_child(_LATE)
    late = "faiss was imported before hssal_ray"
    if want is None:  # the library's own kernels are fine here: nothing to say
        assert late not in got["stderr"]
    else:
        assert got["core"].lower() == "prescott"
        assert got["stderr"].count(late) == 1 and f"OPENBLAS_CORETYPE={want}" in got["stderr"]
