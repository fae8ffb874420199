"""Scoring real videos with a real bundle; prediction crops equal extraction crops."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from dfdc.faces.extract import faces_of_video
from dfdc.faces.store import as_stored, read_record, read_video_crops, video_file
from dfdc.model.backbone import predict_logits
from dfdc.release.bundle import CHECKSUMS, PROTOCOL, WEIGHTS, Bundle, build_bundle, load_bundle
from dfdc.release.predict import list_videos, score_videos, write_submission
from dfdc.scoring.aggregate import aggregate
from dfdc.scoring.calibrate import Calibration, frame_scores
from dfdc.scoring.scorer import COLUMNS, Scorer

if TYPE_CHECKING:
    from collections.abc import Callable

    from click.testing import Result
    from conftest import Demo, Extracted

    from dfdc.config import ExtractConfig
    from dfdc.faces.detect import FaceDetector
    from dfdc.model.backbone import Checkpoint

CAL = Calibration(temperature=2.0, clip_min=0.05, clip_max=0.95, fallback=0.66)


@pytest.fixture(scope="module")
def bundle_dir(untrained_checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(untrained_checkpoint, CAL, {"logloss": 0.5}, tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def inputs(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    tmp = tmp_path_factory.mktemp("inputs")
    corrupt = tmp / "corruptvid.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(25_000))
    good = list_videos(demo.test_dir)
    assert len(good) == demo.spec.test_videos
    return {"good": good, "bad": [corrupt, tmp / "missingvid.mp4"]}


@pytest.fixture(scope="module")
def scores(bundle: Bundle, inputs: dict[str, list[Path]]) -> pd.DataFrame:
    good, bad = inputs["good"], inputs["bad"]
    # Bad inputs first and in the middle: a failure must not stop the rest.
    paths = [bad[0], good[0], bad[1], *good[1:]]
    return score_videos(bundle, paths, progress=False)


def test_one_row_per_input_in_input_order(scores: pd.DataFrame, inputs: dict[str, list[Path]]) -> None:
    good, bad = inputs["good"], inputs["bad"]
    expected = [p.name for p in (bad[0], good[0], bad[1], *good[1:])]
    assert scores["filename"].tolist() == expected
    assert {"filename", "label", "status", "detail", "n_faces", "logit"} <= set(scores.columns)


def test_probabilities_within_the_clip(scores: pd.DataFrame) -> None:
    assert scores["label"].between(CAL.clip_min, CAL.clip_max).all()
    assert scores["label"].notna().all()


def test_good_videos_are_scored_from_their_faces(
    scores: pd.DataFrame, inputs: dict[str, list[Path]], bundle: Bundle, detector: FaceDetector
) -> None:
    rows = scores.set_index("filename")
    for path in inputs["good"]:
        row = rows.loc[path.name]
        assert row["status"] == "ok"
        assert row["detail"] == ""
        assert row["n_faces"] > 0
        assert np.isfinite(row["logit"])
        # The logit is the mean over this video's crops, then the calibration applies.
        faces = faces_of_video(path, detector, bundle.extract)
        assert row["n_faces"] == len(faces.crops)
        # Prediction feeds the crops as training reads them back from the store.
        crops = _as_stored(faces.crops, bundle.extract)
        logits = predict_logits(bundle.model, crops, bundle.preprocess)
        assert row["logit"] == pytest.approx(float(np.mean(logits)), rel=1e-5, abs=1e-6)
        expected = np.clip(expit(row["logit"] / CAL.temperature), CAL.clip_min, CAL.clip_max)
        assert row["label"] == pytest.approx(expected)


def test_bad_inputs_get_their_reason_and_the_fallback(
    scores: pd.DataFrame, inputs: dict[str, list[Path]]
) -> None:
    rows = scores.set_index("filename")
    corrupt, missing = inputs["bad"]
    assert rows.at[corrupt.name, "status"] in {"decode_error", "empty"}
    assert rows.at[missing.name, "status"] == "missing"
    for path in (corrupt, missing):
        assert rows.at[path.name, "label"] == pytest.approx(CAL.fallback)
        assert rows.at[path.name, "n_faces"] == 0
        assert np.isnan(rows.at[path.name, "logit"])


def test_faceless_video_gets_no_face_and_the_fallback(
    bundle: Bundle, faceless_mp4: Callable[[Path], Path], tmp_path: Path
) -> None:
    path = faceless_mp4(tmp_path / "blankvideo.mp4")
    row = score_videos(bundle, [path], progress=False).iloc[0]
    assert row["status"] == "no_face"
    assert row["n_faces"] == 0
    assert row["label"] == pytest.approx(CAL.fallback)


def test_broken_files_among_good_ones_get_reasons_and_every_good_video_is_scored(
    bundle: Bundle, inputs: dict[str, list[Path]], scores: pd.DataFrame, tmp_path: Path
) -> None:
    good = inputs["good"]
    data = good[0].read_bytes()
    broken = {"zerobytes.mp4": b"", "headeronly.mp4": data[:2_000], "truncated.mp4": data[: len(data) // 2]}
    for name, content in broken.items():
        (tmp_path / name).write_bytes(content)
    zero, header, cut = (tmp_path / name for name in broken)
    paths = [zero, good[0], header, *good[1:], cut]  # broken first, between and last
    rows = score_videos(bundle, paths, progress=False).set_index("filename")
    assert list(rows.index) == [p.name for p in paths]
    for name in ("zerobytes.mp4", "headeronly.mp4"):
        assert rows.at[name, "status"] == "decode_error"
        assert rows.at[name, "label"] == pytest.approx(CAL.fallback)
    # A cut file is scored on what it still holds, or gets its reason; either way it has a row.
    assert rows.at["truncated.mp4", "status"] in {"ok", "no_face", "decode_error", "empty", "error"}
    assert rows["label"].between(CAL.clip_min, CAL.clip_max).all()
    before = scores.set_index("filename")
    for path in good:  # scored exactly as without the broken files around them
        assert rows.at[path.name, "status"] == "ok"
        assert rows.at[path.name, "logit"] == pytest.approx(before.at[path.name, "logit"], rel=1e-6)


def _raise_for(monkeypatch: pytest.MonkeyPatch, name: str, error: BaseException) -> None:
    """Make decoding raise ``error`` for the video called ``name`` (an unexpected bug), only there."""
    import dfdc.faces.extract as extract

    real = extract.sample_frames

    def sample_frames(path: Path, *args: object, **kwargs: object) -> object:
        if Path(path).name == name:
            raise error
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(extract, "sample_frames", sample_frames)


def test_an_unexpected_exception_on_one_video_gives_it_an_error_row_and_the_rest_are_scored(
    bundle: Bundle,
    inputs: dict[str, list[Path]],
    scores: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = inputs["good"]
    victim = good[0].name
    _raise_for(monkeypatch, victim, RuntimeError("codec exploded\n  at frame 3"))
    with caplog.at_level("WARNING", logger="dfdc.scoring.scorer"):
        rows = score_videos(bundle, good, progress=False, details=True).set_index("filename")
    row = rows.loc[victim]
    assert row["status"] == "error"
    assert row["detail"] == "RuntimeError: codec exploded at frame 3"  # type and message, one line
    assert row["label"] == pytest.approx(CAL.fallback)
    assert row["n_faces"] == 0 and np.isnan(row["logit"])
    assert row["details"] == {"fps": None, "persons": [], "voice": None}  # voice: no voice branch
    assert any(victim in r.getMessage() and "codec exploded" in r.getMessage() for r in caplog.records)
    before = scores.set_index("filename")
    for path in good[1:]:
        assert rows.at[path.name, "status"] == "ok"
        assert rows.at[path.name, "logit"] == pytest.approx(before.at[path.name, "logit"], rel=1e-6)


def test_keyboard_interrupt_still_stops_scoring(
    bundle: Bundle, inputs: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = inputs["good"]
    _raise_for(monkeypatch, good[0].name, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        score_videos(bundle, good, progress=False)


# ----------------------------------------------------------------- crop parity


def _as_stored(crops: np.ndarray, extract: ExtractConfig) -> np.ndarray:
    return np.stack([as_stored(c, extract) for c in crops])


def test_prediction_crops_equal_extraction_crops(
    demo: Demo, extracted: Extracted, detector: FaceDetector, extract_cfg: ExtractConfig
) -> None:
    """The stored crops are the prediction path's raw crops after the store's encode and decode."""
    with_faces = extracted.statuses.loc[extracted.statuses["n_crops"] > 0, "video"].tolist()
    assert len(with_faces) >= 2
    for video in with_faces[:3]:
        live = faces_of_video(demo.chunk_dir / video, detector, extract_cfg)
        path = video_file(extracted.out_dir, video)
        stored, record = read_video_crops(path), read_record(path)
        expected = _as_stored(live.crops, extract_cfg)
        assert expected.shape == stored.shape == live.crops.shape
        assert expected.dtype == stored.dtype == np.uint8
        assert expected.tobytes() == stored.tobytes()
        if extract_cfg.crop_format == "jpeg":  # lossy: the raw crops alone would not match
            assert live.crops.tobytes() != stored.tobytes()
        np.testing.assert_array_equal(live.frames, record.frames)
        np.testing.assert_array_equal(live.persons, record.persons)
        np.testing.assert_array_equal(live.boxes, record.boxes)


def stored_logits(bundle: Bundle, extracted: Extracted, videos: pd.Series) -> pd.Series:
    """Video logits from the extracted crops, the way the calibrate stage makes them (NaN: no face)."""
    frames = frame_scores(Scorer(bundle.model, bundle.protocol), extracted.faces_dir, extracted.index, videos)
    return aggregate(frames, bundle.calibration.aggregation).reindex(videos.to_numpy())


def test_bundle_scores_a_video_like_its_stored_crops(
    demo: Demo, extracted: Extracted, bundle: Bundle, chunk_meta: pd.DataFrame
) -> None:
    """The bundle's own detector (rebuilt from its protocol) sees what extraction saw."""
    videos = chunk_meta.loc[chunk_meta["filename"].isin(extracted.index["video"]), "filename"].head(2)
    stored = stored_logits(bundle, extracted, videos)
    live = score_videos(bundle, [demo.chunk_dir / f for f in videos], progress=False)
    np.testing.assert_allclose(live["logit"].to_numpy(), stored.to_numpy(), rtol=1e-5, atol=1e-6)


def test_stored_crops_give_nan_for_faceless_videos(
    extracted: Extracted, bundle: Bundle, chunk_meta: pd.DataFrame
) -> None:
    got = stored_logits(bundle, extracted, chunk_meta["filename"])
    assert list(got.index) == chunk_meta["filename"].tolist()
    has_face = chunk_meta["filename"].isin(extracted.index["video"]).to_numpy()
    assert np.isfinite(got.to_numpy()[has_face]).all()
    assert np.isnan(got.to_numpy()[~has_face]).all()


# ----------------------------------------------------------------- listing and submission


def test_list_videos(demo: Demo, tmp_path: Path) -> None:
    listed = list_videos(demo.test_dir)
    assert listed == sorted(demo.test_dir.glob("*.mp4"))
    assert all(p.suffix == ".mp4" for p in listed)
    single = listed[0]
    assert list_videos(single) == [single]
    shutil.copy(single, tmp_path / "b.mp4")
    shutil.copy(single, tmp_path / "C.MOV")
    (tmp_path / "a.txt").write_text("not a video")
    assert list_videos(tmp_path) == [tmp_path / "C.MOV", tmp_path / "b.mp4"]


def test_no_videos_give_an_empty_table_with_its_columns(bundle: Bundle) -> None:
    assert list(score_videos(bundle, [], progress=False).columns) == list(COLUMNS)


def test_write_submission_follows_the_sample_order(scores: pd.DataFrame, demo: Demo, tmp_path: Path) -> None:
    sample = pd.read_csv(demo.sample_submission)
    reversed_scores = scores.iloc[::-1].reset_index(drop=True)  # a different order, plus extras
    out = tmp_path / "out" / "submission.csv"
    table = write_submission(reversed_scores, out, demo.sample_submission)
    written = pd.read_csv(out)
    assert list(written.columns) == ["filename", "label"]
    assert written["filename"].tolist() == sample["filename"].tolist()
    by_name = scores.set_index("filename")["label"]
    np.testing.assert_allclose(written["label"], by_name.loc[sample["filename"]].to_numpy())
    pd.testing.assert_frame_equal(table.reset_index(drop=True), written, check_dtype=False)


def test_write_submission_without_a_sample_keeps_the_scores(scores: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    write_submission(scores, out)
    written = pd.read_csv(out)
    assert written["filename"].tolist() == scores["filename"].tolist()
    np.testing.assert_allclose(written["label"], scores["label"])


def test_write_submission_refuses_unscored_sample_videos(
    scores: pd.DataFrame, demo: Demo, tmp_path: Path
) -> None:
    sample = pd.read_csv(demo.sample_submission)
    partial = scores[scores["filename"] != sample["filename"].iloc[0]]
    out = tmp_path / "submission.csv"
    with pytest.raises(FileNotFoundError, match=sample["filename"].iloc[0]):
        write_submission(partial, out, demo.sample_submission)
    assert not out.exists()


# ----------------------------------------------------------------- details and the bundle's own entry point


def test_details_give_every_frame_of_every_person_with_time_codes(
    bundle: Bundle, inputs: dict[str, list[Path]], tmp_path: Path
) -> None:
    from dfdc.faces.detect import FaceDetector
    from dfdc.release.predict import write_details
    from dfdc.scoring.aggregate import video_logit

    good = inputs["good"][0]
    scores = score_videos(bundle, [good, inputs["bad"][1]], progress=False, details=True)
    out = tmp_path / "details.json"
    write_details(scores, out)
    ok, missing = json.loads(out.read_text())
    assert ok["filename"] == good.name and ok["status"] == "ok"
    assert ok["label"] == pytest.approx(scores.loc[0, "label"])
    frames = [f for person in ok["persons"] for f in person["frames"]]
    assert len(frames) == scores.loc[0, "n_faces"]
    live = faces_of_video(good, FaceDetector(bundle.extract), bundle.extract)
    want = predict_logits(bundle.model, _as_stored(live.crops, bundle.extract), bundle.preprocess)
    assert sorted(f["logit"] for f in frames) == pytest.approx(sorted(want.tolist()), rel=1e-5)
    assert ok["fps"] == pytest.approx(10.0)  # the demo videos' rate
    for f in frames:
        assert f["time"] == pytest.approx(f["frame"] / ok["fps"], abs=1e-3)
        assert CAL.clip_min <= f["label"] <= CAL.clip_max and len(f["box"]) == 4
    for person in ok["persons"]:  # the bundle's aggregation over that person's frames alone
        logits = np.array([f["logit"] for f in person["frames"]])
        z = video_logit(logits, None, bundle.calibration.aggregation)
        expected = np.clip(expit(z / CAL.temperature), CAL.clip_min, CAL.clip_max)
        assert person["label"] == pytest.approx(expected, rel=1e-5)
    assert missing == {
        "filename": "missingvid.mp4", "label": pytest.approx(CAL.fallback), "status": "missing",
        "detail": "", "fps": None, "persons": [], "voice": None,
    }  # fmt: skip


@pytest.fixture(scope="module")
def bundle_alone(untrained_checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle copied alone into a fresh folder."""
    built = build_bundle(untrained_checkpoint, CAL, {"logloss": 0.5}, tmp_path_factory.mktemp("b") / "b")
    return Path(shutil.copytree(built, tmp_path_factory.mktemp("elsewhere") / "submission"))


def _run_entry(bundle_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -I: no PYTHONPATH, no user site, no current directory on sys.path
    cmd = [sys.executable, "-I", str(bundle_dir / "predict.py"), *args, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as in conftest: a shared 2-core machine
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)


def test_bundle_entry_point_scores_like_the_library(
    bundle_alone: Path, demo: Demo, tmp_path: Path
) -> None:
    out, details = tmp_path / "sub.csv", tmp_path / "details.json"
    sample_csv = str(demo.sample_submission)
    proc = _run_entry(
        bundle_alone, str(demo.test_dir), "--out", str(out), "--sample-submission", sample_csv,
        "--details", str(details),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = pd.read_csv(out)
    sample = pd.read_csv(demo.sample_submission)
    assert written["filename"].tolist() == sample["filename"].tolist()
    paths = [demo.test_dir / f for f in sample["filename"]]
    want = score_videos(load_bundle(bundle_alone), paths, progress=False)
    np.testing.assert_allclose(written["label"], want["label"], rtol=1e-5)
    assert [d["filename"] for d in json.loads(details.read_text())] == sample["filename"].tolist()
    assert not list(bundle_alone.rglob("__pycache__"))  # the bundle stays as checksummed


def test_bundle_entry_point_refuses_altered_code(bundle_alone: Path, demo: Demo, tmp_path: Path) -> None:
    altered = Path(shutil.copytree(bundle_alone, tmp_path / "altered"))
    faces = altered / "code" / "dfdc" / "faces" / "detect.py"
    faces.write_text(faces.read_text().replace("margin: float", "margin: float = 0.0"))
    out = tmp_path / "sub.csv"
    proc = _run_entry(altered, str(demo.test_dir), "--out", str(out))
    assert proc.returncode == 2
    assert "refusing to run" in proc.stderr and "faces/detect.py: checksum mismatch" in proc.stderr
    assert not out.exists()


# ----------------------------------------------------------------- `dfdc predict` without surprises


def _predict(*args: str) -> Result:
    """``dfdc predict ARGS`` in this process."""
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, ["predict", *args])


def _rechecksum(bundle: Path, name: str) -> None:
    """Record a file's new digest, as someone covering an edit would."""
    sums = json.loads((bundle / CHECKSUMS).read_text())
    sums[name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / CHECKSUMS).write_text(json.dumps(sums))


def _folder(tmp: Path, *names: str) -> Path:
    """A folder holding files of these names (not videos)."""
    folder = tmp / "folder"
    folder.mkdir()
    for name in names:
        (folder / name).write_text("not a video\n")
    return folder


def _copied_bundle(tmp: Path, bundle: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp / "copied"))


def _no_such_folder(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    return [str(tmp / "nosuchfolder")], tmp / "nosuchfolder", "no such file or folder"


def _no_such_video(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    return [str(tmp / "nosuchvideo.mp4")], tmp / "nosuchvideo.mp4", "no such file or folder"


def _empty_folder(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    folder = _folder(tmp)
    return [str(folder)], folder, "empty folder; no videos to score"


def _folder_without_videos(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    folder = _folder(tmp, "notes.txt", "clip.mp4.part", "mp4")
    (folder / "inner.mp4").mkdir()  # a folder is not a video, whatever its name
    why = "no video files in the folder (looked for .mp4, .mov, .webm, .mkv, .avi, in any case)"
    return [str(folder)], folder, why


def _no_bundle(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    where = tmp / "nobundle"
    return [str(demo.test_dir), "--model", str(where)], where, "no such folder; not a dfdc bundle"


def _not_a_bundle(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    folder = _folder(tmp, "model.safetensors")
    return [str(demo.test_dir), "--model", str(folder)], folder, f"no {CHECKSUMS}; not a dfdc bundle"


def _altered_weights(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    copied = _copied_bundle(tmp, bundle)
    with (copied / WEIGHTS).open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    why = "checksum mismatch; the file was altered"
    return [str(demo.test_dir), "--model", str(copied)], copied / WEIGHTS, why


def _unreadable_checksums(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    copied = _copied_bundle(tmp, bundle)
    (copied / CHECKSUMS).write_text('{"model.safetensors": ')
    return [str(demo.test_dir), "--model", str(copied)], copied / CHECKSUMS, "unreadable (JSONDecodeError: "


def _protocol_that_does_not_load(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    copied = _copied_bundle(tmp, bundle)
    protocol = json.loads((copied / PROTOCOL).read_text())
    del protocol["extract"]
    (copied / PROTOCOL).write_text(json.dumps(protocol))
    _rechecksum(copied, PROTOCOL)
    return [str(demo.test_dir), "--model", str(copied)], copied, "cannot be loaded (KeyError: 'extract')"


def _no_such_sample(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    sample = tmp / "nosuchsample.csv"
    args = [str(demo.test_dir), "--sample-submission", str(sample)]
    return args, sample, "cannot read the sample submission (No such file or directory)"


def _sample_without_filenames(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    sample = tmp / "sample.csv"
    sample.write_text("name,label\na.mp4,0.5\n")
    args = [str(demo.test_dir), "--sample-submission", str(sample)]
    return args, sample, "no 'filename' column in the sample submission"


def _sample_for_one_video(tmp: Path, bundle: Path, demo: Demo) -> tuple[list[str], Path, str]:
    video = list_videos(demo.test_dir)[0]
    args = [str(video), "--sample-submission", str(demo.sample_submission)]
    return args, video, "not a folder; a sample submission names the videos of a folder"


NOTHING_TO_SCORE = [_no_such_folder, _no_such_video, _empty_folder, _folder_without_videos]
BAD_BUNDLES = [
    _no_bundle, _not_a_bundle, _altered_weights, _unreadable_checksums, _protocol_that_does_not_load,
]  # fmt: skip
BAD_SAMPLES = [_no_such_sample, _sample_without_filenames, _sample_for_one_video]


@pytest.mark.parametrize("case", NOTHING_TO_SCORE + BAD_BUNDLES + BAD_SAMPLES, ids=lambda c: c.__name__[1:])
def test_predict_refuses_in_one_line_with_status_2(
    case: Callable[[Path, Path, Demo], tuple[list[str], Path, str]],
    bundle_dir: Path,
    demo: Demo,
    tmp_path: Path,
) -> None:
    args, path, why = case(tmp_path, bundle_dir, demo)  # the arguments, the path named, the reason
    out = tmp_path / "submission.csv"
    result = _predict(*args, "--out", str(out), *([] if "--model" in args else ["--model", str(bundle_dir)]))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    assert result.stderr.count("\n") == 1  # one line
    assert result.stderr.startswith(f"refusing to run: {path}: {why}")
    assert not out.exists()


def test_dfdc_predict_refuses_a_missing_path_without_a_traceback(bundle_dir: Path, tmp_path: Path) -> None:
    """The installed command, in its own process: what a user sees."""
    missing = tmp_path / "test_videoz"
    dfdc = Path(sys.executable).with_name("dfdc")
    proc = subprocess.run(
        [str(dfdc), "predict", str(missing), "--model", str(bundle_dir), "--out", str(tmp_path / "s.csv")],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == f"refusing to run: {missing}: no such file or folder\n"
    assert "Traceback" not in proc.stdout + proc.stderr


def _reencode(src: Path, dst: Path, codec: str) -> Path:
    """Every frame of ``src`` encoded afresh with ``codec`` into ``dst``'s container."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        source = inp.streams.video[0]
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = source.width, source.height, "yuv420p"
        for frame in inp.decode(source):
            image = frame.to_ndarray(format="rgb24")
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return dst


def test_videos_of_every_container_in_any_case_are_scored(
    bundle_dir: Path,
    inputs: dict[str, list[Path]],
    scores: pd.DataFrame,
    tmp_path: Path,
    video_only: Callable[[Path, Path], Path],
) -> None:
    first, second = inputs["good"][:2]
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(first, folder / "UPPER.MP4")
    video_only(second, folder / "phone.mov")  # the same H.264 packets in other containers
    video_only(second, folder / "clip.MKV")
    _reencode(first, folder / "web.webm", "libvpx-vp9")
    _reencode(first, folder / "old.avi", "libx264")
    (folder / "notes.txt").write_text("not a video\n")
    out, details = tmp_path / "submission.csv", tmp_path / "details.json"
    result = _predict(str(folder), "--model", str(bundle_dir), "--out", str(out), "--details", str(details))
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out).set_index("filename")
    assert sorted(rows.index) == sorted(["UPPER.MP4", "phone.mov", "clip.MKV", "web.webm", "old.avi"])
    statuses = {d["filename"]: d["status"] for d in json.loads(details.read_text())}
    assert statuses == dict.fromkeys(rows.index, "ok")  # each scored from its faces
    before = scores.set_index("filename")
    # the same packets give the same frames, so the same probability
    assert rows.at["UPPER.MP4", "label"] == pytest.approx(before.at[first.name, "label"], rel=1e-6)
    for name in ("phone.mov", "clip.MKV"):
        assert rows.at[name, "label"] == pytest.approx(before.at[second.name, "label"], rel=1e-6)


def test_sample_names_that_leave_the_folder_are_refused_and_the_others_scored(
    bundle_dir: Path,
    inputs: dict[str, list[Path]],
    scores: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dfdc.faces.extract as extract

    first, second = inputs["good"][:2]
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(first, folder / first.name)
    shutil.copy(second, folder / "sub" / "inner.mp4")  # a subfolder is still inside
    outside = Path(shutil.copy(second, tmp_path / "x.mp4"))  # a real video: it would score if opened
    refused = ["../x.mp4", "/etc/passwd", str(outside), "sub/../../x.mp4"]
    names = [first.name, refused[0], refused[1], "sub/inner.mp4", refused[2], refused[3], "gone.mp4"]
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({"filename": names, "label": 0.5}).to_csv(sample, index=False)
    opened: list[Path] = []
    real = extract.sample_frames

    def recording(path: Path, *args: object, **kwargs: object) -> object:
        opened.append(Path(path))
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(extract, "sample_frames", recording)
    out, details = tmp_path / "submission.csv", tmp_path / "details.json"
    result = _predict(
        str(folder), "--model", str(bundle_dir), "--out", str(out), "--sample-submission", str(sample),
        "--details", str(details),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert all(p.resolve().is_relative_to(folder) for p in opened) and len(opened) == 3
    written = pd.read_csv(out)
    assert written["filename"].tolist() == names  # every listed video has its row, in order
    rows = {d["filename"]: d for d in json.loads(details.read_text())}
    assert {n: r["status"] for n, r in rows.items()} == {
        first.name: "ok", "sub/inner.mp4": "ok", "gone.mp4": "missing", **dict.fromkeys(refused, "refused"),
    }  # fmt: skip
    labels = written.set_index("filename")["label"]
    before = scores.set_index("filename")["label"]
    for name in refused:
        assert rows[name]["detail"] == "name leaves the folder"
        assert labels[name] == pytest.approx(CAL.fallback)
        assert f"{name}: refused name leaves the folder" in result.stderr.splitlines()
    assert labels[first.name] == pytest.approx(before[first.name], rel=1e-6)
    assert labels["sub/inner.mp4"] == pytest.approx(before[second.name], rel=1e-6)


def _missing_target(tmp: Path, bundle: Path) -> tuple[Path, list[str], str]:
    return bundle, [str(tmp / "nosuchfolder")], f"{tmp / 'nosuchfolder'}: no such file or folder"


def _no_videos(tmp: Path, bundle: Path) -> tuple[Path, list[str], str]:
    folder = _folder(tmp, "notes.txt")
    kinds = ".mp4, .mov, .webm, .mkv, .avi"
    return bundle, [str(folder)], f"{folder}: no video files in the folder (looked for {kinds}, in any case)"


def _garbled_checksums(tmp: Path, bundle: Path) -> tuple[Path, list[str], str]:
    copied = _copied_bundle(tmp, bundle)
    (copied / CHECKSUMS).write_bytes(b"\xff\xfe not json")
    return copied, [str(tmp)], f"{copied / CHECKSUMS}: unreadable ("


ENTRY_CASES = [_missing_target, _no_videos, _garbled_checksums]


@pytest.mark.parametrize("case", ENTRY_CASES, ids=lambda c: c.__name__[1:])
def test_bundle_entry_point_refuses_in_one_line_with_status_2(
    case: Callable[[Path, Path], tuple[Path, list[str], str]], bundle_alone: Path, tmp_path: Path
) -> None:
    bundle, args, message = case(tmp_path, bundle_alone)
    out = tmp_path / "sub.csv"
    proc = _run_entry(bundle, *args, "--out", str(out))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"refusing to run: {message}")
    assert not out.exists()
