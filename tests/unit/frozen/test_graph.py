"""Graph-smoothed pseudo-labels (``frozen.pseudo_labels=graph``): the affinity, the propagation, the head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hssal_ray.config import load_config
from hssal_ray.errors import ConfigError
from hssal_ray.frozen.graph import balance_classes, graph_pseudo_labels, knn_affinity, propagate
from hssal_ray.frozen.head import train_head
from hssal_ray.ssl.loss import fixmatch_loss
from tests.unit.frozen._fixtures import graph_cfg, noisy_views


def _two_moons_like(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes on two arcs of a circle: neighbours share the class, a straight line does not."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, size=n)
    y = (rng.random(n) < 0.5).astype(np.int64)
    x = np.stack([np.cos(t) + y * 1.0, np.sin(t) * (1 - 2 * y) + 0.5 * y, np.full(n, 2.0)], 1)
    return (x + 0.05 * rng.normal(size=x.shape)).astype(np.float32), y


def test_affinity_is_symmetric_normalised_and_sparse() -> None:
    x, _ = _two_moons_like(60)
    S = knn_affinity(x, k=5)
    d = S.toarray()
    np.testing.assert_allclose(d, d.T, atol=1e-6)
    assert np.all(np.diag(d) == 0)
    assert (d > 0).sum(1).max() <= 2 * 5  # k out-neighbours plus the rows that chose this one
    assert (d > 0).sum(1).min() >= 5
    # the largest eigenvalue of D^-1/2 W D^-1/2 is 1 (a normalised affinity)
    assert np.max(np.abs(np.linalg.eigvalsh(d))) == pytest.approx(1.0, abs=1e-4)
    # tiny inputs: no neighbours to find
    assert knn_affinity(x[:1], k=5).shape == (1, 1)


def test_propagation_fixes_a_wrong_teacher_from_its_neighbours() -> None:
    x, y = _two_moons_like(200)
    labeled = np.zeros(200, bool)
    labeled[np.flatnonzero(y == 0)[:3]] = labeled[np.flatnonzero(y == 1)[:3]] = True
    teacher = np.eye(2, dtype=np.float32)[y] * 0.8 + 0.1
    wrong = np.random.default_rng(1).choice(np.flatnonzero(~labeled), 40, replace=False)
    teacher[wrong] = teacher[wrong][:, ::-1]  # 20% of the teacher's answers flipped
    out = graph_pseudo_labels(x, teacher, labeled, y, k=8, alpha=0.8)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)
    assert (teacher.argmax(1) == y).mean() == pytest.approx(0.8)
    assert (out.argmax(1) == y).mean() > 0.95
    assert np.all(out[labeled].argmax(1) == y[labeled])


def test_propagate_keeps_isolated_rows_and_checks_alpha() -> None:
    import scipy.sparse as sp

    prior = np.array([[0.3, 0.7], [0.9, 0.1]], np.float32)
    np.testing.assert_allclose(
        propagate(sp.csr_matrix((2, 2), dtype=np.float32), prior, 0.5), prior, rtol=1e-6
    )
    with pytest.raises(ValueError, match="alpha"):
        propagate(sp.csr_matrix((2, 2), dtype=np.float32), prior, 1.0)


def test_balance_classes_matches_the_prior_and_keeps_rows_distributions() -> None:
    rng = np.random.default_rng(0)
    # a teacher that over-predicts class 0: three quarters of the mass lands on it
    p = rng.dirichlet([3.0, 1.0, 1.0], size=600).astype(np.float32)
    assert p.mean(0)[0] > 0.5
    out = balance_classes(p, np.ones(3))
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out.mean(0), [1 / 3] * 3, atol=0.01)
    # labels that already follow the prior are left as they are
    even = np.concatenate([p, np.roll(p, 1, axis=1), np.roll(p, 2, axis=1)])
    np.testing.assert_allclose(balance_classes(even, np.ones(3)), even, atol=1e-5)
    skew = balance_classes(p, np.array([2.0, 1.0, 1.0]))
    np.testing.assert_allclose(skew.mean(0), [0.5, 0.25, 0.25], atol=0.01)
    with pytest.raises(ValueError, match="prior"):
        balance_classes(p, np.ones(2))


def test_fixmatch_loss_uses_given_targets_instead_of_the_weak_view() -> None:
    torch.manual_seed(0)
    lx, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    weak, strong = torch.randn(6, 3), torch.randn(6, 3, requires_grad=True)
    targets = torch.eye(3)[torch.tensor([2, 2, 1, 0, 1, 0])] * 0.7 + 0.1
    targets[5] = torch.tensor([0.4, 0.3, 0.3])
    _, st = fixmatch_loss(lx, y, weak, strong, p_cutoff=0.6, lambda_u=1.0, targets=targets)
    assert st.pseudo_labels.tolist() == [2, 2, 1, 0, 1, 0]
    assert st.mask.tolist() == [1, 1, 1, 1, 1, 0]  # the last target is not confident enough
    _, plain = fixmatch_loss(lx, y, weak, strong, p_cutoff=0.6, lambda_u=1.0)
    assert torch.equal(plain.pseudo_labels, weak.argmax(1))
    with pytest.raises(ValueError, match="targets"):
        fixmatch_loss(lx, y, weak, strong, p_cutoff=0.6, lambda_u=1.0, targets=targets[:2])


def _cfg(*over: str):
    return graph_cfg(*over, steps=40)


def _views(x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    return noisy_views(x, weak=0.02, strong=0.1, seed=seed)


def test_train_head_graph_mode_trains_a_teacher_and_reports_its_labels() -> None:
    x, y = _two_moons_like(200)
    views = _views(x)
    rows = np.arange(200)
    lab = np.concatenate([np.flatnonzero(y == 0)[:3], np.flatnonzero(y == 1)[:3]])
    pool = np.setdiff1d(rows, lab)
    state, m = train_head(_cfg(), views, lab, y[lab], pool, y[pool], 2, stats_rows=rows, seed=0)
    assert m["mask_rate"] == pytest.approx(1.0)  # graph_cutoff 0: every pool sample is used
    assert 0.0 <= m["teacher_label_acc"] <= 1.0 and 0.0 <= m["graph_label_acc"] <= 1.0
    assert m["pseudo_label_acc"] == pytest.approx(m["graph_label_acc"], abs=0.1)  # batches of the same labels
    assert state.step == 40 and m["graph_pool_rows"] == len(pool)
    # class-balanced smoothed labels: the round trains and reports the same diagnostics
    _, bal = train_head(
        _cfg("frozen.graph_balance=uniform"), views, lab, y[lab], pool, y[pool], 2, stats_rows=rows, seed=0
    )
    assert 0.0 <= bal["graph_label_acc"] <= 1.0 and bal["mask_rate"] == pytest.approx(1.0)
    # the model mode has no teacher: the diagnostics are absent
    _, plain = train_head(
        _cfg("frozen.pseudo_labels=model"), views, lab, y[lab], pool, y[pool], 2, stats_rows=rows, seed=0
    )
    assert "teacher_label_acc" not in plain and "graph_label_acc" not in plain
    # supervised rounds never build a graph
    _, sup = train_head(_cfg(), views, lab, y[lab], pool, y[pool], 2, stats_rows=rows, seed=0, ssl_on=False)
    assert "graph_label_acc" not in sup


def test_graph_mode_is_checked() -> None:
    with pytest.raises(ConfigError, match="finetune=frozen"):
        load_config(None, ["frozen.pseudo_labels=graph"])
    with pytest.raises(ConfigError, match="flexmatch"):
        _cfg("ssl.threshold_mode=flexmatch")
    with pytest.raises(ConfigError, match="graph_alpha"):
        _cfg("frozen.graph_alpha=1.0")
    with pytest.raises(ConfigError, match="graph_balance"):
        _cfg("frozen.pseudo_labels=model", "frozen.graph_balance=uniform")
    with pytest.raises(ConfigError, match="graph_balance"):
        _cfg("frozen.graph_balance=prior")
