"""The loop's own rules, tested without Ray: what is scored, when a round is the last, run identity,
where the cold start writes, and that SSL is decided in one place."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pyarrow.fs as pafs
import pytest

from hssal_ray import _io
from hssal_ray.config import load_config
from hssal_ray.errors import ConfigError
from hssal_ray.loop.runner import LoopRunner, is_final_round, science_sha
from hssal_ray.state import LabeledSet, RunState
from hssal_ray.tune.search import row_is_final

SMALL = [
    "data.synthetic_classes=3",
    "data.synthetic_per_class=6",
    "data.image_size=16",
    "data.synthetic_size=16",
    "loop.initial_labeled=3",
]


def _runner(tmp_path, *extra: str) -> LoopRunner:
    cfg = load_config(None, [*SMALL, f"loop.run_dir={tmp_path}", "loop.name=r", *extra])
    runner = LoopRunner(cfg, progress=lambda s: None)
    runner._setup()
    return runner


def test_score_stage_scores_the_labeled_set_too(tmp_path) -> None:
    """coreset/TypiClust need the labeled embeddings: they are scored and excluded at query time."""
    runner = _runner(tmp_path)
    train_ids = runner.split("train").column("sample_id").to_pylist()
    labeled = LabeledSet().with_round(0, {train_ids[0]: 0, train_ids[1]: 1}, "seed")
    labeled.save(runner.run_dir)
    scored = set(runner.scored_rows().column("sample_id").to_pylist())
    assert scored == set(train_ids)
    assert not {train_ids[0], train_ids[1]} & set(runner.pool_rows(labeled).column("sample_id").to_pylist())


def test_final_round_rule_shared_by_loop_and_tune() -> None:
    cfg = load_config(None, ["loop.rounds=5", "loop.total_budget=100"])
    assert not is_final_round(cfg, 1, 40, pool_remaining=10, n_train=500)
    assert is_final_round(cfg, 5, 40, pool_remaining=10, n_train=500)
    assert is_final_round(cfg, 1, 100, pool_remaining=10, n_train=500)
    assert is_final_round(cfg, 1, 40, pool_remaining=0, n_train=500)  # pool exhausted
    frac = load_config(
        None, ["loop.rounds=5", "loop.initial_labeled=0.02", "query.budget=0.02", "loop.total_budget=0.08"]
    )
    assert not is_final_round(frac, 2, 133, pool_remaining=10, n_train=1680)
    assert is_final_round(frac, 2, 134, pool_remaining=10, n_train=1680)  # round(0.08 * 1680)
    assert row_is_final(
        frac, {"round": 3, "num_labeled": 134, "label_fraction": 134 / 1680, "pool_remaining": 5}
    )
    # Tune reads the loop's recorded decision, and applies the same rule to older rows
    assert row_is_final(cfg, {"round": 1, "num_labeled": 40, "pool_remaining": 0})
    assert row_is_final(cfg, {"round": 1, "num_labeled": 40, "final": True})
    assert not row_is_final(cfg, {"round": 1, "num_labeled": 40, "pool_remaining": 3})


def test_science_sha_counts_science_not_runtime() -> None:
    base = science_sha(load_config(None, []))
    for runtime in (
        "ssl.eval_batch_size=7",
        "data.decode_batch_size=7",
        "query.parallel=true",
        "ssl.checkpoint_every=5",
        "resources.score_actors=3",
        "loop.rounds=9",
    ):
        assert science_sha(load_config(None, [runtime])) == base, runtime
    for science in ("resources.num_workers=2", "ssl.ema_m=0.99", "ssl.eval_model=online", "seed=3"):
        assert science_sha(load_config(None, [science])) != base, science


def test_ssl_compile_is_gone_and_ema_warning() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'ssl.compile'"):
        load_config(None, ["ssl.compile=true"])
    with pytest.warns(UserWarning, match="ssl.ema_warmup"):
        load_config(None, ["ssl.ema_warmup=false", "ssl.steps_per_round=200"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, ["ssl.steps_per_round=200"])  # warm-up on (the default): no warning
        load_config(None, ["ssl.ema_warmup=false", "ssl.eval_model=online"])


def test_ssl_decided_once_with_a_message_when_pool_is_empty(caplog) -> None:
    from hssal_ray.rounds import ssl_active

    cfg = load_config(None, [])
    assert ssl_active(cfg, 10)
    assert not ssl_active(load_config(None, ["ssl.enabled=false"]), 10)
    assert not ssl_active(load_config(None, ["ssl.lambda_u=0"]), 10)
    with caplog.at_level(logging.WARNING, logger="hssal_ray"):
        assert not ssl_active(cfg, 0, round_idx=4)
    assert "round 4: the unlabeled pool is empty" in caplog.text


def test_typiclust_cold_start_checkpoint_lives_under_a_uri_run_dir(tmp_path, monkeypatch) -> None:
    """The cold start's checkpoint goes to RUN/cold_start/checkpoint, never a fixed /tmp path."""
    import hssal_ray.scoring as scoring
    from hssal_ray.loop import cold_start

    real = _io.resolve_fs
    store = tmp_path / "bucket"
    store.mkdir()

    def fake_fs(path: str):  # a "fake://" object store backed by a local folder
        if str(path).startswith("fake://"):
            return pafs.SubTreeFileSystem(str(store), pafs.LocalFileSystem()), str(path)[len("fake://") :]
        return real(path)

    monkeypatch.setattr(_io, "resolve_fs", fake_fs)
    runner = _runner("fake://runs", f"data.root={_synthetic(tmp_path)}", "loop.cold_start=typiclust")
    seen = {}

    def fake_score_pool(cfg, table, *, ckpt_dir, out_path, **kw):
        seen["ckpt"] = ckpt_dir
        raise RuntimeError("stop here")

    monkeypatch.setattr(scoring, "score_pool", fake_score_pool)
    with pytest.raises(RuntimeError, match="stop here"):
        cold_start.select_cold_start(runner)
    assert seen["ckpt"] == "fake://runs/r/cold_start/checkpoint"
    assert (store / "runs/r/cold_start/checkpoint/ema.safetensors").is_file()


def _synthetic(tmp_path) -> str:
    from hssal_ray.data.synthetic import make_synthetic_rs

    root = tmp_path / "syn"
    make_synthetic_rs(str(root), num_classes=3, per_class=6, size=16, seed=0)
    return str(root)


def test_typiclust_skips_clusters_that_hold_labeled_rows() -> None:
    from hssal_ray.query import Pool, strategy_from_config

    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.05, (60, 4)) + np.array([1, 0, 0, 0])  # big blob, already labeled
    b = rng.normal(0, 0.05, (20, 4)) + np.array([0, 1, 0, 0])  # small blob, no label yet
    emb = np.concatenate([a, b]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    exclude = np.zeros(80, bool)
    exclude[:3] = True
    pool = Pool(ids=np.array([f"s{i}" for i in range(80)], dtype=object), embeddings=emb, exclude=exclude)
    cfg = load_config(None, ["query.strategy=typiclust", "query.kmeans_backend=sklearn"]).query
    picks = strategy_from_config(cfg, random_state=0).select(pool, 1)
    assert int(picks[0]) >= 60  # from the blob without labels


def test_typiclust_cold_start_picks_with_the_query_sections_kmeans_settings() -> None:
    """The cold start runs TypiClust (whatever ``query.strategy``) with ``query.kmeans_*``."""
    from hssal_ray.loop.cold_start import _typiclust_pick
    from hssal_ray.query import TypiClustQuery
    from hssal_ray.rounds import derive_seed

    from ..query._data import blob_pool

    pool, _ = blob_pool(n=200, seed=2)
    cfg = load_config(None, ["query.strategy=margin", "query.kmeans_backend=torch", "query.kmeans_iters=3"])
    want = TypiClustQuery(
        kmeans_backend="torch", kmeans_iters=3, random_state=derive_seed(cfg.seed, "cold_start") % (2**31)
    ).select(pool, 8)
    assert _typiclust_pick(cfg, pool, 8) == [str(pool.ids[i]) for i in want]


def test_typiclust_at_archive_scale_caps_the_clusters_and_fits_on_a_sample(monkeypatch) -> None:
    """More picks than ``max_clusters``: the first pick of every cluster, then the next most typical
    of each, round-robin; a pool above 256 rows a cluster is fitted on a sample and assigned whole."""
    from hssal_ray.query import TypiClustQuery, baselines
    from hssal_ray.query import backends as bk

    from ..query._data import blob_pool

    pool, blob = blob_pool(n=3000, n_blobs=4, seed=4)
    fitted: list[int] = []
    real = bk.make_kmeans

    def spy(*a, **kw):  # the rows each k-means is fitted on
        km = real(*a, **kw)
        fit = km.fit
        km.fit = lambda X: (fitted.append(len(X)), fit(X))[1]
        return km

    monkeypatch.setattr(baselines, "make_kmeans", spy)
    q = TypiClustQuery(kmeans_backend="torch", max_clusters=4, random_state=0)
    picks = q.select(pool, 10)
    assert fitted == [4 * baselines.FIT_ROWS_PER_CENTROID] and len(set(picks.tolist())) == 10
    first = q.info_["pick_cluster"][:4]
    assert sorted(first.tolist()) == [0, 1, 2, 3]  # one per cluster before any second pick
    assert len(set(blob[picks[:4]].tolist())) == 4  # the 4 clusters are the 4 blobs
    fitted.clear()
    whole = TypiClustQuery(kmeans_backend="torch", random_state=0).select(pool, 12)  # 12 x 256 >= 3,000
    assert fitted == [3000] and len(set(whole.tolist())) == 12


def _finished(tmp_path, ended: str, row: dict, *extra: str) -> tuple[LoopRunner, RunState]:
    """A run of ``SMALL`` finished after round 1 at stage ``ended``, resumed with ``extra``."""
    from hssal_ray.loop.metrics import update_metrics

    runner = _runner(tmp_path, *extra)
    ids = runner.split("train").column("sample_id").to_pylist()
    labeled = LabeledSet().with_round(0, {s: 0 for s in ids[:3]}, "seed").with_round(1, {ids[3]: 1}, "o")
    labeled.save(runner.run_dir)
    update_metrics(runner.run_dir, 0, {"round": 0, "num_labeled": 3, "test_accuracy": 0.5, "final": False})
    last = {"round": 1, "num_labeled": 4, "test_accuracy": 0.6, "final": True, **row}
    update_metrics(runner.run_dir, 1, last)
    state = RunState(round=1, stage="done", status="done", config_sha=science_sha(runner.cfg))
    state.history += [[1, "evaluate", 0.1]] + ([[1, "score", 0.1]] if ended == "score" else [])
    state.save(runner.run_dir)
    return runner, state


def test_a_finished_run_goes_on_when_its_resume_asks_for_more_rounds(tmp_path) -> None:
    from hssal_ray.loop.metrics import read_metrics

    runner, state = _finished(tmp_path / "same", "evaluate", {}, "loop.rounds=1")
    assert not runner._reopen(state) and state.status == "done"  # the same settings: it stays done
    runner, state = _finished(tmp_path / "more", "evaluate", {}, "loop.rounds=3")
    assert runner._reopen(state) and (state.stage, state.status) == ("score", "running")
    assert read_metrics(runner.run_dir)[-1]["final"] is False
    assert RunState.load(runner.run_dir).stage == "score"  # saved
    runner, state = _finished(tmp_path / "budget", "evaluate", {}, "loop.rounds=3", "loop.total_budget=4")
    assert not runner._reopen(state)  # 4 labels reached: still the last round


def test_a_settled_stop_goes_on_only_when_the_rule_no_longer_holds(tmp_path) -> None:
    from hssal_ray.loop.metrics import read_metrics

    stopped = {"stability_kappa": 0.9, "stopped": "stable", "stability_window_kappa": 0.9}
    rule = ("loop.rounds=5", "loop.stop_window=1")
    runner, state = _finished(tmp_path / "same", "score", stopped, *rule, "loop.stop_kappa=0.8")
    assert not runner._reopen(state)
    runner, state = _finished(tmp_path / "stricter", "score", stopped, *rule, "loop.stop_kappa=0.95")
    assert runner._reopen(state) and state.stage == "query"
    row = read_metrics(runner.run_dir)[-1]
    assert row["final"] is False and "stopped" not in row and row["stability_kappa"] == 0.9
