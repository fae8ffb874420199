"""The voice model: small, shaped right, and able to learn two voices apart on a CPU in seconds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from dfdc.audio.decode import Audio
from dfdc.audio.features import features_of_audio
from dfdc.audio.model import (
    MaxFeatureMap,
    VoiceNet,
    build_voice_model,
    clip_logit,
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


def test_clip_logit_is_the_mean_of_window_logits_by_default() -> None:
    assert clip_logit(np.array([1.0, -1.0, 3.0])) == pytest.approx(1.0)
    assert np.isnan(clip_logit(np.array([])))
    # the project's other aggregation rules apply to windows as to frames
    confident = clip_logit(np.array([4.0] * 6 + [-4.0] * 2), {"strategy": "confident", "fake_min_count": 2})
    assert confident == pytest.approx(4.0, abs=1e-6)


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
