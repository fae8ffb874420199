"""Scoring videos with a bundle: the same frames, detector and crops as training."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from dfdc.faces.detect import FaceDetector
from dfdc.faces.extract import VideoFaces, faces_of_video
from dfdc.faces.store import as_stored
from dfdc.faces.video import VideoError
from dfdc.model.backbone import predict_logits
from dfdc.release.bundle import Bundle, load_bundle
from dfdc.scoring.aggregate import video_logit

_LOG = logging.getLogger(__name__)


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
    return pd.DataFrame(rows)


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
    row = _row(bundle, path, status, detail, n_faces, logit)
    if details:
        row["details"] = _video_details(bundle, path, faces, frame_logits)
    return row


def _error_row(bundle: Bundle, path: Path, err: Exception, details: bool) -> dict[str, Any]:
    """The fallback row of a video whose scoring raised; the reason is logged too."""
    reason = " ".join(f"{type(err).__name__}: {err}".split())
    trace = _LOG.isEnabledFor(logging.DEBUG)  # the traceback only when asked for
    _LOG.warning("%s: scored with the fallback after %s", path.name, reason, exc_info=trace)
    row = _row(bundle, path, "error", reason, 0, float("nan"))
    if details:
        row["details"] = _video_details(bundle, path, None, np.zeros(0, np.float32))
    return row


def _row(bundle: Bundle, path: Path, status: str, detail: str, n_faces: int, logit: float) -> dict[str, Any]:
    """A submission row: a NaN logit (no usable face) gets the calibrated fallback."""
    return {
        "filename": path.name,
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
    ``predict.py`` both call it, so they cannot answer differently. One torch thread by
    default: MTCNN's small convolutions gain little from more, and on a busy machine
    OpenMP threads spinning against other processes made 1080p scoring 4x slower.
    """
    bundle = load_bundle(bundle_dir)
    if sample_submission is not None:
        paths = [target / f for f in pd.read_csv(sample_submission)["filename"]]
    else:
        paths = list_videos(target)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        scores = score_videos(bundle, paths, progress=progress, details=details is not None)
    finally:
        torch.set_num_threads(previous)
    write_submission(scores, out, sample_submission)
    if details is not None:
        write_details(scores, details)
    return scores


def list_videos(target: Path) -> list[Path]:
    """The ``.mp4`` files of a folder (sorted), or the file itself."""
    if target.is_dir():
        return sorted(target.glob("*.mp4"))
    return [target]


def write_submission(
    scores: pd.DataFrame, out: Path, sample_submission: Path | None = None
) -> pd.DataFrame:
    """``filename,label`` in sample-submission order when one is given.

    A name in the sample that was not scored is an error: silently filling it would hide
    a missing video.
    """
    table = scores[["filename", "label"]]
    if sample_submission is not None:
        order = pd.read_csv(sample_submission)["filename"]
        missing = sorted(set(order) - set(table["filename"]))
        if missing:
            raise FileNotFoundError(f"{len(missing)} videos of {sample_submission} not scored: {missing[:5]}")
        table = table.set_index("filename").loc[order].reset_index()
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return table

