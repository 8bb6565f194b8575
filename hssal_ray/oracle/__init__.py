"""Oracles that answer query batches: simulated (dataset labels), human (file hand-off), Label Studio (live).

See :mod:`hssal_ray.oracle.base` for the request/collect protocol,
:mod:`hssal_ray.oracle.labels` for how untrusted label files are validated and
:mod:`hssal_ray.oracle.label_studio` for the live Label Studio oracle.
"""

from hssal_ray.oracle.base import LABELS_FILE, Oracle, OracleAnswer, PartialPolicy
from hssal_ray.oracle.factory import from_config, human_oracle_from_config
from hssal_ray.oracle.human import (
    CONTACT_SHEET_FILE,
    INSTRUCTIONS_FILE,
    LABEL_CONFIG_FILE,
    TASKS_FILE,
    TEMPLATE_FILE,
    HumanOracle,
    reveals_folder,
)
from hssal_ray.oracle.label_studio import LabelStudioOracle
from hssal_ray.oracle.labels import parse_label_file, write_labels_csv
from hssal_ray.oracle.simulated import SimulatedOracle

__all__ = [
    "Oracle",
    "OracleAnswer",
    "PartialPolicy",
    "SimulatedOracle",
    "HumanOracle",
    "LabelStudioOracle",
    "from_config",
    "human_oracle_from_config",
    "reveals_folder",
    "parse_label_file",
    "write_labels_csv",
    "LABELS_FILE",
    "TEMPLATE_FILE",
    "TASKS_FILE",
    "LABEL_CONFIG_FILE",
    "CONTACT_SHEET_FILE",
    "INSTRUCTIONS_FILE",
]
