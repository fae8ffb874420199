"""Frame logits -> video logit: the winner's confident rule on hand-made cases, per-person max."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy.special import expit, logit

from dfdc.config import AggregateConfig
from dfdc.scoring.aggregate import aggregate, as_config, confident_probability, person_column, video_logit

CONFIDENT = AggregateConfig(strategy="confident")  # the winner's numbers: 0.8, n // 2.5, 11, 0.2, 0.9


def _winner(pred: np.ndarray, t: float = 0.8) -> float:
    """The DFDC winner's ``confident_strategy``, transcribed as published."""
    sz = len(pred)
    fakes = np.count_nonzero(pred > t)
    if fakes > sz // 2.5 and fakes > 11:
        return float(np.mean(pred[pred > t]))
    if np.count_nonzero(pred < 0.2) > 0.9 * sz:
        return float(np.mean(pred[pred < 0.2]))
    return float(np.mean(pred))


def _video_p(probs: list[float], cfg: AggregateConfig = CONFIDENT) -> float:
    """Through the logit path prediction uses: frame logits in, video probability out."""
    return float(expit(video_logit(logit(np.array(probs)), None, cfg)))


@pytest.mark.parametrize(
    ("probs", "expected", "branch"),
    [
        # 13 of 32 above 0.8: more than 32 // 2.5 = 12 and more than 11 -> mean of those.
        ([0.9] * 13 + [0.5] * 19, 0.9, "fake"),
        # 12 of 32 above 0.8: not more than 12 -> no fake branch; nothing below 0.2 -> mean.
        ([0.95] * 12 + [0.5] * 20, (12 * 0.95 + 20 * 0.5) / 32, "mean"),
        # 9 of 10 above 0.8 is a large share, but not more than 11 frames -> mean.
        ([0.99] * 9 + [0.3], (9 * 0.99 + 0.3) / 10, "mean"),
        # 19 of 20 below 0.2: more than 0.9 * 20 = 18 -> mean of those.
        ([0.05] * 19 + [0.7], 0.05, "real"),
        # 18 of 20 below 0.2: not more than 18 -> mean of all.
        ([0.05] * 18 + [0.7] * 2, (18 * 0.05 + 2 * 0.7) / 20, "mean"),
        # 12 of 12 above 0.8 (more than 11) -> mean of those, ignoring nothing.
        ([0.9] * 11 + [0.85], float(np.mean([0.9] * 11 + [0.85])), "fake"),
        # Exactly at the thresholds counts as neither (strict inequalities).
        ([0.8] * 20 + [0.2] * 20, 0.5, "mean"),
    ],
)
def test_confident_strategy_on_hand_made_cases(probs: list[float], expected: float, branch: str) -> None:
    assert confident_probability(np.array(probs), CONFIDENT) == pytest.approx(expected)
    assert _video_p(probs) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_confident_strategy_equals_the_winners_code(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(200):
        n = int(rng.integers(1, 48))
        # Mixtures that land in every branch: mostly fake, mostly real, or mixed.
        centre = rng.choice([0.95, 0.05, 0.5])
        pred = np.clip(rng.normal(centre, rng.uniform(0.02, 0.4), n), 0.001, 0.999)
        assert confident_probability(pred, CONFIDENT) == pytest.approx(_winner(pred))


def test_confident_thresholds_come_from_the_config() -> None:
    probs = np.array([0.7] * 6 + [0.4] * 4)
    assert confident_probability(probs, CONFIDENT) == pytest.approx(0.58)  # nothing above 0.8
    loose = CONFIDENT.model_copy(update={"fake_threshold": 0.6, "fake_min_count": 3})
    assert confident_probability(probs, loose) == pytest.approx(0.7)


def test_confident_logit_is_finite_for_unanimous_frames() -> None:
    z = video_logit(np.full(20, 40.0), None, CONFIDENT)  # every frame P(FAKE) ~ 1
    assert np.isfinite(z) and z > 10


def test_mean_strategy_is_the_mean_logit() -> None:
    z = np.array([-3.0, 0.5, 4.0, 1.5])
    assert video_logit(z, None, AggregateConfig()) == pytest.approx(z.mean())
    assert video_logit(z) == pytest.approx(z.mean())  # the default
    assert video_logit(z, None, {"strategy": "mean"}) == pytest.approx(z.mean())


def test_no_frames_gives_nan() -> None:
    for strategy in ("mean", "confident", "person_max"):
        assert np.isnan(video_logit(np.zeros(0), np.zeros(0), AggregateConfig(strategy=strategy)))


def test_person_max_is_the_most_fake_person() -> None:
    z = np.array([-2.0, -2.0, -1.0, 1.0, 3.0, 2.0])
    persons = np.array([0, 0, 0, 1, 1, 1])
    cfg = AggregateConfig(strategy="person_max")
    assert video_logit(z, persons, cfg) == pytest.approx(2.0)  # person 1's mean logit
    # One person: the same as its own strategy.
    assert video_logit(z, np.zeros(6), cfg) == pytest.approx(z.mean())
    # A confidently fake second face is not diluted by a clean first face.
    assert video_logit(z, persons, cfg) > video_logit(z, persons, AggregateConfig())


def test_person_max_combines_each_person_with_person_strategy() -> None:
    real_person = logit(np.full(10, 0.05))
    fake_person = logit(np.array([0.9] * 13 + [0.5] * 19))
    z = np.concatenate([real_person, fake_person])
    persons = np.array([0] * 10 + [1] * 32)
    cfg = AggregateConfig(strategy="person_max", person_strategy="confident")
    assert expit(video_logit(z, persons, cfg)) == pytest.approx(0.9, rel=1e-6)


def test_aggregate_table_uses_person_before_face() -> None:
    frames = pd.DataFrame(
        {
            "video": ["a.mp4"] * 4 + ["b.mp4"] * 2,
            "face": [0, 0, 1, 1, 0, 0],  # ranks within frames: mix identities when they swap
            "person": [0, 1, 0, 1, 0, 0],  # tracked identities
            "logit": [-4.0, 2.0, -4.0, 4.0, 1.0, 3.0],
        }
    )
    assert person_column(frames) == "person"
    got = aggregate(frames, AggregateConfig(strategy="person_max"))
    assert list(got.index) == ["a.mp4", "b.mp4"]
    assert got["a.mp4"] == pytest.approx(3.0)  # person 1: (2 + 4) / 2
    assert got["b.mp4"] == pytest.approx(2.0)
    by_face = aggregate(frames.drop(columns="person"), AggregateConfig(strategy="person_max"))
    assert person_column(frames.drop(columns="person")) == "face"
    assert by_face["a.mp4"] == pytest.approx(0.0)  # face 1: (-4 + 4) / 2; face 0: (-4 + 2) / 2
    # Without any person column the whole video is one person.
    plain = aggregate(frames.drop(columns=["person", "face"]), AggregateConfig(strategy="person_max"))
    assert plain["a.mp4"] == pytest.approx(-0.5)


def test_aggregate_matches_video_logit_per_video() -> None:
    rng = np.random.default_rng(3)
    frames = pd.DataFrame(
        {
            "video": rng.choice(["x", "y", "z"], 90),
            "face": rng.integers(0, 2, 90),
            "logit": rng.normal(0, 3, 90),
        }
    )
    for strategy in ("mean", "confident", "person_max"):
        cfg = AggregateConfig(strategy=strategy, fake_min_count=2)
        got = aggregate(frames, cfg)
        for video, group in frames.groupby("video"):
            expected = video_logit(group["logit"].to_numpy(), group["face"].to_numpy(), cfg)
            assert got[video] == pytest.approx(expected)


def test_config_from_json_and_unknown_strategy() -> None:
    cfg = AggregateConfig(strategy="confident", fake_min_count=4)
    assert as_config(cfg.model_dump(mode="json")) == cfg
    assert as_config(None) == AggregateConfig()
    with pytest.raises(ValidationError):
        as_config({"strategy": "median"})
    with pytest.raises(ValidationError):
        as_config({"strategy": "mean", "threshold": 0.8})  # a typo is an error
