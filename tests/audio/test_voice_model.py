"""The voice model: small, shaped right, and able to learn two voices apart on a CPU in seconds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from dfdc.audio.decode import Audio
from dfdc.audio.features import features_of_audio
from dfdc.audio.model import (
    IDENTITY_HEAD,
    MaxFeatureMap,
    VoiceNet,
    build_voice_model,
    clip_head,
    clip_logit,
    noisy_or_logit,
    parameter_count,
    window_logits,
)
from dfdc.config import AudioConfig

CFG = AudioConfig()


def test_model_is_well_under_a_million_parameters() -> None:
    count = parameter_count(build_voice_model(CFG))
    assert 10_000 < count < 1_000_000
    assert parameter_count(VoiceNet(width=32)) > count  # the width knob is the one that sizes it


@pytest.mark.parametrize("frames", [CFG.window_frames, 37])
def test_one_logit_per_window(frames: int) -> None:
    torch.manual_seed(0)
    model = build_voice_model(CFG).eval()
    out = model(torch.randn(3, 1, CFG.n_mels, frames))
    assert out.shape == (3,) and torch.isfinite(out).all()


def test_max_feature_map_keeps_the_larger_half() -> None:
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    assert torch.equal(MaxFeatureMap()(x), torch.tensor([[1.0, 3.0]]))


def test_window_logits_pool_to_their_mean_or_a_soft_maximum() -> None:
    z = np.array([-4.0, -4.0, -4.0, 6.0])  # one window of four holds the edit
    assert clip_logit(z, AudioConfig(pool="mean")) == pytest.approx(-1.5)
    lse = AudioConfig(pool="lse")
    pooled = clip_logit(z)  # lse by default
    assert pooled == clip_logit(z, lse)
    assert z.mean() < 0 < pooled < z.max()  # the one confident window lifts the clip, the mean would not
    assert pooled == pytest.approx(6.0 + np.log(0.25), abs=1e-3)  # log-mean-exp: at most log(n) below the max
    assert clip_logit(np.full(7, 2.5), lse) == pytest.approx(2.5)  # agreeing windows: their logit
    sharper = clip_logit(z, AudioConfig(pool="lse", pool_temperature=0.25))
    assert pooled < sharper < z.max()
    assert np.isnan(clip_logit(np.array([])))


def test_the_clip_head_is_a_noisy_or_of_windows_and_pitch() -> None:
    x, y = np.array([-3.0, 0.0, 2.0, 12.0]), np.array([-1.0, 1.0, -40.0, 3.0])
    p = 1 - (1 - 1 / (1 + np.exp(-x))) * (1 - 1 / (1 + np.exp(-y)))
    np.testing.assert_allclose(noisy_or_logit(x, y), np.log(p / (1 - p)), rtol=1e-6)
    assert noisy_or_logit(-800.0, -800.0) == pytest.approx(np.log(2) - 800)  # no overflow either way
    assert np.isfinite(noisy_or_logit(800.0, 800.0))
    windows, mean = np.array([-2.0, -1.0, 0.0]), AudioConfig(pool="mean")
    head = np.array([2.0, 0.5, 10.0, -5.0, 0.2])  # windows: 2 z + 0.5; pitch: 10 s - 5; fill 0.2
    genuine = clip_logit(windows, mean, 0.2, head)
    assert genuine == pytest.approx(float(noisy_or_logit(2 * -1.0 + 0.5, 10 * 0.2 - 5)))
    assert clip_logit(windows, mean, 0.9, head) > 3.0 > genuine  # a wide spread alone calls it changed
    assert clip_logit(windows, mean, float("nan"), head) == pytest.approx(genuine)  # no voicing: the fill
    assert clip_logit(windows, mean, 0.9, np.array(IDENTITY_HEAD)) == pytest.approx(-1.0, abs=1e-9)
    assert np.isnan(clip_logit(np.array([]), mean, 0.9, head))


def test_a_model_carries_its_clip_head_and_an_old_checkpoint_gets_the_identity(tmp_path) -> None:
    from dfdc.audio.model import VoiceCheckpoint

    model = build_voice_model(CFG)
    np.testing.assert_array_equal(clip_head(model), IDENTITY_HEAD)
    model.get_buffer("clip_head").copy_(torch.tensor([1.5, 0.0, 4.0, -2.0, 0.25]))
    VoiceCheckpoint(CFG, model.state_dict(), 0, 0.5).save(tmp_path / "voice.pt")
    np.testing.assert_allclose(
        clip_head(VoiceCheckpoint.load(tmp_path / "voice.pt").build()), [1.5, 0, 4, -2, 0.25]
    )
    older = {k: v for k, v in model.state_dict().items() if k != "clip_head"}  # saved before clip heads
    np.testing.assert_array_equal(clip_head(VoiceCheckpoint(CFG, older, 0, 0.5).build()), IDENTITY_HEAD)


def _windows(voice: Callable[..., np.ndarray], seed: int, **kind: object) -> np.ndarray:
    samples = voice(1.5, CFG.sample_rate, seed=seed, **kind)
    return features_of_audio(Audio(samples, CFG.sample_rate, CFG.sample_rate, 1), CFG).windows


def test_overfits_two_synthetic_voices_on_cpu(voice: Callable[..., np.ndarray]) -> None:
    torch.manual_seed(0)
    real = {"f0": 110.0, "formants": (700, 1200, 2600)}
    fake = {"f0": 210.0, "formants": (400, 2000, 2900)}
    x = np.concatenate([_windows(voice, seed, **kind) for kind in (real, fake) for seed in range(3)])
    y = torch.tensor([0.0] * (len(x) // 2) + [1.0] * (len(x) // 2))
    x = torch.from_numpy(x)
    model = build_voice_model(CFG)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        model.train()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    logits = window_logits(model, x.numpy())
    assert loss.item() < 0.2
    assert ((logits > 0) == y.numpy().astype(bool)).all()
    # a clip of the fake voice scores as fake, one of the real voice as real
    assert clip_logit(window_logits(model, _windows(voice, 9, **fake))) > 0
    assert clip_logit(window_logits(model, _windows(voice, 9, **real))) < 0
