"""The paper's protocol as pure functions: relabelling, subsets, AUROCs and aggregation by hand."""

from __future__ import annotations

import numpy as np
import pytest

from normadd.evaluation import paper
from normadd.evaluation.metrics import image_auroc
from normadd.evaluation.protocol import (
    class_mean,
    has_both_labels,
    headline,
    relabel,
    selectivity_subset,
    still_anomalous_subset,
)
from normadd.evaluation.runner import ClassEvaluation, CostCounts, EvaluationResult

# A small bottle-like test set: two good images, two "broken" types, one contamination.
TYPES = ["good", "good", "broken_small", "broken_large", "contamination"]
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.3])
BROKEN = ("broken_small", "broken_large")


def test_added_group_and_good_images_are_label_0_and_other_defects_label_1() -> None:
    assert relabel(TYPES, BROKEN).tolist() == [0, 0, 0, 0, 1]
    assert relabel(TYPES, ("contamination",)).tolist() == [0, 0, 1, 1, 0]


def test_no_added_group_is_the_plain_anomaly_detection_labelling() -> None:
    assert relabel(TYPES, ()).tolist() == [0, 0, 1, 1, 1]


def test_auroc_of_the_relabelled_set_matches_pair_counting_by_hand() -> None:
    # contamination as normal: negatives 0.1, 0.4, 0.3; positives 0.35, 0.8.
    # 0.35 beats 0.1 and 0.3 (2), 0.8 beats all three (3): 5 of 6 pairs.
    assert image_auroc(relabel(TYPES, ("contamination",)), SCORES) == pytest.approx(5 / 6)
    # broken as normal: negatives 0.1, 0.4, 0.35, 0.8; the positive 0.3 beats only 0.1: 1 of 4.
    assert image_auroc(relabel(TYPES, BROKEN), SCORES) == pytest.approx(1 / 4)


def test_a_group_that_leaves_one_label_has_no_auroc() -> None:
    labels = relabel(["good", "broken_small"], ("broken_small",))
    assert not has_both_labels(labels)
    assert image_auroc(labels, np.array([0.2, 0.9])) is None


def test_selectivity_compares_good_images_with_one_other_group_only() -> None:
    keep, labels = selectivity_subset(TYPES, ("contamination",))
    assert keep.tolist() == [0, 1, 4]
    assert labels.tolist() == [0, 0, 1]
    # good 0.1, 0.4 against contamination 0.3: it beats one of two.
    assert image_auroc(labels, SCORES[keep]) == pytest.approx(1 / 2)


def test_pixel_metrics_read_good_images_and_defects_that_stay_anomalous() -> None:
    assert still_anomalous_subset(TYPES, BROKEN).tolist() == [0, 1, 4]


def test_class_figure_is_the_mean_over_groups_and_skips_missing_aurocs() -> None:
    assert class_mean([50.0, 70.0, None]) == pytest.approx(60.0)
    assert class_mean([None]) is None


def test_headline_is_the_mean_over_classes_not_over_rows() -> None:
    # class A has three groups, class B one: the headline weighs classes equally.
    class_a = class_mean([60.0, 60.0, 60.0])
    class_b = class_mean([90.0])
    assert headline([class_a, class_b]) == pytest.approx(75.0)


def test_paper_table2_class_means_average_to_the_reported_headline() -> None:
    means = paper.class_means()
    assert len(means) == 14 and "toothbrush" not in means
    assert headline(m.auroc_before for m in means.values()) == pytest.approx(70.6, abs=0.05)
    assert headline(m.auroc_after for m in means.values()) == pytest.approx(75.0, abs=0.05)
    assert paper.table3()["APRIL-GAN (zero-shot)"].auroc_before == 70.6


def test_paper_rows_are_filled_only_where_the_definition_matches() -> None:
    assert paper.paper_row("bottle", "broken", BROKEN) == paper.PaperRow(23.5, 61.4)
    assert paper.paper_row("hazelnut", "crack", ("crack",)) is None  # Table 2 does not report it
    assert paper.paper_row("transistor", "cut_lead", ("cut_lead", "bent_lead")) is None
    assert paper.paper_row("transistor", "cut_lead", ("cut_lead",)) == paper.PaperRow(60.1, 68.8)


def _result(detector: str, classes: list[str], shots: int = 0) -> EvaluationResult:
    evaluations = [ClassEvaluation(name, [], [], np.zeros(0), np.zeros((0, 0))) for name in classes]
    return EvaluationResult(evaluations, [], "model", detector, True, CostCounts(), shots)


def test_the_papers_headline_covers_the_evaluated_classes_only() -> None:
    assert _result("aprilgan", ["bottle"]).paper_headline == paper.PaperRow(56.65, 75.2)
    everything = _result("aprilgan", list(paper.class_means()))
    assert everything.paper_headline is not None
    assert everything.paper_headline.auroc_before == pytest.approx(70.64, abs=0.01)


def test_table3_detectors_get_the_papers_mean_only_over_all_classes() -> None:
    assert _result("winclip", ["bottle"], shots=1).paper_headline is None
    assert _result("winclip", list(paper.class_means()), shots=1).paper_headline == paper.PaperRow(67.4, 71.0)
    assert _result("patchcore", list(paper.class_means())).paper_headline == paper.PaperRow(72.3, 75.5)
