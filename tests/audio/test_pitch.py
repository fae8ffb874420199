"""The pitch spread: one speaker's intonation stays narrow, another speaker's stretch widens it."""

from __future__ import annotations

import numpy as np
import pytest

from dfdc.audio.pitch import pitch_spread, pitch_track
from dfdc.demo.speech import PROFILES, VoiceProfile, splice, synthesize

RATE = 16_000


def _speech(profile: VoiceProfile, seed: int, seconds: float = 2.0) -> np.ndarray:
    return synthesize((profile,), seed, round(seconds * RATE), RATE, turns=False)


def test_the_track_follows_the_voice_pitch() -> None:
    for name in ("camera", "hopper"):
        f0 = pitch_track(_speech(PROFILES[name], 1), RATE)
        voiced = f0[f0 > 0]
        assert len(voiced) > 50  # 10 ms frames, most of 2 s voiced
        assert np.median(voiced) == pytest.approx(PROFILES[name].f0, rel=0.15)


@pytest.mark.parametrize(("speaker", "donor"), [("astronaut", "hopper"), ("hopper", "camera")])
def test_a_spliced_voice_spreads_wider_than_its_speaker(speaker: str, donor: str) -> None:
    for seed in range(3):
        own = _speech(PROFILES[speaker], seed)
        other = _speech(PROFILES[donor], seed)
        spliced = splice(own, other, 0.3, 0.3, RATE)
        assert pitch_spread(own, RATE) < 0.35
        assert pitch_spread(spliced, RATE) > pitch_spread(own, RATE) + 0.2


def test_too_little_voicing_has_no_spread() -> None:
    rng = np.random.default_rng(0)
    assert np.isnan(pitch_spread(np.zeros(RATE, np.float32), RATE))
    assert np.isnan(pitch_spread((0.1 * rng.normal(size=RATE)).astype(np.float32), RATE))  # noise: unvoiced
