"""The parts of ``benchmarks.gpu_check`` (the one script run on a lent GPU machine; no Ray there).

:mod:`.sizes` (constants, run sizes), :mod:`.prepare` (the data folder), :mod:`.run` (one run's
device, data, configs and result files), :mod:`.loaders` (the training streams), the sections
(:mod:`.train`, :mod:`.features`, :mod:`.search`) and :mod:`.report` (the markdown). Every GPU-only
import (cupy, the product's torch code) stays inside the function that needs it.
"""
