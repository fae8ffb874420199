"""Video metrics agree with scikit-learn and the prior baseline with the entropy formula."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
)

from dfdc.config import AggregateConfig
from dfdc.scoring.calibrate import Calibration, calibrate_videos
from dfdc.scoring.evaluate import (
    evaluate_test,
    expected_calibration_error,
    precision_at_recall,
    reliability_table,
    summary_keys,
    video_metrics,
)


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
    assert m["ap"] == pytest.approx(average_precision_score(labels, probs))
    assert m["brier"] == pytest.approx(brier_score_loss(labels, probs))
    # The constant-prior baseline beside every figure, by the same definitions.
    const = np.full(300, prior)
    assert m["prior_brier"] == pytest.approx(brier_score_loss(labels, const))
    assert m["prior_ap"] == pytest.approx(average_precision_score(labels, const))
    assert m["prior_ap"] == pytest.approx(labels.mean())
    assert m["prior_auc"] == pytest.approx(0.5)
    assert m["prior_accuracy"] == pytest.approx(accuracy_score(labels, np.full(300, int(prior >= 0.5))))
    assert m["prior_ece"] == pytest.approx(abs(prior - labels.mean()))
    precision, recall, _ = precision_recall_curve(labels, probs)
    assert m["precision_at_recall_90"] == pytest.approx(precision[recall >= 0.9].max())
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


def prior_logloss(labels: np.ndarray, prior: float) -> float:
    """The baseline ``video_metrics`` reports beside any model's figures."""
    return video_metrics(labels, np.full(len(labels), 0.5), prior)["prior_logloss"]


@pytest.mark.parametrize("prior", [0.1, 0.5, 0.75, 0.81, 0.99])
@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 0.81, 1.0])
def test_constant_prior_logloss_is_the_cross_entropy(prior: float, share: float) -> None:
    n = 200
    labels = np.zeros(n, dtype=int)
    labels[: round(share * n)] = 1
    y = labels.mean()
    expected = -(y * math.log(prior) + (1 - y) * math.log(1 - prior))
    assert prior_logloss(labels, prior) == pytest.approx(expected)


def test_prior_equal_to_the_share_is_the_binary_entropy_and_the_best_constant() -> None:
    labels = np.array([1] * 81 + [0] * 19)
    p = 0.81
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert prior_logloss(labels, p) == pytest.approx(entropy)
    assert all(prior_logloss(labels, q) > entropy for q in (0.5, 0.7, 0.9))


def test_ece_on_a_hand_made_case() -> None:
    labels = np.array([0, 1, 1, 1])
    probs = np.array([0.1, 0.1, 0.9, 0.9])
    # Bin of 0.1: predicted 0.1, observed 0.5 (gap 0.4); bin of 0.9: 0.9 vs 1.0 (gap 0.1); equal weights.
    assert expected_calibration_error(labels, probs, 15) == pytest.approx(0.25)
    table = reliability_table(labels, probs, 15)
    assert table["bin"].tolist() == [1, 13]
    assert table["count"].tolist() == [2, 2]
    assert table["fraction_fake"].tolist() == [0.5, 1.0]
    assert table["lower"].tolist() == pytest.approx([1 / 15, 13 / 15])


def test_ece_is_zero_when_every_bin_is_right_and_puts_one_in_the_last_bin() -> None:
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 1, 1, 1])
    probs = np.array([0.25] * 4 + [0.75] * 4 + [1.0, 1.0])  # 1 of 4, 3 of 4, 2 of 2
    assert expected_calibration_error(labels, probs, 15) == pytest.approx(0.0)
    assert reliability_table(labels, probs, 15)["bin"].max() == 14
    # Coarser bins merge 0.75 and 1.0: predicted 0.833, observed 5/6.
    assert expected_calibration_error(labels, probs, 2) == pytest.approx(0.0)
    assert expected_calibration_error(labels, probs, 1) == pytest.approx(abs(probs.mean() - labels.mean()))


def test_precision_at_recall_on_a_hand_made_case() -> None:
    labels = np.array([1, 1, 0, 1, 0])
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    assert precision_at_recall(labels, probs, 0.9) == pytest.approx(0.75)  # all 3 fakes need >= 0.6
    assert precision_at_recall(labels, probs, 0.6) == pytest.approx(1.0)  # 2 of 3 at >= 0.8
    assert math.isnan(precision_at_recall(np.zeros(5, int), probs, 0.9))


def _held_out(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Frames, videos (calib + test) and kinds of a synthetic over-confident model."""
    rng = np.random.default_rng(seed)
    n = 160
    names = [f"{i:010d}.mp4" for i in range(n)]
    y = (rng.random(n) < 0.7).astype(int)
    kinds = np.where(y == 1, rng.choice(["swap", "lowres"], n), "real")
    signal = np.where(y == 1, 1.5, -1.5)
    frames = pd.DataFrame(
        {
            "video": np.repeat(names, 6),
            "face": np.tile([0, 0, 0, 1, 1, 1], n),
            "logit": 6 * (np.repeat(signal, 6) + rng.normal(0, 4.0, 6 * n)),
        }
    )
    videos = pd.DataFrame(
        {
            "chunk": np.where(np.arange(n) % 2, "part_1", "part_0"),
            "filename": names,
            "subset": np.where(np.arange(n) < n // 2, "calib", "test"),
            "y": y,
        }
    )
    kind_table = videos[["chunk", "filename"]].assign(kind=kinds)
    return frames, videos, kind_table


def test_evaluate_test_groups_and_calibration_helps() -> None:
    frames, videos, kinds = _held_out(0)
    cfg = AggregateConfig(strategy="mean")
    cal, logits = calibrate_videos(frames, videos, cfg, 0.01, 0.99)
    videos["logit"] = logits
    ev = evaluate_test(videos, frames, cal, (0.01, 0.99), kinds, ece_bins=15, recall_levels=(0.9, 0.5))
    test = videos[videos["subset"] == "test"]
    whole = ev.groups[""]
    assert whole["n_videos"] == len(test)
    assert whole["logloss"] == pytest.approx(log_loss(test["y"], cal.probability(test["logit"])))
    # Over-confident logits: the temperature (> 1) lowers both log loss and ECE on test.
    assert cal.temperature > 1
    assert whole["logloss"] < whole["logloss_uncalibrated"]
    assert whole["ece"] < whole["ece_uncalibrated"]
    assert {"precision_at_recall_90", "precision_at_recall_50", "prior_precision_at_recall_90"} <= set(whole)
    assert set(ev.groups) == {
        "", "by_chunk.part_0", "by_chunk.part_1", "by_kind.lowres", "by_kind.swap",
        "by_aggregation.mean", "by_aggregation.confident", "by_aggregation.person_max",
    }  # fmt: skip
    # A kind's group is its fakes beside every real test video.
    n_real = int((test["y"] == 0).sum())
    swap = kinds.set_index("filename").loc[test["filename"], "kind"].eq("swap").sum()
    assert ev.groups["by_kind.swap"]["n_videos"] == n_real + swap
    assert ev.groups["by_kind.swap"]["n_fake"] == swap
    # The chosen strategy's comparison row is the headline, refitted the same way.
    for k in ("logloss", "auc", "ece", "temperature", "logloss_uncalibrated"):
        assert ev.groups["by_aggregation.mean"][k] == pytest.approx(whole[k])
    flat = ev.flat("test")
    assert flat["test.logloss"] == whole["logloss"]
    assert flat["test.by_kind.swap.prior_logloss"] == ev.groups["by_kind.swap"]["prior_logloss"]
    assert all(isinstance(v, float | int) and v == v for v in flat.values())  # no NaN in JSON
    summary = summary_keys(ev.groups)
    for key in ("logloss", "auc", "accuracy", "prior_logloss", "n_videos", "ece", "temperature"):
        assert key in summary
    md = ev.markdown()
    assert "by_kind.swap" in md and f"{whole['logloss']:.4f} ({whole['prior_logloss']:.4f})" in md


def test_evaluate_test_without_kinds_or_faces() -> None:
    frames, videos, _ = _held_out(1)
    gone = videos.loc[videos["subset"] == "test", "filename"].iloc[:3]
    frames = frames[~frames["video"].isin(gone)]
    cal, logits = calibrate_videos(frames, videos, AggregateConfig(strategy="confident"), 0.01, 0.99)
    videos["logit"] = logits
    ev = evaluate_test(videos, frames, cal, (0.01, 0.99), kinds=None)
    assert not any(g.startswith("by_kind") for g in ev.groups)
    assert ev.groups[""]["n_no_face"] == 3
    faceless = ev.test[ev.test["filename"].isin(gone)]
    assert (faceless["prob"] == cal.fallback).all()
    assert isinstance(cal, Calibration) and cal.aggregation["strategy"] == "confident"
