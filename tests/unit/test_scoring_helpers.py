"""The scoring helpers without Ray: the scoring actor's class run in-process, the scores table's
``confident`` rule, the evaluation metrics, and the fault-injection hooks of ``hssal_ray.faults``."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hssal_ray import faults
from hssal_ray.config import config_to_dict, load_config
from hssal_ray.rounds import classification_metrics, scores_table
from hssal_ray.scoring import Scorer

SMALL = ["ssl.model=hssal_small_cnn", "data.image_size=16", "ssl.eval_model=ema"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):  # type: ignore[no-untyped-def]
    from hssal_ray.rounds import write_checkpoint
    from hssal_ray.ssl.train_loop import build_train_state

    cfg = load_config(None, SMALL)
    torch.manual_seed(0)
    state = build_train_state(cfg, 3, torch.device("cpu"), total_steps=1)
    ckpt = str(tmp_path_factory.mktemp("ckpt") / "checkpoint")
    write_checkpoint(state, ckpt, {"step": 0, "round": 0})
    return cfg, ckpt


def _batch(n: int = 5, with_strong: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    b = {
        "sample_id": np.array([f"s{i}" for i in range(n)], dtype=object),
        "x_none": rng.normal(size=(n, 3, 16, 16)).astype(np.float32),
        "label": np.array([0, 1, 2, 0, 1][:n]),
    }
    if with_strong:
        b["x_strong"] = rng.normal(size=(n, 3, 16, 16)).astype(np.float32)
    return b


def test_scorer_scores_a_batch(checkpoint) -> None:  # type: ignore[no-untyped-def]
    cfg, ckpt = checkpoint
    scorer = Scorer(ckpt, config_to_dict(cfg), num_classes=3, mode="score")
    t = scorer(_batch())
    assert t.column("sample_id").to_pylist() == [f"s{i}" for i in range(5)]
    probs = np.stack(t.column("probs").to_numpy(zero_copy_only=False))
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    emb = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-2)
    assert {"u_badge", "u_entropy", "confident", "pred"} <= set(t.column_names)
    assert t.column("pred").to_pylist() == probs.argmax(1).tolist()
    assert scorer.batches == 1
    assert "confident" not in scorer(_batch(with_strong=False)).column_names


def test_scorer_eval_mode_predicts_with_both_weights(checkpoint) -> None:  # type: ignore[no-untyped-def]
    cfg, ckpt = checkpoint
    scorer = Scorer(ckpt, config_to_dict(cfg), num_classes=3, mode="eval")
    assert scorer.other is not None  # the online weights next to the EMA
    t = scorer(_batch())
    assert t.column_names == ["sample_id", "label", "pred", "pred_other"]
    assert t.column("label").to_pylist() == [0, 1, 2, 0, 1]


def test_confident_needs_both_views_confident_and_agreeing() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.95, 0.05]], dtype=np.float32)
    strong = np.array([[0.8, 0.2], [0.1, 0.9], [0.9, 0.1], [0.5, 0.5]], dtype=np.float32)
    emb = np.eye(4, 2, dtype=np.float32)
    t = scores_table(np.array(list("abcd"), dtype=object), emb, probs, strong, p_cutoff=0.7)
    assert t.column("confident").to_pylist() == [True, False, False, False]
    assert t.column("embedding").type.value_type == "halffloat"
    assert (
        "confident"
        not in scores_table(np.array(list("abcd"), dtype=object), emb, probs, None, 0.7).column_names
    )


def test_classification_metrics() -> None:
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    m = classification_metrics(y, pred, 3)
    assert m["test_accuracy"] == pytest.approx(0.6) and m["test_samples"] == 5
    assert m["test_per_class_accuracy"] == {0: 0.5, 1: 1.0, 2: 0.0}
    assert m["test_balanced_accuracy"] == pytest.approx(0.5)
    m = classification_metrics(y, pred, 3, other=y, eval_model="online", prefix="val")
    assert m["val_accuracy_online"] == pytest.approx(0.6) and m["val_accuracy_ema"] == 1.0
    empty = classification_metrics(np.zeros(0, np.int64), np.zeros(0, np.int64), 3)
    assert np.isnan(empty["test_accuracy"]) and empty["test_samples"] == 0


# --------------------------------------------------------------------------- fault hooks


def test_delay_stage_parses_its_spec(monkeypatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    monkeypatch.setenv(faults.DELAY_ENV, "train@1=60,score@2=5")
    faults.delay_stage("train", 1)
    faults.delay_stage("train", 2)
    faults.delay_stage("score", 2)
    faults.delay_stage("query", 1)
    assert slept == [60.0, 5.0]
    monkeypatch.delenv(faults.DELAY_ENV)
    faults.delay_stage("train", 1)
    assert slept == [60.0, 5.0]


def test_kill_hooks_do_nothing_unless_named(tmp_path) -> None:
    marker = str(tmp_path / "m")
    faults.kill_actor(1, None)
    faults.kill_actor(1, f"batch=2,marker={marker}")
    faults.kill_worker(0, 3, f"rank=1,step=3,marker={marker}")
    faults.kill_worker(1, 4, f"rank=1,step=3,marker={marker}")
    faults.kill_actor(2, "batch=2")  # no marker: would fire forever, so it never fires
    assert not os.path.exists(marker)
    open(marker, "w").close()
    faults.kill_actor(2, f"batch=2,marker={marker}")  # the marker exists: fired before
    faults.kill_worker(1, 3, f"rank=1,step=3,marker={marker}")


@pytest.mark.parametrize(
    ("call", "code"),
    [("kill_actor(2, spec)", 1), ("kill_worker(1, 3, spec)", -9)],
    ids=["scorer", "worker"],
)
def test_kill_hooks_fire_once(tmp_path, call: str, code: int) -> None:
    marker = str(tmp_path / "m")
    spec = f"batch=2,rank=1,step=3,marker={marker}"
    script = f"from hssal_ray import faults\nspec = {spec!r}\nfaults.{call}\nprint('alive')\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert first.returncode == code and "alive" not in first.stdout
    assert os.path.exists(marker)
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "alive" in second.stdout


def test_kill_hook_fires_on_as_many_actors_as_times_says(tmp_path) -> None:
    """``times=3``: the first three actors that reach the batch exit, the fourth goes on; the marker
    holds one line per actor killed (each a fresh process, as Ray's restarted actors are)."""
    marker = str(tmp_path / "m")
    spec = f"batch=2,times=3,marker={marker}"
    script = f"from hssal_ray import faults\nfaults.kill_actor(2, {spec!r}, 'encode')\nprint('alive')\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = [sys.executable, "-c", script]
    codes = [subprocess.run(run, env=env, capture_output=True).returncode for _ in range(4)]
    assert codes == [1, 1, 1, 0]
    lines = open(marker).read().splitlines()
    assert len(lines) == 3 and all(line.startswith("killed encode actor ") for line in lines)


def test_pool_failures_names_the_stage_and_what_is_kept() -> None:
    """Ray's error for a pool that died past its restarts becomes one clear product error; others pass."""
    import ray.exceptions

    from hssal_ray.errors import ActorPoolError, HSSALError
    from hssal_ray.scoring import ACTOR_MAX_RESTARTS, pool_failures

    with pytest.raises(ActorPoolError) as err:
        with pool_failures("the encode", "The chunks written so far are kept.", "resources.encode_actors"):
            raise ray.exceptions.ActorDiedError()
    msg = str(err.value)
    assert isinstance(err.value, HSSALError)
    assert isinstance(err.value.__cause__, ray.exceptions.ActorDiedError)
    assert msg.startswith("the encode: its Ray actors kept dying") and f"{ACTOR_MAX_RESTARTS} restarts" in msg
    assert "The chunks written so far are kept." in msg and "lower resources.encode_actors)" in msg
    assert msg.endswith("Ray said: The actor died unexpectedly before finishing this task.")
    with pytest.raises(KeyError):  # not an actor's death: untouched
        with pool_failures("the encode", "", ""):
            raise KeyError("x")


def test_pool_failures_says_when_the_actors_could_not_start() -> None:
    """An actor whose constructor raised is not 'kept dying': the error ends with the constructor's error."""
    import ray.exceptions

    from hssal_ray.errors import ActorPoolError
    from hssal_ray.scoring import pool_failures

    said = (
        "The actor died because of an error raised in its creation task\n  File x\nDataError: store is gone\n"
    )
    with pytest.raises(ActorPoolError) as err:
        with pool_failures("the sharded scoring", "Nothing is written.", "resources.store_shards"):
            raise ray.exceptions.RayActorError(error_msg=said, actor_init_failed=True)
    msg = str(err.value)
    assert msg == (
        "the sharded scoring: its Ray actors failed to start. Nothing is written. "
        "Ray said: DataError: store is gone"
    )
