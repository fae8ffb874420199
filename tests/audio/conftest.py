"""Real media files for the voice branch's tests, written with PyAV: any layout, rate, length or damage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import av
import numpy as np
import pytest

_CHANNELS = {"mono": 1, "stereo": 2, "5.1": 6}


def speechlike(seconds: float, rate: int, f0: float = 140.0, formants: Sequence[float] = (700, 1200, 2600),
               seed: int = 0) -> np.ndarray:  # fmt: skip
    """A voiced, syllable-modulated harmonic signal: a glottal-like pulse train shaped by formant peaks.

    Deterministic per seed; peak about 0.5. Different ``f0``/``formants`` make distinguishable voices.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))  # intonation
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    wave = np.zeros(n)
    for k in range(1, 40):
        harmonic = k * pitch
        gain = sum(np.exp(-(((harmonic - f) / 120.0) ** 2)) for f in formants) / k**0.5
        wave += np.where(harmonic < rate / 2, gain, 0.0) * np.sin(k * phase)
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)) ** 2
    wave *= syllables
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def write_track(
    path: Path,
    signal: np.ndarray | None,
    rate: int = 44_100,
    layout: str = "mono",
    video_seconds: float | None = None,
    corrupt: Sequence[int] | str = (),
    container_format: str = "mp4",
) -> Path:
    """An mp4 with an AAC track of ``signal`` (channels, n) or (n,) copied to every channel.

    ``signal=None`` writes an audio stream without a packet (mp4 drops such a stream: use
    ``container_format="matroska"``, which keeps it); ``video_seconds`` adds a small
    H.264 stream of that length; ``corrupt`` replaces those audio packets (or ``"all"``) with
    random bytes of the same size, as a damaged file would hold.
    """
    channels = _CHANNELS[layout]
    with av.open(str(path), "w", format=container_format) as container:
        video = None if video_seconds is None else container.add_stream("libx264", rate=10)
        audio = container.add_stream("aac", rate=rate, layout=layout)  # every stream before the first packet
        if video is not None:
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            for i in range(round(video_seconds * 10)):
                pixels = np.full((48, 64, 3), 20 * i % 255, np.uint8)
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = i
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
        if signal is None:
            return path
        data = np.asarray(signal, np.float32)
        if data.ndim == 1:
            data = np.broadcast_to(data, (channels, data.size))
        data = np.ascontiguousarray(data)
        packets = []
        for k in range(0, data.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data[:, k : k + 1024]), format="fltp", layout=layout
            )
            frame.sample_rate, frame.pts = rate, k
            packets += audio.encode(frame)
        packets += audio.encode(None)
        damaged = range(len(packets)) if corrupt == "all" else corrupt
        rng = np.random.default_rng(0)
        for i in damaged:
            good = packets[i]
            bad = av.Packet(rng.integers(0, 256, good.size, dtype=np.uint8).tobytes())
            bad.pts, bad.dts, bad.time_base, bad.stream = good.pts, good.dts, good.time_base, good.stream
            packets[i] = bad
        container.mux(packets)
    return path


@pytest.fixture(scope="session")
def voice() -> Callable[..., np.ndarray]:
    """``speechlike(seconds, rate, f0=..., formants=..., seed=...)``."""
    return speechlike


@pytest.fixture(scope="session")
def track() -> Callable[..., Path]:
    """``write_track(path, signal, rate=..., layout=..., video_seconds=..., corrupt=...)``."""
    return write_track
