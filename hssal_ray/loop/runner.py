"""The resumable closed-loop driver: train -> evaluate -> score -> query -> label, round after round.

``state.json`` names the next stage; every stage writes its outputs (atomically) before the
state advances, and every stage is idempotent, so re-running the same command after a crash,
a SIGKILL or a human hand-off continues at the first unfinished stage and ends with the same
labeled set as an uninterrupted run with the same seed.

The runner only sequences: it takes the run directory's lease, checks the run's identity, and
calls the stage that ``state.json`` names (:mod:`hssal_ray.loop.stages`) until the run is done or
waits for labels. See ``docs/ARCHITECTURE.md`` for the round step by step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hssal_ray import _io, faults
from hssal_ray.config import config_to_yaml
from hssal_ray.errors import StateError
from hssal_ray.loop import stages
from hssal_ray.loop.context import RunContext
from hssal_ray.loop.metrics import read_metrics
from hssal_ray.loop.run_check import check_run_dir
from hssal_ray.loop.run_config import legacy_science_sha, load_run_config, science_sha
from hssal_ray.loop.stages.evaluate import is_final_round
from hssal_ray.state import RunState, new_run_id, round_dir

__all__ = ["LoopRunner", "science_sha", "read_metrics", "is_final_round", "load_run_config"]


def _delegate(stage: Callable[[RunContext, RunState, float], None]) -> Callable[..., None]:
    """A ``_stage_<name>(self, state, t0)`` method running ``stage`` (so tests can override one)."""

    def method(self: RunContext, state: RunState, t0: float) -> None:
        stage(self, state, t0)

    method.__doc__ = f"Run :func:`{stage.__module__}.{stage.__name__}`."
    return method


class LoopRunner(RunContext):
    """Runs (or resumes) one closed-loop experiment in its run directory.

    Constructed like :class:`~hssal_ray.loop.context.RunContext` (``cfg``, ``progress``,
    ``on_round``); :meth:`run` does the work.
    """

    # ------------------------------------------------------------------ public
    def run(
        self, labels_file: str | None = None, *, force_unlock: bool = False, lease_wait_s: float = 0.0
    ) -> RunState:
        """Run until the loop is done or waits for human labels, holding the run directory's lease.

        Args:
            labels_file: A human label file answering the pending query (``--labels``).
            force_unlock: Take the lease over even if another driver seems to hold it.
            lease_wait_s: Wait this long for a held lease to free up before refusing.

        ``config.yaml``: a new run writes its config when it is created. A resumed run writes the
        config of this invocation (its runtime overrides, e.g. ``oracle.partial=continue``) only
        once the invocation has succeeded: it returns here waiting for labels or done. An
        invocation that fails (a rejected label file, an unreachable server, a crash, Ctrl-C)
        leaves ``config.yaml`` as it was, so a plain ``--resume`` goes on with the last config
        that worked.

        Raises:
            LabelFileError: ``labels_file`` is not a regular file or too large (checked before the
                lease is taken), or its content is invalid (nothing was written).
            StateError: The run directory's files disagree with ``state.json`` (see
                :mod:`hssal_ray.loop.run_check`).
            LeaseHeldError: Another driver runs this run directory (nothing was written).
            LeaseLostError: Another driver took the run over meanwhile (this one stopped).
        """
        from hssal_ray.loop.lease import RunLease

        if labels_file is not None:
            from hssal_ray.oracle.labels import check_label_file

            check_label_file(labels_file)
        lease = RunLease(
            self.run_dir, timeout_s=self.cfg.loop.lease_timeout_s, force=force_unlock, wait_s=lease_wait_s
        )
        with lease:
            self._lease = lease
            try:
                return self._run(labels_file)
            finally:
                self._lease = None

    # ------------------------------------------------------------------ sequencing
    def _setup(self) -> RunState:
        """Check the run's identity and files, load the catalog; the state to resume.

        A new run writes its ``config.yaml`` and ``state.json`` here. A run started before
        :func:`~hssal_ray.loop.run_config.unused_keys` left its identity holds the
        :func:`~hssal_ray.loop.run_config.legacy_science_sha` of its config: it is accepted, and
        (unless finished) ``state.json`` gets the config's ``science_sha``.
        """
        state = RunState.load(self.run_dir)
        sha = science_sha(self.cfg)
        if state is not None and state.config_sha not in (sha, legacy_science_sha(self.cfg)):
            raise StateError(
                f"run directory {self.run_dir} was started with a different config "
                "(science settings changed). "
                "Use another loop.name, or `--resume RUN` to continue it with its own config."
            )
        if state is None or state.status != "done":  # a finished run: checked in _reopen if it goes on
            check_run_dir(self.run_dir, state)
            from hssal_ray.oracle.factory import check_oracle

            check_oracle(self.cfg.oracle)  # the Label Studio server and token, before the data set
        _io.makedirs(self.run_dir)
        if state is None:
            self._write_config()
        self.load_catalog()
        if state is None:
            state = RunState(config_sha=sha, seed=self.cfg.seed, run_id=new_run_id())
            state.save(self.run_dir)
        elif state.status != "done" and (state.config_sha != sha or not state.run_id):
            # a run from before run ids gets one; one from before unused keys left the identity
            # (legacy_science_sha) gets its science_sha
            state.run_id = state.run_id or new_run_id()
            state.config_sha = sha
            state.save(self.run_dir)
        return state

    def _run(self, labels_file: str | None) -> RunState:
        state = self._setup()
        state.set_write_guard(self.check_lease)
        if state.status == "done" and (labels_file is not None or not self._reopen(state)):
            self.progress(
                f"[hssal] run {self.run_dir} is already finished ({state.round} rounds); nothing to do"
            )
            return state
        if labels_file is not None:
            stages.label.import_labels(self, state, labels_file)
        elif state.status == "awaiting_labels" and self.oracle.pulls_labels:
            state.status = "running"  # in memory: the label stage pulls the answer (saved once it advances)
        from hssal_ray._ray import ensure_ray

        ensure_ray(self.cfg.resources)
        while state.status == "running":
            t0 = time.perf_counter()
            stage = state.stage
            faults.delay_stage(stage, state.round)
            self.check_lease()
            check_run_dir(self.run_dir, state)  # a file deleted or replaced while the run goes on
            r = state.round
            getattr(self, f"_stage_{stage}")(state, t0)
            if stage in ("train", "score", "query"):
                self.progress(
                    f"[hssal] round {r} {stage}: {time.perf_counter() - t0:.1f} s{self._figure(r, stage)}"
                )
        if state.status == "done":
            self.progress(f"[hssal] done: {self.run_dir}")
        self._write_config()
        return state

    def _reopen(self, state: RunState) -> bool:
        """Go on with a finished run whose end this invocation's loop settings undo (``resume_stage``):
        the last round's row is no longer final and ``state.json`` names the stage to run.
        False: the run stays done."""
        from hssal_ray.loop.stages.evaluate import resume_stage
        from hssal_ray.oracle.factory import check_oracle
        from hssal_ray.state import LabeledSet

        rows = read_metrics(self.run_dir)
        labeled = LabeledSet.load(self.run_dir)
        remaining = self.pool_rows(labeled).num_rows
        stage = resume_stage(self.cfg, state, rows, len(labeled), remaining, self.split("train").num_rows)
        if stage is None:
            return False
        settled = rows[-1].get("stopped") == "stable"
        why = "its predictions had settled" if settled else "its last round by count"
        state.stage, state.status = stage, "running"
        check_run_dir(self.run_dir, state)  # the files a run at that stage must have
        check_oracle(self.cfg.oracle)
        row = {k: v for k, v in rows[-1].items() if k not in ("stopped", "stability_window_kappa")}
        self.update_metrics(state.round, {**row, "final": False}, replace=True)
        state.config_sha, state.run_id = science_sha(self.cfg), state.run_id or new_run_id()
        state.save(self.run_dir)
        lp = self.cfg.loop
        self.progress(
            f"[hssal] run {self.run_dir} ended after round {state.round} ({why}); with "
            f"loop.rounds={lp.rounds}, loop.total_budget={lp.total_budget}, loop.stop_kappa={lp.stop_kappa} "
            f"it goes on at round {state.round}'s {stage} stage"
        )
        return True

    def _write_config(self) -> None:
        """Write this invocation's config to ``config.yaml`` (if it differs), after the lease check."""
        p = _io.join(self.run_dir, "config.yaml")
        text = config_to_yaml(self.cfg)
        if _io.exists(p) and _io.read_bytes(p) == text.encode("utf-8"):
            return
        self.check_lease()
        _io.atomic_write_text(p, text)

    def _figure(self, r: int, stage: str) -> str:
        """The key figure of a finished stage for its console line."""
        row = next((m for m in read_metrics(self.run_dir) if m["round"] == r), {})
        if stage == "train":
            p = _io.join(round_dir(self.run_dir, r), "train_metrics.json")
            m = _io.read_json(p) if _io.exists(p) else {}
            return f" ({int(m.get('step', 0))} steps, loss {m.get('loss', float('nan')):.3f})"
        if stage == "query":
            return f" ({self.cfg.query.strategy}, mean u {row.get('query_mean_u', float('nan')):.3f})"
        if stage == "score" and row.get("stability_rows") is not None:
            k, n = row.get("stability_kappa"), row["stability_rows"]
            out = (
                f" (predictions changed on {row['stability_changed']:.1%} of {n:,} unlabeled rows since "
                f"round {r - 1}, kappa {k:.4f})"
                if n
                else f" (no unlabeled row scored in both round {r - 1} and round {r}: no kappa)"
            )
            if row.get("stopped") == "stable":
                lp = self.cfg.loop
                out += (
                    f"; settled: mean kappa {row['stability_window_kappa']:.4f} over the last "
                    f"{lp.stop_window} rounds >= loop.stop_kappa {lp.stop_kappa}, so the run stops here"
                )
            return out
        return ""

    # ------------------------------------------------------------------ stages (overridable in tests)
    _stage_init = _delegate(stages.init.run)
    _stage_train = _delegate(stages.train.run)
    _stage_evaluate = _delegate(stages.evaluate.run)
    _stage_score = _delegate(stages.score.run)
    _stage_query = _delegate(stages.query.run)
    _stage_label = _delegate(stages.label.run)
