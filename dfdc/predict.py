"""Scoring videos with a bundle: the same frames, detector and crops as training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn
from tqdm import tqdm

from dfdc.extract import faces_of_video
from dfdc.faces import FaceDetector
from dfdc.model import Preprocess, predict_logits
from dfdc.package import Bundle
from dfdc.video import VideoError


def score_videos(bundle: Bundle, paths: Sequence[Path], progress: bool = True) -> pd.DataFrame:
    """One row per input: ``filename``, ``label`` (P(FAKE)), ``status``, ``detail``, ``n_faces``.

    A video that cannot be read or shows no face still gets a row, with the
    calibrated fallback probability and the reason in ``status``.
    """
    detector = FaceDetector(bundle.extract)
    rows = []
    for path in tqdm(paths, desc="scoring", disable=not progress):
        status, detail, logit, n_faces = "ok", "", float("nan"), 0
        try:
            faces = faces_of_video(Path(path), detector, bundle.extract)
            n_faces = len(faces.crops)
            if n_faces:
                logit = float(np.mean(predict_logits(bundle.model, faces.crops, bundle.preprocess)))
            else:
                status = "no_face"
        except VideoError as err:
            status, detail = err.reason, err.detail
        rows.append(
            {
                "filename": Path(path).name,
                "label": float(bundle.calibration.probability(np.array([logit]))[0]),
                "status": status,
                "detail": detail,
                "n_faces": n_faces,
                "logit": logit,
            }
        )
    return pd.DataFrame(rows)


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


def score_stored_crops(
    model: nn.Module, pre: Preprocess, faces_dir: Path, index: pd.DataFrame, videos: pd.DataFrame
) -> pd.Series:
    """Mean frame logit per video of ``videos`` from the extracted crops (NaN: no face).

    Used where crops already exist (calibration, evaluation), so no video is decoded twice.
    """
    from dfdc.calibrate import video_logits
    from dfdc.extract import load_crops

    rows = index[index["video"].isin(videos["filename"])].reset_index(drop=True)
    logits = predict_logits(model, load_crops(faces_dir, rows), pre)
    per_video = video_logits(logits, rows["video"])
    return per_video.reindex(videos["filename"].to_numpy())
