"""faiss, imported so that the OpenBLAS bundled in its wheel runs this CPU's vector kernels.

faiss-cpu's Linux wheels (1.15.1 here) ship their own OpenBLAS (0.3.15), which picks its kernels
from the CPU model when it is loaded. Before 0.3.20 an x86 model it does not know falls back to
its oldest kernels ("Prescott", SSE3), whatever the CPU can do: that is every Xeon since Ice Lake
(server Ice Lake, Sapphire / Emerald / Granite Rapids: most cloud CPUs of 2023-2026). Measured on
an Emerald Rapids VM, one thread: a faiss k-means iteration (32,768 x 1,280 rows, k = 500) takes
2.15 s with those kernels and 0.44 s with the AVX-512 ones; torch's own product takes 0.41 s.
faiss runs its Lloyd iterations (HAL's coarse level, TypiClust, the IVF lists of the k-NN graph)
and its flat searches through that library.

:func:`import_faiss` imports faiss once per process; before that, where the bundled OpenBLAS
would pick Prescott on a CPU with AVX2 or AVX-512 (asked of the library in a throw-away
subprocess, :func:`library_coretype`), it sets ``OPENBLAS_CORETYPE`` to the matching kernels for
the import only (:func:`coretype_for`), so that other libraries and child processes are
untouched. ``OPENBLAS_CORETYPE`` set by the user is left alone, and ``HSSAL_FAISS_CORETYPE=library``
leaves the library to its own choice (what a plain ``import faiss`` does). If faiss was imported before
(by other code) and runs Prescott, the first :func:`import_faiss` logs a warning naming the variable to set.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import platform
import subprocess
import sys
from types import ModuleType

__all__ = [
    "import_faiss",
    "coretype_for",
    "library_coretype",
    "bundled_openblas",
    "loaded_coretype",
    "describe",
    "cpu_flags",
]

logger = logging.getLogger(__name__)

OPT_OUT = "HSSAL_FAISS_CORETYPE"
"""Environment variable: ``library`` = let faiss's OpenBLAS choose its kernels itself."""

#: the AVX-512 subsets OpenBLAS's SKYLAKEX kernels need (its own ``support_avx512`` test)
_AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
# the wheel's libraries find each other through faiss's RPATH, not their own: load the others
# first (in whatever order they resolve), then ask the OpenBLAS which kernels it picked
_PROBE = """
import ctypes, glob, os, sys
lib = sys.argv[1]
pending = [p for p in sorted(glob.glob(os.path.join(os.path.dirname(lib), "*.so*"))) if p != lib]
while pending:
    left = []
    for p in pending:
        try:
            ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            left.append(p)
    if len(left) == len(pending):
        break
    pending = left
f = ctypes.CDLL(lib).openblas_get_corename
f.restype = ctypes.c_char_p
print(f().decode())
"""


def coretype_for(library_choice: str | None, flags: set[str] | frozenset[str]) -> str | None:
    """The ``OPENBLAS_CORETYPE`` to load faiss's OpenBLAS with (None: leave its own choice).

    Only a fallback to Prescott is overridden, and only with kernels the CPU runs: SKYLAKEX
    (AVX-512 F/CD/BW/DQ/VL), HASWELL (AVX2 + FMA) or SANDYBRIDGE (AVX).
    """
    if library_choice is None or library_choice.strip().lower() != "prescott":
        return None
    if _AVX512 <= flags:
        return "SKYLAKEX"
    if {"avx2", "fma"} <= flags:
        return "HASWELL"
    if "avx" in flags:
        return "SANDYBRIDGE"
    return None


def bundled_openblas() -> str | None:
    """The OpenBLAS shared library inside the installed faiss-cpu wheel (None: none found)."""
    spec = importlib.util.find_spec("faiss")
    if spec is None or not spec.origin:
        return None
    site = os.path.dirname(os.path.dirname(spec.origin))
    found = sorted(glob.glob(os.path.join(site, "faiss_cpu.libs", "libopenblas*.so*")))
    return found[0] if found else None


def library_coretype(lib: str, timeout: float = 30.0) -> str | None:
    """The kernels ``lib`` picks by itself on this CPU, asked in a fresh subprocess (None: unknown)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _PROBE, lib],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as e:
        logger.debug("could not ask %s for its kernels: %s", lib, e)
        return None
    return out.stdout.strip() or None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _choose(lib: str | None = None, own: str | None = None, *, quiet: bool = False) -> str | None:
    """The ``OPENBLAS_CORETYPE`` to load faiss's OpenBLAS with (None: none to set).

    ``own``: the library's own choice when the caller has already asked it (:func:`library_coretype`).
    """
    mode = os.environ.get(OPT_OUT, "auto").strip().lower() or "auto"
    if mode not in ("auto", "library"):
        logger.warning("%s=%r is not 'auto' or 'library'; using 'auto'", OPT_OUT, os.environ[OPT_OUT])
    if "OPENBLAS_CORETYPE" in os.environ or mode == "library":
        return None
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    lib = lib or bundled_openblas()
    if lib is None:
        return None
    core = coretype_for(own if own is not None else library_coretype(lib), cpu_flags())
    if core is not None and not quiet:
        logger.info(
            "faiss's bundled OpenBLAS (%s) does not know this CPU and would run its generic Prescott "
            "kernels (~5x slower products); loading it with OPENBLAS_CORETYPE=%s (set OPENBLAS_CORETYPE, "
            "or %s=library to keep its own choice)",
            os.path.basename(lib),
            core,
            OPT_OUT,
        )
    return core


def describe() -> dict[str, str | None]:
    """What faiss's bundled OpenBLAS runs on this machine (benchmark provenance).

    ``library``: the kernels it picks by itself; ``used``: those it runs in this process if faiss is
    imported, else those :func:`import_faiss` would load; both None without a bundled OpenBLAS.
    """
    lib = bundled_openblas() if sys.platform == "linux" else None
    if lib is None:
        return {"library": None, "used": None}
    own = library_coretype(lib)
    if "faiss" in sys.modules:
        return {"library": own, "used": loaded_coretype()}
    core = _choose(lib, own, quiet=True)  # the library was asked once, above
    return {"library": own, "used": core or os.environ.get("OPENBLAS_CORETYPE") or own}


_state = {"imported_here": False, "warned": False}
"""``imported_here``: :func:`import_faiss` loaded faiss; ``warned``: a late import was reported."""


def import_faiss() -> ModuleType:
    """``import faiss`` with its OpenBLAS on this CPU's kernels (see the module doc); once per process.

    Raises:
        ImportError: faiss is not installed.
    """
    mod = sys.modules.get("faiss")
    if mod is not None:
        if not _state["imported_here"] and not _state["warned"]:
            _warn_if_late()
        return mod
    _state["imported_here"] = True
    core = _choose()
    if core is None:
        import faiss

        return faiss
    import numpy  # noqa: F401 - numpy's own OpenBLAS must load (and pick its kernels) outside the window

    os.environ["OPENBLAS_CORETYPE"] = core  # read once, when the library is loaded by the import
    try:
        import faiss
    finally:
        os.environ.pop("OPENBLAS_CORETYPE", None)
    return faiss


def _warn_if_late() -> None:
    """faiss was imported before :func:`import_faiss` chose its kernels: say so once if they are Prescott."""
    _state["warned"] = True
    core = _choose(quiet=True)
    if core is not None and (loaded_coretype() or "").lower() == "prescott":
        logger.warning(
            "faiss was imported before hssal_ray could load its bundled OpenBLAS with this CPU's kernels: "
            "it runs the generic Prescott ones (~5x slower k-means); import hssal_ray's modules first or "
            "set OPENBLAS_CORETYPE=%s before starting Python",
            core,
        )


def loaded_coretype() -> str | None:
    """The kernels faiss's bundled OpenBLAS runs in this process (None: no faiss yet, or no such library)."""
    if "faiss" not in sys.modules:
        return None
    lib = bundled_openblas()
    if lib is None:
        return None
    import ctypes

    try:
        f = ctypes.CDLL(lib).openblas_get_corename  # the already-loaded library: no second init
        f.restype = ctypes.c_char_p
        return f().decode()
    except (OSError, AttributeError):
        return None
