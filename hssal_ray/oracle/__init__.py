"""Oracles that answer query batches: simulated (dataset labels) and human (file hand-off).

See :mod:`hssal_ray.oracle.base` for the request/collect protocol and
:mod:`hssal_ray.oracle.labels` for how untrusted label files are validated.
"""

from hssal_ray.oracle.base import LABELS_FILE, Oracle, OracleAnswer, PartialPolicy
from hssal_ray.oracle.human import (
    CONTACT_SHEET_FILE,
    INSTRUCTIONS_FILE,
    LABEL_CONFIG_FILE,
    TASKS_FILE,
    TEMPLATE_FILE,
    HumanOracle,
)
from hssal_ray.oracle.labels import parse_label_file, write_labels_csv
from hssal_ray.oracle.simulated import SimulatedOracle

__all__ = [
    "Oracle",
    "OracleAnswer",
    "PartialPolicy",
    "SimulatedOracle",
    "HumanOracle",
    "parse_label_file",
    "write_labels_csv",
    "LABELS_FILE",
    "TEMPLATE_FILE",
    "TASKS_FILE",
    "LABEL_CONFIG_FILE",
    "CONTACT_SHEET_FILE",
    "INSTRUCTIONS_FILE",
]
