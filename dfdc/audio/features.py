"""From a decoded track to the voice model's input: trimmed, log-mel, cut into fixed windows.

Leading and trailing silence is trimmed first. In FakeAVCeleb and AV-Deepfake1M the length of
the leading silence alone nearly separates fakes from reals; a detector that sees it learns
that instead of the voice. Trimming is sample-exact (the first and last samples above the
threshold, found where the short-time RMS says there is sound), so a clip with seconds of
digital silence in front gives the same features as the clip without.

The mel filterbank is computed here with numpy (HTK mel scale, triangular filters of unit
area): torchaudio's wheels pin a torch other than the project's, and librosa would add numba.
A scalar gain is removed from each clip's log-mel (its mean), so loudness is not a cue either.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from dfdc.audio.decode import Audio, AudioError, read_audio
from dfdc.audio.pitch import pitch_spread
from dfdc.config import AudioConfig

_LOG_FLOOR = 1e-10  # power floor of the log (-100 dB): digital silence stays finite
_TOP_DB = 80.0  # log-mel values end this far below the clip's loudest: a floor that moves with the gain


def _db(power: np.ndarray | float) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(power, _LOG_FLOOR))


def sound_bounds(samples: np.ndarray, sample_rate: int, cfg: AudioConfig) -> tuple[int, int]:
    """``[start, stop)`` of the samples between the leading and trailing silence; (0, 0) if silent.

    A sample is in a sound region when the RMS of the ``silence_frame_s`` window centred on it
    is above both the loudest such RMS plus ``silence_rel_db`` and ``silence_floor_dbfs``; the
    bounds are then moved to the first and last sample, within half a window of the region,
    whose own level passes the same threshold, which makes them independent of padding.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return 0, 0
    w = max(1, round(cfg.silence_frame_s * sample_rate))
    cumsum = np.concatenate([[0.0], np.cumsum(x * x)])
    lo = np.clip(np.arange(x.size) - w // 2, 0, x.size)
    hi = np.clip(np.arange(x.size) - w // 2 + w, 0, x.size)
    power = (cumsum[hi] - cumsum[lo]) / w  # zero-padded centred window: the same with or without padding
    threshold = max(float(_db(power.max())) + cfg.silence_rel_db, cfg.silence_floor_dbfs)
    loud = np.flatnonzero(_db(power) > threshold)
    if loud.size == 0:
        return 0, 0
    amplitude = 10 ** (threshold / 20)
    first, last = int(loud[0]), int(loud[-1])
    head = np.flatnonzero(np.abs(x[max(first - w, 0) : first + w]) > amplitude)
    tail = np.flatnonzero(np.abs(x[max(last - w, 0) : last + w]) > amplitude)
    start = max(first - w, 0) + int(head[0]) if head.size else first
    stop = max(last - w, 0) + int(tail[-1]) + 1 if tail.size else last + 1
    return start, max(stop, start + 1)


def trim_silence(samples: np.ndarray, sample_rate: int, cfg: AudioConfig) -> np.ndarray:
    """The samples without leading and trailing silence (empty when all of it is silence)."""
    start, stop = sound_bounds(samples, sample_rate, cfg)
    return samples[start:stop]


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * float(np.log10(1.0 + hz / 700.0))


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced on the HTK mel scale, unit area."""
    mels = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    edges = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - left) / (centre - left)
    falling = (right - bins) / (right - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= 2.0 / (right - left)  # equal area: a wide high band does not outweigh a narrow low one
    filters.setflags(write=False)
    return filters


def log_mel(samples: np.ndarray, sample_rate: int, cfg: AudioConfig) -> np.ndarray:
    """(n_mels, frames) float32 log-mel power in dB, minus the clip's mean (a gain).

    Values stop ``_TOP_DB`` below the clip's loudest (as librosa's ``top_db``), so empty bands do
    not sit on an absolute floor that would make the clip's level visible after all.

    Frames of ``n_fft`` samples every ``hop_length``, Hann-windowed, not centred: the first frame
    starts at the first sample, so trimmed clips line up however much silence preceded them.
    A clip shorter than one frame is zero-padded to one.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.size < cfg.n_fft:
        x = np.pad(x, (0, cfg.n_fft - x.size))
    n_frames = 1 + (x.size - cfg.n_fft) // cfg.hop_length
    frames = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft)[:: cfg.hop_length][:n_frames]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(cfg.n_fft).astype(np.float32), axis=1)) ** 2
    fmax = cfg.fmax if cfg.fmax is not None else sample_rate / 2
    mel = mel_filterbank(sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, fmax) @ spectrum.T
    db = _db(mel)
    db = np.maximum(db, db.max() - _TOP_DB)
    return (db - db.mean()).astype(np.float32)


def log_mel_frames(n_samples: int, cfg: AudioConfig) -> int:
    """How many frames ``log_mel`` makes of ``n_samples`` samples."""
    return 1 + (max(n_samples, cfg.n_fft) - cfg.n_fft) // cfg.hop_length


def window_starts(n_frames: int, cfg: AudioConfig) -> np.ndarray:
    """The first frame of each window ``cut_windows`` cuts from ``n_frames`` log-mel frames."""
    size, hop = cfg.window_frames, cfg.window_hop_frames
    total = max(n_frames, size)
    starts = list(range(0, total - size + 1, hop))
    if starts[-1] != total - size:
        starts.append(total - size)
    return np.asarray(starts, dtype=np.int64)


def cut_windows(mel: np.ndarray, cfg: AudioConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(windows, starts)``: (n, 1, n_mels, window_frames) float32 and each window's first frame.

    Windows start every ``window_hop_frames``; a last window aligned with the end covers the tail.
    A clip shorter than one window is repeated to fill it (padding with a constant would make
    "short" a feature of its own).
    """
    size = cfg.window_frames
    if mel.shape[1] < size:
        mel = np.pad(mel, ((0, 0), (0, size - mel.shape[1])), mode="wrap")
    starts = window_starts(mel.shape[1], cfg)
    windows = np.stack([mel[:, s : s + size] for s in starts])[:, None]
    return windows.astype(np.float32), starts


@dataclass(frozen=True)
class AudioWindows:
    """A clip's windows ready for the voice model, with where they came from.

    ``start_s`` is each window's start in seconds of the *trimmed* track; ``trim_start_s`` and
    ``trimmed_s`` say where the sound began in the file and how long it lasts; ``pitch_spread``
    is the trimmed track's (``dfdc.audio.pitch``, NaN with too little voicing).
    """

    windows: np.ndarray  # (n, 1, n_mels, window_frames) float32
    start_s: np.ndarray  # (n,) float
    trim_start_s: float
    trimmed_s: float
    audio: Audio
    pitch_spread: float = float("nan")


def features_of_audio(audio: Audio, cfg: AudioConfig, path: Path = Path()) -> AudioWindows:
    """Trim, log-mel and cut a decoded track; ``AudioError`` ``silent`` when nothing is left."""
    start, stop = sound_bounds(audio.samples, audio.sample_rate, cfg)
    if stop <= start:
        peak = float(np.abs(audio.samples).max(initial=0.0))
        raise AudioError(path, "silent", f"peak {float(_db(peak * peak)):.1f} dBFS")
    sound = audio.samples[start:stop]
    windows, starts = cut_windows(log_mel(sound, audio.sample_rate, cfg), cfg)
    return AudioWindows(
        windows=windows,
        start_s=starts * cfg.hop_length / audio.sample_rate,
        trim_start_s=start / audio.sample_rate,
        trimmed_s=(stop - start) / audio.sample_rate,
        audio=audio,
        pitch_spread=pitch_spread(sound, audio.sample_rate),
    )


def audio_windows(path: Path, cfg: AudioConfig) -> AudioWindows:
    """Decode ``path``'s track and make its windows; every failure is an ``AudioError`` with a reason."""
    audio = read_audio(path, cfg.sample_rate, cfg.max_seconds)
    return features_of_audio(audio, cfg, path)
