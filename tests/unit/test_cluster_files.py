"""The launch files in cluster/: what the loop relies on is there and spelled right (no Ray started).

* ``gpu-cluster.yaml`` (Ray cluster launcher) must pass Ray's own launcher schema, install the
  locked stack with the ``gpu`` extra on every node, mount shared storage, keep the dashboard
  on loopback with token auth, and autoscale GPU workers.
* ``kuberay-rayjob.yaml`` (KubeRay RayJob) must run ``python -m hssal_ray.loop`` with a config
  from ``configs/`` that loads, a run directory on shared storage, GPU worker pods, token auth
  and the pinned Ray version.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from hssal_ray import _io
from hssal_ray.config import ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "cluster" / "gpu-cluster.yaml"
RAYJOB = REPO / "cluster" / "kuberay-rayjob.yaml"
GPU_INSTANCE = re.compile(r"^(g4dn|g5|g6|g6e|p3|p4d|p4de|p5|p5e)\.")


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def _loop_command(argv: list[str]) -> ExperimentConfig:
    """Check ``argv`` is ``python -m hssal_ray.loop --config configs/X.yaml k=v ...``; return its config."""
    assert argv[:3] == ["python", "-m", "hssal_ray.loop"], argv
    assert argv[3] == "--config", argv
    config = Path(argv[4])
    assert not config.is_absolute() and config.parts[0] == "configs", config
    assert (REPO / config).is_file(), f"{config} is not in configs/"
    overrides = argv[5:]
    assert overrides and all("=" in o and not o.startswith("-") for o in overrides), overrides
    return load_config(str(REPO / config), overrides)


def _documented_command(text: str) -> list[str]:
    """The ``python -m hssal_ray.loop ...`` command in a YAML file's header comment (with ``\\`` lines)."""
    lines = [ln.lstrip("#").strip() for ln in text.splitlines() if ln.startswith("#")]
    start = next(i for i, ln in enumerate(lines) if "python -m hssal_ray.loop" in ln)
    parts = [lines[start][lines[start].index("python -m hssal_ray.loop") :]]
    i = start
    while parts[-1].endswith("\\"):
        parts[-1] = parts[-1][:-1]
        i += 1
        parts.append(lines[i])
    return shlex.split(" ".join(parts))


# --------------------------------------------------------------------------- cluster launcher
@pytest.fixture(scope="module")
def launcher() -> dict[str, Any]:
    return _load(LAUNCHER)


def test_launcher_passes_rays_launcher_schema(launcher: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")  # locates the package without importing (starting) Ray
    assert spec is not None and spec.submodule_search_locations
    schema_path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    jsonschema.validate(launcher, json.loads(schema_path.read_text()))  # what `ray up` checks
    assert launcher["provider"]["type"] == "aws"


def test_launcher_autoscales_gpu_workers(launcher: dict[str, Any]) -> None:
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    gpu_types = {
        name: t
        for name, t in types.items()
        if name != launcher["head_node_type"] and t["resources"].get("GPU", 0) >= 1
    }
    assert gpu_types, "no GPU worker node type"
    for name, t in gpu_types.items():
        assert GPU_INSTANCE.match(t["node_config"]["InstanceType"]), (name, t["node_config"]["InstanceType"])
        assert 0 <= t["min_workers"] < t["max_workers"] <= launcher["max_workers"], name


def test_launcher_installs_the_locked_stack_with_the_gpu_extra(launcher: dict[str, Any]) -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "gpu" in extras
    setup = launcher["setup_commands"]  # run on the head and on every worker
    installs = [c for c in setup if re.search(r"uv sync .*--extra gpu|pip install .*\.\[gpu\]", c)]
    assert installs, setup
    assert any("--locked" in c for c in installs), "install from uv.lock (the pinned torch/Ray)"
    # the install runs in the copy of this repository the file mounts put on each node
    target = next(remote for remote, local in launcher["file_mounts"].items() if local == ".")
    assert any(f"cd {target}" in c for c in installs), (target, installs)


def test_launcher_run_dir_is_on_storage_every_node_sees(launcher: dict[str, Any]) -> None:
    mounts = [
        m.group(1)
        for c in launcher["setup_commands"]
        for m in [re.search(r"mount -t (?:nfs4|efs)\b.*\s(/\S+)", c)]
        if m
    ]
    assert mounts, "no shared file system mounted on the nodes"
    cfg = _loop_command(_documented_command(LAUNCHER.read_text()))
    run_dir = cfg.loop.run_dir
    assert _io.is_uri(run_dir) or any(run_dir.startswith(m.rstrip("/") + "/") for m in mounts), (
        run_dir,
        mounts,
    )
    assert cfg.data.root is not None and (_io.is_uri(cfg.data.root) or cfg.data.root.startswith(mounts[0]))
    assert cfg.resources.use_gpu  # configs/ucm.yaml is the GPU profile


def test_launcher_dashboard_on_loopback_with_token_auth(launcher: dict[str, Any]) -> None:
    head = " ".join(launcher["head_start_ray_commands"])
    assert "--head" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token" in head
    assert "RAY_AUTH_MODE=token" in " ".join(launcher["worker_start_ray_commands"])
    # every node gets the same token (`ray get-auth-token --generate` writes ~/.ray/auth_token)
    assert launcher["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    # CLI calls on the nodes (ray job submit from the head) use token auth too
    assert any("export RAY_AUTH_MODE=token" in c for c in launcher["setup_commands"])


# --------------------------------------------------------------------------- KubeRay RayJob
@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return _load(RAYJOB)


def test_rayjob_entrypoint_runs_the_loop_on_shared_storage(rayjob: dict[str, Any]) -> None:
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    cfg = _loop_command(shlex.split(spec["entrypoint"]))
    assert _io.is_uri(cfg.loop.run_dir), f"loop.run_dir must be a URI all pods see, got {cfg.loop.run_dir}"
    assert cfg.data.root is not None and _io.is_uri(cfg.data.root)
    assert cfg.resources.use_gpu
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec.get("backoffLimit", 0) >= 1  # a retried job resumes from the run directory


def test_rayjob_cluster_matches_the_pinned_ray_and_has_token_auth(rayjob: dict[str, Any]) -> None:
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == importlib.metadata.version("ray")
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    # relative --config paths resolve in the container's working directory
    assert head["workingDir"].rstrip("/").endswith("hssal_ray")
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})


def test_rayjob_gpu_workers_fit_the_requested_training_workers(rayjob: dict[str, Any]) -> None:
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    cfg = _loop_command(shlex.split(spec["entrypoint"]))
    gpus = 0
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        container = group["template"]["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        assert int(container["resources"]["requests"].get("nvidia.com/gpu", 0)) == int(
            limits.get("nvidia.com/gpu", 0)
        )
        gpus += int(limits.get("nvidia.com/gpu", 0)) * group["maxReplicas"]
    assert gpus >= 1, "no worker group requests nvidia.com/gpu"
    # one GPU per Ray Train worker and per scoring actor (resources.use_gpu)
    assert cfg.resources.num_workers <= gpus
    assert cfg.resources.score_actors <= gpus
