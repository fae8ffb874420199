"""Face extraction: sampled frames -> MTCNN -> people -> crops, one packed file per video.

Per chunk the output is ``<faces_dir>/<chunk>/<video>.npz`` (crops plus their boxes,
person ids, probabilities and landmarks), ``index.parquet`` (one row per crop) and
``videos.parquet`` (one row per video with its status, so a faceless or broken video
is a recorded reason, not a silent gap). Writes are atomic and keyed by a fingerprint
of the extraction settings, so a rerun skips finished videos and redoes stale ones.

Detection runs on a subset of the sampled frames and boxes follow each person between
them (``dfdc.faces.tracks``); a fake reuses its original's tracks. Videos run in worker
processes or on any ``concurrent.futures`` executor (a Dask client's, for a cluster).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfdc.config import ExtractConfig
from dfdc.faces.detect import Face, FaceDetector, crop_face
from dfdc.faces.tracks import build_tracks
from dfdc.faces.video import VideoError, sample_frames

INDEX_FILE = "index.parquet"
VIDEOS_FILE = "videos.parquet"


RUN_FIELDS = {"device", "workers", "dask_address", "video_retries"}  # how, not what


@dataclass(frozen=True)
class VideoFaces:
    """The crops of one video and where each came from (one row per person per frame)."""

    crops: np.ndarray  # (n, size, size, 3) uint8
    frames: np.ndarray  # (n,) frame index in the stream
    faces: np.ndarray  # (n,) rank of the face within its frame
    persons: np.ndarray  # (n,) track id: 0 is the strongest person of the video
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2 in frame pixels
    probs: np.ndarray  # (n,)
    landmarks: np.ndarray  # (n, 10)
    detected: np.ndarray  # (n,) bool: found on this frame, not interpolated along the track
    n_sampled: int
    n_frames: int = 0
    width: int = 0
    height: int = 0
    truncated: bool = False
    source: str = ""  # the original whose tracks were reused, "" when detected here


def fingerprint(cfg: ExtractConfig) -> str:
    """Hash of every setting that changes the crops (device, workers and cluster do not)."""
    payload = cfg.model_dump(mode="json", exclude=RUN_FIELDS)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def faces_of_video(
    path: Path, detector: FaceDetector, cfg: ExtractConfig, reuse: VideoFaces | None = None
) -> VideoFaces:
    """Sample frames, find people, crop: the protocol shared by extraction and prediction.

    MTCNN runs on every ``detect_every``-th sampled frame (and the last); detections
    are linked into tracks and each kept person's box is interpolated on the frames
    between. If that finds nobody, the remaining frames are searched too. With
    ``reuse`` (the original of a pixel-aligned fake, same length and size) its boxes
    are cropped from this video's frames and nothing is detected.
    """
    frames = sample_frames(path, cfg.frames_per_video)
    width, height = frames.size
    shape = (frames.n_frames, width, height)
    if reuse is not None and len(reuse.frames) and (reuse.n_frames, reuse.width, reuse.height) == shape:
        hits = _reused_hits(frames.indices, reuse)
        source = "original"  # extract_chunk names it
    else:
        hits = _tracked_hits(frames.indices, frames.images, detector, cfg)
        source = ""
    images = dict(zip(frames.indices, frames.images, strict=True))
    size = cfg.crop_size
    crops = [crop_face(images[h[0]], h[3].box, cfg.margin, size) for h in hits]
    return VideoFaces(
        crops=np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
        frames=np.array([h[0] for h in hits], dtype=np.int32),
        faces=np.array([h[1] for h in hits], dtype=np.int16),
        persons=np.array([h[2] for h in hits], dtype=np.int16),
        boxes=np.array([h[3].box for h in hits], dtype=np.float32).reshape(-1, 4),
        probs=np.array([h[3].prob for h in hits], dtype=np.float32),
        landmarks=np.array([h[3].landmarks for h in hits], dtype=np.float32).reshape(-1, 10),
        detected=np.array([h[4] for h in hits], dtype=bool),
        n_sampled=len(frames.indices),
        n_frames=frames.n_frames,
        width=width,
        height=height,
        truncated=frames.truncated,
        source=source,
    )


_Hit = tuple[int, int, int, Face, bool]  # frame, rank in frame, person, face, detected


def _tracked_hits(
    indices: tuple[int, ...], images: tuple[np.ndarray, ...], detector: FaceDetector, cfg: ExtractConfig
) -> list[_Hit]:
    last = len(indices) - 1
    sparse = [p for p in range(len(indices)) if p % cfg.detect_every == 0 or p == last]
    found = dict(zip(sparse, detector.detect_many([images[p] for p in sparse]), strict=True))
    if not any(found.values()):  # nobody on the sparse frames: search the rest before giving up
        rest = [p for p in range(len(indices)) if p not in found]
        found.update(zip(rest, detector.detect_many([images[p] for p in rest]), strict=True))
    searched = sorted(indices[p] for p in found)
    reach = max((b - a for a, b in itertools.pairwise(searched)), default=0)
    tracks = build_tracks([(indices[p], faces) for p, faces in found.items()], cfg.max_people)
    hits: list[_Hit] = []
    for index in indices:
        rank = 0
        for person, track in enumerate(tracks):
            at = track.at(index, reach)
            if at is not None:
                hits.append((index, rank, person, at[0], at[1]))
                rank += 1
    return hits


def _reused_hits(indices: tuple[int, ...], original: VideoFaces) -> list[_Hit]:
    wanted = set(indices)
    return [
        (
            int(original.frames[j]), int(original.faces[j]), int(original.persons[j]),
            Face(tuple(original.boxes[j].tolist()), float(original.probs[j]),  # type: ignore[arg-type]
                 tuple(original.landmarks[j].tolist())),
            bool(original.detected[j]),
        )
        for j in range(len(original.frames))
        if int(original.frames[j]) in wanted
    ]  # fmt: skip


_SCALARS = {"n_sampled": int, "n_frames": int, "width": int, "height": int, "truncated": bool, "source": str}


def save_video_faces(faces: VideoFaces, path: Path, fp: str) -> None:
    """Write atomically: a killed run leaves the old file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, fingerprint=np.array(fp), **faces.__dict__)
        Path(tmp).replace(path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_video_faces(path: Path) -> tuple[VideoFaces, str]:
    """Read a packed video file back with the fingerprint it was made under."""
    with np.load(path) as data:
        fields = {k: data[k] for k in VideoFaces.__dataclass_fields__}
        for key, kind in _SCALARS.items():
            fields[key] = kind(fields[key].item())
        return VideoFaces(**fields), str(data["fingerprint"])


def _is_fresh(path: Path, fp: str) -> bool:
    return _load_fresh(path, fp) is not None


def _load_fresh(path: Path | None, fp: str) -> VideoFaces | None:
    """The packed file when it exists, is readable and was made under ``fp``."""
    if path is None or not path.is_file():
        return None
    try:
        faces, stored = load_video_faces(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a corrupt leftover is redone, not trusted
    return faces if stored == fp else None


# ----------------------------------------------------------------- running a chunk


@dataclass(frozen=True)
class _Job:
    """One video to extract; picklable, so it runs in a process pool or on a Dask worker."""

    video: str
    path: Path
    target: Path
    cfg: ExtractConfig
    fp: str
    original: Path | None  # packed file of the original whose tracks a fake reuses
    original_name: str
    threads: int  # torch threads in the worker (0: leave as is)


_DETECTORS: dict[tuple[str, str], FaceDetector] = {}


def _detector(cfg: ExtractConfig, threads: int) -> FaceDetector:
    """One detector per process and protocol, built on first use."""
    key = (fingerprint(cfg), cfg.device)
    if key not in _DETECTORS:
        if threads:
            import torch

            torch.set_num_threads(threads)  # N processes x 1 thread beat threads fighting
        _DETECTORS[key] = FaceDetector(cfg)
    return _DETECTORS[key]


def _run_job(job: _Job) -> dict[str, object]:
    """Extract one video; a failure is a status with its reason, never an exception."""
    start = time.perf_counter()
    status: dict[str, object] = {"video": job.video, "status": "ok", "detail": "", "seconds": 0.0}
    for _attempt in range(job.cfg.video_retries + 1):
        try:
            reuse = _load_fresh(job.original, job.fp)
            faces = faces_of_video(job.path, _detector(job.cfg, job.threads), job.cfg, reuse)
            if faces.source:
                faces = dataclasses.replace(faces, source=job.original_name)
            save_video_faces(faces, job.target, job.fp)
            status.update(status="ok", detail="")
            break
        except VideoError as err:  # a property of the file: retrying cannot help
            status.update(status=err.reason, detail=err.detail)
            job.target.unlink(missing_ok=True)
            break
        except Exception as err:
            status.update(status="error", detail=f"{type(err).__name__}: {err}")
            job.target.unlink(missing_ok=True)
    status["seconds"] = time.perf_counter() - start
    return status


class _InlineExecutor(Executor):
    """Runs each job at submission: the single-process path with the same scheduling."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


class ExtractionIncomplete(RuntimeError):
    """Workers died under some videos; finished ones are saved, so a rerun resumes."""


def extract_chunk(
    chunk_dir: Path,
    videos: pd.DataFrame,
    out_dir: Path,
    cfg: ExtractConfig,
    progress: Callable[[Iterable[dict[str, object]]], Iterable[dict[str, object]]] = iter,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Extract every video of one chunk into ``out_dir``; return the per-video status table.

    ``videos`` holds the chunk's metadata rows (``filename``, ``label``, ``original``).
    Finished videos (same fingerprint) are skipped; failures are recorded with their
    reason and never stop the chunk. Originals run first and their fakes reuse their
    tracks. Videos run on ``executor`` (e.g. a Dask client's), else on ``cfg.workers``
    local processes, else in this process.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(cfg)
    rows = list(videos.itertuples(index=False))
    names = [r.filename for r in rows]
    target = {n: out_dir / f"{Path(n).stem}.npz" for n in names}
    todo = {n for n in names if not _is_fresh(target[n], fp)}
    original_of = {
        r.filename: r.original
        for r in rows
        if cfg.reuse_originals and isinstance(r.original, str) and r.original in target
    }
    remote = executor is not None
    threads = 1 if remote or (cfg.workers > 1 and len(todo) > 1) else 0
    jobs = [
        _Job(n, chunk_dir / n, target[n], cfg, fp, target.get(o := original_of.get(n, "")), o, threads)
        for n in names
        if n in todo
    ]
    pool: Executor
    if executor is not None:
        pool = executor
    elif threads:
        pool = ProcessPoolExecutor(min(cfg.workers, len(jobs)), mp_context=get_context("spawn"))
    else:
        pool = _InlineExecutor()
    skipped = [{"video": n, "status": "ok", "detail": "", "seconds": 0.0} for n in names if n not in todo]
    try:
        done = list(progress(itertools.chain(skipped, _schedule(jobs, original_of, pool))))
    finally:
        if pool is not executor:
            pool.shutdown()
    keep = {p.name for p in target.values()}
    for stale in out_dir.glob("*.npz"):
        if stale.name not in keep:
            stale.unlink()
    order = {n: i for i, n in enumerate(names)}
    done.sort(key=lambda s: order[str(s["video"])])
    table = pd.DataFrame(done, columns=["video", "status", "detail", "seconds"])
    statuses = _write_tables(chunk_dir.name, videos, out_dir, table)
    crashed = statuses[statuses["status"] == "crashed"]
    if len(crashed):
        raise ExtractionIncomplete(f"{len(crashed)} videos lost to dead workers: {crashed['detail'].iloc[0]}")
    return statuses


def _schedule(
    jobs: list[_Job], original_of: dict[str, str], pool: Executor
) -> Iterator[dict[str, object]]:
    """Originals first; a fake whose original is being extracted waits for it, then reuses it."""
    todo = {j.video for j in jobs}
    waiting: dict[str, list[_Job]] = {}
    ready: list[_Job] = []
    for job in jobs:
        original = original_of.get(job.video)
        if original in todo:
            waiting.setdefault(original, []).append(job)
        else:
            ready.append(job)
    ready.sort(key=lambda j: j.video not in waiting)  # stable: originals first, else chunk order
    futures: dict[Future[Any], _Job] = {}

    def submit(job: _Job) -> dict[str, object] | None:
        try:
            futures[pool.submit(_run_job, job)] = job
        except Exception as err:
            return _crashed(job, err)
        return None

    for job in ready:
        if (failed := submit(job)) is not None:
            yield failed
    while futures:
        finished, _ = wait(futures, return_when=FIRST_COMPLETED)
        for future in finished:
            job = futures.pop(future)
            try:
                yield future.result()
            except Exception as err:
                yield _crashed(job, err)
            for fake in waiting.pop(job.video, []):
                if (failed := submit(fake)) is not None:
                    yield failed


def _crashed(job: _Job, err: BaseException) -> dict[str, object]:
    return {"video": job.video, "status": "crashed", "detail": f"{type(err).__name__}: {err}", "seconds": 0.0}


def _write_tables(
    chunk: str, videos: pd.DataFrame, out_dir: Path, statuses: pd.DataFrame
) -> pd.DataFrame:
    """Assemble ``index.parquet`` and ``videos.parquet`` from the packed files."""
    meta = videos.set_index("filename")
    records: list[dict[str, object]] = []
    per_video: dict[str, dict[str, object]] = {}
    for name in meta.index:
        path = out_dir / f"{Path(name).stem}.npz"
        if not path.is_file():
            continue
        faces, _ = load_video_faces(path)
        per_video[name] = {
            "n_crops": len(faces.crops),
            "n_people": len(set(faces.persons.tolist())),
            "width": faces.width,
            "height": faces.height,
            "n_frames": faces.n_frames,
            "truncated": faces.truncated,
            "source": faces.source,
        }
        for j in range(len(faces.crops)):
            records.append(
                {
                    "chunk": chunk,
                    "video": name,
                    "frame": int(faces.frames[j]),
                    "face": int(faces.faces[j]),
                    "person": int(faces.persons[j]),
                    "detected": bool(faces.detected[j]),
                    "x1": float(faces.boxes[j, 0]),
                    "y1": float(faces.boxes[j, 1]),
                    "x2": float(faces.boxes[j, 2]),
                    "y2": float(faces.boxes[j, 3]),
                    "width": faces.width,
                    "height": faces.height,
                    "prob": float(faces.probs[j]),
                    "landmarks": faces.landmarks[j].tolist(),
                    "label": meta.at[name, "label"],
                    "original": meta.at[name, "original"],
                    "crop_file": path.name,
                    "crop_idx": j,
                }
            )
    index = pd.DataFrame.from_records(records, columns=INDEX_COLUMNS)
    index.to_parquet(out_dir / INDEX_FILE, index=False)
    found = pd.DataFrame.from_dict(per_video, orient="index", columns=list(_VIDEO_DEFAULTS))
    statuses = statuses.assign(chunk=chunk)
    for column, default in _VIDEO_DEFAULTS.items():
        values = statuses["video"].map(found[column]) if len(found) else pd.Series(index=statuses.index)
        statuses[column] = values.where(values.notna(), default).astype(type(default))
    no_face = (statuses["status"] == "ok") & (statuses["n_crops"] == 0)
    statuses.loc[no_face, "status"] = "no_face"
    statuses.to_parquet(out_dir / VIDEOS_FILE, index=False)
    return statuses


# Per-video facts from the packed file, and their value for a video that has none.
_VIDEO_DEFAULTS: dict[str, object] = {
    "n_crops": 0, "n_people": 0, "width": 0, "height": 0, "n_frames": 0, "truncated": False, "source": "",
}  # fmt: skip

INDEX_COLUMNS = [
    "chunk", "video", "frame", "face", "person", "detected", "x1", "y1", "x2", "y2", "width", "height",
    "prob", "landmarks", "label", "original", "crop_file", "crop_idx",
]  # fmt: skip


def read_index(faces_dir: Path, chunks: Iterable[str]) -> pd.DataFrame:
    """The face index of several chunks, one row per crop."""
    frames = [pd.read_parquet(faces_dir / c / INDEX_FILE) for c in chunks]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INDEX_COLUMNS)


def load_crops(faces_dir: Path, index: pd.DataFrame) -> np.ndarray:
    """Crop pixels for the rows of ``index``, in row order, each packed file read once."""
    out: list[np.ndarray | None] = [None] * len(index)
    positions = index.reset_index(drop=True)
    for (chunk, file), group in positions.groupby(["chunk", "crop_file"], sort=False):
        faces, _ = load_video_faces(faces_dir / str(chunk) / str(file))
        for pos, idx in zip(group.index, group["crop_idx"], strict=True):
            out[pos] = faces.crops[int(idx)]
    if not out:
        return np.zeros((0, 1, 1, 3), np.uint8)
    return np.stack(out)  # type: ignore[arg-type]
