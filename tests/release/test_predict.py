"""Scoring real videos with a real bundle; prediction crops equal extraction crops."""

from __future__ import annotations

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
from dfdc.release.bundle import Bundle, build_bundle, load_bundle
from dfdc.release.predict import list_videos, score_videos, write_submission
from dfdc.scoring.aggregate import aggregate
from dfdc.scoring.calibrate import Calibration, frame_scores

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Demo, Extracted

    from dfdc.config import ExtractConfig
    from dfdc.faces.detect import FaceDetector
    from dfdc.model.backbone import Checkpoint

CAL = Calibration(temperature=2.0, clip_min=0.05, clip_max=0.95, fallback=0.66)


@pytest.fixture(scope="module")
def bundle(untrained_checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = build_bundle(untrained_checkpoint, CAL, {"logloss": 0.5}, tmp_path_factory.mktemp("bundle"))
    return load_bundle(out)


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
    with caplog.at_level("WARNING", logger="dfdc.release.predict"):
        rows = score_videos(bundle, good, progress=False, details=True).set_index("filename")
    row = rows.loc[victim]
    assert row["status"] == "error"
    assert row["detail"] == "RuntimeError: codec exploded at frame 3"  # type and message, one line
    assert row["label"] == pytest.approx(CAL.fallback)
    assert row["n_faces"] == 0 and np.isnan(row["logit"])
    assert row["details"] == {"fps": None, "persons": []}
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
    frames = frame_scores(bundle.model, bundle.preprocess, extracted.faces_dir, extracted.index, videos)
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
    (tmp_path / "a.txt").write_text("not a video")
    assert list_videos(tmp_path) == [tmp_path / "b.mp4"]


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
        "detail": "", "fps": None, "persons": [],
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
