"""The assessment sample's hand-off to a person: the loop's file hand-off or its live Label Studio oracle,
blind (no map class, no pre-annotation) and with the assessment's own instructions."""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable
from typing import Any

from hssal_ray import _io
from hssal_ray.errors import HSSALError
from hssal_ray.oracle.human import (
    CONTACT_SHEET_FILE,
    LABEL_CONFIG_FILE,
    TASKS_FILE,
    TEMPLATE_FILE,
    HumanOracle,
)
from hssal_ray.oracle.label_studio import PROJECT_FILE, TOKEN_ENV, LabelStudioOracle

__all__ = [
    "TOKEN_ENV",
    "SampleHandOff",
    "SampleLabelStudio",
    "LabelStudioTarget",
    "image_loader",
    "project_url",
    "sample_label_studio",
]

log = logging.getLogger(__name__)


def image_loader(info: dict[str, Any], progress: Callable[[str], None]) -> Callable[[str], Any] | None:
    """``sample_id -> HWC image`` of the predicted archive with the run's decoding, or None."""
    from hssal_ray.data.catalog import scan
    from hssal_ray.data.fetch import load_image_hwc
    from hssal_ray.loop.run_config import load_run_config

    try:
        cfg = load_run_config(str(info["run"]))
        cat = scan(str(info["data"]), test_fraction=0.0, follow_symlinks=cfg.data.follow_symlinks)
    except (HSSALError, OSError, KeyError) as e:
        progress(f"[hssal] no thumbnails in the hand-off: the archive or the run cannot be read ({e})")
        return None
    return lambda sid: load_image_hwc(cat, cfg.data, sid)


class SampleHandOff(HumanOracle):
    """The loop's hand-off files for a sample to label, with the assessment's instructions."""

    def __init__(self, out: str, *args: Any, templates: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.out = out
        self.templates = templates  # every batch's template, for the estimate command (None: this one)

    def _how_to_label(self, round_dir: str, key: str) -> str:
        template = _io.join(round_dir, TEMPLATE_FILE)
        return (
            f"   a) fill the 'label' column of\n        {template}\n"
            f"      (header '{key},label'; the thumbnails are in\n"
            f"      {_io.join(round_dir, CONTACT_SHEET_FILE)}), or\n"
            f"   b) import {_io.join(round_dir, TASKS_FILE)} into a Label Studio project set\n"
            f"      up with {_io.join(round_dir, LABEL_CONFIG_FILE)}, label, and export (JSON, JSON_MIN,\n"
            "      CSV or TSV).\n"
        )

    def _estimate_args(self, round_dir: str) -> list[str]:
        return ["--labels", *(self.templates or [_io.join(round_dir, TEMPLATE_FILE)])]

    def _instructions(self, round_dir: str, run_dir: str, round_name: str, n: int) -> str:
        key = "ref" if self.hide_sample_id else "sample_id"
        classes = "\n".join(f"  {i:>3}  {c}" for i, c in enumerate(self.class_names))
        argv = ("python", "-m", "hssal_ray.assess", "estimate", self.out, *self._estimate_args(round_dir))
        return (
            f"An accuracy assessment of a map is waiting for reference labels ({n} chips).\n\n"
            "The chips are a random sample of the map, stratified by the map's classes, in a random order.\n"
            "The map's class is not shown on purpose: label what you see, not what the model said.\n\n"
            f"1. Label every chip. Either\n{self._how_to_label(round_dir, key)}"
            "   Write each label as one of the class names below, exactly (case-sensitive). Leave none out:\n"
            "   chips skipped because they are hard to label would make the map look better than it is.\n\n"
            f"2. Estimate the map's accuracy and areas:\n\n   {' '.join(shlex.quote(a) for a in argv)}\n\n"
            "   An invalid answer is rejected with the offending rows listed; nothing is written then.\n\n"
            f"Allowed class names ({len(self.class_names)}):\n{classes}\n"
        )


class LabelStudioTarget:
    """Where ``assess sample --label-studio`` imports the sample (the token stays in the environment).

    Args:
        url: The server's base URL.
        project_id: An existing project to import into (its label config must fit); None: the
            assessment creates its own, recorded in ``ASSESS/label_studio.json``.
        token_env: The environment variable holding the API token.
    """

    def __init__(self, url: str, project_id: int | None = None, token_env: str = TOKEN_ENV):
        self.url = url.rstrip("/")
        self.project_id = project_id
        self.token_env = token_env

    def token(self) -> str:
        """The API token from the environment.

        Raises:
            ValueError: The variable is unset or empty.
        """
        token = os.environ.get(self.token_env, "")
        if not token:
            raise ValueError(f"no Label Studio API token (environment variable {self.token_env} is empty)")
        return token

    def record(self, project: int) -> dict[str, Any]:
        """What ``design.json`` keeps: URL, the project given (None: the assessment's own), the project
        the sample is in, and the token's variable (never the token)."""
        return {
            "url": self.url,
            "project_id": self.project_id,
            "project": int(project),
            "token_env": self.token_env,
        }


class SampleLabelStudio(SampleHandOff, LabelStudioOracle):
    """The sample as Label Studio tasks: blind (no pre-annotation: the sample has no scores), tagged
    with the assessment's id, and pulled again at every estimate (a person may go on labeling)."""

    reuse_stored_answer = False
    project_purpose = "A blind random sample for the accuracy assessment {run_dir} (hssal_ray)"

    def __init__(self, out: str, assessment_id: str, refs: dict[str, str], *args: Any, **kwargs: Any) -> None:
        super().__init__(out, *args, **kwargs)
        self.assessment_id = assessment_id
        self.refs = refs

    def _run_id(self, run_dir: str) -> str:
        return self.assessment_id

    def _history(self, run_dir: str, batch: str) -> tuple[dict[str, str], dict[str, int | None]]:
        return self.refs, {}  # the sample's refs; no earlier batches

    def resume_command(self, run_dir: str, labels: str | None) -> str:
        src = f"--labels {shlex.quote(labels)}" if labels else "--label-studio"
        return f"python -m hssal_ray.assess estimate {shlex.quote(self.out)} {src}"

    def _how_to_label(self, round_dir: str, key: str) -> str:
        return (
            f"   label the tasks of the Label Studio project {self._where()}\n"
            f"   (or fill {_io.join(round_dir, TEMPLATE_FILE)}, header '{key},label', and use --labels).\n"
        )

    def _estimate_args(self, round_dir: str) -> list[str]:
        return ["--label-studio"]

    def _where(self) -> str:
        """The project's page (the project is looked up before the hand-off files are written)."""
        pid = self.project_id
        path = _io.join(self.out, PROJECT_FILE)
        if pid is None and _io.exists(path):
            pid = _io.read_json(path).get("project_id")
        return project_url({"label_studio": {"url": self.url, "project": pid}})


def project_url(design: dict[str, Any]) -> str:
    ls = design.get("label_studio") or {}
    pid = ls.get("project")
    return f"{ls.get('url')}/projects/{pid}/data" if pid is not None else str(ls.get("url"))


def sample_label_studio(
    out: str,
    design: dict[str, Any],
    refs: dict[str, str],
    target: LabelStudioTarget,
    *,
    load_image: Callable[[str], Any] | None = None,
    progress: Callable[[str], None] = log.info,
    **kwargs: Any,
) -> SampleLabelStudio:
    """The Label Studio hand-off of the assessment ``out`` (the token read from ``target.token_env``).

    Raises:
        ValueError: The token's environment variable is empty.
    """
    return SampleLabelStudio(
        out,
        design["assessment_id"],
        refs,
        design["classes"],
        url=target.url,
        token=target.token(),
        token_env=target.token_env,
        project_id=target.project_id,
        load_image=load_image,
        hide_sample_id=bool(design.get("hide_sample_id")),
        progress=progress,
        **kwargs,
    )
