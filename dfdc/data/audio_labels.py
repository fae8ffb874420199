"""Per-video audio labels: did a fake's voice change, from its difference with the original's track.

DFDC fakes may have the face swapped, the voice swapped, or both, and all are labelled FAKE
with no modality. Face changes are found crop by crop (``dfdc.data.labels``); voice changes
are found the way DFDC participants found them: by comparing each fake's sound track with its
original's. The two tracks are decoded at the voice branch's rate, aligned (encoder delay
and re-encoding shift the same speech by a few milliseconds), and compared as log-mel
spectrograms over short segments where the original has sound; the largest segment
difference is the video's ``audio_diff``, so a spliced stretch stands out as much as a
voice converted throughout. This is the table the voice model's training reads
(:func:`read_audio_labels`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd

from dfdc.audio.decode import AudioError, read_audio
from dfdc.audio.features import log_mel
from dfdc.config import AudioConfig, LabelsConfig
from dfdc.data.labels import write_labels
from dfdc.data.metadata import read_chunks

AUDIO_LABEL_COLUMNS = [
    "chunk", "video", "original", "audio_diff", "audio_changed", "audio_status", "changed_spans",
]  # fmt: skip
# audio_status: "real" (a REAL video: audio_changed False), "compared" (audio_changed decided by
# audio_diff), "original_missing" (the original's file is not in the dataset), or the
# ``AudioError`` reason of whichever track could not be used (no_audio, empty_audio,
# audio_decode_error, decode_error, missing; "silent": the original has no sound to compare).
# audio_changed is missing (<NA>) whenever the status is neither "real" nor "compared".
# changed_spans: [[start_s, stop_s], ...] in the fake's own track where its voice changed (empty
# unless audio_changed): a voice converted throughout spans the whole sound, a splice one stretch.
AUDIO_SUFFIX = ".audio.parquet"  # data/labels/<chunk>.audio.parquet, beside <chunk>.parquet
MAX_LAG_S = 0.1  # the same speech may be shifted by up to this much (encoder delay, re-encoding)
SEGMENT_S = 0.5  # the difference is the largest over segments this long, half a segment apart
SPAN_SMOOTH_S = 0.1  # changed stretches: the frame difference averaged over this ...
SPAN_GAP_S = 0.4  # ... stretches closer than this joined (a pause inside a phrase) ...
SPAN_MIN_S = 0.1  # ... and shorter ones dropped
_SOUND_SHARE = 0.5  # a segment counts when at least this share of its frames has sound
_BAND_RANGE_DB = 30.0  # per frame, only the original's bands within this of its loudest are compared


def audio_labels_file(labels_dir: Path, chunk: str) -> Path:
    """Where one chunk's audio labels live (inside the labels stage's output folder)."""
    return Path(labels_dir) / f"{chunk}{AUDIO_SUFFIX}"


def best_lag(fake: np.ndarray, original: np.ndarray, max_lag: int) -> int:
    """The shift ``k`` (``|k| <= max_lag``) best correlating ``fake[t + k]`` with ``original[t]``."""
    n = len(fake) + len(original)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(fake, size) * np.conj(np.fft.rfft(original, size)), size)
    lags = np.arange(-max_lag, max_lag + 1)
    return int(lags[np.argmax(corr[lags % size])])


def aligned_tracks(fake: np.ndarray, original: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Both tracks shifted onto each other (``fake[t + lag]`` on ``original[t]``), cut to their overlap."""
    fake = fake[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, fake.dtype), fake])
    n = min(len(fake), len(original))
    return fake[:n], original[:n]


def frame_difference(
    fake: np.ndarray, original: np.ndarray, sample_rate: int, cfg: AudioConfig
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """``(per_frame, sound, lag)``: the fake's dB difference from its original per log-mel frame.

    Both are aligned, turned into log-mel (``dfdc.audio.features.log_mel``: each minus its own
    mean, so a gain is no difference), and a global level offset between the two is removed
    (the median difference over the original's sound). Only the original's loud bands count
    (within ``_BAND_RANGE_DB`` of its loudest band in that frame): the quiet ones are where a
    re-encoder's quantisation noise and low-pass show. ``sound`` marks the frames where the
    original has sound (power within ``cfg.silence_rel_db`` of its loudest and above
    ``cfg.silence_floor_dbfs``); frame ``i`` of the fake's own track starts at sample
    ``i * hop_length + lag``. None when the original is too short or has no sound.
    """
    lag = best_lag(fake.astype(np.float64), original.astype(np.float64), round(MAX_LAG_S * sample_rate))
    fake, original = aligned_tracks(fake, original, lag)
    if len(original) < cfg.n_fft:
        return None
    hop = cfg.hop_length
    a, b = log_mel(fake, sample_rate, cfg), log_mel(original, sample_rate, cfg)
    energy = np.concatenate([[0.0], np.cumsum(original.astype(np.float64) ** 2)])
    starts = np.arange(b.shape[1]) * hop
    power = 10 * np.log10(np.maximum((energy[starts + cfg.n_fft] - energy[starts]) / cfg.n_fft, 1e-10))
    sound = (power > power.max() + cfg.silence_rel_db) & (power > cfg.silence_floor_dbfs)
    if not sound.any():
        return None
    diff = a - b
    diff -= np.median(diff[:, sound])
    loud = b >= b.max(axis=0, keepdims=True) - _BAND_RANGE_DB
    return (np.abs(diff) * loud).sum(axis=0) / loud.sum(axis=0), sound, lag


Compared = tuple[np.ndarray, np.ndarray, int]  # frame_difference's (per_frame, sound, lag)


def largest_difference(compared: Compared | None, sample_rate: int, cfg: AudioConfig) -> float:
    """The video's ``audio_diff`` (dB): the largest mean frame difference over ``SEGMENT_S`` segments.

    Segments are half a segment apart and count when enough of their frames have sound; the
    mean is over those frames. NaN when nothing was compared.
    """
    if compared is None:
        return float("nan")
    per_frame, sound, _ = compared
    size = min(max(1, round(SEGMENT_S * sample_rate / cfg.hop_length)), len(per_frame))
    values = [
        float(per_frame[s : s + size][sound[s : s + size]].mean())
        for s in range(0, len(per_frame) - size + 1, max(1, size // 2))
        if sound[s : s + size].sum() >= _SOUND_SHARE * size
    ]
    # speech too sparse for any segment to have enough of it: all its sound at once
    return max(values) if values else float(per_frame[sound].mean())


def changed_spans(
    compared: Compared | None, sample_rate: int, cfg: AudioConfig, threshold: float
) -> list[list[float]]:
    """``[[start_s, stop_s], ...]`` of the fake's own track where its voice is not the original's.

    The frame difference of the sound frames, averaged over ``SPAN_SMOOTH_S``, above
    ``threshold``; stretches less than ``SPAN_GAP_S`` apart are joined (a pause inside a
    spliced phrase is no edge), and ones shorter than ``SPAN_MIN_S`` dropped. The voice model
    learns from the edges of these stretches (``dfdc.audio.train``).
    """
    if compared is None:
        return []
    per_frame, sound, lag = compared
    frame_s = cfg.hop_length / sample_rate
    kernel = np.ones(max(1, round(SPAN_SMOOTH_S / frame_s)))
    weight = np.convolve(sound.astype(float), kernel, "same")
    smooth = np.convolve(np.where(sound, per_frame, 0.0), kernel, "same") / np.maximum(weight, 1e-9)
    changed = np.flatnonzero(sound & (smooth > threshold))
    if changed.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(changed) > max(1, round(SPAN_GAP_S / frame_s)))
    firsts = changed[np.concatenate([[0], breaks + 1])]
    lasts = changed[np.concatenate([breaks, [changed.size - 1]])]
    centre = (
        cfg.n_fft / 2 + lag
    ) / sample_rate  # frame i's centre in the fake's own time: i * frame_s + this
    return [
        [round(max(0.0, float(first * frame_s + centre)), 3), round(float(last * frame_s + centre), 3)]
        for first, last in zip(firsts, lasts, strict=True)
        if (last - first + 1) * frame_s >= SPAN_MIN_S
    ]


def audio_difference(fake: np.ndarray, original: np.ndarray, sample_rate: int, cfg: AudioConfig) -> float:
    """:func:`largest_difference` of two tracks; NaN when the original has no sound."""
    return largest_difference(frame_difference(fake, original, sample_rate, cfg), sample_rate, cfg)


def _row(
    chunk: str,
    video: str,
    original: str | None,
    diff: float,
    status: str,
    cfg: LabelsConfig,
    spans: list[list[float]] | None = None,
) -> dict:
    changed = bool(diff > cfg.audio_threshold) if status == "compared" else pd.NA
    return {"chunk": chunk, "video": video, "original": original, "audio_diff": diff,
            "audio_changed": changed, "audio_status": status,
            "changed_spans": (spans or []) if changed is True else []}  # fmt: skip


def label_audio_family(
    original_path: Path | None,
    fakes: Sequence[tuple[str, str, str, Path]],
    cfg: LabelsConfig,
    audio: AudioConfig,
) -> list[dict]:
    """One row per fake ``(chunk, video, original, path)`` of one original, decoded once for all of them."""
    nan = float("nan")
    if original_path is None:
        return [_row(c, v, o, nan, "original_missing", cfg) for c, v, o, _ in fakes]
    try:
        source = read_audio(original_path, audio.sample_rate, audio.max_seconds).samples
    except AudioError as err:
        return [_row(c, v, o, nan, err.reason, cfg) for c, v, o, _ in fakes]
    rows = []
    for chunk, video, original, path in fakes:
        try:
            track = read_audio(path, audio.sample_rate, audio.max_seconds).samples
        except AudioError as err:
            rows.append(_row(chunk, video, original, nan, err.reason, cfg))
            continue
        compared = frame_difference(track, source, audio.sample_rate, audio)
        diff = largest_difference(compared, audio.sample_rate, audio)
        spans = changed_spans(compared, audio.sample_rate, audio, cfg.audio_threshold)
        status = "silent" if np.isnan(diff) else "compared"
        rows.append(_row(chunk, video, original, diff, status, cfg, spans))
    return rows


def raw_locations(chunk_dirs: Sequence[Path]) -> dict[str, Path]:
    """Every listed video's file that exists, by name, across ``chunk_dirs`` (originals may be in others)."""
    meta = read_chunks(chunk_dirs)
    return {name: path for name, path in zip(meta["filename"], meta["path"], strict=True) if path.is_file()}


def label_audio_chunk(
    chunk_dir: Path, locations: dict[str, Path], cfg: LabelsConfig, audio: AudioConfig
) -> pd.DataFrame:
    """Audio labels of every listed video of one chunk (see :data:`AUDIO_LABEL_COLUMNS`).

    Fakes are compared family by family (an original and its fakes) in ``cfg.workers`` threads,
    so memory holds a few families' tracks at a time; a fake whose own file is gone gets ``missing``.
    """
    chunk_dir = Path(chunk_dir)
    meta = read_chunks([chunk_dir])
    chunk = chunk_dir.name
    rows = [
        _row(chunk, v, None, float("nan"), "real", cfg) | {"audio_changed": False}
        for v in meta.loc[meta["label"] == "REAL", "filename"]
    ]
    fakes = meta[meta["label"] == "FAKE"]
    families = [
        (
            locations.get(original),
            list(zip(repeat(chunk), group["filename"], repeat(original), group["path"])),
        )
        for original, group in fakes.groupby("original", dropna=False)
    ]
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        for family in pool.map(lambda f: label_audio_family(*f, cfg, audio), families):
            rows += family
    table = pd.DataFrame(rows, columns=AUDIO_LABEL_COLUMNS)
    table["audio_diff"] = table["audio_diff"].astype(np.float64)
    table["audio_changed"] = table["audio_changed"].astype("boolean")
    return table.sort_values("video", ignore_index=True)


def summarize_audio(table: pd.DataFrame, cfg: LabelsConfig) -> dict[str, float]:
    """Flat figures for ``reports/labels.json``: fakes whose voice changed, did not, or was not compared."""
    fakes = table[table["audio_status"] != "real"]
    changed = fakes["audio_changed"].astype("boolean")
    return {
        "audio_threshold": cfg.audio_threshold,
        "audio_changed": int((changed == True).sum()),  # noqa: E712 (nullable: NA is neither)
        "audio_unchanged": int((changed == False).sum()),  # noqa: E712
        "audio_not_compared": int(changed.isna().sum()),
    }


def write_audio_labels(table: pd.DataFrame, labels_dir: Path, chunk: str) -> Path:
    """Write one chunk's audio labels (atomically, as the crop labels)."""
    path = audio_labels_file(labels_dir, chunk)
    write_labels(table, path)
    return path


def read_audio_labels(labels_dir: Path, chunks: Iterable[str]) -> pd.DataFrame:
    """Audio labels of several chunks (see :data:`AUDIO_LABEL_COLUMNS`); an unlabelled chunk is an error."""
    paths = [audio_labels_file(labels_dir, c) for c in chunks]
    if missing := [p for p in paths if not p.is_file()]:
        raise FileNotFoundError(f"{missing[0]}: no audio labels for this chunk; run `dfdc labels` first")
    frames = [pd.read_parquet(p) for p in paths]
    if not frames:
        return pd.DataFrame(columns=AUDIO_LABEL_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    table["audio_changed"] = table["audio_changed"].astype("boolean")
    if "changed_spans" not in table:  # written before spans were: none known
        table["changed_spans"] = [[] for _ in range(len(table))]
    # parquet gives arrays of arrays back: the lists they were written as
    table["changed_spans"] = [
        [[float(v) for v in span] for span in spans] for spans in table["changed_spans"]
    ]
    return table
