"""Silence trimming, the log-mel and its windows: leading silence and loudness must not be learnable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from dfdc.audio.decode import Audio, AudioError
from dfdc.audio.features import (
    audio_windows,
    cut_windows,
    features_of_audio,
    log_mel,
    mel_filterbank,
    sound_bounds,
    trim_silence,
)
from dfdc.config import AudioConfig

CFG = AudioConfig()
RATE = CFG.sample_rate


def _audio(samples: np.ndarray) -> Audio:
    return Audio(samples.astype(np.float32), RATE, RATE, 1)


def test_trimming_finds_the_sound(voice: Callable[..., np.ndarray]) -> None:
    speech = voice(1.0, RATE)
    padded = np.concatenate([np.zeros(2 * RATE, np.float32), speech, np.zeros(RATE // 2, np.float32)])
    start, stop = sound_bounds(padded, RATE, CFG)
    assert abs(start - 2 * RATE) < RATE * 0.01 and abs(stop - 3 * RATE) < RATE * 0.01
    assert len(trim_silence(padded, RATE, CFG)) == stop - start


def test_leading_silence_gives_identical_features(voice: Callable[..., np.ndarray]) -> None:
    speech = voice(2.0, RATE, seed=3)
    rng = np.random.default_rng(0)
    hiss = rng.normal(0, 10 ** (-75 / 20), 2 * RATE).astype(np.float32)  # below the -60 dBFS floor
    silent_start = np.concatenate([hiss, speech, np.zeros(RATE, np.float32)])
    plain, padded = features_of_audio(_audio(speech), CFG), features_of_audio(_audio(silent_start), CFG)
    assert padded.trim_start_s == pytest.approx(2.0, abs=0.01)
    assert plain.windows.shape == padded.windows.shape
    np.testing.assert_allclose(padded.windows, plain.windows, atol=1e-3)
    # without the trimming the same two clips would differ: the check above can fail
    untrimmed = cut_windows(log_mel(silent_start, RATE, CFG), CFG)[0]
    assert untrimmed.shape != plain.windows.shape or not np.allclose(untrimmed, plain.windows, atol=1)


def test_leading_silence_in_encoded_files_leaves_features_nearly_identical(
    tmp_path: Path, voice: Callable[..., np.ndarray], track: Callable[..., Path]
) -> None:
    speech = voice(2.0, 44_100, seed=4)
    silent_start = np.concatenate([np.zeros(2 * 44_100, np.float32), speech])
    plain = audio_windows(track(tmp_path / "plain.mp4", speech), CFG)
    padded = audio_windows(track(tmp_path / "padded.mp4", silent_start), CFG)
    assert padded.trim_start_s - plain.trim_start_s == pytest.approx(2.0, abs=0.01)
    assert plain.windows.shape == padded.windows.shape
    spread = plain.windows.std()
    assert np.abs(plain.windows - padded.windows).mean() < 0.1 * spread  # AAC frames its input anew


def test_loudness_is_not_a_feature(voice: Callable[..., np.ndarray]) -> None:
    speech = voice(1.5, RATE, seed=5)
    np.testing.assert_allclose(log_mel(0.1 * speech, RATE, CFG), log_mel(speech, RATE, CFG), atol=1e-3)


@pytest.mark.parametrize(
    "samples",
    [np.zeros(RATE, np.float32), np.random.default_rng(0).normal(0, 1e-4, RATE).astype(np.float32)],
    ids=["digital_silence", "hiss_below_floor"],
)
def test_silent_track_is_a_reason(samples: np.ndarray) -> None:
    with pytest.raises(AudioError) as err:
        features_of_audio(_audio(samples), CFG)
    assert err.value.reason == "silent"


def test_silent_file_is_a_reason(tmp_path: Path, track: Callable[..., Path]) -> None:
    with pytest.raises(AudioError) as err:
        audio_windows(track(tmp_path / "silent.mp4", np.zeros(44_100, np.float32), video_seconds=1.0), CFG)
    assert err.value.reason == "silent"


def test_window_shapes_and_starts(voice: Callable[..., np.ndarray]) -> None:
    features = features_of_audio(_audio(voice(2.3, RATE)), CFG)
    frames = 1 + (round(features.trimmed_s * RATE) - CFG.n_fft) // CFG.hop_length
    starts = [*range(0, frames - CFG.window_frames + 1, CFG.window_hop_frames)]
    if starts[-1] != frames - CFG.window_frames:
        starts.append(frames - CFG.window_frames)  # the tail gets a window of its own
    assert features.windows.shape == (len(starts), 1, CFG.n_mels, CFG.window_frames) == (4, 1, 128, 100)
    assert features.windows.dtype == np.float32 and np.isfinite(features.windows).all()
    np.testing.assert_allclose(features.start_s, np.array(starts) * CFG.hop_length / RATE)


def test_a_clip_shorter_than_a_window_fills_one_by_repeating(voice: Callable[..., np.ndarray]) -> None:
    features = features_of_audio(_audio(voice(0.3, RATE)), CFG)
    assert features.windows.shape == (1, 1, CFG.n_mels, CFG.window_frames)
    window = features.windows[0, 0]
    frames = 1 + (len(voice(0.3, RATE)) - CFG.n_fft) // CFG.hop_length
    np.testing.assert_array_equal(window[:, frames : 2 * frames], window[:, :frames])


def test_log_mel_puts_a_tone_in_its_band() -> None:
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(RATE) / RATE)
    mel = log_mel(tone, RATE, CFG)
    assert mel.shape == (CFG.n_mels, 1 + (RATE - CFG.n_fft) // CFG.hop_length)
    bank = mel_filterbank(RATE, CFG.n_fft, CFG.n_mels, CFG.fmin, RATE / 2)
    bin_1k = round(1000.0 * CFG.n_fft / RATE)
    assert mel.mean(axis=1).argmax() == bank[:, bin_1k].argmax()


def test_mel_filterbank_is_ordered_triangles() -> None:
    bank = mel_filterbank(RATE, 512, 64, 20.0, 8000.0)
    assert bank.shape == (64, 257) and (bank >= 0).all()
    peaks = bank.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > peaks[0]
    assert (bank.sum(axis=1) > 0).all()  # no empty filter at 64 bands on a 512-point FFT


def test_config_rejects_inconsistent_audio_knobs() -> None:
    with pytest.raises(ValidationError):
        AudioConfig(sample_rate=16_000, fmax=9_000)
    with pytest.raises(ValidationError):
        AudioConfig(hop_length=1024, n_fft=512)
    with pytest.raises(ValidationError):
        AudioConfig(windows_s=1.0)  # a misspelt key
