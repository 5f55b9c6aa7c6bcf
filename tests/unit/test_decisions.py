"""Decisions as formulas: the threshold's quantile rule, OK/NG verdicts, accepted_by, limits and regions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from normadd.config import LineConfig, NormalitySetting
from normadd.decisions import (
    NG,
    OK,
    UNDECIDED,
    AcceptanceLimits,
    DecisionError,
    Size,
    acceptance_mask,
    calibrate_f1,
    calibrate_false_reject,
    check_false_reject,
    check_threshold,
    decide,
    limited_suppression,
    parse_size,
    quantile_threshold,
    scores_without_each,
    verdict,
)
from normadd.decisions.policy import DecisionPolicy, ThresholdSetting
from normadd.decisions.scale import score_scale, stale_reason
from normadd.normality.addition import AdditionResult
from normadd.normality.suppression import keep_factor

# --- the threshold and its quantile rule -------------------------------------------------


def test_a_score_above_the_threshold_is_ng_and_a_score_equal_to_it_is_ok() -> None:
    assert verdict(0.51, 0.5) == NG
    assert verdict(0.5, 0.5) == OK
    assert verdict(0.2, 0.5) == OK


def test_threshold_is_the_n_minus_floor_alpha_n_th_smallest_good_score() -> None:
    scores = np.arange(1, 101, dtype=float)  # 1 … 100
    # α = 1 %: one good part may be rejected -> the 99th smallest score
    assert quantile_threshold(scores, 0.01) == 99.0
    # α = 5 %: five may be rejected -> the 95th
    assert quantile_threshold(scores, 0.05) == 95.0
    # α = 7 %: 0.07 * 100 is 7.000000000000001 in floats; still 7 allowed -> the 93rd
    assert quantile_threshold(scores, 0.07) == 93.0


def test_the_rule_is_numpys_inverted_cdf_quantile_where_alpha_n_is_not_whole() -> None:
    rng = np.random.default_rng(0)
    for n in (3, 17, 41, 250):
        scores = rng.random(n)
        for rate in (0.013, 0.1, 0.33):
            assert quantile_threshold(scores, rate) == np.quantile(scores, 1 - rate, method="inverted_cdf")


def test_the_calibrated_false_reject_rate_is_at_most_the_target() -> None:
    rng = np.random.default_rng(1)
    scores = rng.gamma(2.0, size=333)
    for rate in (0.01, 0.05, 0.2):
        calibration = calibrate_false_reject(scores, rate)
        assert calibration.good_rejected == int((scores > calibration.threshold).sum())
        assert calibration.false_reject_rate <= rate


def test_tied_good_scores_at_the_threshold_all_pass() -> None:
    scores = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.9]  # α = 20 %: 2 allowed -> 8th smallest = 0.3
    calibration = calibrate_false_reject(scores, 0.2)
    assert calibration.threshold == 0.3
    assert calibration.good_rejected == 1  # only 0.9: the ties pass, so fewer than 2 are rejected
    assert calibration.false_reject_rate == 0.1


def test_one_good_image_gives_its_own_score_and_says_the_rate_is_not_resolvable() -> None:
    calibration = calibrate_false_reject([0.42], 0.01)
    assert calibration.threshold == 0.42
    assert calibration.good_rejected == 0
    assert not calibration.resolvable
    assert calibrate_false_reject(np.arange(100.0), 0.01).resolvable


def test_escapes_are_defects_scoring_at_or_below_the_threshold() -> None:
    calibration = calibrate_false_reject([0.1, 0.2, 0.3], 0.1, defect_scores=[0.25, 0.3, 0.8, 0.9])
    assert calibration.threshold == 0.3
    assert calibration.defects_accepted == 2
    assert calibration.escape_rate == 0.5


def test_f1_threshold_separates_labelled_scores_and_prefers_the_lowest_of_equal_thresholds() -> None:
    calibration = calibrate_f1([0.1, 0.2, 0.3], [0.6, 0.7])
    # every threshold in [0.3, 0.6) separates perfectly: the lowest candidate 0.3 is chosen
    assert calibration.threshold == 0.3
    assert calibration.f1 == 1.0
    overlapping = calibrate_f1([0.1, 0.5], [0.4, 0.9])
    assert overlapping.f1 == pytest.approx(max(2 * 2 / (2 * 2 + 1), 2 * 1 / (2 * 1 + 0 + 1)))


@pytest.mark.parametrize("bad", [float("nan"), -0.1, "abc", float("inf"), None, True])
def test_a_threshold_must_be_a_finite_number_at_least_zero(bad: object) -> None:
    with pytest.raises(DecisionError, match="threshold"):
        check_threshold(bad)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5, float("nan"), "x"])
def test_false_reject_must_be_inside_zero_one(bad: object) -> None:
    with pytest.raises(DecisionError, match="--false-reject"):
        check_false_reject(bad)


def test_calibrating_on_no_scores_names_the_fix() -> None:
    with pytest.raises(DecisionError, match="at least one readable image"):
        calibrate_false_reject([], 0.01)


# --- verdicts and accepted_by with two normalities ---------------------------------------


def _two_normalities(sup_a: float, sup_b: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image, one pixel of anomaly 1.0, two normalities at full strength."""
    before = torch.ones(1, 1, 1)
    suppression = torch.tensor([sup_a, sup_b]).view(1, 2, 1, 1)
    return before, suppression, torch.ones(2)


def _decide(sup_a: float, sup_b: float, threshold: float = 0.5):
    before, suppression, strengths = _two_normalities(sup_a, sup_b)
    after = before * keep_factor(suppression, strengths)
    without = scores_without_each(before, suppression, strengths)
    return decide(1.0, float(after.max()), threshold, {"a": float(without[0, 0]), "b": float(without[0, 1])})


def test_one_normality_alone_flips_the_part_and_is_named() -> None:
    decision = _decide(0.9, 0.0)  # a suppresses to 0.1; without a the score is 1.0 (NG)
    assert (decision.verdict_before, decision.verdict_after) == (NG, OK)
    assert decision.accepted_by == ("a",)
    assert not decision.combined


def test_each_of_two_normalities_that_alone_would_bring_ng_back_is_named() -> None:
    decision = _decide(0.3, 0.3)  # together 0.49 (OK); either alone 0.7 (NG)
    assert decision.verdict_after == OK
    assert decision.accepted_by == ("a", "b")
    assert not decision.combined


def test_when_neither_removal_alone_brings_ng_back_the_acceptance_is_combined() -> None:
    decision = _decide(0.8, 0.8)  # either alone suppresses to 0.2: removing one still passes
    assert decision.verdict_after == OK
    assert decision.combined
    assert decision.accepted_by == ("a", "b")
    assert decision.accepted_by_text == "combined: a + b"


def test_neither_normality_helps_a_part_that_stays_ng() -> None:
    decision = _decide(0.1, 0.1)
    assert (decision.verdict_before, decision.verdict_after) == (NG, NG)
    assert decision.accepted_by == ()


def test_a_part_ok_before_stays_ok_and_names_no_normality() -> None:
    decision = _decide(0.9, 0.9, threshold=2.0)
    assert (decision.verdict_before, decision.verdict_after) == (OK, OK)
    assert decision.accepted_by == ()


def test_a_part_can_only_flip_from_ng_to_ok() -> None:
    generator = torch.Generator().manual_seed(3)
    before = 4.0 * torch.rand(64, 8, 8, generator=generator)
    suppression = torch.rand(64, 3, 8, 8, generator=generator)
    strengths = torch.rand(3, generator=generator)
    after = before * keep_factor(suppression, strengths)
    for threshold in (0.5, 2.0, 3.5, 3.9):
        for b in range(64):
            decision = decide(float(before[b].max()), float(after[b].max()), threshold)
            assert not (decision.verdict_before == OK and decision.verdict_after == NG)


# --- acceptance limits and regions on hand-made maps -------------------------------------


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    """A 16x16 map with a small blob (2x2, top left) and a large one (6x6, bottom right), fully covered."""
    before = np.zeros((16, 16), dtype=np.float32)
    before[1:3, 1:3] = 1.0
    before[8:14, 8:14] = 1.0
    return before, np.ones_like(before)


def test_max_area_lets_the_small_blob_through_and_not_the_large_one() -> None:
    before, normal = _blobs()
    mask = acceptance_mask(before, normal, 0.5, AcceptanceLimits(max_area=Size(10)))
    assert mask[1:3, 1:3].all()
    assert not mask[8:14, 8:14].any()


def test_areas_are_measured_in_pixels_of_the_input_image() -> None:
    before, normal = _blobs()
    # the image is 4x the map's side: the small blob is 2*2*16 = 64 image px², the large one 576
    limits = AcceptanceLimits(max_area=Size(100))
    mask = acceptance_mask(before, normal, 0.5, limits, image_size=(64, 64))
    assert mask[1:3, 1:3].all() and not mask[8:14, 8:14].any()
    assert not acceptance_mask(before, normal, 0.5, AcceptanceLimits(max_area=Size(63)), (64, 64)).any()


def test_max_length_in_mm_uses_the_pixel_size() -> None:
    before, normal = _blobs()
    # small blob: 2x2 px squares -> length sqrt(8) ≈ 2.83 px; large: sqrt(72) ≈ 8.49 px; 0.5 mm per px
    limits = AcceptanceLimits(max_length=Size(2.0, "mm"))  # = 4 px
    mask = acceptance_mask(before, normal, 0.5, limits, pixel_size_mm=0.5)
    assert mask[1:3, 1:3].all() and not mask[8:14, 8:14].any()
    with pytest.raises(DecisionError, match="pixel_size_mm"):
        acceptance_mask(before, normal, 0.5, limits)


def test_length_of_a_thin_diagonal_scratch_is_its_extent_not_its_area() -> None:
    before = np.zeros((32, 32), dtype=np.float32)
    for i in range(20):
        before[5 + i, 5 + i] = 1.0  # a 20-pixel diagonal line: area 20 px², length ≈ 20·√2 + …
    normal = np.ones_like(before)
    assert acceptance_mask(before, normal, 0.5, AcceptanceLimits(max_area=Size(25))).any()
    assert not acceptance_mask(before, normal, 0.5, AcceptanceLimits(max_length=Size(25))).any()
    assert acceptance_mask(before, normal, 0.5, AcceptanceLimits(max_length=Size(30))).any()


def test_a_region_lets_through_the_blob_inside_it_and_not_the_one_outside() -> None:
    before, normal = _blobs()
    region = np.zeros((16, 16), dtype=bool)
    region[:8, :8] = True  # the top-left quarter, e.g. the label
    mask = acceptance_mask(before, normal, 0.5, AcceptanceLimits(region=region))
    assert mask[1:3, 1:3].all() and not mask[8:14, 8:14].any()


def test_a_blob_crossing_the_region_border_is_not_inside() -> None:
    before, normal = _blobs()
    region = np.zeros((16, 16), dtype=bool)
    region[:, :11] = True  # covers half the large blob
    assert not acceptance_mask(before, normal, 0.5, AcceptanceLimits(region=region))[8:14, 8:14].any()


def test_a_region_the_normality_does_not_cover_is_not_suppressed() -> None:
    before, _ = _blobs()
    normal = np.zeros_like(before)
    normal[1:3, 1:3] = 0.9  # the normality sees only the small blob
    mask = acceptance_mask(before, normal, 0.5, AcceptanceLimits(max_area=Size(1000)))
    assert mask[1:3, 1:3].all() and not mask[8:14, 8:14].any()


def test_without_limits_or_region_the_result_is_exactly_todays_formula() -> None:
    generator = torch.Generator().manual_seed(5)
    before = 4.0 * torch.rand(3, 16, 16, generator=generator)
    suppression = torch.rand(3, 2, 16, 16, generator=generator)
    unlimited = limited_suppression(before, suppression, [None, AcceptanceLimits()], threshold=1.0)
    assert torch.equal(unlimited, suppression)


def test_only_the_limited_normality_changes_and_only_where_it_may_not_act() -> None:
    before_np, _ = _blobs()
    before = torch.from_numpy(before_np)[None]
    suppression = torch.ones(1, 2, 16, 16)
    limited = limited_suppression(before, suppression, [None, AcceptanceLimits(max_area=Size(10))], 0.5)
    assert torch.equal(limited[0, 0], suppression[0, 0])
    assert limited[0, 1, 1:3, 1:3].eq(1).all()
    assert limited[0, 1, 8:14, 8:14].eq(0).all()
    assert limited[0, 1, 0, 15] == 0  # outside any anomalous region it suppresses nothing


@pytest.mark.parametrize(
    ("text", "area", "expected"),
    [
        (40, False, Size(40.0)),
        ("2 mm", False, Size(2.0, "mm")),
        ("4 mm2", True, Size(4.0, "mm")),
        ("150px", True, Size(150.0)),
    ],
)
def test_sizes_read_as_pixels_or_mm(text: object, area: bool, expected: Size) -> None:
    assert parse_size(text, "max", area) == expected


@pytest.mark.parametrize("bad", [-1, "-2 mm", "two mm", float("nan")])
def test_negative_or_unreadable_limits_are_refused(bad: object) -> None:
    with pytest.raises(DecisionError, match="max_length"):
        parse_size(bad, "max_length")


def test_a_limit_in_mm_on_a_line_without_pixel_size_is_refused_by_the_config() -> None:
    with pytest.raises(DecisionError, match="pixel_size_mm"):
        LineConfig(class_name="bottle", normalities=[NormalitySetting("scratch", max_length="2 mm")])
    LineConfig(class_name="bottle", pixel_size_mm=0.05, normalities=[NormalitySetting("scratch", max_length="2 mm")])


# --- the score scale: stale thresholds --------------------------------------------------


def test_a_threshold_is_stale_when_the_detector_weights_change(tmp_path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"a" * 100)
    config = LineConfig(class_name="bottle", weights=str(weights))
    stored = score_scale(config)
    assert stale_reason(stored, score_scale(config)) is None
    weights.write_bytes(b"b" * 100)
    reason = stale_reason(stored, score_scale(config))
    assert reason is not None and "weights" in reason and "calibrate again" in reason
    assert "\n" not in reason


def test_a_threshold_is_stale_for_another_detector_or_backbone_but_not_for_other_normalities() -> None:
    base = LineConfig(class_name="bottle", backbone="tiny-random")
    stored = score_scale(base)
    assert stale_reason(stored, score_scale(LineConfig(class_name="bottle", backbone="ViT-L-14-336")))
    winclip = LineConfig(class_name="bottle", backbone="tiny-random", detector="winclip")
    assert stale_reason(stored, score_scale(winclip))
    with_normality = LineConfig(class_name="bottle", backbone="tiny-random", normalities=[NormalitySetting("scratch")])
    assert stale_reason(stored, score_scale(with_normality)) is None


def _result(before_scores: list[float]) -> AdditionResult:
    before = torch.tensor(before_scores).view(-1, 1, 1)
    return AdditionResult(
        before=before,
        before_scores=before.flatten(),
        detector_scores=before.flatten(),
        suppression=torch.zeros(len(before_scores), 0, 1, 1),
        keep=torch.ones_like(before),
        after=before,
        after_scores=before.flatten(),
        names=[],
    )


def test_a_policy_with_a_stale_threshold_decides_nothing_and_says_why() -> None:
    config = LineConfig(class_name="bottle", backbone="tiny-random")
    stale = ThresholdSetting(0.5, {**score_scale(config), "backbone": "ViT-L-14-336"})
    decided = DecisionPolicy.from_config(config, stale).apply(_result([0.2, 0.9]), [])
    assert [d.verdict_before for d in decided.decisions] == [UNDECIDED, UNDECIDED]
    assert "another detector score scale" in decided.decisions[0].reason


def test_a_policy_without_threshold_is_undecided_and_with_one_decides() -> None:
    config = LineConfig(class_name="bottle", backbone="tiny-random")
    assert "no threshold" in DecisionPolicy.from_config(config).apply(_result([0.2]), []).decisions[0].reason
    config.threshold = 0.5
    decided = DecisionPolicy.from_config(config).apply(_result([0.2, 0.9]), [])
    assert [d.verdict_before for d in decided.decisions] == [OK, NG]
    assert math.isclose(decided.decisions[0].threshold or 0, 0.5)


# --- what a quality department counts -----------------------------------------------------


def test_counts_split_every_part_into_good_group_and_other_defects() -> None:
    from normadd.decisions.counts import group_decision_counts

    types = ["good", "good", "scratch", "scratch", "scratch", "dent", "dent"]
    before = [0.1, 0.9, 0.9, 0.8, 0.2, 0.9, 0.7]
    after = [0.1, 0.6, 0.1, 0.3, 0.2, 0.9, 0.4]
    counts = group_decision_counts(types, {"scratch"}, before, after, threshold=0.5)
    assert (counts.good_images, counts.group_images, counts.other_images) == (2, 3, 2)
    assert (counts.good_rejected_before, counts.good_rejected_after) == (1, 1)
    assert (counts.group_accepted_before, counts.group_accepted_after) == (1, 3)  # the recovered yield
    assert (counts.other_accepted_before, counts.other_accepted_after) == (0, 1)  # one dent escapes


def test_the_bounding_box_shortcut_gives_the_same_length_decisions_as_measuring_every_region() -> None:
    from scipy import ndimage

    from normadd.decisions.limits import AnomalousRegions

    rng = np.random.default_rng(7)
    before = ndimage.gaussian_filter(rng.random((96, 96)), 2).astype(np.float32)
    regions = AnomalousRegions(before, float(np.quantile(before, 0.9)), image_size=(300, 200))
    everything = np.ones(regions.count, dtype=bool)
    assert regions.count > 5
    for max_length in (3.0, 10.0, 25.0, 60.0):
        measured = regions.lengths(everything) <= max_length
        assert np.array_equal(regions.within_length(everything, max_length), measured)
