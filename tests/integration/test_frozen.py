"""The frozen-encoder path end to end: the real CLI, and an embedding store that resumes a killed encode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import SMOKE, run_cli

pytestmark = pytest.mark.ray

FROZEN = ["ssl.finetune=frozen", "frozen.embed_views=1", "ssl.steps_per_round=20"]


def test_frozen_loop_end_to_end(tmp_path: Path) -> None:
    run_cli(*SMOKE, *FROZEN, f"loop.run_dir={tmp_path}", "loop.name=fz")
    run = tmp_path / "fz"
    assert json.loads((run / "state.json").read_text())["status"] == "done"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_labeled"] for r in rows] == [6, 9, 12]
    for r in rows:
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["test_accuracy"] == r["test_accuracy_ema"] and "test_accuracy_online" in r
        assert r["ema_initial_weight"] < 0.5 and r["step"] == 20
    # each query read its embeddings from the store, not from the scores file's column
    assert [r.get("query_embeddings_from") for r in rows] == ["store", "store", None]
    meta = json.loads((run / "embeddings" / "meta.json").read_text())
    assert meta["complete"] and meta["views"] == ["none", "weak_0", "strong_0"]
    assert (run / "round_001" / "checkpoint" / "ema.safetensors").is_file()
    assert (run / "round_001" / "scores.parquet").is_file()


@pytest.fixture(scope="module")
def ray_local():  # type: ignore[no-untyped-def]
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


# Encoder batches that tile a chunk (4 of 8 rows): one Ray Data run over every pending chunk; batches that
# do not (the default 64): a run a chunk. Either way a resumed encode gives the same store.
@pytest.mark.parametrize("batch, runs", [(None, [4, 2]), (4, [1, 1])])
def test_half_written_store_is_detected_and_finished(
    ray_local, tmp_path: Path, monkeypatch, batch: int | None, runs: list[int]
) -> None:
    from hssal_ray.config import load_config
    from hssal_ray.data import pipeline
    from hssal_ray.data.catalog import scan
    from hssal_ray.data.synthetic import make_synthetic_rs
    from hssal_ray.frozen import store as st

    root = tmp_path / "data"
    make_synthetic_rs(str(root), num_classes=3, per_class=10, size=16, seed=0)
    over = [f"data.root={root}", "data.image_size=16", "ssl.finetune=frozen", "frozen.embed_views=1"]
    cfg = load_config(None, over + ([f"ssl.eval_batch_size={batch}"] if batch else []))
    cat = scan(str(root), seed=0)
    monkeypatch.setattr(st, "CHUNK_ROWS", 8)  # 30 images -> 4 parts
    streams: list[int] = []
    real = pipeline.stream_for

    def counted(cfg, table, **kw):  # type: ignore[no-untyped-def]
        streams.append(table.num_rows)
        return real(cfg, table, **kw)

    monkeypatch.setattr(pipeline, "stream_for", counted)
    first = st.ensure_store(cfg, cat, str(tmp_path / "run"))
    assert len(streams) == runs[0] and sum(streams) == 30
    path = Path(first.path)
    parts = sorted(path.glob("part-*.parquet"))
    assert len(parts) == 4 and json.loads((path / "meta.json").read_text())["complete"]
    # once complete, the views are memory-mapped arrays written beside the parts
    assert sorted(p.name for p in path.glob("view-*.npy")) == [
        "view-none.npy",
        "view-strong_0.npy",
        "view-weak_0.npy",
    ]
    assert all(isinstance(a, np.memmap) for a in first.views.values()) and len(first.ids) == 30
    # a killed encode: no meta (written last), one part missing, one part damaged
    (path / "meta.json").unlink()
    parts[1].unlink()
    parts[2].write_bytes(b"not parquet")
    kept = {p.name: os.stat(p).st_mtime_ns for p in (parts[0], parts[3])}
    streams.clear()
    again = st.ensure_store(cfg, cat, str(tmp_path / "run"))
    assert len(streams) == runs[1] and sum(streams) == 16  # the two parts to redo
    assert {p.name: os.stat(p).st_mtime_ns for p in (parts[0], parts[3])} == kept  # whole parts trusted
    np.testing.assert_array_equal(again.ids, first.ids)
    for v in first.views:
        np.testing.assert_array_equal(again.views[v], first.views[v])  # the same, seeded views
    meta = json.loads((path / "meta.json").read_text())
    assert meta["complete"] and meta["arrays"]["rows"] == 30


def test_encode_actors_that_die_lose_nothing(ray_local, tmp_path: Path, monkeypatch) -> None:
    """An encode actor killed mid-stream is restarted and its batch retried: the store is the same bit for
    bit. Actors that die at every batch end the encode with a clear error within their bounded restarts
    (Ray Data's own default restarts them forever), leave no store marked complete, and a rerun finishes
    it."""
    from hssal_ray.config import load_config
    from hssal_ray.data.catalog import scan
    from hssal_ray.data.synthetic import make_synthetic_rs
    from hssal_ray.errors import ActorPoolError
    from hssal_ray.faults import KILL_ENCODER_ENV
    from hssal_ray.frozen import store as st
    from hssal_ray.scoring import ACTOR_MAX_RESTARTS

    root = tmp_path / "data"
    make_synthetic_rs(str(root), num_classes=3, per_class=6, size=16, seed=1)
    over = [f"data.root={root}", "data.image_size=16", "ssl.finetune=frozen", "frozen.embed_views=1"]
    cfg = load_config(None, [*over, "ssl.eval_batch_size=4"])
    cat = scan(str(root), seed=0)
    monkeypatch.setattr(st, "CHUNK_ROWS", 8)  # 18 images: 3 chunks, 5 batches in one stream
    monkeypatch.delenv(KILL_ENCODER_ENV, raising=False)
    clean = st.ensure_store(cfg, cat, str(tmp_path / "clean"))

    once = tmp_path / "killed_once"
    monkeypatch.setenv(KILL_ENCODER_ENV, f"batch=2,marker={once}")
    again = st.ensure_store(cfg, cat, str(tmp_path / "once"))
    assert once.read_text().startswith("killed encode actor "), "the encode actor was never killed"
    for v in clean.views:
        np.testing.assert_array_equal(again.views[v], clean.views[v])

    always = tmp_path / "killed_always"
    monkeypatch.setenv(KILL_ENCODER_ENV, f"batch=1,times=1000,marker={always}")
    with pytest.raises(ActorPoolError, match="^the encode: its Ray actors kept dying .*rerunning the"):
        st.ensure_store(cfg, cat, str(tmp_path / "doomed"))
    assert len(always.read_text().splitlines()) >= ACTOR_MAX_RESTARTS + 1
    assert not list((tmp_path / "doomed").rglob("meta.json"))  # nothing claims to be a whole store
    monkeypatch.delenv(KILL_ENCODER_ENV)
    rerun = st.ensure_store(cfg, cat, str(tmp_path / "doomed"))
    for v in clean.views:
        np.testing.assert_array_equal(rerun.views[v], clean.views[v])


def test_a_sweep_encodes_the_shared_store_once_before_its_trials(
    ray_local, tmp_path: Path, monkeypatch
) -> None:
    """The sweep's driver builds the store its trials share (with the auto actor pool), and a trial's
    own catalog (another split seed) then finds it complete: nothing is encoded again."""
    from hssal_ray.config import load_config
    from hssal_ray.data.bootstrap import scan_config
    from hssal_ray.data.synthetic import make_synthetic_rs
    from hssal_ray.frozen import encode
    from hssal_ray.tune.search import prepare_shared_inputs

    root = tmp_path / "data"
    make_synthetic_rs(str(root), num_classes=3, per_class=4, size=16, seed=0)
    over = [
        f"data.root={root}",
        "data.image_size=16",
        "frozen.embed_views=1",
        f"data.embedding_cache={tmp_path}/c",
    ]
    cfg = load_config(None, [*over, "ssl.finetune=frozen"])
    said: list[str] = []
    assert prepare_shared_inputs(cfg, str(tmp_path / "sweep"), said.append)
    # 2 CPUs (fewer while the previous test's actors go): one actor, the pool's size said with its reason
    assert any("encode: 1 CPU actor(s) (auto: " in line for line in said), said

    def no_encode(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the store was encoded again")

    monkeypatch.setattr(encode, "_encode", no_encode)
    trial = load_config(None, [*over, "ssl.finetune=frozen", "seed=3"])
    store = encode.ensure_store(trial, scan_config(trial), str(tmp_path / "trial"))
    assert len(store.ids) == 12
    # nothing shared: the image path, and the demo data each trial generates for itself
    assert not prepare_shared_inputs(load_config(None, over), str(tmp_path / "s2"), said.append)
    no_root = load_config(None, ["ssl.finetune=frozen", "frozen.embed_views=1"])
    assert not prepare_shared_inputs(no_root, str(tmp_path / "s3"), said.append)
