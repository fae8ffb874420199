"""The face-index suite on a real extraction of generated videos, then on damaged copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from dfdc.config import ValidateConfig
from dfdc.data.validation import validate_faces, write_report
from dfdc.faces.store import INDEX_FILE, VIDEOS_FILE

CFG = ValidateConfig()


@pytest.fixture
def faces(tmp_path: Path, extracted) -> Path:
    """A writable copy of the session's face index (faces_dir holding one chunk)."""
    out = tmp_path / "faces"
    shutil.copytree(extracted.faces_dir, out)
    return out


def _found(report) -> set[tuple[str, str, str]]:
    return {(v.chunk, v.file, v.rule) for v in report.violations}


def _edit(path: Path, change) -> pd.DataFrame:
    table = pd.read_parquet(path)
    table = change(table)
    table.to_parquet(path, index=False)
    return table


def test_real_extraction_passes(demo, faces: Path, tmp_path: Path) -> None:
    report = validate_faces([demo.chunk_dir], faces, CFG, docs_dir=tmp_path / "docs")
    assert report.ok, report.to_markdown()
    assert report.n_videos == len(pd.read_parquet(faces / demo.chunk_dir.name / VIDEOS_FILE))
    assert (tmp_path / "docs" / "index.html").is_file()
    summary = write_report(report, tmp_path / "out")
    assert '"fake_share": null' in summary.read_text()


def test_every_damage_is_reported_at_once(demo, faces: Path) -> None:
    chunk = demo.chunk_dir.name
    out = faces / chunk
    index = pd.read_parquet(out / INDEX_FILE)
    videos = pd.read_parquet(out / VIDEOS_FILE)
    assert len(index) >= 2 and len(videos) >= 3
    first, second = index["video"].iloc[0], index["video"].iloc[-1]
    assert first != second

    def damage_index(t: pd.DataFrame) -> pd.DataFrame:
        t = t.copy()
        t.loc[t.index[0], "prob"] = 1.5
        t.loc[t.index[-1], ["x1", "x2"]] = [5000.0, 5100.0]  # far right of a 160-px frame
        return t

    _edit(out / INDEX_FILE, damage_index)
    ok_videos = videos.loc[videos["status"] == "ok", "video"].tolist()
    silent = next(v for v in ok_videos if v not in (first, second))
    dropped = next(v for v in videos["video"] if v not in (first, second, silent))

    def damage_videos(t: pd.DataFrame) -> pd.DataFrame:
        t = t[t["video"] != dropped].copy()
        t.loc[t["video"] == silent, "n_crops"] = 0  # "ok" but nothing kept and no reason
        return t

    _edit(out / VIDEOS_FILE, damage_videos)
    report = validate_faces([demo.chunk_dir], faces, CFG)
    assert _found(report) == {
        (chunk, first, "faces_prob_range"),
        (chunk, second, "faces_box_in_frame"),
        (chunk, silent, "faces_crops_or_reason"),
        (chunk, dropped, "faces_video_recorded"),
    }
    box = next(v.detail for v in report.violations if v.rule == "faces_box_in_frame")
    assert "160x120 frame" in box  # the frame size came from the video header


def test_frame_size_columns_win_over_the_header(demo, faces: Path) -> None:
    out = faces / demo.chunk_dir.name
    _edit(out / INDEX_FILE, lambda t: t.assign(width=40, height=30))
    report = validate_faces([demo.chunk_dir], faces, CFG)
    assert {v.rule for v in report.violations} == {"faces_box_in_frame"}
    assert all("40x30 frame" in v.detail for v in report.violations)


def test_small_overhang_is_tolerated_large_is_not(demo, faces: Path) -> None:
    out = faces / demo.chunk_dir.name
    _edit(out / INDEX_FILE, lambda t: t.assign(x1=-5.0))  # 5 px of 160: 3 %
    assert validate_faces([demo.chunk_dir], faces, CFG).ok
    strict = ValidateConfig(face_box_overhang=0.0)
    assert not validate_faces([demo.chunk_dir], faces, strict).ok


def test_unreadable_index_is_a_violation(demo, faces: Path) -> None:
    out = faces / demo.chunk_dir.name
    (out / INDEX_FILE).write_bytes(b"not parquet")
    report = validate_faces([demo.chunk_dir], faces, CFG)
    assert _found(report) == {(demo.chunk_dir.name, INDEX_FILE, "faces_readable")}
