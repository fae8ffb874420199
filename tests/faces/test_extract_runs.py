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
from dfdc.faces import store
from dfdc.faces.detect import crop_face
from dfdc.faces.extract import FailureBudgetExceeded, check_failure_budget, extract_chunk, failed
from dfdc.faces.store import (
    INDEX_FILE,
    VIDEOS_FILE,
    as_stored,
    protocol_fingerprint,
    read_record,
    read_video_crops,
    video_digest,
    video_file,
    video_fingerprint,
)
from dfdc.faces.video import sample_frames

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Demo, Extracted

    from dfdc.config import ExtractConfig


def _files(out_dir: Path) -> dict[str, bytes]:
    """Every file of a chunk's output folder (hidden ones too), by name."""
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


def _mtimes(out_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in store.stored_files(out_dir)}


def _copy_faces(extracted: Extracted, tmp_path: Path) -> Path:
    out_dir = tmp_path / "faces" / extracted.out_dir.name
    shutil.copytree(extracted.out_dir, out_dir)
    return out_dir


def test_worker_processes_give_byte_identical_output(
    demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, extracted: Extracted, tmp_path: Path
) -> None:
    """workers=2 (a spawned pool) and workers=1 (the session's fresh run, in process) write the same bytes."""
    assert extract_cfg.workers == 1
    cfg = extract_cfg.model_copy(update={"workers": 2})
    assert protocol_fingerprint(cfg) == protocol_fingerprint(extract_cfg)  # how it runs is not what it makes
    out_dir = tmp_path / demo.chunk_dir.name
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, cfg)
    assert (statuses["seconds"] > 0).all()  # a fresh extraction: every video ran
    without_time = extracted.statuses.drop(columns="seconds")
    pd.testing.assert_frame_equal(statuses.drop(columns="seconds"), without_time)
    pd.testing.assert_frame_equal(pd.read_parquet(out_dir / INDEX_FILE), extracted.index, check_exact=True)
    got, want = _files(out_dir), _files(extracted.out_dir)
    per_video = {video_file(out_dir, n).name for n in chunk_meta["filename"]}
    assert set(want) == {INDEX_FILE, VIDEOS_FILE} | per_video
    assert set(got) == set(want)
    for name in want:
        assert got[name] == want[name], f"{name} differs between workers=2 and workers=1"


def test_gpu_scheduling_gives_byte_identical_output(
    demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, extracted: Extracted,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """On a GPU a chunk runs in threads of one process around one batching detector.

    That scheduling is chosen when the device resolves to CUDA; here it is chosen while the
    detector itself stays on the CPU, so the test runs anywhere and checks what the GPU
    path does with the videos (shared detector, batches across videos, originals first).
    """
    import dfdc.faces.extract as extract

    built: list[object] = []
    real_share = extract._share_detector

    def share(cfg: ExtractConfig) -> object:
        built.append(shared := real_share(cfg))
        return shared

    monkeypatch.setattr(extract, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(extract, "_share_detector", share)
    cfg = extract_cfg.model_copy(update={"workers": 3})
    out_dir = tmp_path / demo.chunk_dir.name
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, cfg)
    assert len(built) == 1 and max(built[0].batches) > 1  # type: ignore[attr-defined]
    assert not extract._DETECTORS or all(d is not built[0] for d in extract._DETECTORS.values())
    pd.testing.assert_frame_equal(
        statuses.drop(columns="seconds"), extracted.statuses.drop(columns="seconds")
    )
    got, want = _files(out_dir), _files(extracted.out_dir)
    assert set(got) == set(want)
    for name in want:
        assert got[name] == want[name], f"{name} differs between the GPU scheduling and one process"


# ----------------------------------------------------------------- what redoes a video


def test_new_crop_code_version_redoes_every_video_once(
    demo: Demo,
    chunk_meta: pd.DataFrame,
    extract_cfg: ExtractConfig,
    extracted: Extracted,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out_dir = _copy_faces(extracted, tmp_path)
    before = _mtimes(out_dir)
    old = {n: read_record(video_file(out_dir, n)).fingerprint for n in chunk_meta["filename"]}
    assert len(before) == len(chunk_meta)
    old_protocol = protocol_fingerprint(extract_cfg)
    monkeypatch.setattr(store, "CROP_CODE_VERSION", store.CROP_CODE_VERSION + 1)
    protocol = protocol_fingerprint(extract_cfg)
    assert protocol != old_protocol
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, extract_cfg)
    assert (statuses["seconds"] > 0).all()  # every video redone
    after = _mtimes(out_dir)
    assert set(after) == set(before)
    assert all(after[f] != before[f] for f in before)  # every file rewritten
    for name in chunk_meta["filename"]:
        fp = read_record(video_file(out_dir, name)).fingerprint
        assert fp == video_fingerprint(protocol, video_digest(demo.chunk_dir / name))
        assert fp != old[name]
    index = pd.read_parquet(out_dir / INDEX_FILE)
    assert set(index["fingerprint"]).isdisjoint(old.values())
    # The same code version again: nothing is redone, nothing rewritten.
    again = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, extract_cfg)
    assert (again["seconds"] == 0).all()
    assert _mtimes(out_dir) == after


def test_replaced_input_file_redoes_exactly_that_video(
    demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, extracted: Extracted, tmp_path: Path
) -> None:
    chunk = tmp_path / "raw" / demo.chunk_dir.name
    shutil.copytree(demo.chunk_dir, chunk)
    out_dir = _copy_faces(extracted, tmp_path)
    with_faces = extracted.statuses.loc[extracted.statuses["n_crops"] > 0, "video"].tolist()
    victim, donor = with_faces[0], with_faces[-1]
    assert victim != donor
    assert (chunk / victim).read_bytes() != (chunk / donor).read_bytes()
    before = _mtimes(out_dir)
    old_fp = read_record(video_file(out_dir, victim)).fingerprint
    shutil.copy(chunk / donor, chunk / victim)  # same name, another video's bytes
    statuses = extract_chunk(chunk, chunk_meta, out_dir, extract_cfg).set_index("video")
    assert set(statuses.index[statuses["seconds"] > 0]) == {victim}
    after = _mtimes(out_dir)
    target = video_file(out_dir, victim).name
    assert after[target] != before[target]
    assert {k: v for k, v in after.items() if k != target} == {k: v for k, v in before.items() if k != target}
    record = read_record(out_dir / target)
    protocol = protocol_fingerprint(extract_cfg)
    assert record.fingerprint != old_fp
    assert record.fingerprint == video_fingerprint(protocol, video_digest(chunk / donor))
    # The victim now holds the donor's video: the same fingerprint, crops and record, so the same bytes.
    assert (out_dir / target).read_bytes() == video_file(out_dir, donor).read_bytes()
    for name in chunk_meta["filename"]:
        if name != victim:
            was = read_record(video_file(extracted.out_dir, name)).fingerprint
            assert read_record(video_file(out_dir, name)).fingerprint == was
    index = pd.read_parquet(out_dir / INDEX_FILE)
    same = ["frame", "face", "person", "x1", "y1", "x2", "y2", "prob", "crop_offset", "crop_bytes",
            "fingerprint"]  # fmt: skip
    pd.testing.assert_frame_equal(
        index.loc[index["video"] == victim, same].reset_index(drop=True),
        index.loc[index["video"] == donor, same].reset_index(drop=True),
    )
    untouched = index["video"] != victim
    pd.testing.assert_frame_equal(
        index[untouched].reset_index(drop=True),
        extracted.index[extracted.index["video"] != victim].reset_index(drop=True),
    )


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
    # different crops for fakes: redone
    assert protocol_fingerprint(cfg) != protocol_fingerprint(extract_cfg)
    out_dir = tmp_path / demo.chunk_dir.name
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, cfg).set_index("video")
    in_chunk = set(chunk_meta["filename"])
    fakes = chunk_meta[chunk_meta["original"].isin(in_chunk)]
    assert len(fakes) > 0
    index = pd.read_parquet(out_dir / INDEX_FILE)
    for fake in fakes.itertuples():
        assert statuses.at[fake.filename, "source"] == fake.original
        original = read_record(video_file(out_dir, fake.original))
        path = video_file(out_dir, fake.filename)
        mine = read_record(path)
        assert len(mine.frames) > 0
        # The fake's fingerprint covers its own input file and its original's (whose tracks it took).
        protocol = protocol_fingerprint(cfg)
        digests = [video_digest(demo.chunk_dir / name) for name in (fake.filename, fake.original)]
        both = "+".join(digests)
        assert mine.fingerprint == video_fingerprint(protocol, both)
        # The original's boxes on the same frames, cropped from the fake's own pixels.
        np.testing.assert_array_equal(mine.frames, original.frames)
        np.testing.assert_array_equal(mine.boxes, original.boxes)
        np.testing.assert_array_equal(mine.persons, original.persons)
        frames = sample_frames(demo.chunk_dir / fake.filename, cfg.frames_per_video)
        images = dict(zip(frames.indices, frames.images, strict=True))
        crops = read_video_crops(path)
        assert len(crops) == len(mine.frames)
        for j in range(len(crops)):
            expected = crop_face(images[int(mine.frames[j])], tuple(mine.boxes[j]), cfg.margin, cfg.crop_size)
            assert np.array_equal(crops[j], as_stored(expected, cfg))  # stored as the store encodes it
        assert set(index.loc[index["video"] == fake.filename, "crop_file"]) == {path.name}
    # Originals and fakes whose original is elsewhere are detected as before.
    detected = chunk_meta[~chunk_meta["filename"].isin(fakes["filename"])]["filename"]
    assert (statuses.loc[detected, "source"] == "").all()
    before = extracted.statuses.set_index("video")
    assert statuses.loc[detected, "n_crops"].to_dict() == before.loc[detected, "n_crops"].to_dict()


def test_a_replaced_original_redoes_the_fakes_that_took_its_tracks(
    demo: Demo, chunk_meta: pd.DataFrame, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    cfg = extract_cfg.model_copy(update={"reuse_originals": True})
    chunk_dir = Path(shutil.copytree(demo.chunk_dir, tmp_path / demo.chunk_dir.name))
    out_dir = tmp_path / "faces" / chunk_dir.name
    extract_chunk(chunk_dir, chunk_meta, out_dir, cfg)
    reals = chunk_meta.loc[chunk_meta["label"] == "REAL", "filename"].tolist()
    victim, donor = reals[0], reals[1]
    shutil.copyfile(chunk_dir / donor, chunk_dir / victim)
    statuses = extract_chunk(chunk_dir, chunk_meta, out_dir, cfg).set_index("video")
    redone = set(statuses.index[statuses["seconds"] > 0])
    fakes_of_victim = set(chunk_meta.loc[chunk_meta["original"] == victim, "filename"])
    assert fakes_of_victim and redone == {victim} | fakes_of_victim


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
        assert not video_file(out_dir, name).exists()
    index = pd.read_parquet(out_dir / INDEX_FILE)
    portrait = index[index["video"] == "portrait.mp4"]
    assert len(portrait) > 0
    assert (portrait["x2"] > portrait["x1"]).all()
    assert (portrait["x1"] < 120).all() and (portrait["y1"] < 160).all()
    stored = pd.read_parquet(out_dir / VIDEOS_FILE).set_index("video")
    pd.testing.assert_frame_equal(stored, statuses.drop(columns="seconds"))  # timings are not stored


# ----------------------------------------------------------------- a failure budget


def _broken_files(good: bytes) -> dict[str, bytes]:
    """Files a chunk can really hold that no decoder reads (DFDC-style names)."""
    return {
        "zerobytesx.mp4": b"",
        "randombyte.mp4": np.random.default_rng(3).bytes(30_000),
        "textfileab.mp4": b"this is a text file\n" * 50,
        "headeronly.mp4": good[:2_000],  # cut before the first frame and the mp4 index
    }


def _chunk_with(demo: Demo, chunk: Path, good: list[str], extra: dict[str, bytes]) -> pd.DataFrame:
    """``chunk`` holding copies of the demo's ``good`` videos and ``extra`` files; its metadata rows."""
    chunk.mkdir(parents=True)
    for name in good:
        shutil.copy(demo.chunk_dir / name, chunk / name)
    for name, content in extra.items():
        (chunk / name).write_bytes(content)
    return pd.DataFrame({"filename": [*good, *extra], "label": "REAL", "original": None})


def test_a_chunk_over_its_failure_budget_fails_after_storing_the_good_videos(
    demo: Demo, extract_cfg: ExtractConfig, extracted: Extracted, tmp_path: Path
) -> None:
    with_faces = extracted.statuses.loc[extracted.statuses["n_crops"] > 0, "video"].tolist()[:3]
    broken = _broken_files((demo.chunk_dir / with_faces[0]).read_bytes())
    chunk = tmp_path / "dfdc_train_part_4"
    meta = _chunk_with(demo, chunk, with_faces, broken)
    out_dir = tmp_path / "faces" / chunk.name
    statuses = extract_chunk(chunk, meta, out_dir, extract_cfg).set_index("video")
    assert failed(statuses).sum() == len(broken)
    assert extract_cfg.max_failure_share == 0.1
    with pytest.raises(FailureBudgetExceeded) as info:
        check_failure_budget(statuses.reset_index(), extract_cfg.max_failure_share)
    message = str(info.value)
    lines = message.splitlines()
    assert lines[0] == (
        "dfdc_train_part_4: 4 of 7 videos failed (57.1%), more than the budget "
        "extract.max_failure_share = 10.0%"
    )
    assert lines[1].split() == ["reason", "videos", "examples", "(first", "detail)"]
    reason, count, *examples = lines[2].split()
    assert (reason, count) == ("decode_error", "4")
    assert " ".join(examples).startswith("zerobytesx.mp4, randombyte.mp4, textfileab.mp4, +1 more")
    assert "'zerobytesx.mp4'" in lines[2] and str(tmp_path) not in message  # a name, not a path
    assert lines[-1].startswith("The good videos are stored")
    # Everything good was written before the error: store files, index rows, the videos table.
    index = pd.read_parquet(out_dir / INDEX_FILE)
    key, box = ["video", "frame", "person"], ["x1", "y1", "x2", "y2"]
    session = extracted.index.set_index(key)
    for name in with_faces:
        assert video_file(out_dir, name).is_file()
        mine = index[index["video"] == name].set_index(key)
        assert len(mine) == statuses.at[name, "n_crops"] > 0
        pd.testing.assert_frame_equal(mine[box], session.loc[mine.index, box])  # the session's crops
    assert sorted(pd.read_parquet(out_dir / VIDEOS_FILE)["video"]) == sorted(meta["filename"])
    for name in broken:
        assert not video_file(out_dir, name).exists()
    # Dropping the broken files (the fix) reruns nothing that was finished, and passes.
    fixed = extract_chunk(chunk, meta[meta["filename"].isin(with_faces)], out_dir, extract_cfg)
    assert (fixed["seconds"] == 0).all()
    check_failure_budget(fixed, extract_cfg.max_failure_share)


def test_a_chunk_at_its_failure_budget_passes_and_faceless_videos_are_not_failures(
    demo: Demo,
    chunk_meta: pd.DataFrame,
    extract_cfg: ExtractConfig,
    extracted: Extracted,
    faceless_mp4: Callable[[Path], Path],
    tmp_path: Path,
) -> None:
    blank = faceless_mp4(tmp_path / "blank.mp4").read_bytes()
    extra = {"zerobytesx.mp4": b"", "blankvideo.mp4": blank}
    chunk = tmp_path / "raw" / demo.chunk_dir.name
    meta = _chunk_with(demo, chunk, chunk_meta["filename"].tolist(), extra)
    out_dir = _copy_faces(extracted, tmp_path)  # the demo's videos are finished already
    statuses = extract_chunk(chunk, meta, out_dir, extract_cfg).set_index("video")
    assert len(statuses) == 10
    assert statuses.at["zerobytesx.mp4", "status"] == "decode_error"
    assert statuses.at["blankvideo.mp4", "status"] == "no_face"
    assert failed(statuses).tolist() == [name == "zerobytesx.mp4" for name in statuses.index]
    check_failure_budget(statuses.reset_index(), 0.1)  # 1 of 10: at the budget, not over it
    with pytest.raises(FailureBudgetExceeded, match=r"1 of 10 videos failed \(10\.0%\)"):
        check_failure_budget(statuses.reset_index(), 0.09)


def test_failure_budget_names_every_chunk_over_it_and_each_reason(extract_cfg: ExtractConfig) -> None:
    """Statuses of two chunks (as the flow concatenates them): one over, one within."""
    rows = [("dfdc_train_part_1", f"good{i:06d}.mp4", "ok", "") for i in range(9)]
    rows += [("dfdc_train_part_1", "brokenaaaa.mp4", "decode_error", "cannot open")]  # 10%: within
    rows += [("dfdc_train_part_2", f"good{i:06d}.mp4", "ok", "") for i in range(2)]
    rows += [("dfdc_train_part_2", f"err{i:07d}.mp4", "error", "RuntimeError: boom\nsecond line")
             for i in range(5)]  # fmt: skip
    rows += [("dfdc_train_part_2", "crashedaaa.mp4", "crashed", "BrokenProcessPool: dead"),
             ("dfdc_train_part_2", "missingaaa.mp4", "missing", "")]  # fmt: skip
    table = pd.DataFrame(rows, columns=["chunk", "video", "status", "detail"])
    with pytest.raises(FailureBudgetExceeded) as info:
        check_failure_budget(table, extract_cfg.max_failure_share)
    lines = str(info.value).splitlines()
    assert "dfdc_train_part_1" not in str(info.value)
    assert lines[0].startswith("dfdc_train_part_2: 7 of 9 videos failed (77.8%)")
    body = [line.split()[:2] for line in lines[2:5]]
    assert body == [["error", "5"], ["crashed", "1"], ["missing", "1"]]  # most first, then by name
    examples = "err0000000.mp4, err0000001.mp4, err0000002.mp4, +2 more"
    assert lines[2].endswith(f"{examples}  (RuntimeError: boom second line)")  # the first detail, one line


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
        while len(list(out_dir.glob(f"[0-9]*{store.SUFFIX}"))) < 3 and proc.poll() is None:
            assert time.monotonic() < deadline, "extraction never started"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out_dir.glob(f"[0-9]*{store.SUFFIX}")}
    assert 0 < len(finished) < len(meta), "the kill should land mid-chunk"
    assert not (out_dir / INDEX_FILE).exists()  # tables come at the end of a chunk
    protocol = protocol_fingerprint(extract_cfg)
    by_file = {video_file(out_dir, n).name: n for n in meta["filename"]}
    for name in finished:  # whatever was written is whole
        assert read_record(out_dir / name).fingerprint == video_fingerprint(
            protocol, video_digest(chunk / by_file[name])
        )
        read_video_crops(out_dir / name)  # every crop decodes
    statuses = extract_chunk(chunk, meta, out_dir, extract_cfg).set_index("video")
    redone = set(statuses.index[statuses["seconds"] > 0])
    assert redone == {n for n in meta["filename"] if video_file(out_dir, n).name not in finished}
    for name, mtime in finished.items():
        assert (out_dir / name).stat().st_mtime_ns == mtime  # not rewritten
    assert not list(out_dir.glob("*.tmp*"))
    # The resumed chunk holds what an uninterrupted run would have.
    want = extracted.statuses.set_index("video")["n_crops"]
    assert statuses["n_crops"].to_dict() == {r.filename: want[r.source] for r in meta.itertuples()}
    # A copy of a file is the same input: its stored file is byte for byte the session's.
    for row in meta.itertuples():
        got = video_file(out_dir, row.filename).read_bytes()
        assert got == video_file(extracted.out_dir, row.source).read_bytes(), row.filename
