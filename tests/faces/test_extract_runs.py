"""Extraction as it runs at scale: worker processes, originals first, awkward files, a killed run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from dfdc.demo.generate import DemoSpec, generate_demo_data
from dfdc.faces.detect import crop_face
from dfdc.faces.extract import INDEX_FILE, VIDEOS_FILE, extract_chunk, fingerprint, load_video_faces
from dfdc.faces.video import sample_frames

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Demo, Extracted

    from dfdc.config import ExtractConfig


def _stem(name: str) -> str:
    return Path(name).stem


def test_worker_processes_give_the_same_output(
    demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, extracted: Extracted, tmp_path: Path
) -> None:
    cfg = extract_cfg.model_copy(update={"workers": 2})
    assert fingerprint(cfg) == fingerprint(extract_cfg)  # how it runs is not what it makes
    out_dir = tmp_path / demo.chunk_dir.name
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, cfg)
    assert (statuses["seconds"] > 0).all()
    without_time = extracted.statuses.drop(columns="seconds")
    pd.testing.assert_frame_equal(statuses.drop(columns="seconds"), without_time)
    pd.testing.assert_frame_equal(pd.read_parquet(out_dir / INDEX_FILE), extracted.index)
    for name in chunk_meta["filename"]:
        got, _ = load_video_faces(out_dir / f"{_stem(name)}.npz")
        want, _ = load_video_faces(extracted.out_dir / f"{_stem(name)}.npz")
        assert got.crops.tobytes() == want.crops.tobytes()


def test_index_names_people_and_frame_size(
    extracted: Extracted, demo: Demo, extract_cfg: ExtractConfig
) -> None:
    index = extracted.index
    width, height = demo.spec.frame_size
    assert (index["width"] == width).all() and (index["height"] == height).all()
    assert index["person"].between(0, extract_cfg.max_people - 1).all()
    # One crop per person per frame, and the detector really ran on some frames.
    assert not index.duplicated(["video", "frame", "person"]).any()
    assert index["detected"].any()
    videos = extracted.statuses
    assert (videos.loc[videos["n_crops"] > 0, "n_people"] >= 1).all()
    assert (videos["source"] == "").all()  # the session's config detects every video


# ----------------------------------------------------------------- originals first


def test_fakes_reuse_the_tracks_of_their_original(
    demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, extracted: Extracted, tmp_path: Path
) -> None:
    cfg = extract_cfg.model_copy(update={"reuse_originals": True})
    assert fingerprint(cfg) != fingerprint(extract_cfg)  # different crops for fakes: redone
    out_dir = tmp_path / demo.chunk_dir.name
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, cfg).set_index("video")
    in_chunk = set(chunk_meta["filename"])
    fakes = chunk_meta[chunk_meta["original"].isin(in_chunk)]
    assert len(fakes) > 0
    index = pd.read_parquet(out_dir / INDEX_FILE)
    for fake in fakes.itertuples():
        assert statuses.at[fake.filename, "source"] == fake.original
        original, _ = load_video_faces(out_dir / f"{_stem(fake.original)}.npz")
        mine, _ = load_video_faces(out_dir / f"{_stem(fake.filename)}.npz")
        # The original's boxes on the same frames, cropped from the fake's own pixels.
        np.testing.assert_array_equal(mine.frames, original.frames)
        np.testing.assert_array_equal(mine.boxes, original.boxes)
        np.testing.assert_array_equal(mine.persons, original.persons)
        frames = sample_frames(demo.chunk_dir / fake.filename, cfg.frames_per_video)
        images = dict(zip(frames.indices, frames.images, strict=True))
        for j in range(len(mine.crops)):
            expected = crop_face(images[int(mine.frames[j])], tuple(mine.boxes[j]), cfg.margin, cfg.crop_size)
            assert np.array_equal(mine.crops[j], expected)
        assert set(index.loc[index["video"] == fake.filename, "crop_file"]) <= {f"{_stem(fake.filename)}.npz"}
    # Originals and fakes whose original is elsewhere are detected as before.
    detected = chunk_meta[~chunk_meta["filename"].isin(fakes["filename"])]["filename"]
    assert (statuses.loc[detected, "source"] == "").all()
    before = extracted.statuses.set_index("video")
    assert statuses.loc[detected, "n_crops"].to_dict() == before.loc[detected, "n_crops"].to_dict()


# ----------------------------------------------------------------- awkward files


@pytest.fixture(scope="module")
def odd_shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A portrait and a very small video with a face, from the demo generator."""
    out: dict[str, Path] = {}
    for name, (width, height) in {"portrait": (120, 160), "tiny": (96, 64)}.items():
        root = tmp_path_factory.mktemp(name)
        spec = DemoSpec(chunks=1, originals_per_chunk=1, fakes_per_original=0, test_videos=0,
                        width=width, height=height, duration=1.0, fps=10)  # fmt: skip
        manifest = generate_demo_data(root, spec)
        row = manifest.iloc[0]
        out[name] = root / row["chunk"] / row["filename"]
    return out


def test_a_chunk_of_awkward_videos_completes_with_reasons(
    demo: Demo,
    chunk_meta: pd.DataFrame,
    extract_cfg: ExtractConfig,
    odd_shapes: dict[str, Path],
    faceless_mp4: Callable[[Path], Path],
    audio_only_mp4: Callable[[Path], Path],
    tmp_path: Path,
) -> None:
    chunk = tmp_path / "dfdc_train_part_7"
    chunk.mkdir()
    good = chunk_meta.loc[chunk_meta["label"] == "REAL", "filename"].iloc[0]
    data = (demo.chunk_dir / good).read_bytes()
    files = {
        "zerobytes.mp4": b"",
        "truncated.mp4": data[: len(data) // 3],
        "notavideo.mp4": b"this is a text file\n" * 50,
        "goodvideo.mp4": data,
    }
    for name, content in files.items():
        (chunk / name).write_bytes(content)
    audio_only_mp4(chunk / "audioonly.mp4")
    faceless_mp4(chunk / "faceless.mp4")
    shutil.copy(odd_shapes["portrait"], chunk / "portrait.mp4")
    shutil.copy(odd_shapes["tiny"], chunk / "tinyvideo.mp4")
    names = [*files, "audioonly.mp4", "faceless.mp4", "portrait.mp4", "tinyvideo.mp4", "notthere.mp4"]
    meta = pd.DataFrame({"filename": names, "label": "REAL", "original": None})
    out_dir = tmp_path / "faces" / chunk.name
    statuses = extract_chunk(chunk, meta, out_dir, extract_cfg).set_index("video")
    assert list(statuses.index) == names  # every video has a row, in metadata order
    assert statuses.at["zerobytes.mp4", "status"] == "decode_error"
    assert statuses.at["notavideo.mp4", "status"] == "decode_error"
    assert statuses.at["audioonly.mp4", "status"] == "no_video_stream"
    assert statuses.at["notthere.mp4", "status"] == "missing"
    assert statuses.at["faceless.mp4", "status"] == "no_face"
    assert statuses.at["truncated.mp4", "status"] in {"ok", "no_face", "decode_error", "empty"}
    assert statuses.at["goodvideo.mp4", "status"] == "ok"
    assert statuses.at["portrait.mp4", "status"] == "ok"
    assert (statuses.at["portrait.mp4", "width"], statuses.at["portrait.mp4", "height"]) == (120, 160)
    assert statuses.at["tinyvideo.mp4", "status"] in {"ok", "no_face"}
    assert statuses.at["tinyvideo.mp4", "width"] == 96
    failed = statuses[~statuses["status"].isin(["ok", "no_face"])]
    assert (failed["n_crops"] == 0).all()
    for name in failed.index:
        assert not (out_dir / f"{_stem(name)}.npz").exists()
    index = pd.read_parquet(out_dir / INDEX_FILE)
    portrait = index[index["video"] == "portrait.mp4"]
    assert len(portrait) > 0
    assert (portrait["x2"] > portrait["x1"]).all()
    assert (portrait["x1"] < 120).all() and (portrait["y1"] < 160).all()
    pd.testing.assert_frame_equal(pd.read_parquet(out_dir / VIDEOS_FILE).set_index("video"), statuses)


# ----------------------------------------------------------------- a killed run


_RUN = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import pandas as pd
    import torch

    from dfdc.config import ExtractConfig
    from dfdc.faces.extract import extract_chunk

    torch.set_num_threads(1)
    chunk, out = Path(sys.argv[1]), Path(sys.argv[2])
    meta = pd.read_parquet(chunk / "meta.parquet")
    cfg = ExtractConfig.model_validate_json(sys.argv[3])
    extract_chunk(chunk, meta, out, cfg)
    """
)


def test_killed_run_resumes_without_redoing_finished_videos(
    demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, extracted: Extracted, tmp_path: Path
) -> None:
    chunk = tmp_path / "dfdc_train_part_5"
    chunk.mkdir()
    rows = []
    for copy in range(4):  # enough videos that the kill lands mid-chunk
        for row in chunk_meta.itertuples():
            name = f"{copy}{row.filename[1:]}"
            shutil.copy(demo.chunk_dir / row.filename, chunk / name)
            rows.append({"filename": name, "label": row.label, "original": None, "source": row.filename})
    meta = pd.DataFrame(rows)
    meta.to_parquet(chunk / "meta.parquet")
    out_dir = tmp_path / "faces" / chunk.name
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(chunk), str(out_dir), extract_cfg.model_dump_json()], env=env
    )
    try:
        deadline = time.monotonic() + 240
        while len(list(out_dir.glob("[0-9]*.npz"))) < 3 and proc.poll() is None:
            assert time.monotonic() < deadline, "extraction never started"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("[0-9]*.npz")}
    assert 0 < len(finished) < len(meta), "the kill should land mid-chunk"
    assert not (out_dir / INDEX_FILE).exists()  # tables come at the end of a chunk
    fp = fingerprint(extract_cfg)
    for name in finished:  # whatever was written is whole
        assert load_video_faces(out_dir / name)[1] == fp
    statuses = extract_chunk(chunk, meta, out_dir, extract_cfg).set_index("video")
    redone = set(statuses.index[statuses["seconds"] > 0])
    assert redone == {n for n in meta["filename"] if f"{_stem(n)}.npz" not in finished}
    for name, mtime in finished.items():
        assert (out_dir / name).stat().st_mtime_ns == mtime  # not rewritten
    assert not list(out_dir.glob("*.tmp*"))
    # The resumed chunk holds what an uninterrupted run would have.
    want = extracted.statuses.set_index("video")["n_crops"]
    assert statuses["n_crops"].to_dict() == {r.filename: want[r.source] for r in meta.itertuples()}
