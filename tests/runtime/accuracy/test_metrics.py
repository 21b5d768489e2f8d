"""Scores from a confusion matrix (runtime.accuracy.metrics), checked against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.accuracy.metrics import ConfusionMatrix
from runtime.errors import InputError

# 3 classes; 255 is ignored. Pairs (target, prediction):
TARGET = np.array([[0, 0, 1, 1, 1], [2, 2, 2, 2, 255]])
PREDICTION = np.array([[0, 1, 1, 1, 2], [2, 2, 0, 2, 1]])
# Hand-counted confusion matrix counts[target, prediction] (the ignored pixel does not count):
#   target 0: pred 0 x1, pred 1 x1
#   target 1: pred 1 x2, pred 2 x1
#   target 2: pred 0 x1, pred 2 x3
EXPECTED_COUNTS = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 3]])


def test_counts_match_the_hand_computed_matrix_and_skip_the_ignore_index():
    matrix = ConfusionMatrix(3, ignore_index=255).update(PREDICTION, TARGET)
    np.testing.assert_array_equal(matrix.counts, EXPECTED_COUNTS)


def test_scores_match_hand_computed_values():
    scores = ConfusionMatrix(3, ignore_index=255).update(PREDICTION, TARGET).scores()
    # tp = (1, 2, 3); predicted = column sums (2, 3, 4); actual = row sums (2, 3, 4); total 9
    assert scores.overall_accuracy == pytest.approx(6 / 9)
    np.testing.assert_allclose(scores.precision, [1 / 2, 2 / 3, 3 / 4])
    np.testing.assert_allclose(scores.recall, [1 / 2, 2 / 3, 3 / 4])
    np.testing.assert_allclose(scores.f1, [2 * 1 / 4, 2 * 2 / 6, 2 * 3 / 8])
    iou = [1 / (2 + 2 - 1), 2 / (3 + 3 - 2), 3 / (4 + 4 - 3)]
    np.testing.assert_allclose(scores.iou, iou)
    assert scores.miou == pytest.approx(np.mean(iou))
    assert scores.mean_f1 == pytest.approx(np.mean([0.5, 2 / 3, 0.75]))
    np.testing.assert_array_equal(scores.support, [2, 3, 4])


def test_class_zero_is_left_out_of_the_means_but_still_counts_for_overall_accuracy():
    scores = ConfusionMatrix(3, ignore_index=255).update(PREDICTION, TARGET).scores(exclude=(0,))
    assert scores.classes_in_mean == (1, 2)
    assert scores.miou == pytest.approx(np.mean([2 / 4, 3 / 5]))
    assert scores.mean_f1 == pytest.approx(np.mean([2 / 3, 3 / 4]))
    assert scores.overall_accuracy == pytest.approx(6 / 9)
    assert scores.iou[0] == pytest.approx(1 / 3)  # still reported


def test_a_class_never_labelled_nor_predicted_is_nan_and_out_of_the_means():
    target = np.array([0, 1, 1])
    scores = ConfusionMatrix(4, ignore_index=None).update(np.array([0, 1, 0]), target).scores()
    assert math.isnan(scores.iou[2]) and math.isnan(scores.iou[3]) and math.isnan(scores.f1[3])
    assert scores.classes_in_mean == (0, 1)
    assert scores.miou == pytest.approx(np.mean([1 / 2, 1 / 2]))


def test_updates_accumulate_and_merge():
    a = ConfusionMatrix(3).update(PREDICTION[0], TARGET[0])
    b = ConfusionMatrix(3).update(PREDICTION[1], TARGET[1])
    np.testing.assert_array_equal(a.merge(b).counts, EXPECTED_COUNTS)


def test_bad_inputs_raise_input_errors():
    with pytest.raises(InputError, match="shape"):
        ConfusionMatrix(3).update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(InputError, match="class indices"):
        ConfusionMatrix(3).update(np.array([3]), np.array([0]))
