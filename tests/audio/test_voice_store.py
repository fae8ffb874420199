"""The audio feature store: windows round-trip, reasons as rows, unfinished chunks redone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfdc.audio.features import audio_windows
from dfdc.audio.store import (
    DATA_FILE,
    INDEX_FILE,
    chunk_finished,
    open_chunk,
    summary_line,
    write_chunk,
)
from dfdc.config import AudioConfig

CFG = AudioConfig(window_s=0.5, window_hop_s=0.25)


@pytest.fixture
def clips(tmp_path: Path, voice, track, faceless_mp4) -> list[Path]:
    src = tmp_path / "src"
    src.mkdir()
    return [
        track(src / "speaks.mp4", voice(1.2, 16_000), rate=16_000, video_seconds=1.2),
        track(src / "other.mp4", voice(0.8, 16_000, f0=210.0, seed=3), rate=16_000),
        faceless_mp4(src / "mute.mp4"),  # no audio stream
        track(src / "silent.mp4", np.zeros(16_000, np.float32), rate=16_000),
    ]


def test_store_round_trips_windows_and_records_reasons(tmp_path: Path, clips: list[Path]) -> None:
    out = tmp_path / "audio" / "part_0"
    index = write_chunk("part_0", clips, out, CFG)

    assert index["status"].tolist() == ["ok", "ok", "no_audio", "silent"]
    assert index["windows"].tolist()[2:] == [0, 0]
    stored = open_chunk(out, CFG)
    for row, path in enumerate(clips[:2]):
        expected = audio_windows(path, CFG)
        got = stored.of(row)
        assert got.shape == expected.windows.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected.windows, atol=0.05)  # float16 on disk
        assert index["trim_start_s"].iat[row] == pytest.approx(expected.trim_start_s)
    assert "2 with audio (1 no_audio, 1 silent)" in summary_line("part_0", index, out)
    assert open_chunk(out, CFG).index["video"].tolist() == [p.name for p in clips]  # in input order


def test_unfinished_chunk_is_redone_and_finished_one_kept(tmp_path: Path, clips: list[Path]) -> None:
    out = tmp_path / "part_0"
    names = [p.name for p in clips]
    assert not chunk_finished(out, names, CFG)
    write_chunk("part_0", clips, out, CFG)
    assert chunk_finished(out, names, CFG)
    assert not chunk_finished(out, names[:2], CFG)  # another list of videos
    assert not chunk_finished(out, names, CFG.model_copy(update={"n_mels": 32}))  # other features
    assert chunk_finished(out, names, CFG.model_copy(update={"width": 8}))  # the model's shape is no feature

    (out / INDEX_FILE).unlink()  # killed before its index was written: half a data file
    with (out / DATA_FILE).open("ab") as data:
        data.write(b"\0" * 100)
    assert not chunk_finished(out, names, CFG)
    index = write_chunk("part_0", clips, out, CFG)
    assert chunk_finished(out, names, CFG)
    assert (out / DATA_FILE).stat().st_size == index["windows"].sum() * CFG.n_mels * CFG.window_frames * 2
    with pytest.raises(ValueError, match="other audio settings"):
        open_chunk(out, CFG.model_copy(update={"n_mels": 32}))
