"""Known-answer tests of the FixMatch loss, class-wise thresholds and distribution alignment."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hssal_ray.errors import ConfigError, StateError
from hssal_ray.ssl.fixmatch import (
    DistributionAlignment,
    FlexMatchThresholds,
    FreeMatchThresholds,
    build_thresholds,
)
from hssal_ray.ssl.loss import fixmatch_loss


def _logits(*probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly ``probs`` (one row per sample)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


# Labeled: uniform logits, label 0 -> CE = log 2. Unlabeled weak: 0.96 (kept at 0.95) and 0.9 (not kept).
LOGITS_X = torch.zeros(1, 2)
Y = torch.tensor([0])
WEAK = _logits([0.96, 0.04], [0.1, 0.9])
STRONG = _logits([0.8, 0.2], [0.5, 0.5])


def test_mask_for_cutoff() -> None:
    _, stats = fixmatch_loss(LOGITS_X, Y, WEAK, STRONG, p_cutoff=0.95, lambda_u=1.0)
    assert stats.mask.tolist() == [1.0, 0.0]
    assert stats.pseudo_labels.tolist() == [0, 1]
    torch.testing.assert_close(stats.max_probs, torch.tensor([0.96, 0.9]))
    assert float(stats.mask_rate) == 0.5
    _, low = fixmatch_loss(LOGITS_X, Y, WEAK, STRONG, p_cutoff=0.9, lambda_u=1.0)
    assert low.mask.tolist() == [1.0, 1.0]  # >= is inclusive


def test_exact_loss_by_hand() -> None:
    loss, stats = fixmatch_loss(LOGITS_X, Y, WEAK, STRONG, p_cutoff=0.95, lambda_u=2.0)
    # sup = log 2; unsup = (-log 0.8 * 1 + (-log 0.5) * 0) / 2 (mean over ALL unlabeled samples).
    expected_unsup = -math.log(0.8) / 2
    assert float(stats.sup_loss) == pytest.approx(math.log(2), abs=1e-6)
    assert float(stats.unsup_loss) == pytest.approx(expected_unsup, abs=1e-6)
    assert float(loss) == pytest.approx(math.log(2) + 2.0 * expected_unsup, abs=1e-6)


def test_lambda_u_zero_is_supervised_ce() -> None:
    logits_x, y = torch.randn(5, 3, requires_grad=True), torch.tensor([0, 1, 2, 1, 0])
    loss, _ = fixmatch_loss(logits_x, y, torch.randn(4, 3), torch.randn(4, 3), p_cutoff=0.0, lambda_u=0.0)
    torch.testing.assert_close(loss, F.cross_entropy(logits_x, y))


def test_gradient_flows_only_through_strong_view() -> None:
    weak = WEAK.clone().requires_grad_(True)
    strong = STRONG.clone().requires_grad_(True)
    loss, _ = fixmatch_loss(LOGITS_X, Y, weak, strong, p_cutoff=0.95, lambda_u=1.0)
    loss.backward()
    assert weak.grad is None
    assert strong.grad is not None and float(strong.grad[1].abs().sum()) == 0.0  # masked sample


def test_temperature_sharpens_pseudo_label_probabilities() -> None:
    # p = 0.9 at T = 1; at T = 0.5 the logit gap doubles: p = 81 / 82 >= 0.95 -> kept.
    _, t1 = fixmatch_loss(LOGITS_X, Y, WEAK, STRONG, p_cutoff=0.95, lambda_u=1.0, T=1.0)
    _, t05 = fixmatch_loss(LOGITS_X, Y, WEAK, STRONG, p_cutoff=0.95, lambda_u=1.0, T=0.5)
    assert t1.mask.tolist() == [1.0, 0.0] and t05.mask.tolist() == [1.0, 1.0]
    assert float(t05.max_probs[1]) == pytest.approx(81 / 82, abs=1e-6)
    _, t2 = fixmatch_loss(LOGITS_X, Y, WEAK, STRONG, p_cutoff=0.95, lambda_u=1.0, T=2.0)
    assert t2.mask.tolist() == [0.0, 0.0]


def test_classwise_thresholds_replace_cutoff() -> None:
    weak = _logits([0.6, 0.4], [0.04, 0.96])
    thresholds = torch.tensor([0.5, 0.99])
    _, stats = fixmatch_loss(LOGITS_X, Y, weak, STRONG, p_cutoff=0.95, lambda_u=1.0, thresholds=thresholds)
    assert stats.mask.tolist() == [1.0, 0.0]


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        fixmatch_loss(LOGITS_X, Y, WEAK, STRONG, p_cutoff=1.5, lambda_u=1.0)
    with pytest.raises(ConfigError):
        fixmatch_loss(LOGITS_X, Y, WEAK, STRONG, p_cutoff=0.5, lambda_u=1.0, T=0.0)
    with pytest.raises(ValueError):
        fixmatch_loss(LOGITS_X, Y, WEAK, STRONG[:1], p_cutoff=0.5, lambda_u=1.0)
    with pytest.raises(ValueError):
        fixmatch_loss(LOGITS_X, Y, WEAK, STRONG, p_cutoff=0.5, lambda_u=1.0, thresholds=torch.ones(3))


def _probs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows)


def test_flexmatch_memory_sequence() -> None:
    flex = FlexMatchThresholds(2, p_cutoff=0.95, num_unlabeled=10)
    torch.testing.assert_close(flex.thresholds(), torch.zeros(2))  # nothing selected yet: beta = 0
    flex.update(_probs([0.99, 0.01], [0.98, 0.02], [0.03, 0.97], [0.6, 0.4]), idx=torch.tensor([0, 1, 2, 3]))
    # sigma = [2, 1], unused = 7 (sample 3 was not confident): warm-up beta = [2/7, 1/7].
    beta = torch.tensor([2 / 7, 1 / 7])
    torch.testing.assert_close(flex.thresholds(), 0.95 * beta / (2 - beta))
    nowarm = FlexMatchThresholds(2, p_cutoff=0.95, num_unlabeled=10, thresh_warmup=False, mapping="linear")
    nowarm.load_state_dict(flex.state_dict())
    torch.testing.assert_close(nowarm.thresholds(), torch.tensor([0.95, 0.475]))
    # Sample 0 is now predicted class 1: its latest prediction replaces the old one.
    flex.update(_probs([0.01, 0.99]), idx=torch.tensor([0]))
    beta = torch.tensor([1 / 7, 2 / 7])
    torch.testing.assert_close(flex.thresholds(), 0.95 * beta / (2 - beta))
    with pytest.raises(ValueError, match="indices"):
        flex.update(_probs([0.5, 0.5]))
    with pytest.raises(ValueError, match="indices"):
        flex.update(_probs([0.5, 0.5]), idx=torch.tensor([10]))


def test_flexmatch_index_free_sequence() -> None:
    flex = FlexMatchThresholds(2, p_cutoff=0.95, momentum=0.5)
    flex.update(_probs([0.99, 0.01], [0.98, 0.02], [0.03, 0.97], [0.6, 0.4]))
    # class_freq = 0.5 * [0.5, 0.25] = [0.25, 0.125]; unused = 0.5 * 1 + 0.5 * 0.25 = 0.625.
    torch.testing.assert_close(flex.class_freq, torch.tensor([0.25, 0.125]))
    torch.testing.assert_close(flex.unused_freq, torch.tensor(0.625))
    beta = torch.tensor([0.4, 0.2])
    torch.testing.assert_close(flex.thresholds(), 0.95 * beta / (2 - beta))
    assert not FlexMatchThresholds.update_before_masking


def test_freematch_sequence() -> None:
    free = FreeMatchThresholds(2, momentum=0.5)
    torch.testing.assert_close(free.thresholds(), torch.tensor([0.5, 0.5]))
    free.update(_probs([0.9, 0.1], [0.6, 0.4]))
    # time_p = 0.5 * 0.5 + 0.5 * 0.75; p_model = 0.5 * [0.5, 0.5] + 0.5 * [0.75, 0.25].
    torch.testing.assert_close(free.time_p, torch.tensor(0.625))
    torch.testing.assert_close(free.p_model, torch.tensor([0.625, 0.375]))
    torch.testing.assert_close(free.thresholds(), torch.tensor([0.625, 0.375]))
    free.update(_probs([0.2, 0.8], [0.2, 0.8]))
    p_model = torch.tensor([0.4125, 0.5875])
    torch.testing.assert_close(free.thresholds(), 0.7125 * p_model / p_model.max())
    assert FreeMatchThresholds.update_before_masking


def test_freematch_quantile_and_clip() -> None:
    free = FreeMatchThresholds(2, momentum=0.0, use_quantile=True, clip_thresh=True)
    free.update(_probs([0.99, 0.01], [0.99, 0.01], [0.98, 0.02], [0.97, 0.03], [0.96, 0.04]))
    assert float(free.time_p) == pytest.approx(0.95)  # 0.8 quantile is 0.99, clipped to 0.95


def test_threshold_state_round_trip_and_errors() -> None:
    free = FreeMatchThresholds(3, momentum=0.9)
    free.update(torch.softmax(torch.randn(8, 3), dim=1))
    other = FreeMatchThresholds(3)
    other.load_state_dict(free.state_dict())
    torch.testing.assert_close(other.thresholds(), free.thresholds())
    with pytest.raises(StateError):
        FreeMatchThresholds(4).load_state_dict(free.state_dict())
    with pytest.raises(StateError):
        other.load_state_dict({"time_p": torch.tensor(0.5)})
    free.all_reduce_()  # not distributed: no-op
    torch.testing.assert_close(other.thresholds(), free.thresholds())


def test_build_thresholds() -> None:
    assert build_thresholds("fixed", 3) is None
    assert isinstance(build_thresholds("flexmatch", 3, 0.9), FlexMatchThresholds)
    assert isinstance(build_thresholds("freematch", 3), FreeMatchThresholds)
    with pytest.raises(ConfigError, match="valid"):
        build_thresholds("adamatch", 3)
    with pytest.raises(ConfigError):
        FlexMatchThresholds(3, mapping="cubic")  # type: ignore[arg-type]


def test_distribution_alignment_known_answer() -> None:
    da = DistributionAlignment(2, momentum=0.5)
    aligned = da(_probs([0.8, 0.2], [0.6, 0.4]))
    # running mean = first batch mean [0.7, 0.3]; p * 0.5 / [0.7, 0.3], renormalised.
    torch.testing.assert_close(da.p_model, torch.tensor([0.7, 0.3]))
    torch.testing.assert_close(aligned[0], torch.tensor([24 / 38, 14 / 38]), atol=1e-5, rtol=0)
    torch.testing.assert_close(aligned.sum(dim=1), torch.ones(2))
    da.update(_probs([0.3, 0.7]))
    torch.testing.assert_close(da.p_model, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(da.align(_probs([0.8, 0.2])), _probs([0.8, 0.2]), atol=1e-5, rtol=0)
    restored = DistributionAlignment(2)
    restored.load_state_dict(da.state_dict())
    assert bool(restored.initialized)
    with pytest.raises(ConfigError):
        DistributionAlignment(2, p_target=torch.tensor([-1.0, 2.0]))


def test_distribution_alignment_changes_mask_in_loss() -> None:
    # Weak predictions all lean to class 0: alignment to a uniform target pulls them back below the cutoff.
    weak = _logits([0.96, 0.04], [0.97, 0.03])
    strong = torch.zeros(2, 2)
    _, plain = fixmatch_loss(LOGITS_X, Y, weak, strong, p_cutoff=0.95, lambda_u=1.0)
    _, aligned = fixmatch_loss(
        LOGITS_X, Y, weak, strong, p_cutoff=0.95, lambda_u=1.0, dist_align=DistributionAlignment(2)
    )
    assert plain.mask.tolist() == [1.0, 1.0]
    assert aligned.mask.tolist() == [0.0, 0.0]
    torch.testing.assert_close(aligned.probs.sum(dim=1), torch.ones(2))
