"""The loop's query stage (without Ray: ``query.parallel`` off): labeled ids are never picked."""

from __future__ import annotations

import numpy as np

from hssal_ray.config import config_from_dict
from hssal_ray.loop.query_batch import run_query
from hssal_ray.query import load_pool, strategy_from_config, write_scores
from hssal_ray.rounds import derive_seed
from tests.unit.query._data import blob_pool


def _hal_scores(tmp_path, parts: int):  # type: ignore[no-untyped-def]
    """A 400-row scores file in ``parts`` parts, and a config querying 20 of it with HAL."""
    pool, _ = blob_pool(n=400)
    path = str(tmp_path / "scores")
    write_scores(path, pool.ids, pool.embeddings, pool.probs, pool.scores, num_parts=parts)
    cfg = config_from_dict(
        {"seed": 3, "data": {"root": str(tmp_path)}, "query": {"strategy": "hal", "budget": 20}}
    )
    return pool, path, cfg


def test_run_query_excludes_labeled_ids_as_np_isin_would(tmp_path) -> None:
    pool, path, cfg = _hal_scores(tmp_path, parts=3)
    labeled = {str(s) for s in pool.ids[::3]} | {"not-in-the-pool"}
    ids, u, coarse, info = run_query(cfg, path, 20, labeled, round_idx=2)
    assert len(ids) == 20 == len(set(ids)) and not set(ids) & labeled
    assert all(type(s) is str for s in ids) and len(u) == 20 and info["query_strategy"].startswith("Hier")
    for key in ("query_load_s", "query_select_s"):  # where the round's query time went
        assert type(info[key]) is float and info[key] >= 0.0, key
    assert info["query_pool_rows"] == 400  # the pool it read, labeled rows included
    assert info["query_embedding_mb"] == pool.embeddings.nbytes / 2**20
    # the same picks as the reference membership test (np.isin over the object ids)
    ref = load_pool(path)
    ref.exclude = np.isin(ref.ids, np.asarray(sorted(labeled), dtype=object))
    strat = strategy_from_config(cfg.query, random_state=derive_seed(cfg.seed, 2, "query") % (2**31))
    assert ids == [str(ref.ids[i]) for i in strat.select(ref, 20)]


def test_run_query_takes_the_embeddings_from_the_learner_when_it_offers_them(tmp_path) -> None:
    from tests.unit.query.test_rowsource import ArrayRows

    pool, path, cfg = _hal_scores(tmp_path, parts=2)
    labeled = {str(s) for s in pool.ids[::4]}
    ref_ids, ref_u, _, ref_info = run_query(cfg, path, 20, labeled, round_idx=1)
    asked: list[np.ndarray] = []
    by_id = {str(s): i for i, s in enumerate(pool.ids)}

    def rows_of(ids: np.ndarray) -> ArrayRows:  # the pool's rows in the file's order
        asked.append(ids)
        return ArrayRows(pool.embeddings[[by_id[str(s)] for s in ids]])

    ids, u, _, info = run_query(cfg, path, 20, labeled, round_idx=1, embeddings=rows_of)
    assert len(asked) == 1 and len(asked[0]) == 400
    assert (ids, u) == (ref_ids, ref_u)
    assert info["query_embeddings_from"] == "store" and ref_info["query_embeddings_from"] == "scores"
    assert info["query_embedding_mb"] == ref_info["query_embedding_mb"]
