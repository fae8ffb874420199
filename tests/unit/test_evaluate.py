"""Video metrics agree with scikit-learn and the prior baseline with the entropy formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from dfdc.evaluate import constant_prior_logloss, video_metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_video_metrics_agree_with_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.25, 300), 0.01, 0.99)
    prior = float(rng.uniform(0.2, 0.8))
    m = video_metrics(labels, probs, prior)
    assert m["logloss"] == pytest.approx(log_loss(labels, probs))
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, (probs >= 0.5).astype(int)))
    assert m["prior_logloss"] == pytest.approx(log_loss(labels, np.full(300, prior)))
    assert m["prior"] == prior
    assert m["n_videos"] == 300
    assert m["n_fake"] == int(labels.sum())
    assert all(isinstance(v, float | int) for v in m.values())


def test_a_good_model_beats_the_prior() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 500)
    probs = np.where(labels == 1, 0.9, 0.1)
    m = video_metrics(labels, probs, labels.mean())
    assert m["logloss"] < m["prior_logloss"]
    assert m["auc"] == 1.0
    assert m["accuracy"] == 1.0


def test_single_class_gives_nan_auc_but_other_metrics() -> None:
    labels = np.ones(20, dtype=int)
    probs = np.linspace(0.2, 0.9, 20)
    m = video_metrics(labels, probs, 0.8)
    assert math.isnan(m["auc"])
    assert m["logloss"] == pytest.approx(log_loss(labels, probs, labels=[0, 1]))
    assert m["accuracy"] == pytest.approx(np.mean(probs >= 0.5))


@pytest.mark.parametrize("prior", [0.1, 0.5, 0.75, 0.81, 0.99])
@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 0.81, 1.0])
def test_constant_prior_logloss_is_the_cross_entropy(prior: float, share: float) -> None:
    n = 200
    labels = np.zeros(n, dtype=int)
    labels[: round(share * n)] = 1
    y = labels.mean()
    expected = -(y * math.log(prior) + (1 - y) * math.log(1 - prior))
    assert constant_prior_logloss(labels, prior) == pytest.approx(expected)


def test_prior_equal_to_the_share_is_the_binary_entropy_and_the_best_constant() -> None:
    labels = np.array([1] * 81 + [0] * 19)
    p = 0.81
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert constant_prior_logloss(labels, p) == pytest.approx(entropy)
    assert all(constant_prior_logloss(labels, q) > entropy for q in (0.5, 0.7, 0.9))
