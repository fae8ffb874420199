"""Voice targets, training on a tiny store, the checkpoint that scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfdc.audio.model import VoiceCheckpoint, VoiceNet
from dfdc.audio.store import chunk_dir, write_chunk
from dfdc.audio.train import load_windows, score_videos, train_voice, voice_targets
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
