"""Scoring videos with a bundle: the same frames, detector and crops as training."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from dfdc.faces.detect import FaceDetector
from dfdc.faces.extract import VideoFaces, faces_of_video
from dfdc.faces.store import as_stored
from dfdc.faces.video import VIDEO_SUFFIXES, VideoError, is_video_name
from dfdc.model.backbone import predict_logits
from dfdc.release.bundle import Bundle, load_bundle
from dfdc.scoring.aggregate import video_logit

_LOG = logging.getLogger(__name__)
COLUMNS = ("filename", "label", "status", "detail", "n_faces", "logit")  # plus ``details`` when asked


class PredictError(Exception):
    """Nothing to score: a path that does not exist, a folder without videos, an unusable sample.

    Raised before any video is opened, so a typo is refused in one line instead of
    passing for a submission of fallback rows.
    """


def score_videos(
    bundle: Bundle, paths: Sequence[Path], progress: bool = True, details: bool = False
) -> pd.DataFrame:
    """One row per input: ``filename``, ``label`` (P(FAKE)), ``status``, ``detail``, ``n_faces``.

    A video that cannot be read or shows no face still gets a row, with the
    calibrated fallback probability and the reason in ``status`` (``decode_error``,
    ``no_face`` ...). Any other exception on one video gives it an ``error`` row (the
    exception, on one line, in ``detail``) and the run goes on: one bad file must not
    cost a submission. ``KeyboardInterrupt`` still stops it. With ``details`` a
    ``details`` column holds each video's per-person, per-frame scores and time codes.
    """
    detector = FaceDetector(bundle.extract)
    rows = []
    for path in tqdm(paths, desc="scoring", disable=not progress):
        try:
            row = _score_video(bundle, detector, Path(path), details)
        except Exception as err:
            row = _error_row(bundle, Path(path), err, details)
        rows.append(row)
    return _table(rows, details)


def _table(rows: list[dict[str, Any]], details: bool) -> pd.DataFrame:
    """The rows as a frame whose columns exist even when there are no rows."""
    return pd.DataFrame(rows, columns=[*COLUMNS, *(["details"] if details else [])])


def score_sample(
    bundle: Bundle, folder: Path, names: Sequence[str], progress: bool = True, details: bool = False
) -> pd.DataFrame:
    """One row per name of a sample submission, in its order, under the name as it is written.

    A name that would leave ``folder`` (an absolute path, a ``..``) is never opened: a
    sample submission comes from elsewhere and must not choose which files are read. Its row
    has status ``refused`` and the fallback probability, like any video that cannot be scored.
    """
    refusals = [_leaves_folder(name) for name in names]
    inside = [name for name, why in zip(names, refusals, strict=True) if not why]
    scored = iter(score_videos(bundle, [folder / n for n in inside], progress, details).to_dict("records"))
    rows = [
        _refused_row(bundle, name, why, details) if why else {**next(scored), "filename": name}
        for name, why in zip(names, refusals, strict=True)
    ]
    return _table(rows, details)


def _leaves_folder(name: str) -> str:
    """Why ``folder / name`` could be outside the folder ("" when it cannot), judged on the text."""
    path = PurePath(name)
    return "name leaves the folder" if path.anchor or ".." in path.parts else ""


def _refused_row(bundle: Bundle, name: str, why: str, details: bool) -> dict[str, Any]:
    """The fallback row of a name that was not opened."""
    row = _row(bundle, name, "refused", why, 0, float("nan"))
    if details:
        row["details"] = _video_details(bundle, Path(name), None, np.zeros(0, np.float32))
    return row


def _score_video(bundle: Bundle, detector: FaceDetector, path: Path, details: bool) -> dict[str, Any]:
    """One video's row; an unreadable or faceless video is a status, not an exception."""
    status, detail, logit, n_faces = "ok", "", float("nan"), 0
    faces, frame_logits = None, np.zeros(0, np.float32)
    try:
        faces = faces_of_video(path, detector, bundle.extract)
        n_faces = len(faces.crops)
        if n_faces:
            crops = np.stack([as_stored(c, bundle.extract) for c in faces.crops])  # as training read them
            frame_logits = predict_logits(bundle.model, crops, bundle.preprocess)
            logit = video_logit(frame_logits, faces.persons, bundle.calibration.aggregation)
        else:
            status = "no_face"
    except VideoError as err:
        status, detail = err.reason, err.detail
    row = _row(bundle, path.name, status, detail, n_faces, logit)
    if details:
        row["details"] = _video_details(bundle, path, faces, frame_logits)
    return row


def _error_row(bundle: Bundle, path: Path, err: Exception, details: bool) -> dict[str, Any]:
    """The fallback row of a video whose scoring raised; the reason is logged too."""
    reason = " ".join(f"{type(err).__name__}: {err}".split())
    trace = _LOG.isEnabledFor(logging.DEBUG)  # the traceback only when asked for
    _LOG.warning("%s: scored with the fallback after %s", path.name, reason, exc_info=trace)
    row = _row(bundle, path.name, "error", reason, 0, float("nan"))
    if details:
        row["details"] = _video_details(bundle, path, None, np.zeros(0, np.float32))
    return row


def _row(bundle: Bundle, name: str, status: str, detail: str, n_faces: int, logit: float) -> dict[str, Any]:
    """A submission row: a NaN logit (no usable face) gets the calibrated fallback."""
    return {
        "filename": name,
        "label": float(bundle.calibration.probability(np.array([logit]))[0]),
        "status": status,
        "detail": detail,
        "n_faces": n_faces,
        "logit": logit,
    }


def _video_fps(path: Path) -> float:
    """Frames per second from the container (0 when unknown), for time codes."""
    cap = cv2.VideoCapture(str(path))
    try:
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0) if cap.isOpened() else 0.0
    finally:
        cap.release()


def _video_details(
    bundle: Bundle, path: Path, faces: VideoFaces | None, frame_logits: np.ndarray
) -> dict[str, Any]:
    """Per person, the calibrated score of each frame with its time code (frame / fps)."""
    if faces is None or not len(frame_logits):
        return {"fps": None, "persons": []}
    fps = _video_fps(path)
    persons = np.asarray(faces.persons)  # the tracked identity of each crop
    probs = bundle.calibration.probability(frame_logits.astype(float))
    out = []
    for person in np.unique(persons):
        mask = persons == person
        frames = [
            {
                "frame": int(frame),
                "time": round(float(frame) / fps, 3) if fps > 0 else None,
                "logit": float(z),
                "label": float(p),
                "box": [round(float(v), 1) for v in box],
                "detector_prob": float(dp),
            }
            for frame, z, p, box, dp in zip(
                faces.frames[mask], frame_logits[mask], probs[mask], faces.boxes[mask], faces.probs[mask],
                strict=True,
            )
        ]
        # the bundle's own aggregation over this person's frames alone
        own = np.array([video_logit(frame_logits[mask], persons[mask], bundle.calibration.aggregation)])
        out.append({
            "person": int(person),
            "label": float(bundle.calibration.probability(own)[0]),
            "n_frames": len(frames),
            "frames": frames,
        })  # fmt: skip
    return {"fps": fps or None, "persons": out}


def write_details(scores: pd.DataFrame, out: Path) -> None:
    """Per-video JSON: the submitted score, the reason of a fallback, and every frame's score."""
    records = [
        {
            "filename": row["filename"],
            "label": row["label"],
            "status": row["status"],
            "detail": row["detail"],
            **row["details"],
        }
        for row in scores.to_dict("records")
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")


def predict_files(
    bundle_dir: Path,
    target: Path,
    out: Path,
    sample_submission: Path | None = None,
    details: Path | None = None,
    progress: bool = True,
    threads: int = 1,
) -> pd.DataFrame:
    """Verify and load a bundle, score a folder (in sample order) or a file, write the CSV.

    The one path from a bundle to a submission: ``dfdc predict`` and the bundle's own
    ``predict.py`` both call it, so they cannot answer differently. Nothing to score is a
    ``PredictError`` and a bad bundle a ``BundleError``, both before any video is opened.
    One torch thread by default: MTCNN's small convolutions gain little from more, and on a
    busy machine OpenMP threads spinning against other processes made 1080p scoring 4x slower.
    """
    videos = list_videos(target)  # with a sample too: a folder without videos is a wrong path
    names = None if sample_submission is None else read_sample_names(sample_submission)
    if names is not None and not target.is_dir():
        raise PredictError(f"{target}: not a folder; a sample submission names the videos of a folder")
    bundle = load_bundle(bundle_dir)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if names is None:
            scores = score_videos(bundle, videos, progress=progress, details=details is not None)
        else:
            scores = score_sample(bundle, target, names, progress=progress, details=details is not None)
    finally:
        torch.set_num_threads(previous)
    write_submission(scores, out, sample_submission)
    if details is not None:
        write_details(scores, details)
    return scores


def list_videos(target: Path) -> list[Path]:
    """The video files of a folder (``VIDEO_SUFFIXES`` in any case, sorted), or the file itself.

    A path that does not exist, an empty folder or one without videos is a ``PredictError``:
    scoring nothing, or a "missing" row, would pass a typo off as a result.
    """
    if not target.exists():
        raise PredictError(f"{target}: no such file or folder")
    if not target.is_dir():
        return [target]
    try:
        entries = sorted(target.iterdir())
    except OSError as err:
        raise PredictError(f"{target}: cannot read the folder ({err.strerror or err})") from err
    if not entries:
        raise PredictError(f"{target}: empty folder; no videos to score")
    videos = [p for p in entries if is_video_name(p) and p.is_file()]
    if not videos:
        kinds = ", ".join(VIDEO_SUFFIXES)
        raise PredictError(f"{target}: no video files in the folder (looked for {kinds}, in any case)")
    return videos


def read_sample_names(sample: Path) -> list[str]:
    """The ``filename`` column of a sample submission, as text (a name is never read as a number)."""
    try:
        table = pd.read_csv(sample, dtype=str, keep_default_na=False)
    except OSError as err:
        raise PredictError(f"{sample}: cannot read the sample submission ({err.strerror or err})") from err
    except ValueError as err:  # empty file, not CSV, not UTF-8
        raise PredictError(f"{sample}: not a CSV sample submission ({' '.join(str(err).split())})") from err
    if "filename" not in table.columns:
        raise PredictError(f"{sample}: no 'filename' column in the sample submission")
    if table.empty:
        raise PredictError(f"{sample}: the sample submission lists no videos")
    return table["filename"].tolist()


def write_submission(
    scores: pd.DataFrame, out: Path, sample_submission: Path | None = None
) -> pd.DataFrame:
    """``filename,label`` in sample-submission order when one is given.

    A name in the sample that was not scored is an error: silently filling it would hide
    a missing video.
    """
    table = scores[["filename", "label"]]
    if sample_submission is not None:
        order = read_sample_names(sample_submission)
        missing = sorted(set(order) - set(table["filename"]))
        if missing:
            raise FileNotFoundError(f"{len(missing)} videos of {sample_submission} not scored: {missing[:5]}")
        table = table.set_index("filename").loc[order].reset_index()
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return table

