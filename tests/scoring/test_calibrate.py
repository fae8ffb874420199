"""Temperature scaling on synthetic logits with a known answer, and the calibration record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.metrics import log_loss

from dfdc.scoring.calibrate import Calibration, fit_calibration, fit_temperature, video_logits


def _synthetic(t_true: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose true P(FAKE) is sigmoid(z / t_true); labels drawn from it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 4.0, n)
    y = (rng.random(n) < expit(z / t_true)).astype(float)
    return z, y


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_temperature_recovers_a_known_temperature(seed: int) -> None:
    z, y = _synthetic(2.5, 5000, seed)
    assert fit_temperature(z, y) == pytest.approx(2.5, abs=0.3)


def test_fit_temperature_below_one_for_underconfident_logits() -> None:
    z, y = _synthetic(0.5, 5000, 2)
    assert fit_temperature(z, y) == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize(("t_true", "seed"), [(2.5, 3), (1.0, 4), (0.4, 5), (8.0, 6)])
def test_calibration_never_worsens_the_fitting_log_loss(t_true: float, seed: int) -> None:
    z, y = _synthetic(t_true, 2000, seed)
    t = fit_temperature(z, y)
    before = log_loss(y, expit(z), labels=[0, 1])
    after = log_loss(y, expit(z / t), labels=[0, 1])
    assert after <= before + 1e-9
    # And it is a minimum: nudging the temperature either way does not help.
    for other in (t * 0.9, t * 1.1):
        assert after <= log_loss(y, expit(z / other), labels=[0, 1]) + 1e-9


@pytest.mark.parametrize(
    ("logits", "labels"),
    [
        (np.array([]), np.array([])),
        (np.array([1.0, -2.0, 3.0]), np.ones(3)),
        (np.array([1.0, 2.0]), np.zeros(2)),
    ],
    ids=["empty", "all-fake", "all-real"],
)
def test_fit_temperature_is_neutral_without_both_classes(logits: np.ndarray, labels: np.ndarray) -> None:
    assert fit_temperature(logits, labels) == 1.0


def test_fit_calibration_ignores_faceless_videos_for_the_temperature() -> None:
    z, y = _synthetic(2.5, 1000, 7)
    z_with_nan = z.copy()
    z_with_nan[::10] = np.nan
    cal = fit_calibration(z_with_nan, y, 0.01, 0.99)
    keep = ~np.isnan(z_with_nan)
    assert cal.temperature == pytest.approx(fit_temperature(z[keep], y[keep], bias=cal.bias))
    # The fallback (and the shift) is the prior of all videos, faceless ones included.
    assert cal.fallback == pytest.approx(y.mean())
    assert cal.bias == pytest.approx(np.log(y.mean() / (1 - y.mean())))
    assert (cal.clip_min, cal.clip_max) == (0.01, 0.99)


def test_the_prior_shift_corrects_a_model_trained_on_balanced_classes() -> None:
    """Logits that are log-likelihood ratios (balanced training) on videos that are 80% fake."""
    rng = np.random.default_rng(8)
    y = (rng.random(4000) < 0.8).astype(float)
    llr = rng.normal(np.where(y == 1, 0.5, -0.5), 1.0)  # a weak model: d' = 1
    cal = fit_calibration(llr, y, 1e-6, 1 - 1e-6)
    prior = log_loss(y, np.full(len(y), y.mean()))
    shifted = log_loss(y, cal.probability(llr))
    unshifted = log_loss(y, expit(llr / fit_temperature(llr, y)))
    assert shifted < prior < unshifted  # without the shift a weak model loses to the constant prior
    # A model that learnt nothing scores the prior, not 0.5.
    nothing = fit_calibration(np.zeros(len(y)), y, 1e-6, 1 - 1e-6)
    assert nothing.probability(np.zeros(3)) == pytest.approx(np.full(3, y.mean()))


def test_fit_calibration_clips_an_extreme_prior() -> None:
    cal = fit_calibration(np.array([np.nan, np.nan, 1.0]), np.ones(3), 0.02, 0.97)
    assert cal.fallback == 0.97
    assert cal.temperature == 1.0


CAL = Calibration(temperature=2.0, clip_min=0.02, clip_max=0.97, fallback=0.7)


def test_nan_logits_get_the_fallback() -> None:
    p = CAL.probability(np.array([np.nan, 0.0, np.nan]))
    assert p[0] == p[2] == pytest.approx(0.7)
    assert p[1] == pytest.approx(0.5)


def test_probability_is_the_tempered_sigmoid() -> None:
    z = np.linspace(-4, 4, 9)
    np.testing.assert_allclose(CAL.probability(z), np.clip(expit(z / 2.0), 0.02, 0.97))
    # Accepts a Series too.
    np.testing.assert_allclose(CAL.probability(pd.Series(z)), CAL.probability(z))


def test_clipping_bounds_hold() -> None:
    z = np.array([-1e6, -50.0, -5.0, 0.0, 5.0, 50.0, 1e6, np.inf, -np.inf])
    p = CAL.probability(z)
    assert np.isfinite(p).all()
    assert (p >= 0.02).all() and (p <= 0.97).all()
    assert p[0] == 0.02 and p[6] == 0.97
    assert (np.diff(p[:7]) >= 0).all()  # monotone in the logit
    # Even a fallback outside the bounds is clipped.
    odd = Calibration(1.0, 0.1, 0.9, fallback=0.0)
    assert odd.probability(np.array([np.nan]))[0] == 0.1


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "calibration.json"
    CAL.save(path)
    loaded = Calibration.load(path)
    assert loaded == CAL
    z = np.array([np.nan, -3.0, 0.5, 9.0])
    np.testing.assert_array_equal(loaded.probability(z), CAL.probability(z))


def test_video_logits_are_per_video_means() -> None:
    rng = np.random.default_rng(0)
    videos = pd.Series(rng.choice(["b.mp4", "a.mp4", "c.mp4"], 60))
    logits = rng.normal(size=60)
    got = video_logits(logits, videos)
    assert sorted(got.index) == ["a.mp4", "b.mp4", "c.mp4"]
    for name in got.index:
        assert got[name] == pytest.approx(logits[(videos == name).to_numpy()].mean())
    # Order of first appearance, not alphabetical (callers reindex; it must be stable).
    assert list(got.index) == list(dict.fromkeys(videos))


def test_video_logits_ignores_the_series_index() -> None:
    videos = pd.Series(["x", "y", "x"], index=[10, 20, 30])
    got = video_logits(np.array([1.0, 5.0, 3.0]), videos)
    assert got.to_dict() == {"x": 2.0, "y": 5.0}


def test_calibration_records_its_aggregation(tmp_path: Path) -> None:
    from dfdc.config import AggregateConfig

    assert CAL.aggregation == AggregateConfig().model_dump(mode="json")  # default: mean
    cfg = AggregateConfig(strategy="confident", fake_min_count=4)
    z, y = _synthetic(2.0, 200, 8)
    cal = fit_calibration(z, y, 0.01, 0.99, cfg)
    assert cal.aggregation == cfg.model_dump(mode="json")
    cal.save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json") == cal
    assert "aggregation" not in cal.scalars()
    assert set(cal.scalars()) == {"temperature", "clip_min", "clip_max", "fallback", "bias"}


def test_a_record_without_aggregation_means_mean(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text('{"temperature": 1.5, "clip_min": 0.01, "clip_max": 0.99, "fallback": 0.8}')
    assert Calibration.load(path).aggregation["strategy"] == "mean"


def test_from_protocol_reads_the_aggregation_and_old_bundles() -> None:
    confident = {**CAL.aggregation, "strategy": "confident"}
    cal = Calibration.from_protocol({"calibration": CAL.scalars(), "aggregation": confident})
    assert cal.aggregation == confident and cal.temperature == CAL.temperature
    old = Calibration.from_protocol({"calibration": CAL.scalars(), "aggregation": "mean_logit"})
    assert old == CAL


def test_calibrate_videos_fits_on_the_calib_subset_only() -> None:
    from dfdc.config import AggregateConfig
    from dfdc.scoring.calibrate import calibrate_videos

    rng = np.random.default_rng(9)
    names = [f"v{i:03d}.mp4" for i in range(120)]
    frames = pd.DataFrame(
        {"video": np.repeat(names, 4), "face": 0, "logit": rng.normal(0, 3, 480)}
    )
    y = (rng.random(120) < 0.6).astype(int)
    videos = pd.DataFrame({"filename": [*names, "noface.mp4"], "subset": ["calib", "test"] * 60 + ["calib"]})
    videos["y"] = np.append(y, 1)
    cfg = AggregateConfig(strategy="confident", fake_min_count=1)
    cal, logits = calibrate_videos(frames, videos, cfg, 0.02, 0.98)
    assert logits.index.equals(videos.index)
    assert np.isnan(logits.iloc[-1])  # no frames: NaN, the fallback's job
    calib = (videos["subset"] == "calib").to_numpy()
    expected = fit_calibration(logits.to_numpy()[calib], videos["y"].to_numpy()[calib], 0.02, 0.98, cfg)
    assert cal == expected
    # Test labels never move it.
    flipped = videos.assign(y=np.where(videos["subset"] == "test", 1 - videos["y"], videos["y"]))
    assert calibrate_videos(frames, flipped, cfg, 0.02, 0.98)[0] == cal


def test_temperature_prior_pulls_a_small_sample_towards_one_and_fades_with_data() -> None:
    small_z, small_y = _synthetic(3.0, 30, 10)
    plain = fit_temperature(small_z, small_y)
    shrunk = fit_temperature(small_z, small_y, prior_sd=0.5)
    assert abs(np.log(shrunk)) < abs(np.log(plain))  # pulled towards T = 1
    assert fit_temperature(small_z, small_y, prior_sd=0.05) == pytest.approx(1.0, abs=0.1)
    big_z, big_y = _synthetic(3.0, 20000, 11)
    plain_big = fit_temperature(big_z, big_y)
    assert fit_temperature(big_z, big_y, prior_sd=0.5) == pytest.approx(plain_big, rel=0.02)
    # The prior is the argument's: fit_calibration passes it through.
    cal = fit_calibration(small_z, small_y, 0.01, 0.99, prior_sd=0.5)
    assert cal.temperature == pytest.approx(fit_temperature(small_z, small_y, prior_sd=0.5, bias=cal.bias))


def test_a_model_leaning_to_fake_gets_its_shift_fitted_not_doubled() -> None:
    """Logits already shifted towards FAKE (an epoch chosen on a mostly fake val subset)."""
    rng = np.random.default_rng(9)
    y = (rng.random(3000) < 0.75).astype(float)
    leaning = rng.normal(np.where(y == 1, 0.8, -0.8), 1.0) + 1.5  # balanced model + a lean of 1.5
    odds = np.log(y.mean() / (1 - y.mean()))
    fixed = fit_calibration(leaning, y, 1e-6, 1 - 1e-6, bias_prior_sd=0.0)
    fitted = fit_calibration(leaning, y, 1e-6, 1 - 1e-6, bias_prior_sd=1.0)
    assert fixed.bias == pytest.approx(odds)  # 0: the shift stays at the log prior odds
    assert fitted.bias < odds - 1.0  # the lean is taken back out
    assert log_loss(y, fitted.probability(leaning)) < log_loss(y, fixed.probability(leaning)) - 0.01
    assert fitted.fallback == fixed.fallback == pytest.approx(y.mean())


def test_the_shift_prior_holds_on_a_few_videos() -> None:
    """Eight calib videos cannot move the shift far from the log prior odds."""
    y = np.array([1, 1, 1, 1, 1, 1, 0, 0], dtype=float)
    z = np.array([3.0, 2.0, 2.5, 1.0, 4.0, 3.5, 2.0, 2.2])  # reals scored like fakes
    odds = np.log(0.75 / 0.25)
    tight = fit_calibration(z, y, 0.01, 0.99, prior_sd=0.5, bias_prior_sd=0.1)
    loose = fit_calibration(z, y, 0.01, 0.99, prior_sd=0.5, bias_prior_sd=10.0)
    assert abs(tight.bias - odds) < abs(loose.bias - odds)
    assert abs(tight.bias - odds) < 0.2
