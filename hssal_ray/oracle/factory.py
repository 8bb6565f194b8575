"""Build the run's oracle from its config: :func:`from_config` (any kind) and the human kinds."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hssal_ray.errors import ConfigError
from hssal_ray.oracle.base import Oracle
from hssal_ray.oracle.human import HumanOracle, reveals_folder

__all__ = ["from_config", "human_oracle_from_config"]


def from_config(
    cfg: Any,
    catalog: Any,
    load_image: Callable[[str], np.ndarray] | None = None,
) -> Oracle:
    """The oracle of ``cfg.oracle.kind`` for a run over ``catalog``.

    Args:
        cfg: The run's :class:`~hssal_ray.config.ExperimentConfig`.
        catalog: The run's manifest (:class:`~hssal_ray.data.catalog.Catalog`): class names, and the
            ground truth of a ``simulated`` oracle (rows with a label >= 0).
        load_image: ``sample_id -> HWC image`` for the images that human oracles embed.

    Returns:
        A :class:`~hssal_ray.oracle.SimulatedOracle`, :class:`~hssal_ray.oracle.HumanOracle` or
        :class:`~hssal_ray.oracle.LabelStudioOracle`.

    Raises:
        ConfigError: The Label Studio token is not set.
    """
    names = list(catalog.class_names)
    t = catalog.table
    if cfg.oracle.kind == "simulated":
        from hssal_ray.oracle.simulated import SimulatedOracle

        gt = {
            s: int(lbl)
            for s, lbl in zip(t.column("sample_id").to_pylist(), t.column("label").to_pylist(), strict=True)
            if lbl is not None and lbl >= 0
        }
        return SimulatedOracle(gt, names)
    return human_oracle_from_config(cfg.oracle, names, load_image, t.column("sample_id"))


def human_oracle_from_config(
    oc: Any,
    class_names: Sequence[str],
    load_image: Callable[[str], np.ndarray] | None,
    sample_ids: Any,
) -> HumanOracle:
    """The oracle for ``oracle.kind`` ``human`` or ``label_studio``.

    Args:
        oc: The run's :class:`~hssal_ray.config.OracleConfig`.
        class_names: Class names, index = class id.
        load_image: ``sample_id -> image`` for the embedded images.
        sample_ids: Every sample id of the run (list or Arrow array), to resolve
            ``oracle.hide_sample_id=auto`` (hidden when an id has a folder part).

    Returns:
        A :class:`HumanOracle` or :class:`~hssal_ray.oracle.label_studio.LabelStudioOracle`.

    Raises:
        ConfigError: ``oracle.kind`` is not a human kind, or the Label Studio token is not set.
    """
    hide = reveals_folder(sample_ids) if oc.hide_sample_id == "auto" else bool(oc.hide_sample_id)
    common: dict[str, Any] = {
        "load_image": load_image,
        "partial": oc.partial,
        "image_size": oc.image_size,
        "image_format": oc.image_format,
        "hide_sample_id": hide,
    }
    if oc.kind == "human":
        return HumanOracle(class_names, **common)
    if oc.kind != "label_studio":
        raise ConfigError(f"oracle.kind={oc.kind!r} is not answered by people")
    token = os.environ.get(oc.token_env, "").strip()
    if not token:
        raise ConfigError(
            f"oracle.kind=label_studio needs the Label Studio API token in the environment variable "
            f"{oc.token_env} (named by oracle.token_env): `export {oc.token_env}=<the legacy token of "
            "Account & Settings in Label Studio>`. The token is never read from or written to config files."
        )
    from hssal_ray.oracle.label_studio import LabelStudioOracle

    return LabelStudioOracle(
        class_names,
        url=oc.url,
        token=token,
        token_env=oc.token_env,
        project_id=oc.project_id,
        wait_s=oc.wait_s,
        poll_s=oc.poll_s,
        **common,
    )
