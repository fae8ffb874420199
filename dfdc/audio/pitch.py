"""The pitch of a clip's voice, and how far it spreads: a speaker change the log-mel windows miss.

A stretch of speech spliced in from another person changes the voice's pitch *level* for a
while. The voice model's log-mel windows resolve formants but hardly the harmonics of a
100-200 Hz voice, and each window sees a second of the clip, so they cannot compare the
pitch before and after; a pitch track over the whole clip can. The track is WORLD's DIO with
StoneMask refinement (``pyworld``, the vocoder the demo's conversions use), and the clip's
figure is the spread of its log-f0 between the 5th and 95th percentiles of the voiced frames:
about 0.2 for one speaker's intonation, 0.3-1.0 with another speaker's stretch in it.

What it cannot tell: two people taking turns (a DFDC clip with two speakers spreads as a splice
does), and a splice in a voice of the same pitch. The voice model's clip head weighs it
against the windows' logit (``dfdc.audio.model.VoiceNet.clip_head``).
"""

from __future__ import annotations

import numpy as np

F0_FLOOR_HZ = 60.0  # the lowest and highest pitch tracked: adult and child voices
F0_CEIL_HZ = 500.0
FRAME_S = 0.01
MIN_VOICED_S = 0.2  # fewer voiced frames than this: no spread (NaN)
# DIO analyses a 16 kHz track downsampled by this (to 4 kHz: ample for f0 <= 500 Hz): the same
# spreads on the demo's voices and splices, three times faster (0.13 s against 0.44 s a 10 s clip).
DIO_SPEED = 4


def pitch_track(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """f0 in Hz every ``FRAME_S`` (0 where unvoiced)."""
    import pyworld  # MIT (WORLD: modified BSD)

    x = np.ascontiguousarray(samples, dtype=np.float64)
    period = FRAME_S * 1000
    f0, times = pyworld.dio(
        x, sample_rate, f0_floor=F0_FLOOR_HZ, f0_ceil=F0_CEIL_HZ, frame_period=period, speed=DIO_SPEED
    )
    return pyworld.stonemask(x, f0, times, sample_rate)


def pitch_spread(samples: np.ndarray, sample_rate: int) -> float:
    """The 5th-95th percentile range of log-f0 over the voiced frames; NaN with too little voicing."""
    f0 = pitch_track(samples, sample_rate)
    voiced = np.log(f0[f0 > 0])
    if len(voiced) * FRAME_S < MIN_VOICED_S:
        return float("nan")
    low, high = np.percentile(voiced, [5, 95])
    return float(high - low)
