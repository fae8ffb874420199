"""Fusion of the face and voice logits: each method's rule, missing branches, the fit, the record."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from dfdc.config import AudioConfig, ExtractConfig, ModelConfig
from dfdc.protocol import Preprocess, Protocol
from dfdc.scoring.calibrate import Calibration, calibrate_videos
from dfdc.scoring.fusion import METHODS, Fusion, fit_fusion, noisy_or

NAN = float("nan")


def test_noisy_or_is_one_minus_both_untouched() -> None:
    face, voice = np.array([-2.0, 0.0, 3.0]), np.array([1.0, 0.0, -4.0])
    want = logit(1 - (1 - expit(face)) * (1 - expit(voice)))
    np.testing.assert_allclose(noisy_or(face, voice), want, rtol=1e-9)
    assert noisy_or(np.array([40.0]), np.array([40.0]))[0] > 30  # stays finite when both are sure
    # exact when both are sure of "untouched" too: P ~ e^f + e^v
    assert noisy_or(np.array([-800.0]), np.array([-800.0]))[0] == pytest.approx(np.log(2) - 800)


def test_noisy_or_calibrates_the_face_against_whether_the_face_changed() -> None:
    """Face logits squeezed to a third of their scale: the fit stretches them back; the voice is untouched."""
    rng = np.random.default_rng(0)
    changed = np.repeat([0.0, 1.0], 150)
    face = (np.where(changed == 1, 3.0, -3.0) + rng.normal(0, 1, 300)) / 3
    face_changed = changed.copy()
    face_changed[:10] = NAN  # unknown (no original): left out
    fitted = fit_fusion("noisy_or", face, np.zeros(300), changed, face_changed=face_changed)
    a, b = fitted.face_scale
    assert a > 2.0 and abs(b) < 1.0  # stretched back: the squeeze made it under-confident
    voice = np.array([-1.0, 2.0])
    np.testing.assert_allclose(fitted.logit(np.array([0.5, NAN]), voice), [noisy_or(a * 0.5 + b, -1.0), 2.0])
    assert Fusion.from_json(fitted.to_json()) == fitted
    assert Fusion.from_json({"method": "noisy_or", "weights": [1, 1]}).face_scale == (
        1.0,
        0.0,
    )  # older record
    # no face target, or one class only: the face as it is
    assert fit_fusion("noisy_or", face, np.zeros(300), changed).face_scale == (1.0, 0.0)
    assert fit_fusion("noisy_or", face, np.zeros(300), changed, face_changed=np.zeros(300)).face_scale == (
        1.0,
        0.0,
    )


@pytest.mark.parametrize("method", ["rule", "noisy_or", "logreg"])
def test_a_missing_branch_leaves_the_other_alone(method: str) -> None:
    """No audio: the face alone decides; no face: the voice alone; neither: NaN (the fallback)."""
    fusion = Fusion(method, (0.7, 1.3))
    face, voice = np.array([2.0, NAN, NAN]), np.array([NAN, -1.5, NAN])
    out = fusion.logit(face, voice)
    scale = (0.7, 1.3) if method == "logreg" else (1.0, 1.0)
    assert out[0] == pytest.approx(scale[0] * 2.0)
    assert out[1] == pytest.approx(scale[1] * -1.5)
    assert np.isnan(out[2])


def test_the_rule_trusts_the_branch_more_sure_of_fake() -> None:
    out = Fusion("rule").logit(np.array([-3.0, 2.0]), np.array([1.0, -5.0]))
    np.testing.assert_allclose(out, [1.0, 2.0])


def test_single_branch_methods_ignore_the_other() -> None:
    face, voice = np.array([1.0, NAN]), np.array([NAN, 2.0])
    np.testing.assert_array_equal(Fusion("face").logit(face, voice), face)
    np.testing.assert_array_equal(Fusion("voice").logit(face, voice), voice)


def test_logreg_weighs_the_branch_that_separates() -> None:
    """Fakes told apart only by their voice: the fit leans on the voice, not the face."""
    rng = np.random.default_rng(0)
    y = np.repeat([0.0, 1.0], 100)
    face = rng.normal(0, 1, 200)  # noise
    voice = np.where(y == 1, 3.0, -3.0) + rng.normal(0, 1, 200)
    fitted = fit_fusion("logreg", face, voice, y)
    w_face, w_voice = fitted.weights
    assert w_voice > 1.0 > w_face >= 0.0


def test_logreg_without_both_classes_keeps_unit_weights() -> None:
    assert fit_fusion("logreg", np.zeros(5), np.zeros(5), np.ones(5)).weights == (1.0, 1.0)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        Fusion("average")


def _videos(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Videos whose fakes are half face fakes, half voice fakes; frames of one face logit each."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    voice_fake = (y == 1) & (rng.random(n) < 0.5)
    face = np.where((y == 1) & ~voice_fake, 2.5, -2.5) + rng.normal(0, 1, n)
    voice = np.where(voice_fake, 2.5, -2.5) + rng.normal(0, 1, n)
    voice[::7] = NAN  # some videos without usable audio
    names = [f"v{i:04d}.mp4" for i in range(n)]
    subset = np.where(np.arange(n) % 2 == 0, "calib", "test")
    videos = pd.DataFrame({"filename": names, "subset": subset, "y": y, "voice_logit": voice})
    frames = pd.DataFrame({"video": names, "logit": face})
    return videos, frames


@pytest.mark.parametrize("method", METHODS)
def test_every_method_calibrates_and_fused_logits_match_the_record(method: str) -> None:
    videos, frames = _videos(200, 1)
    cal, fused = calibrate_videos(frames, videos, {"strategy": "mean"}, 0.01, 0.99, 0.5, 1.0, method)
    face = frames["logit"].to_numpy()
    np.testing.assert_allclose(fused.to_numpy(), cal.fused(face, videos["voice_logit"]), equal_nan=True)
    assert (cal.fusion is None) == (method == "face")  # a face-only record is as before fusion


def test_calibrate_videos_fits_the_face_scale_when_the_face_targets_are_known() -> None:
    videos, frames = _videos(200, 3)
    face_fake = (videos["y"] == 1) & (frames["logit"] > 0)  # the face fakes of _videos
    frames = frames.assign(logit=frames["logit"] / 4)  # an under-confident face branch
    with_targets = videos.assign(face_changed=face_fake.astype(float))
    plain, _ = calibrate_videos(frames, videos, {"strategy": "mean"}, 0.01, 0.99, 0.5, 1.0, "noisy_or")
    cal, fused = calibrate_videos(
        frames, with_targets, {"strategy": "mean"}, 0.01, 0.99, 0.5, 1.0, "noisy_or"
    )
    assert plain.fusion_rule.face_scale == (1.0, 0.0) and cal.fusion_rule.face_scale[0] > 2.0
    face = frames["logit"].to_numpy()
    np.testing.assert_allclose(fused.to_numpy(), cal.fused(face, videos["voice_logit"]), equal_nan=True)


def test_fusion_beats_either_branch_alone_when_fakes_differ_by_modality() -> None:
    from sklearn.metrics import log_loss

    videos, frames = _videos(400, 2)
    test = (videos["subset"] == "test").to_numpy()
    losses = {}
    for method in METHODS:
        cal, fused = calibrate_videos(frames, videos, {"strategy": "mean"}, 0.01, 0.99, 0.5, 1.0, method)
        losses[method] = log_loss(videos["y"][test], cal.probability(fused.to_numpy()[test]))
    assert max(losses["rule"], losses["noisy_or"], losses["logreg"]) < min(losses["face"], losses["voice"])


def test_the_fusion_travels_in_the_protocol() -> None:
    cal = Calibration(1.2, 0.01, 0.99, 0.7, bias=0.3, fusion=Fusion("logreg", (0.5, 2.0)).to_json())
    protocol = Protocol(
        ModelConfig(), ExtractConfig(), Preprocess((0.5,) * 3, (0.5,) * 3), cal, voice=AudioConfig(n_mels=40)
    )
    raw = protocol.to_json()
    assert raw["fusion"] == {"method": "logreg", "weights": [0.5, 2.0], "face_scale": [1.0, 0.0]}
    back = Protocol.from_json(raw)
    assert back == protocol
    assert back.calibration is not None and back.calibration.fusion_rule == Fusion("logreg", (0.5, 2.0))


def test_a_record_from_before_fusion_is_the_face_alone() -> None:
    raw = {"calibration": {"temperature": 1.0, "clip_min": 0.01, "clip_max": 0.99, "fallback": 0.5}}
    cal = Calibration.from_protocol(raw)
    assert cal.fusion_rule == Fusion("face")
    assert cal.fused(1.5, 9.0) == pytest.approx(1.5)
