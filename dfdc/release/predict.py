"""From a bundle and a folder of videos to a submission: listing, sample order, the CSV.

The scoring itself is ``dfdc.scoring.scorer``'s, with the bundle's protocol.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path, PurePath

import pandas as pd
import torch

from dfdc.config import ScoreConfig
from dfdc.faces.video import VIDEO_SUFFIXES, is_video_name
from dfdc.release.bundle import Bundle, load_bundle
from dfdc.scoring.scorer import table


class PredictError(Exception):
    """Nothing to score: a path that does not exist, a folder without videos, an unusable sample.

    Raised before any video is opened, so a typo is refused in one line instead of
    passing for a submission of fallback rows.
    """


def score_videos(
    bundle: Bundle,
    paths: Sequence[Path],
    progress: bool = True,
    details: bool = False,
    run: ScoreConfig | None = None,
) -> pd.DataFrame:
    """One row per input: ``filename``, ``label`` (P(FAKE)), ``status``, ``detail``, ``n_faces``.

    The bundle's protocol through the one scorer (``dfdc.scoring.scorer``), run as ``run``
    says (device, threads, batch size, workers). A video that cannot be read or shows no
    face still gets a row, with the calibrated fallback probability and the reason in
    ``status`` (``decode_error``, ``no_face`` ...); any other exception on one video gives
    it an ``error`` row and the run goes on. With ``details`` a ``details`` column holds
    each video's per-person, per-frame scores and time codes.
    """
    return bundle.scorer(run).score(paths, progress, details)


def score_sample(
    bundle: Bundle,
    folder: Path,
    names: Sequence[str],
    progress: bool = True,
    details: bool = False,
    run: ScoreConfig | None = None,
) -> pd.DataFrame:
    """One row per name of a sample submission, in its order, under the name as it is written.

    A name that would leave ``folder`` (an absolute path, a ``..``) is never opened: a
    sample submission comes from elsewhere and must not choose which files are read. Its row
    has status ``refused`` and the fallback probability, like any video that cannot be scored.
    """
    scorer = bundle.scorer(run)
    refusals = [_leaves_folder(name) for name in names]
    inside = [name for name, why in zip(names, refusals, strict=True) if not why]
    scored = iter(scorer.score([folder / n for n in inside], progress, details).to_dict("records"))
    rows = [
        scorer.refused_row(name, why, details) if why else {**next(scored), "filename": name}
        for name, why in zip(names, refusals, strict=True)
    ]
    return table(rows, details)


def _leaves_folder(name: str) -> str:
    """Why ``folder / name`` could be outside the folder ("" when it cannot), judged on the text."""
    path = PurePath(name)
    return "name leaves the folder" if path.anchor or ".." in path.parts else ""


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
    run: ScoreConfig | None = None,
) -> pd.DataFrame:
    """Verify and load a bundle, score a folder (in sample order) or a file, write the CSV.

    The one path from a bundle to a submission: ``dfdc predict`` and the bundle's own
    ``predict.py`` both call it, so they cannot answer differently. Nothing to score is a
    ``PredictError`` and a bad bundle a ``BundleError``, both before any video is opened.
    ``run`` says where and how fast (``ScoreConfig``'s defaults: ``auto`` device, one torch
    thread, two decoding threads). One torch thread: MTCNN's small convolutions gain little
    from more, and on a busy machine OpenMP threads spinning against other processes made
    1080p scoring 4x slower; the decoding threads are what use a second core.
    """
    run = run or ScoreConfig()
    videos = list_videos(target)  # with a sample too: a folder without videos is a wrong path
    names = None if sample_submission is None else read_sample_names(sample_submission)
    if names is not None and not target.is_dir():
        raise PredictError(f"{target}: not a folder; a sample submission names the videos of a folder")
    bundle = load_bundle(bundle_dir)
    previous = torch.get_num_threads()
    torch.set_num_threads(run.threads)
    try:
        if names is None:
            scores = score_videos(bundle, videos, progress, details is not None, run)
        else:
            scores = score_sample(bundle, target, names, progress, details is not None, run)
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


def write_submission(scores: pd.DataFrame, out: Path, sample_submission: Path | None = None) -> pd.DataFrame:
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
