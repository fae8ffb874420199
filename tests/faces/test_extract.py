"""Extraction of a real generated chunk: files, index, resumability and failure handling."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from dfdc.config import ExtractConfig
from dfdc.faces import store
from dfdc.faces.detect import Face
from dfdc.faces.extract import _tracked_hits, extract_chunk
from dfdc.faces.store import (
    INDEX_COLUMNS,
    INDEX_FILE,
    VIDEOS_FILE,
    StoredCrops,
    protocol_fingerprint,
    read_crop,
    read_index,
    read_record,
    read_video_crops,
    video_digest,
    video_file,
    video_fingerprint,
)
from dfdc.faces.video import even_indices

if TYPE_CHECKING:
    from conftest import Demo, Extracted


def _copy_faces(extracted: Extracted, tmp_path: Path) -> tuple[Path, Path]:
    faces_dir = tmp_path / "faces"
    out_dir = faces_dir / extracted.out_dir.name
    shutil.copytree(extracted.out_dir, out_dir)
    return faces_dir, out_dir


def _mtimes(out_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out_dir.glob(f"*{store.SUFFIX}"))}


def _expected_fp(cfg: ExtractConfig, video: Path) -> str:
    """The fingerprint a stored video must carry: the protocol and its input file's digest."""
    return video_fingerprint(protocol_fingerprint(cfg), video_digest(video))


# ----------------------------------------------------------------- a first run


def test_one_store_file_per_video_and_both_tables(extracted: Extracted, chunk_meta: pd.DataFrame) -> None:
    out = extracted.out_dir
    files = {video_file(out, f).name for f in chunk_meta["filename"]}
    assert {p.name for p in store.stored_files(out)} == files
    # Nothing else: no temporary leftovers, no files of another format.
    assert {p.name for p in out.iterdir()} == files | {INDEX_FILE, VIDEOS_FILE}
    videos = pd.read_parquet(out / VIDEOS_FILE)
    assert sorted(videos["video"]) == sorted(chunk_meta["filename"])
    assert (videos["chunk"] == out.name).all()
    assert "seconds" not in videos.columns  # nothing run-dependent is stored
    pd.testing.assert_frame_equal(videos, extracted.statuses.drop(columns="seconds"))
    assert "seconds" in extracted.statuses.columns  # the returned table keeps timings for reports


def test_each_video_file_is_a_plain_zip_of_images_and_its_record(
    extracted: Extracted, chunk_meta: pd.DataFrame
) -> None:
    for name in chunk_meta["filename"]:
        path = video_file(extracted.out_dir, name)
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None
            infos = archive.infolist()
            record = read_record(path)
            assert [i.filename for i in infos] == [f"{j:04d}.jpg" for j in range(len(record.frames))] + [
                store.RECORD
            ]
            assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)  # seekable crops
            assert json.loads(archive.read(store.RECORD))["fingerprint"] == record.fingerprint
            for j, info in enumerate(infos[:-1]):
                data = archive.read(info)
                assert data[:3] == b"\xff\xd8\xff"  # JPEG
                # The record's offset and length point at exactly this member's bytes.
                assert len(data) == record.sizes[j]
                with path.open("rb") as f:
                    f.seek(int(record.offsets[j]))
                    assert f.read(int(record.sizes[j])) == data


def test_statuses_agree_with_the_files(extracted: Extracted) -> None:
    statuses = extracted.statuses
    # Every video of a clean chunk is readable: ok, or no_face exactly when nothing was found.
    assert set(statuses["status"]) <= {"ok", "no_face"}
    assert (statuses["status"] == "ok").sum() >= len(statuses) // 2  # the demo's faces are found
    for row in statuses.itertuples():
        path = video_file(extracted.out_dir, row.video)
        record = read_record(path)
        assert row.n_crops == len(record.frames) == len(read_video_crops(path))
        assert row.n_people == len(set(record.persons.tolist()))
        assert (row.width, row.height, row.n_frames) == (record.width, record.height, record.n_frames)
        assert row.fingerprint == record.fingerprint
        assert (row.status == "no_face") == (row.n_crops == 0)
    counts = extracted.index.groupby("video").size()
    ok = statuses.set_index("video")["n_crops"]
    assert counts.to_dict() == ok[ok > 0].to_dict()


def test_index_rows_agree_with_the_records(
    extracted: Extracted, demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig
) -> None:
    wanted = even_indices(demo.spec.n_frames, extract_cfg.frames_per_video)
    index = extracted.index
    assert list(index.columns) == INDEX_COLUMNS
    assert len(index) > 0
    meta = chunk_meta.set_index("filename")
    fps = set()
    for (video, crop_file), rows in index.groupby(["video", "crop_file"]):
        path = video_file(extracted.out_dir, video)
        assert crop_file == path.name
        record = read_record(path)
        assert record.fingerprint == _expected_fp(extract_cfg, demo.chunk_dir / video)
        fps.add(record.fingerprint)
        assert record.n_sampled == len(wanted)
        assert record.crop_format == extract_cfg.crop_format
        assert sorted(rows["crop_idx"]) == list(range(len(record.frames)))
        for row in rows.itertuples():
            j = row.crop_idx
            assert row.fingerprint == record.fingerprint
            assert row.frame == record.frames[j]
            assert row.face == record.faces[j]
            assert row.person == record.persons[j]
            assert row.detected == record.detected[j]
            assert [row.x1, row.y1, row.x2, row.y2] == pytest.approx(record.boxes[j].tolist())
            assert row.prob == pytest.approx(float(record.probs[j]))
            assert row.prob >= extract_cfg.min_prob
            assert list(row.landmarks) == pytest.approx(record.landmarks[j].tolist())
            assert (row.crop_offset, row.crop_bytes) == (record.offsets[j], record.sizes[j])
            crop = read_crop(path, row.crop_offset, row.crop_bytes)
            assert crop.shape == (extract_cfg.crop_size, extract_cfg.crop_size, 3)
            assert crop.dtype == np.uint8
            assert row.label == meta.at[video, "label"]
            original = meta.at[video, "original"]
            if original is None:  # a REAL
                assert pd.isna(row.original)
            else:
                assert row.original == original
        assert set(record.frames.tolist()) <= set(wanted)
        assert (record.faces < extract_cfg.max_faces).all()
    # Each video carries its own input's digest: distinct files, distinct fingerprints.
    assert len(fps) == index["video"].nunique()


def test_stored_crops_return_crops_in_row_order(extracted: Extracted) -> None:
    index = read_index(extracted.faces_dir, [extracted.out_dir.name])
    pd.testing.assert_frame_equal(index, extracted.index)
    # Shuffle so rows of one file are interleaved with others and out of crop order.
    shuffled = index.sample(frac=1.0, random_state=3)
    assert not shuffled.index.equals(index.index)
    stored = StoredCrops(extracted.faces_dir, shuffled)
    assert len(stored) == len(index)
    crops = stored[:]
    assert crops.shape == (len(index), *crops.shape[1:])
    by_file = {f: read_video_crops(extracted.out_dir / f) for f in index["crop_file"].unique()}
    for i, (got, row) in enumerate(zip(crops, shuffled.itertuples(), strict=True)):
        assert np.array_equal(got, by_file[row.crop_file][row.crop_idx])
        assert np.array_equal(stored[i], got)
    # Distinct crops really are distinct, so the order check above means something.
    assert len({c.tobytes() for c in crops}) > 1


def test_stored_crops_of_no_rows(extracted: Extracted) -> None:
    stored = StoredCrops(extracted.faces_dir, extracted.index.iloc[:0])
    assert len(stored) == 0
    assert len(stored[:]) == 0


def test_fingerprint_ignores_how_it_runs_but_not_crop_settings(
    extract_cfg: ExtractConfig, demo: Demo, chunk_meta: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp = protocol_fingerprint(extract_cfg)
    for run in ({"device": "cuda"}, {"workers": 7}, {"dask_address": "tcp://x:8786"}, {"video_retries": 3}):
        assert protocol_fingerprint(extract_cfg.model_copy(update=run)) == fp
    changes = (
        {"crop_size": 48}, {"margin": 0.5}, {"frames_per_video": 5}, {"min_prob": 0.8},
        {"crop_format": "png"}, {"jpeg_quality": 90}, {"reuse_originals": True},
    )  # fmt: skip
    for change in changes:
        assert protocol_fingerprint(extract_cfg.model_copy(update=change)) != fp
    monkeypatch.setattr(store, "CROP_CODE_VERSION", store.CROP_CODE_VERSION + 1)
    assert protocol_fingerprint(extract_cfg) != fp
    # A video's fingerprint is the protocol and its input file: other bytes, another fingerprint.
    a, b = (demo.chunk_dir / f for f in chunk_meta["filename"].iloc[:2])
    assert video_digest(a) != video_digest(b)
    assert video_fingerprint(fp, video_digest(a)) != video_fingerprint(fp, video_digest(b))


# ----------------------------------------------------------------- reruns


def test_rerun_with_same_config_skips_every_video(
    extracted: Extracted, demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    _, out_dir = _copy_faces(extracted, tmp_path)
    before = _mtimes(out_dir)
    tables = {f: (out_dir / f).read_bytes() for f in (INDEX_FILE, VIDEOS_FILE)}
    # The device is not part of the crop protocol: a different one still skips.
    cfg = extract_cfg.model_copy(update={"device": "cuda"})
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, cfg)
    assert (statuses["seconds"] == 0).all()
    assert _mtimes(out_dir) == before
    pd.testing.assert_frame_equal(statuses, extracted.statuses.assign(seconds=0.0))
    pd.testing.assert_frame_equal(pd.read_parquet(out_dir / INDEX_FILE), extracted.index)
    # The rewritten tables hold no timings: byte for byte what the first run wrote.
    assert {f: (out_dir / f).read_bytes() for f in tables} == tables


def test_changed_crop_setting_redoes_every_video(
    extracted: Extracted, demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    _, out_dir = _copy_faces(extracted, tmp_path)
    cfg = extract_cfg.model_copy(update={"crop_size": 48})
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, cfg)
    assert (statuses["seconds"] > 0).all()
    files = store.stored_files(out_dir)
    assert len(files) == len(chunk_meta)
    for name in chunk_meta["filename"]:
        path = video_file(out_dir, name)
        record = read_record(path)
        assert record.fingerprint == _expected_fp(cfg, demo.chunk_dir / name)
        assert record.fingerprint != read_record(video_file(extracted.out_dir, name)).fingerprint
        crops = read_video_crops(path)
        if len(record.frames):
            assert crops.shape[1:] == (48, 48, 3)
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
    assert statuses.at[bad, "fingerprint"] == ""
    assert not video_file(out_dir, bad).exists()
    others = statuses.drop(index=bad)
    expected = extracted.statuses.set_index("video").drop(index=bad)
    assert others["status"].to_dict() == expected["status"].to_dict()
    assert others["n_crops"].to_dict() == expected["n_crops"].to_dict()
    for video in others.index:
        assert video_file(out_dir, video).is_file()
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
    out_dir = tmp_path / "out"
    statuses = extract_chunk(chunk, chunk_meta, out_dir, extract_cfg).set_index("video")
    assert (statuses.drop(index=present)["status"] == "missing").all()
    assert statuses.at[present, "status"] in {"ok", "no_face"}
    assert [p.name for p in store.stored_files(out_dir)] == [video_file(out_dir, present).name]


def test_stale_file_of_an_unlisted_video_is_removed(
    extracted: Extracted, demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    _, out_dir = _copy_faces(extracted, tmp_path)
    with_faces = extracted.statuses.loc[extracted.statuses["n_crops"] > 0, "video"]
    dropped = with_faces.iloc[0]
    foreign = out_dir / f"zzzzzzzzzz{store.SUFFIX}"
    shutil.copy(video_file(out_dir, dropped), foreign)
    remaining = chunk_meta[chunk_meta["filename"] != dropped]
    statuses = extract_chunk(demo.chunk_dir, remaining, out_dir, extract_cfg)
    assert not foreign.exists()
    assert not video_file(out_dir, dropped).exists()
    kept = {video_file(out_dir, f).name for f in remaining["filename"]}
    assert {p.name for p in store.stored_files(out_dir)} == kept
    assert dropped not in set(statuses["video"])
    index = pd.read_parquet(out_dir / INDEX_FILE)
    assert set(index["video"]) == set(extracted.index["video"]) - {dropped}


def test_interrupted_write_is_not_a_finished_video(
    extracted: Extracted, demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    _, out_dir = _copy_faces(extracted, tmp_path)
    video = extracted.statuses.loc[extracted.statuses["n_crops"] > 0, "video"].iloc[0]
    target = video_file(out_dir, video)
    # A run killed between writing the temporary file and renaming it leaves this behind
    # (the name ``store.write_video`` gives its temporary file).
    leftover = out_dir / f".{target.stem[:4]}x{store.SUFFIX}.tmp"
    target.replace(leftover)
    before = _mtimes(out_dir)
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, extract_cfg).set_index("video")
    assert statuses.at[video, "seconds"] > 0  # redone
    assert (statuses.drop(index=video)["seconds"] == 0).all()  # the others skipped
    assert target.is_file()
    assert read_record(target).fingerprint == _expected_fp(extract_cfg, demo.chunk_dir / video)
    assert target.read_bytes() == video_file(extracted.out_dir, video).read_bytes()
    after = _mtimes(out_dir)
    assert {k: v for k, v in after.items() if k != target.name} == before
    index = pd.read_parquet(out_dir / INDEX_FILE)
    assert len(index) == len(extracted.index)  # no duplicate rows from the leftover
    assert set(index["crop_file"]) == set(extracted.index["crop_file"])
    assert leftover not in store.stored_files(out_dir)
    assert not leftover.exists()  # removed at the end of the chunk, not left in the DVC output


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "empty",
        "random",
        "no_record",
    ],
)
def test_corrupt_file_is_redone_not_trusted(
    extracted: Extracted,
    demo: Demo,
    chunk_meta: pd.DataFrame,
    extract_cfg: ExtractConfig,
    tmp_path: Path,
    damage: str,
) -> None:
    """The store promises "a corrupt leftover is redone, not trusted"."""
    _, out_dir = _copy_faces(extracted, tmp_path)
    video = extracted.statuses.loc[extracted.statuses["n_crops"] > 0, "video"].iloc[0]
    target = video_file(out_dir, video)
    data = target.read_bytes()
    if damage == "no_record":  # a valid zip of the crops without its record
        with zipfile.ZipFile(target) as src:
            members = {i.filename: src.read(i) for i in src.infolist() if i.filename != store.RECORD}
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
            for member, content in members.items():
                dst.writestr(member, content)
        damaged = target.read_bytes()
    else:
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
    record = read_record(target)
    assert record.fingerprint == _expected_fp(extract_cfg, demo.chunk_dir / video)
    assert len(record.frames) == extracted.statuses.set_index("video").at[video, "n_crops"]
    assert target.read_bytes() == data  # the same video redone gives the same bytes


def test_empty_chunk_gives_empty_tables(extract_cfg: ExtractConfig, tmp_path: Path) -> None:
    chunk = tmp_path / "dfdc_train_part_9"
    chunk.mkdir()
    videos = pd.DataFrame(columns=["filename", "label", "original"])
    statuses = extract_chunk(chunk, videos, tmp_path / "out", extract_cfg)
    assert len(statuses) == 0
    index = pd.read_parquet(tmp_path / "out" / INDEX_FILE)
    assert len(index) == 0
    assert list(index.columns) == INDEX_COLUMNS
    assert len(pd.read_parquet(tmp_path / "out" / VIDEOS_FILE)) == 0


def test_detections_too_far_apart_to_link_search_every_frame() -> None:
    """A fast pan between the two detected frames leaves one-frame strays: every frame is searched."""

    class Panning:
        """A 20-px face moving 3 px per frame; answers from where the face is, like a detector."""

        def __init__(self) -> None:
            self.asked: list[int] = []

        def detect_many(self, images: list[np.ndarray]) -> list[list[Face]]:
            out = []
            for image in images:
                i = int(image[0, 0, 0])
                self.asked.append(i)
                x = 10.0 + 3.0 * i
                out.append([Face((x, 40.0, x + 20.0, 60.0), 0.99, (0.0,) * 10)])
            return out

    indices = tuple(range(10))
    images = tuple(np.full((120, 160, 3), i, np.uint8) for i in indices)
    detector = Panning()
    cfg = ExtractConfig(detect_every=9, max_people=1)  # frames 0 and 9 only: 27 px apart, no overlap
    hits = _tracked_hits(indices, images, detector, cfg)  # type: ignore[arg-type]
    assert sorted(set(detector.asked)) == list(indices)  # the sparse pass, then the rest
    assert [h[0] for h in hits] == list(indices)  # one person on every frame
    assert all(h[2] == 0 for h in hits)
