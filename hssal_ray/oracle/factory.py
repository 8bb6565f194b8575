"""Build the run's oracle from its config: :func:`from_config` (any kind) and the human kinds.

:func:`check_oracle` checks what an oracle needs from outside the run (the Label Studio server,
its token and ``oracle.project_id``) in a second, before the run builds its data set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hssal_ray.errors import ConfigError
from hssal_ray.oracle.base import Oracle
from hssal_ray.oracle.human import HumanOracle, reveals_folder

__all__ = ["from_config", "human_oracle_from_config", "check_oracle"]

CHECK_TIMEOUT_S = 30.0
"""Timeout of each request of :func:`check_oracle`."""


def check_oracle(oc: Any) -> None:
    """Check the Label Studio server, the token and ``oracle.project_id`` (other kinds: nothing).

    One ``whoami`` call (and one project lookup): a wrong URL, a server that is not Label Studio, a
    refused token or a missing project fail here, in a second, with one line, instead of after the
    data set is built. Not retried: nothing is lost yet, and a typo should not wait.

    Args:
        oc: The run's :class:`~hssal_ray.config.OracleConfig`.

    Raises:
        ConfigError: The token is not set, or ``oracle.project_id`` is not a project of the server.
        LabelStudioError: The server cannot be reached, is not Label Studio or refuses the token.
    """
    if oc.kind != "label_studio":
        return
    from hssal_ray.oracle._ls_client import LabelStudioClient

    client = LabelStudioClient(oc.url, _token(oc), oc.token_env, timeout_s=CHECK_TIMEOUT_S)
    client.whoami()
    if oc.project_id is not None and client.find_project(oc.project_id) is None:
        raise ConfigError(
            f"oracle.project_id={oc.project_id}: Label Studio at {client.url} has no project "
            f"{oc.project_id}; give the id of one of its projects (the number in its URL /projects/N), "
            "or leave oracle.project_id unset to have the run create its own project"
        )


def _token(oc: Any) -> str:
    token = os.environ.get(oc.token_env, "").strip()
    if not token:
        raise ConfigError(
            f"oracle.kind=label_studio needs the Label Studio API token in the environment variable "
            f"{oc.token_env} (named by oracle.token_env): `export {oc.token_env}=<the legacy token of "
            "Account & Settings in Label Studio>`. The token is never read from or written to config files."
        )
    return token


def from_config(
    cfg: Any,
    catalog: Any,
    load_image: Callable[[str], np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Oracle:
    """The oracle of ``cfg.oracle.kind`` for a run over ``catalog``.

    Args:
        cfg: The run's :class:`~hssal_ray.config.ExperimentConfig`.
        catalog: The run's manifest (:class:`~hssal_ray.data.catalog.Catalog`): class names, and the
            ground truth of a ``simulated`` oracle (rows with a label >= 0).
        load_image: ``sample_id -> HWC image`` for the images that human oracles embed.
        progress: Where a Label Studio oracle prints what the person at the console should know
            while it waits (the run's ``[hssal]`` lines; default: stderr).

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
    return human_oracle_from_config(cfg.oracle, names, load_image, t.column("sample_id"), progress)


def human_oracle_from_config(
    oc: Any,
    class_names: Sequence[str],
    load_image: Callable[[str], np.ndarray] | None,
    sample_ids: Any,
    progress: Callable[[str], None] | None = None,
) -> HumanOracle:
    """The oracle for ``oracle.kind`` ``human`` or ``label_studio``.

    Args:
        oc: The run's :class:`~hssal_ray.config.OracleConfig`.
        class_names: Class names, index = class id.
        load_image: ``sample_id -> image`` for the embedded images.
        sample_ids: Every sample id of the run (list or Arrow array), to resolve
            ``oracle.hide_sample_id=auto`` (hidden when an id has a folder part).
        progress: Console line sink of a Label Studio oracle (default: stderr).

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
    token = _token(oc)
    from hssal_ray.oracle.label_studio import LabelStudioOracle

    return LabelStudioOracle(
        class_names,
        url=oc.url,
        token=token,
        token_env=oc.token_env,
        project_id=oc.project_id,
        wait_s=oc.wait_s,
        poll_s=oc.poll_s,
        progress=progress,
        **common,
    )
