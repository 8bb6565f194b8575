"""The real loop on a multi-node Ray cluster (head + 2 worker nodes on this machine).

Each worker node has 2 CPUs and the Ray Train workers ask for 2 CPUs each
(``resources.cpus_per_worker=2``), while the head has 1 CPU: the two DDP ranks can only run on
the two worker nodes, one each. The run must end with the labeled set (and the trained weights)
of a single-node run with the same seed and config (also 2 Train workers: the effective batch
depends on the world size, not on the node count).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from hssal_ray.cli import SMOKE_OVERRIDES

# slow: ~3-5 min on 2 cores (two full loop runs, one on a 3-node cluster); CI covers multi-node Ray
# with the frozen path's sharded graph and scores (tests/integration/test_frozen_ray_scale.py) and
# with `ray job submit` on a local.sh cluster (tests/integration/test_job_submit.py)
pytestmark = [pytest.mark.ray, pytest.mark.slow]

# cold start + one query round: the query of round 0 is the one multi-node training decides;
# the final round's training (round 1) only evaluates, so it cannot change the labeled set
OVERRIDES = [
    *SMOKE_OVERRIDES,
    "loop.rounds=1",
    "loop.report=false",
    "resources.num_workers=2",
    "resources.cpus_per_worker=2",
]
INITIAL, BUDGET = 6, 3
WORKER_NODES = ("mn_worker_a", "mn_worker_b")


def labeled_rows(run: Path) -> list[tuple[str, int, int, str]]:
    """``labeled.parquet`` as sorted ``(sample_id, label, round_added, source)`` rows."""
    t = pq.read_table(run / "labeled.parquet")
    cols = [t[c].to_pylist() for c in ("sample_id", "label", "round_added", "source")]
    return sorted(zip(*cols, strict=True))


class _LabeledSetFinal(Exception):
    """Raised by :class:`_StopAtLastTraining` once the labeled set can no longer change."""


def run_loop(run_dir: Path, name: str, *extra: str, stop_before_last_training: bool = False) -> Path:
    """Run the loop in this process (``LoopRunner``) and return its run directory.

    With ``stop_before_last_training`` the run stops where only the last round's training and
    evaluation are left (they cannot change the labeled set): a cheaper reference.
    """
    from hssal_ray.config import load_config
    from hssal_ray.loop.runner import LoopRunner

    class _StopAtLastTraining(LoopRunner):
        def _stage_train(self, state: Any, t0: float) -> None:
            if state.round == self.cfg.loop.rounds:
                raise _LabeledSetFinal
            super()._stage_train(state, t0)

    cfg = load_config(None, [*OVERRIDES, f"loop.run_dir={run_dir}", f"loop.name={name}", *extra])
    if stop_before_last_training:
        with pytest.raises(_LabeledSetFinal):
            _StopAtLastTraining(cfg, progress=lambda s: None).run()
    else:
        state = LoopRunner(cfg, progress=lambda s: None).run()
        assert (state.status, state.round) == ("done", 1), state
    return Path(cfg.run_path)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_cluster(worker_nodes: tuple[str, ...] = WORKER_NODES) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A head (1 CPU) + one 2-CPU node per name in ``worker_nodes`` (custom resource = the name).

    Runs under a private ``RAY_TMPDIR``, so the cluster's address file does not make other
    ``ray.init()`` calls on this machine join it. Yields the ``ray.cluster_utils.Cluster`` and
    its worker nodes by name.
    """
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="hsr", dir="/tmp")  # short: unix socket paths have a length limit
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args=dict(
                num_cpus=1,
                resources={"mn_head": 1},
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                dashboard_port=_free_port(),  # not 8265: another Ray on this machine may hold it
                dashboard_agent_listen_port=0,  # not 52365 either (0: any free port)
            ),
        )
        nodes = {name: cluster.add_node(num_cpus=2, resources={name: 1}) for name in worker_nodes}
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def node_names() -> dict[str, str]:
    """Node id -> the node's ``mn_*`` custom resource name, for every node of the cluster."""
    import ray

    out = {}
    for n in ray.nodes():
        names = [r for r in n["Resources"] if r.startswith("mn_")]
        out[n["NodeID"]] = names[0] if names else "?"
    return out


def actor_nodes(class_name: str = "RayTrainWorker") -> list[str]:
    """Node ids of every actor of ``class_name`` this cluster ran (alive or dead)."""
    from ray.util.state import list_actors

    actors = list_actors(
        filters=[("class_name", "=", class_name)], limit=1000, raise_on_missing_output=False, detail=True
    )
    return [a.node_id for a in actors]


def single_node_reference(run_dir: Path) -> Path:
    """The same config on a local single-node runtime (its own ``ray.init``, shut down after).

    Stops before the last round's training: the labeled set is final by then.
    """
    import ray

    assert not ray.is_initialized()
    try:
        return run_loop(run_dir, "ref", "resources.num_cpus=5", stop_before_last_training=True)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def single_node_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return single_node_reference(tmp_path_factory.mktemp("single"))


def test_loop_on_two_worker_nodes_matches_single_node_run(single_node_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    with local_cluster() as (cluster, _):
        run = run_loop(tmp_path, "multi", f"resources.address={cluster.address}")
        names = node_names()
        placed = [names.get(n, "?") for n in actor_nodes()]
    # 2 ranks x 2 rounds, each worker node fits one rank at a time (2 CPUs a rank, 2 a node, 1 on
    # the head): every worker node hosted one rank per round, so the ranks of a round were split
    assert sorted(placed) == sorted(WORKER_NODES * 2), placed

    lab = labeled_rows(run)
    assert len(lab) == INITIAL + BUDGET
    assert sorted({r for _, _, r, _ in lab}) == [0, 1]
    assert lab == labeled_rows(single_node_run)
    # DDP over two nodes trained the same weights as over one
    got = load_file(str(run / "round_000" / "checkpoint" / "ema.safetensors"))
    want = load_file(str(single_node_run / "round_000" / "checkpoint" / "ema.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        assert (got[k] - want[k]).abs().max().item() <= 1e-6, k
