"""Per-video audio labels from each fake's track against its original's, on generated demo clips."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from dfdc.audio.decode import read_audio
from dfdc.config import AudioConfig, LabelsConfig
from dfdc.data.audio_labels import (
    AUDIO_LABEL_COLUMNS,
    audio_difference,
    changed_spans,
    frame_difference,
    label_audio_chunk,
    raw_locations,
    read_audio_labels,
    summarize_audio,
    write_audio_labels,
)
from dfdc.data.labels import read_labels, write_labels, write_summary
from dfdc.demo.generate import DemoSpec, generate_demo_data

CFG = LabelsConfig()
AUDIO = AudioConfig()
# One fake of each voice kind and one face fake, over two originals; tiny frames, real speech.
SPEC = DemoSpec(
    chunks=1, originals_per_chunk=2, fakes_per_original=2, test_videos=0, width=96, height=72,
    duration=1.5, fps=8, kinds=("voice", "voice_gl", "voice_splice", "swap"),
)  # fmt: skip


@pytest.fixture(scope="module")
def voiced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """The generated chunk's folder and its manifest (``kind`` per video)."""
    root = tmp_path_factory.mktemp("voiced")
    manifest = generate_demo_data(root, SPEC)
    (chunk,) = manifest["chunk"].unique()
    return root / chunk, manifest


def _recode(src: Path, dst: Path, rate: int = 22_050, bit_rate: int = 64_000) -> Path:
    """``src``'s sound, unchanged, re-encoded as AAC at another rate and bitrate (no video)."""
    samples = read_audio(src, rate).samples
    with av.open(str(dst), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        stream.bit_rate = bit_rate
        for k in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(
                samples[None, k : k + 1024].copy(), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return dst


def _add_fake(chunk_dir: Path, name: str, original: str) -> None:
    path = chunk_dir / "metadata.json"
    meta = json.loads(path.read_text())
    meta[name] = {"label": "FAKE", "split": "train", "original": original}
    path.write_text(json.dumps(meta))


def _label(chunk_dir: Path) -> pd.DataFrame:
    return label_audio_chunk(chunk_dir, raw_locations([chunk_dir]), CFG, AUDIO)


def test_voice_fakes_change_their_audio_and_face_fakes_do_not(voiced) -> None:
    chunk_dir, manifest = voiced
    labels = _label(chunk_dir)
    assert list(labels.columns) == AUDIO_LABEL_COLUMNS
    assert len(labels) == len(manifest)
    kind = labels["video"].map(manifest.set_index("filename")["kind"])
    assert set(kind) >= {"voice", "voice_gl", "voice_splice", "swap", "real"}
    fakes = labels[kind != "real"]
    assert (fakes["audio_status"] == "compared").all()
    changed = fakes.set_index(kind[kind != "real"])["audio_changed"]
    assert changed.drop("swap").all(), fakes
    assert not changed["swap"].any(), fakes
    reals = labels[kind == "real"]
    assert (reals["audio_status"] == "real").all() and not reals["audio_changed"].any()
    swap = fakes.loc[kind[kind != "real"] == "swap", "audio_diff"]
    voices = fakes.loc[kind[kind != "real"] != "swap", "audio_diff"]
    assert swap.max() < CFG.audio_threshold / 2 and voices.min() > 1.5 * CFG.audio_threshold, fakes
    # where: a conversion spans the whole speech, a splice one stretch inside it, a face fake none
    spans = fakes.set_index(kind[kind != "real"])["changed_spans"]
    assert all(s == [] for s in spans[spans.index == "swap"]) and all(s == [] for s in reals["changed_spans"])
    for whole in spans[spans.index.isin(["voice", "voice_gl"])]:
        assert len(whole) == 1 and whole[0][1] - whole[0][0] > 0.8 * SPEC.duration
    for (start, stop), *rest in spans[spans.index == "voice_splice"]:
        assert not rest and 0.2 < start < stop < SPEC.duration - 0.2 and stop - start < 0.5 * SPEC.duration


def test_a_reencoded_unchanged_track_is_not_changed(voiced, tmp_path: Path) -> None:
    """Another AAC rate and bitrate, and the encoder's delay: the same speech, shifted by tens of ms."""
    src_dir, manifest = voiced
    chunk_dir = tmp_path / src_dir.name
    shutil.copytree(src_dir, chunk_dir)
    original = manifest.loc[manifest["label"] == "REAL", "filename"].iloc[0]
    _recode(chunk_dir / original, chunk_dir / "recoded.mp4")
    _add_fake(chunk_dir, "recoded.mp4", original)
    row = _label(chunk_dir).set_index("video").loc["recoded.mp4"]
    assert row["audio_status"] == "compared" and not row["audio_changed"]
    assert row["audio_diff"] < CFG.audio_threshold / 2


def test_a_voice_splice_stands_out_of_an_otherwise_unchanged_track() -> None:
    rate = AUDIO.sample_rate
    rng = np.random.default_rng(0)
    t = np.arange(3 * rate) / rate
    voice = np.sin(2 * np.pi * 150 * t) + 0.5 * np.sin(2 * np.pi * 450 * t) + 0.01 * rng.normal(size=t.size)
    voice = (voice * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2)).astype(np.float32)
    other = (np.sin(2 * np.pi * 230 * t) + 0.5 * np.sin(2 * np.pi * 1900 * t)).astype(np.float32)
    spliced = voice.copy()
    spliced[rate : 2 * rate] = other[rate : 2 * rate] * np.abs(voice[rate : 2 * rate]).max()
    assert audio_difference(spliced, voice, rate, AUDIO) > 2 * CFG.audio_threshold
    shifted = np.concatenate([np.zeros(round(0.05 * rate), np.float32), voice])  # 50 ms late
    assert audio_difference(shifted, voice, rate, AUDIO) < CFG.audio_threshold / 2
    # where it changed, in the fake's own time (a late copy of the splice: 50 ms later)
    for fake, delay in (
        (spliced, 0.0),
        (np.concatenate([np.zeros(round(0.05 * rate), np.float32), spliced]), 0.05),
    ):
        (span,) = changed_spans(frame_difference(fake, voice, rate, AUDIO), rate, AUDIO, CFG.audio_threshold)
        assert span == pytest.approx([1.0 + delay, 2.0 + delay], abs=0.06)
    assert (
        changed_spans(frame_difference(shifted, voice, rate, AUDIO), rate, AUDIO, CFG.audio_threshold) == []
    )
    assert np.isnan(audio_difference(voice, np.zeros_like(voice), rate, AUDIO))  # nothing to compare with


def test_bad_audio_gets_its_reason_and_no_label(
    voiced, tmp_path: Path, faceless_mp4: Callable[[Path], Path]
) -> None:
    src_dir, manifest = voiced
    chunk_dir = tmp_path / src_dir.name
    shutil.copytree(src_dir, chunk_dir)
    reals = manifest.loc[manifest["label"] == "REAL", "filename"]
    mute, other = reals.iloc[0], reals.iloc[1]
    faceless_mp4(chunk_dir / mute)  # the original, now without a sound track
    (chunk_dir / "broken.mp4").write_bytes(b"not a video")
    _add_fake(chunk_dir, "broken.mp4", other)
    _add_fake(chunk_dir, "orphan.mp4", "gone.mp4")
    shutil.copy(chunk_dir / other, chunk_dir / "orphan.mp4")
    labels = _label(chunk_dir).set_index("video")
    of_mute = manifest.loc[manifest["original"] == mute, "filename"]
    assert len(of_mute) and (labels.loc[of_mute, "audio_status"] == "no_audio").all()
    assert labels.loc[of_mute, "audio_changed"].isna().all()
    assert labels.loc["broken.mp4", "audio_status"] == "decode_error"
    assert labels.loc["orphan.mp4", "audio_status"] == "original_missing"
    assert labels.loc[["broken.mp4", "orphan.mp4"], "audio_changed"].isna().all()
    summary = summarize_audio(labels.reset_index(), CFG)
    assert summary["audio_not_compared"] == len(of_mute) + 2


def test_audio_labels_sit_beside_the_crop_labels_and_in_the_summary(voiced, tmp_path: Path) -> None:
    chunk_dir, manifest = voiced
    chunk = chunk_dir.name
    labels_dir = tmp_path / "labels"
    table = _label(chunk_dir)
    crop_labels = pd.DataFrame({"chunk": [chunk], "video": ["a.mp4"], "crop_idx": [0]})
    write_labels(crop_labels, labels_dir / f"{chunk}.parquet")
    write_audio_labels(table, labels_dir, chunk)
    assert sorted(p.name for p in labels_dir.iterdir()) == [f"{chunk}.audio.parquet", f"{chunk}.parquet"]
    assert read_labels(labels_dir, [chunk]).equals(crop_labels)
    back = read_audio_labels(labels_dir, [chunk])
    assert list(back.columns) == AUDIO_LABEL_COLUMNS and len(back) == len(manifest)
    assert back["audio_changed"].dtype == "boolean"
    pd.testing.assert_frame_equal(back, table)
    with pytest.raises(FileNotFoundError, match="no audio labels"):
        read_audio_labels(labels_dir, ["never_labelled"])
    summary_path = tmp_path / "reports" / "labels.json"
    write_summary({"n_fakes": 4} | summarize_audio(back, CFG), summary_path)
    summary = json.loads(summary_path.read_text())
    assert summary["audio_threshold"] == CFG.audio_threshold
    n_fakes = int((manifest["label"] == "FAKE").sum())
    assert summary["audio_changed"] == n_fakes - 1 and summary["audio_unchanged"] == 1
    assert summary["audio_not_compared"] == 0
