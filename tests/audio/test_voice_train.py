"""Voice targets, training on a tiny store, the checkpoint that scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfdc.audio.model import IDENTITY_HEAD, VoiceCheckpoint, VoiceNet, clip_logit
from dfdc.audio.store import chunk_dir, write_chunk
from dfdc.audio.train import (
    WindowSet,
    fit_clip_head,
    load_windows,
    score_videos,
    train_voice,
    voice_targets,
    window_targets,
)
from dfdc.config import AudioConfig, VoiceConfig

AUDIO = AudioConfig(window_s=0.5, window_hop_s=0.25, n_mels=32, width=4)


def test_voice_targets_follow_the_audio_labels() -> None:
    splits = pd.DataFrame({
        "chunk": "c", "filename": ["r.mp4", "v.mp4", "f.mp4", "u.mp4", "x.mp4"],
        "label": ["REAL", "FAKE", "FAKE", "FAKE", "FAKE"], "subset": "train",
    })  # fmt: skip
    labels = pd.DataFrame({
        "chunk": "c", "video": ["r.mp4", "v.mp4", "f.mp4", "u.mp4"],
        "audio_changed": pd.array([False, True, False, None], dtype="boolean"),
    })  # fmt: skip
    real = voice_targets(splits, labels, "real")
    assert dict(zip(real["filename"], real["target"], strict=True)) == {"r.mp4": 0, "v.mp4": 1, "f.mp4": 0}
    dropped = voice_targets(splits, labels, "drop")
    assert dict(zip(dropped["filename"], dropped["target"], strict=True)) == {"r.mp4": 0, "v.mp4": 1}


def test_voice_targets_carry_the_changed_spans() -> None:
    splits = pd.DataFrame(
        {"chunk": "c", "filename": ["v.mp4", "old.mp4"], "label": "FAKE", "subset": "train"}
    )
    labels = pd.DataFrame({
        "chunk": "c", "video": ["v.mp4", "old.mp4"], "audio_changed": pd.array([True, True], dtype="boolean"),
        "changed_spans": [[[0.5, 1.0]], []],
    })  # fmt: skip
    assert voice_targets(splits, labels)["changed_spans"].tolist() == [[[0.5, 1.0]], []]
    older = voice_targets(splits, labels.drop(columns="changed_spans"))  # labels from before spans
    assert older["target"].tolist() == [1.0, 1.0] and older["changed_spans"].isna().all()


def test_window_targets_mark_a_splice_by_its_edges() -> None:
    """3 s of sound from 0.5 s: five 1 s windows starting at 0.5, 1.0, 1.5, 2.0 and 2.47 s of the file."""
    audio, cfg = AudioConfig(), VoiceConfig()
    videos = pd.DataFrame({
        "target": [0.0, 1.0, 1.0, 1.0],
        "changed_spans": [[], [[0.5, 3.5]], [[1.3, 2.9]], []],  # real, converted throughout, spliced, unknown
        "trim_start_s": 0.5, "trimmed_s": 3.0, "windows": 5,
    })  # fmt: skip
    video_of = np.repeat(np.arange(4), 5)
    data = WindowSet([], videos, np.zeros(20, np.int64), np.arange(20), video_of)
    got = window_targets(data, audio, cfg).reshape(4, 5)
    np.testing.assert_array_equal(got[0], 0.0)
    np.testing.assert_array_equal(got[1], 1.0)
    # the splice: windows holding an edge (1.3 s, 2.9 s) are 1, windows wholly inside it are left out
    np.testing.assert_array_equal(got[2], [1.0, 1.0, np.nan, np.nan, 1.0])
    np.testing.assert_array_equal(got[3], 1.0)  # no spans known: the video's target throughout
    clear = videos.assign(changed_spans=[[], [], [[2.6, 3.0]], []])  # a short stretch near the end
    got = window_targets(WindowSet([], clear, data.chunk_of, data.row_of, video_of), audio, cfg).reshape(4, 5)
    np.testing.assert_array_equal(got[2], [0.0, 0.0, 0.0, 1.0, 1.0])  # the genuine rest is 0


def test_the_clip_head_learns_both_cues_from_the_val_clips() -> None:
    """Genuine voices; converted ones (windows high, spread normal); spliced (windows low, spread wide)."""
    rng = np.random.default_rng(0)
    n = 20
    pooled = np.concatenate([rng.normal(-2, 1, n), rng.normal(3, 1, n), rng.normal(-2, 1, n)])
    spread = np.concatenate([rng.normal(0.2, 0.05, n), rng.normal(0.2, 0.05, n), rng.normal(0.7, 0.1, n)])
    spread[:3] = np.nan  # too little voicing: the median spread
    y = np.repeat([0.0, 1.0, 1.0], n)
    head = fit_clip_head(pooled, spread, y)
    a, _, c, _, fill = head
    assert a > 0 and c > 0 and fill == pytest.approx(np.nanmedian(spread))
    z = np.array([clip_logit(np.array([p]), AUDIO, s, head) for p, s in zip(pooled, spread, strict=True)])
    assert (z[:n] < 0).mean() > 0.9 and (z[n:] > 0).mean() > 0.9  # either cue alone calls it changed
    # one class, or no spread anywhere: the pooled logit alone
    assert list(fit_clip_head(pooled, spread, np.zeros(3 * n))) == list(IDENTITY_HEAD)
    assert list(fit_clip_head(pooled, np.full(3 * n, np.nan), y)) == list(IDENTITY_HEAD)


@pytest.fixture
def tiny_store(tmp_path: Path, voice, track, faceless_mp4) -> tuple[Path, pd.DataFrame]:
    """Four genuine voices, four 'converted' ones (another pitch and tract), one video without audio."""
    src = tmp_path / "raw"
    src.mkdir()
    rows, paths = [], []
    for i in range(8):
        fake = i % 2
        f0, formants = (240.0, (900, 1500, 3000)) if fake else (120.0, (700, 1200, 2600))
        name = f"v{i}.mp4"
        paths.append(track(src / name, voice(1.0, 16_000, f0=f0, formants=formants, seed=i), rate=16_000))
        rows.append(("c", name, "FAKE" if fake else "REAL", "train" if i < 4 else "val", float(fake)))
    paths.append(faceless_mp4(src / "mute.mp4"))
    rows.append(("c", "mute.mp4", "REAL", "test", 0.0))
    write_chunk("c", paths, chunk_dir(tmp_path / "audio", "c"), AUDIO)
    return tmp_path, pd.DataFrame(rows, columns=["chunk", "filename", "label", "subset", "target"])


def test_training_writes_a_checkpoint_that_scores(tiny_store: tuple[Path, pd.DataFrame]) -> None:
    root, videos = tiny_store
    cfg = VoiceConfig(features_dir=root / "audio", checkpoint=root / "voice.pt", epochs=2, batch_size=8)
    train = load_windows(cfg.features_dir, videos[videos["subset"] == "train"], AUDIO)
    val = load_windows(cfg.features_dir, videos[videos["subset"] == "val"], AUDIO)
    seen = []
    result = train_voice(train, val, AUDIO, cfg, on_epoch=lambda epoch, m: seen.append((epoch, m)))

    assert [e for e, _ in seen] == [0, 1] and result.n_train == 4 and result.n_val == 4
    assert np.isfinite(result.val_logloss) and 0 <= result.best_epoch < 2
    checkpoint = VoiceCheckpoint.load(cfg.checkpoint)
    assert checkpoint.audio == AUDIO and checkpoint.epoch == result.best_epoch and checkpoint.trained
    model = checkpoint.build()
    assert isinstance(model, VoiceNet) and not model.training
    scores = score_videos(checkpoint, cfg.features_dir, videos)
    assert list(scores.columns) == ["chunk", "video", "subset", "voice_logit", "voice_status", "windows"]
    assert scores["voice_logit"].iloc[:8].notna().all() and (scores["windows"].iloc[:8] > 0).all()
    mute = scores.iloc[8]
    assert np.isnan(mute["voice_logit"]) and mute["voice_status"] == "no_audio" and mute["windows"] == 0


def test_training_refuses_one_class(tiny_store: tuple[Path, pd.DataFrame]) -> None:
    root, videos = tiny_store
    cfg = VoiceConfig(features_dir=root / "audio", checkpoint=root / "voice.pt", epochs=1)
    reals = videos[videos["target"] == 0]
    data = load_windows(cfg.features_dir, reals, AUDIO)
    with pytest.raises(ValueError, match="both classes"):
        train_voice(data, data, AUDIO, cfg)
