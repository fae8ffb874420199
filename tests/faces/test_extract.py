"""Extraction of a real generated chunk: files, index, resumability and failure handling."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from dfdc.faces.extract import (
    INDEX_COLUMNS,
    INDEX_FILE,
    VIDEOS_FILE,
    extract_chunk,
    fingerprint,
    load_crops,
    load_video_faces,
    read_index,
)
from dfdc.faces.video import even_indices

if TYPE_CHECKING:
    from conftest import Demo, Extracted

    from dfdc.config import ExtractConfig


def _stem(name: str) -> str:
    return Path(name).stem


def _copy_faces(extracted: Extracted, tmp_path: Path) -> tuple[Path, Path]:
    faces_dir = tmp_path / "faces"
    out_dir = faces_dir / extracted.out_dir.name
    shutil.copytree(extracted.out_dir, out_dir)
    return faces_dir, out_dir


def _mtimes(out_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out_dir.glob("*.npz"))}


# ----------------------------------------------------------------- a first run


def test_one_npz_per_video_and_both_tables(extracted: Extracted, chunk_meta: pd.DataFrame) -> None:
    out = extracted.out_dir
    assert {p.stem for p in out.glob("*.npz")} == {_stem(f) for f in chunk_meta["filename"]}
    assert (out / INDEX_FILE).is_file()
    assert (out / VIDEOS_FILE).is_file()
    assert not list(out.glob("*.tmp*"))
    videos = pd.read_parquet(out / VIDEOS_FILE)
    assert sorted(videos["video"]) == sorted(chunk_meta["filename"])
    assert (videos["chunk"] == out.name).all()
    pd.testing.assert_frame_equal(videos, extracted.statuses)


def test_statuses_agree_with_the_files(extracted: Extracted) -> None:
    statuses = extracted.statuses
    # Every video of a clean chunk is readable: ok, or no_face exactly when nothing was found.
    assert set(statuses["status"]) <= {"ok", "no_face"}
    assert (statuses["status"] == "ok").sum() >= len(statuses) // 2  # the demo's faces are found
    for row in statuses.itertuples():
        faces, _ = load_video_faces(extracted.out_dir / f"{_stem(row.video)}.npz")
        assert row.n_crops == len(faces.crops)
        assert (row.status == "no_face") == (row.n_crops == 0)
    counts = extracted.index.groupby("video").size()
    ok = statuses.set_index("video")["n_crops"]
    assert counts.to_dict() == ok[ok > 0].to_dict()


def test_index_rows_agree_with_npz_contents(
    extracted: Extracted, demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig
) -> None:
    wanted = even_indices(demo.spec.n_frames, extract_cfg.frames_per_video)
    index = extracted.index
    assert list(index.columns) == INDEX_COLUMNS
    assert len(index) > 0
    meta = chunk_meta.set_index("filename")
    fp = fingerprint(extract_cfg)
    for (video, crop_file), rows in index.groupby(["video", "crop_file"]):
        assert crop_file == f"{_stem(video)}.npz"
        faces, stored_fp = load_video_faces(extracted.out_dir / crop_file)
        assert stored_fp == fp
        assert faces.n_sampled == len(wanted)
        assert sorted(rows["crop_idx"]) == list(range(len(faces.crops)))
        for row in rows.itertuples():
            j = row.crop_idx
            assert row.frame == faces.frames[j]
            assert row.face == faces.faces[j]
            assert [row.x1, row.y1, row.x2, row.y2] == pytest.approx(faces.boxes[j].tolist())
            assert row.prob == pytest.approx(float(faces.probs[j]))
            assert row.prob >= extract_cfg.min_prob
            assert list(row.landmarks) == pytest.approx(faces.landmarks[j].tolist())
            assert row.label == meta.at[video, "label"]
            original = meta.at[video, "original"]
            if original is None:  # a REAL
                assert pd.isna(row.original)
            else:
                assert row.original == original
        assert faces.crops.shape[1:] == (extract_cfg.crop_size, extract_cfg.crop_size, 3)
        assert faces.crops.dtype == np.uint8
        assert set(faces.frames) <= set(wanted)
        assert (faces.faces < extract_cfg.max_faces).all()


def test_load_crops_returns_crops_in_row_order(extracted: Extracted) -> None:
    index = read_index(extracted.faces_dir, [extracted.out_dir.name])
    pd.testing.assert_frame_equal(index, extracted.index)
    # Shuffle so rows of one file are interleaved with others and out of crop order.
    shuffled = index.sample(frac=1.0, random_state=3)
    assert not shuffled.index.equals(index.index)
    crops = load_crops(extracted.faces_dir, shuffled)
    assert crops.shape == (len(index), *crops.shape[1:])
    for got, row in zip(crops, shuffled.itertuples(), strict=True):
        faces, _ = load_video_faces(extracted.out_dir / row.crop_file)
        assert np.array_equal(got, faces.crops[row.crop_idx])
    # Distinct crops really are distinct, so the order check above means something.
    assert len({c.tobytes() for c in crops}) > 1


def test_load_crops_of_no_rows(extracted: Extracted) -> None:
    assert len(load_crops(extracted.faces_dir, extracted.index.iloc[:0])) == 0


def test_fingerprint_ignores_device_but_not_crop_settings(extract_cfg: ExtractConfig) -> None:
    fp = fingerprint(extract_cfg)
    assert fingerprint(extract_cfg.model_copy(update={"device": "cuda"})) == fp
    for change in ({"crop_size": 48}, {"margin": 0.5}, {"frames_per_video": 5}, {"min_prob": 0.8}):
        assert fingerprint(extract_cfg.model_copy(update=change)) != fp


# ----------------------------------------------------------------- reruns


def test_rerun_with_same_config_skips_every_video(
    extracted: Extracted, demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    _, out_dir = _copy_faces(extracted, tmp_path)
    before = _mtimes(out_dir)
    # The device is not part of the crop protocol: a different one still skips.
    cfg = extract_cfg.model_copy(update={"device": "cpu"})
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, cfg)
    assert (statuses["seconds"] == 0).all()
    assert _mtimes(out_dir) == before
    pd.testing.assert_frame_equal(statuses, extracted.statuses.assign(seconds=0.0))
    pd.testing.assert_frame_equal(pd.read_parquet(out_dir / INDEX_FILE), extracted.index)


def test_changed_crop_setting_redoes_every_video(
    extracted: Extracted, demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    _, out_dir = _copy_faces(extracted, tmp_path)
    cfg = extract_cfg.model_copy(update={"crop_size": 48})
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, cfg)
    assert (statuses["seconds"] > 0).all()
    for path in out_dir.glob("*.npz"):
        faces, fp = load_video_faces(path)
        assert fp == fingerprint(cfg)
        assert faces.crops.shape[1:] == (48, 48, 3)
    # Only the crop size changed: the same faces were found in the same frames.
    new_index = pd.read_parquet(out_dir / INDEX_FILE)
    keys = ["video", "frame", "face", "x1", "y1", "x2", "y2"]
    pd.testing.assert_frame_equal(new_index[keys], extracted.index[keys])


def test_corrupt_video_is_recorded_and_the_rest_extracted(
    demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, extracted: Extracted, tmp_path: Path
) -> None:
    chunk = tmp_path / demo.chunk_dir.name
    shutil.copytree(demo.chunk_dir, chunk)
    bad = chunk_meta["filename"].iloc[0]  # first, so the loop must carry on after it
    (chunk / bad).write_bytes(np.random.default_rng(1).bytes(30_000))
    out_dir = tmp_path / "faces" / chunk.name
    statuses = extract_chunk(chunk, chunk_meta, out_dir, extract_cfg).set_index("video")
    assert statuses.at[bad, "status"] in {"decode_error", "empty"}
    assert statuses.at[bad, "n_crops"] == 0
    assert not (out_dir / f"{_stem(bad)}.npz").exists()
    others = statuses.drop(index=bad)
    expected = extracted.statuses.set_index("video").drop(index=bad)
    assert others["status"].to_dict() == expected["status"].to_dict()
    assert others["n_crops"].to_dict() == expected["n_crops"].to_dict()
    for video in others.index:
        assert (out_dir / f"{_stem(video)}.npz").is_file()
    index = pd.read_parquet(out_dir / INDEX_FILE)
    assert bad not in set(index["video"])
    assert len(index) == len(extracted.index[extracted.index["video"] != bad])


def test_missing_video_is_recorded(
    demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    chunk = tmp_path / demo.chunk_dir.name
    chunk.mkdir()
    # Only one file present; the metadata lists the whole chunk.
    present = chunk_meta["filename"].iloc[1]
    shutil.copy(demo.chunk_dir / present, chunk / present)
    statuses = extract_chunk(chunk, chunk_meta, tmp_path / "out", extract_cfg).set_index("video")
    assert (statuses.drop(index=present)["status"] == "missing").all()
    assert statuses.at[present, "status"] in {"ok", "no_face"}


def test_stale_npz_of_an_unlisted_video_is_removed(
    extracted: Extracted, demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    _, out_dir = _copy_faces(extracted, tmp_path)
    with_faces = extracted.statuses.loc[extracted.statuses["n_crops"] > 0, "video"]
    dropped = with_faces.iloc[0]
    foreign = out_dir / "zzzzzzzzzz.npz"
    shutil.copy(out_dir / f"{_stem(dropped)}.npz", foreign)
    remaining = chunk_meta[chunk_meta["filename"] != dropped]
    statuses = extract_chunk(demo.chunk_dir, remaining, out_dir, extract_cfg)
    assert not foreign.exists()
    assert not (out_dir / f"{_stem(dropped)}.npz").exists()
    assert {p.stem for p in out_dir.glob("*.npz")} == {_stem(f) for f in remaining["filename"]}
    assert dropped not in set(statuses["video"])
    index = pd.read_parquet(out_dir / INDEX_FILE)
    assert set(index["video"]) == set(extracted.index["video"]) - {dropped}


def test_interrupted_write_is_not_a_finished_video(
    extracted: Extracted, demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    _, out_dir = _copy_faces(extracted, tmp_path)
    video = extracted.statuses.loc[extracted.statuses["n_crops"] > 0, "video"].iloc[0]
    target = out_dir / f"{_stem(video)}.npz"
    # A run killed between writing the temporary file and renaming it leaves this behind.
    leftover = out_dir / f"tmp{_stem(video)[:4]}x.tmp.npz"
    target.replace(leftover)
    before = _mtimes(out_dir)
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, extract_cfg).set_index("video")
    assert statuses.at[video, "seconds"] > 0  # redone
    assert (statuses.drop(index=video)["seconds"] == 0).all()  # the others skipped
    assert target.is_file()
    assert not leftover.exists()
    after = _mtimes(out_dir)
    assert {k: v for k, v in after.items() if k != target.name} == {
        k: v for k, v in before.items() if k != leftover.name
    }
    index = pd.read_parquet(out_dir / INDEX_FILE)
    assert len(index) == len(extracted.index)  # no duplicate rows from the leftover
    assert not index["crop_file"].str.contains("tmp").any()


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "empty",
        "random",
    ],
)
def test_corrupt_npz_is_redone_not_trusted(
    extracted: Extracted,
    demo: Demo,
    chunk_meta: pd.DataFrame,
    extract_cfg: ExtractConfig,
    tmp_path: Path,
    damage: str,
) -> None:
    """The module promises "a corrupt leftover is redone, not trusted"."""
    _, out_dir = _copy_faces(extracted, tmp_path)
    video = extracted.statuses.loc[extracted.statuses["n_crops"] > 0, "video"].iloc[0]
    target = out_dir / f"{_stem(video)}.npz"
    data = target.read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "random": np.random.default_rng(2).bytes(len(data)),
    }[damage]
    target.write_bytes(damaged)
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, extract_cfg).set_index("video")
    assert statuses.at[video, "seconds"] > 0
    assert statuses.at[video, "status"] == "ok"
    assert target.read_bytes() != damaged
    faces, fp = load_video_faces(target)
    assert fp == fingerprint(extract_cfg)
    assert len(faces.crops) == extracted.statuses.set_index("video").at[video, "n_crops"]


def test_empty_chunk_gives_empty_tables(extract_cfg: ExtractConfig, tmp_path: Path) -> None:
    chunk = tmp_path / "dfdc_train_part_9"
    chunk.mkdir()
    videos = pd.DataFrame(columns=["filename", "label", "original"])
    statuses = extract_chunk(chunk, videos, tmp_path / "out", extract_cfg)
    assert len(statuses) == 0
    assert len(pd.read_parquet(tmp_path / "out" / INDEX_FILE)) == 0
