"""Decoding sound tracks of real mp4 files: every layout and rate to mono 16 kHz, every bad input a reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from dfdc.audio.decode import Audio, AudioError, read_audio
from dfdc.faces.video import VideoError

if TYPE_CHECKING:
    from conftest import Demo

RATE = 16_000


def _dominant_hz(audio: Audio) -> float:
    spectrum = np.abs(np.fft.rfft(audio.samples * np.hanning(len(audio.samples))))
    return float(np.fft.rfftfreq(len(audio.samples), 1 / audio.sample_rate)[spectrum.argmax()])


def _tone(seconds: float, rate: int, hz: float = 440.0, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def test_demo_video_track_decodes_to_mono_at_the_configured_rate(demo: Demo) -> None:
    path = next(demo.chunk_dir.glob("*.mp4"))
    audio = read_audio(path, RATE)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.sample_rate == RATE and audio.source_rate == 44_100 and audio.source_channels == 1
    assert audio.video_duration == pytest.approx(demo.spec.duration, abs=0.01)
    assert audio.duration == pytest.approx(demo.spec.duration, abs=0.06)
    assert audio.missing_seconds < 0.06 and audio.bad_packets == 0
    assert np.abs(audio.samples).max() > 0.01  # the demo's voice is there


@pytest.mark.parametrize(("layout", "rate"), [("stereo", 44_100), ("5.1", 48_000)])
def test_multichannel_tracks_are_downmixed_to_mono(
    tmp_path: Path, track: Callable[..., Path], layout: str, rate: int
) -> None:
    channels = 2 if layout == "stereo" else 6
    signal = np.zeros((channels, rate), np.float32)
    signal[:2] = _tone(1.0, rate)  # front left and right; 5.1's centre, LFE and surrounds silent
    audio = read_audio(track(tmp_path / f"{layout}.mp4", signal, rate=rate, layout=layout), RATE)
    assert audio.samples.ndim == 1 and audio.sample_rate == RATE
    assert (audio.source_channels, audio.source_rate) == (channels, rate)
    assert audio.duration == pytest.approx(1.0, abs=0.05)
    assert _dominant_hz(audio) == pytest.approx(440.0, abs=3.0)
    assert 0.1 < np.abs(audio.samples).max() <= 1.0


def test_8khz_track_is_upsampled_with_its_pitch_kept(tmp_path: Path, track: Callable[..., Path]) -> None:
    audio = read_audio(track(tmp_path / "phone.mp4", _tone(1.5, 8_000, hz=300.0), rate=8_000), RATE)
    assert audio.source_rate == 8_000 and audio.sample_rate == RATE
    assert len(audio.samples) == pytest.approx(1.5 * RATE, abs=0.05 * RATE)
    assert _dominant_hz(audio) == pytest.approx(300.0, abs=3.0)


def test_short_audio_is_reported_not_refused(tmp_path: Path, track: Callable[..., Path]) -> None:
    audio = read_audio(track(tmp_path / "short.mp4", _tone(0.5, 44_100), video_seconds=2.0), RATE)
    assert audio.video_duration == pytest.approx(2.0, abs=0.01)
    assert audio.duration == pytest.approx(0.5, abs=0.05)
    assert audio.missing_seconds == pytest.approx(1.5, abs=0.05)


def test_max_seconds_bounds_what_is_decoded(tmp_path: Path, track: Callable[..., Path]) -> None:
    path = track(tmp_path / "long.mp4", _tone(3.0, 44_100), video_seconds=3.0)
    audio = read_audio(path, RATE, max_seconds=1.0)
    assert len(audio.samples) == RATE and audio.clipped
    assert audio.missing_seconds == 0.0  # a cut of ours is not a short track
    assert not read_audio(path, RATE).clipped


def test_an_undecodable_packet_is_skipped_and_counted(tmp_path: Path, track: Callable[..., Path]) -> None:
    signal = _tone(1.0, 44_100)
    whole = read_audio(track(tmp_path / "whole.mp4", signal, video_seconds=1.0), RATE)
    damaged = read_audio(track(tmp_path / "damaged.mp4", signal, video_seconds=1.0, corrupt=[5, 20]), RATE)
    assert damaged.bad_packets == 2 and whole.bad_packets == 0
    # the two lost packets (1024 samples each at 44.1 kHz) are missing, nothing is padded in
    assert whole.duration - damaged.duration == pytest.approx(2 * 1024 / 44_100, abs=0.01)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        ("no_audio", "no_audio"),
        ("no_packets", "empty_audio"),
        ("all_corrupt", "audio_decode_error"),
        ("missing", "missing"),
        ("not_media", "decode_error"),
    ],
)
def test_bad_input_gets_its_reason(
    tmp_path: Path,
    track: Callable[..., Path],
    faceless_mp4: Callable[[Path], Path],
    make: str,
    reason: str,
) -> None:
    path = tmp_path / (f"{make}.mkv" if make == "no_packets" else f"{make}.mp4")
    if make == "no_audio":
        faceless_mp4(path)
    elif make == "no_packets":  # an audio stream of zero length beside the video
        track(path, None, video_seconds=1.0, container_format="matroska")
    elif make == "all_corrupt":
        track(path, _tone(0.5, 44_100), corrupt="all")
    elif make == "not_media":
        path.write_text("not a video")
    with pytest.raises(AudioError) as err:
        read_audio(path, RATE)
    assert err.value.reason == reason
    assert isinstance(err.value, VideoError)  # recorded like any video failure


def test_audio_only_file_decodes(tmp_path: Path, audio_only_mp4: Callable[[Path], Path]) -> None:
    audio = read_audio(audio_only_mp4(tmp_path / "audio.mp4"), RATE)
    assert audio.video_duration is None and audio.missing_seconds == 0.0
    assert audio.duration == pytest.approx(10 * 1024 / 44_100, abs=0.05)
