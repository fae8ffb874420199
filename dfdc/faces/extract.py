"""Face extraction: sampled frames -> MTCNN -> people -> crops, into the crop store.

Per chunk the output is the crop store's folder (``dfdc.faces.store``): one file per
video, ``index.parquet`` (one row per crop) and ``videos.parquet`` (one row per video
with its status, so a faceless or broken video is a recorded reason, not a silent gap).
Each video is keyed by a fingerprint of the protocol, the crop code and the input file,
so a rerun skips finished videos and redoes exactly the stale ones.

Detection runs on a subset of the sampled frames and boxes follow each person between
them (``dfdc.faces.tracks``); a fake reuses its original's tracks. Videos run in worker
processes or on any ``concurrent.futures`` executor (a Dask client's, for a cluster).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfdc.config import ExtractConfig
from dfdc.faces import store
from dfdc.faces.detect import BatchingDetector, Face, FaceDetector, crop_face, resolve_device
from dfdc.faces.tracks import build_tracks
from dfdc.faces.video import VideoError, sample_frames


@dataclass(frozen=True, kw_only=True)
class VideoFaces(store.FaceTracks):
    """The crops of one video and where each came from (one row per person per frame)."""

    crops: np.ndarray  # (n, size, size, 3) uint8


def faces_of_video(
    path: Path,
    detector: FaceDetector | BatchingDetector,
    cfg: ExtractConfig,
    reuse: store.FaceTracks | None = None,
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
    indices: tuple[int, ...],
    images: tuple[np.ndarray, ...],
    detector: FaceDetector | BatchingDetector,
    cfg: ExtractConfig,
) -> list[_Hit]:
    last = len(indices) - 1
    sparse = [p for p in range(len(indices)) if p % cfg.detect_every == 0 or p == last]
    found = dict(zip(sparse, detector.detect_many([images[p] for p in sparse]), strict=True))
    tracks = build_tracks([(indices[p], faces) for p, faces in found.items()], cfg.max_people)
    if not tracks and len(found) < len(indices):
        # Nobody on the sparse frames, or detections too far apart to link (a fast pan between
        # two detected frames leaves one-frame strays): search the rest before giving up.
        rest = [p for p in range(len(indices)) if p not in found]
        found.update(zip(rest, detector.detect_many([images[p] for p in rest]), strict=True))
        tracks = build_tracks([(indices[p], faces) for p, faces in found.items()], cfg.max_people)
    searched = sorted(indices[p] for p in found)
    reach = max((b - a for a, b in itertools.pairwise(searched)), default=0)
    hits: list[_Hit] = []
    for index in indices:
        rank = 0
        for person, track in enumerate(tracks):
            at = track.at(index, reach)
            if at is not None:
                hits.append((index, rank, person, at[0], at[1]))
                rank += 1
    return hits


def _reused_hits(indices: tuple[int, ...], original: store.FaceTracks) -> list[_Hit]:
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


# ----------------------------------------------------------------- running a chunk


@dataclass(frozen=True)
class _Job:
    """One video to extract; picklable, so it runs in a process pool or on a Dask worker."""

    video: str
    path: Path
    target: Path
    cfg: ExtractConfig
    fp: str
    original: Path | None  # stored file of the original whose tracks a fake reuses
    original_fp: str
    original_name: str
    threads: int  # torch threads in the worker (0: leave as is)


_DETECTORS: dict[tuple[str, str], FaceDetector | BatchingDetector] = {}


def _detector_key(cfg: ExtractConfig) -> tuple[str, str]:
    return store.protocol_fingerprint(cfg), cfg.device


def _detector(cfg: ExtractConfig, threads: int) -> FaceDetector | BatchingDetector:
    """One detector per process and protocol, built on first use (or the GPU's shared one)."""
    key = _detector_key(cfg)
    if key not in _DETECTORS:
        if threads:
            import torch

            torch.set_num_threads(threads)  # N processes x 1 thread beat threads fighting
        _DETECTORS[key] = FaceDetector(cfg)
    return _DETECTORS[key]


def _share_detector(cfg: ExtractConfig) -> BatchingDetector:
    """The GPU's one detector for this chunk's threads: their frames are detected in batches."""
    shared = BatchingDetector(FaceDetector(cfg))
    _DETECTORS[_detector_key(cfg)] = shared
    return shared


def _run_job(job: _Job) -> dict[str, object]:
    """Extract one video; a failure is a status with its reason, never an exception."""
    start = time.perf_counter()
    status: dict[str, object] = {"video": job.video, "status": "ok", "detail": "", "seconds": 0.0}
    for _attempt in range(job.cfg.video_retries + 1):
        try:
            reuse = store.fresh_record(job.original, job.original_fp)
            faces = faces_of_video(job.path, _detector(job.cfg, job.threads), job.cfg, reuse)
            if faces.source:
                faces = dataclasses.replace(faces, source=job.original_name)
            store.write_video(job.target, list(faces.crops), faces, job.fp, job.cfg)
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
    reason and never stop the chunk (:func:`check_failure_budget` judges the table
    afterwards). Originals run first and their fakes reuse their tracks. Videos run on
    ``executor`` (e.g. a Dask client's), else on ``cfg.workers`` local processes, else
    in this process. The returned table has each video's ``seconds`` for reports; the
    stored tables have no timings.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    protocol = store.protocol_fingerprint(cfg)
    rows = list(videos.itertuples(index=False))
    names = [r.filename for r in rows]
    target = {n: store.video_file(out_dir, n) for n in names}
    original_of = {
        r.filename: r.original
        for r in rows
        if cfg.reuse_originals and isinstance(r.original, str) and r.original in target
    }
    digest = {n: _digest(chunk_dir / n) for n in names}
    # A fake that reuses its original's tracks depends on the original's file too.
    source = {n: digest[n] + (f"+{digest[original_of[n]]}" if n in original_of else "") for n in names}
    fp = {n: store.video_fingerprint(protocol, source[n]) for n in names}
    todo = {n for n in names if store.fresh_record(target[n], fp[n]) is None}
    remote = executor is not None
    # On a GPU: one process (one CUDA context), threads decoding, one batching detector.
    gpu = not remote and resolve_device(cfg.device).startswith("cuda") and len(todo) > 1
    threads = 1 if remote or (not gpu and cfg.workers > 1 and len(todo) > 1) else 0
    jobs = [
        _Job(n, chunk_dir / n, target[n], cfg, fp[n], target.get(o := original_of.get(n, "")),
             fp.get(o, ""), o, threads)
        for n in names
        if n in todo
    ]  # fmt: skip
    pool: Executor
    shared: BatchingDetector | None = None
    if executor is not None:
        pool = executor
    elif gpu:
        shared = _share_detector(cfg)
        pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="dfdc-extract")
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
        if shared is not None:
            _DETECTORS.pop(_detector_key(cfg), None)
            shared.close()
    keep = {p.name for p in target.values()}
    for stale in store.stored_files(out_dir):
        if stale.name not in keep:
            stale.unlink()
    for leftover in out_dir.glob(f".*{store.TMP_SUFFIX}"):  # a write a killed run left half done
        leftover.unlink(missing_ok=True)
    order = {n: i for i, n in enumerate(names)}
    done.sort(key=lambda s: order[str(s["video"])])
    table = pd.DataFrame(done, columns=["video", "status", "detail", "seconds"])
    statuses = store.write_tables(chunk_dir.name, videos, out_dir, table).assign(seconds=table["seconds"])
    crashed = statuses[statuses["status"] == "crashed"]
    if len(crashed):
        raise ExtractionIncomplete(f"{len(crashed)} videos lost to dead workers: {crashed['detail'].iloc[0]}")
    return statuses


def _digest(path: Path) -> str:
    """The input's identity; a missing or unreadable one gets a digest nothing stored matches."""
    try:
        return store.video_digest(path)
    except OSError:
        return "unreadable"


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


# ----------------------------------------------------------------- a failure budget

# Statuses that are not failures: extracted, or readable with nobody in it (DFDC has such
# clips; training and prediction handle them). Any other status, one added later included,
# counts against the budget until it is listed here.
USABLE = frozenset({"ok", "no_face"})
_EXAMPLES = 3  # file names shown per reason
_DETAIL_CHARS = 100
_QUOTED_PATH = re.compile(r"(['\"])[^'\"]*[/\\]([^/\\'\"]+)\1")  # a quoted path: its name is enough


class FailureBudgetExceeded(RuntimeError):
    """More of a chunk's videos failed than ``extract.max_failure_share``; the good ones are stored."""


def failed(statuses: pd.DataFrame) -> pd.Series:
    """Which videos failed: every status but ``ok`` and ``no_face``.

    That is a file missing, unreadable, undecodable, audio-only or empty, an exception
    while extracting (``error``) or a dead worker (``crashed``). A readable video with no
    face is data, not a failure of the pipeline.
    """
    return ~statuses["status"].isin(USABLE)


def check_failure_budget(statuses: pd.DataFrame, max_share: float) -> None:
    """Raise :class:`FailureBudgetExceeded` when more than ``max_share`` of a chunk's videos failed.

    ``statuses`` is :func:`extract_chunk`'s table (of one chunk or several). Call it after
    extraction, which stores every good video and both tables whatever the outcome, so a
    rerun after fixing or dropping the bad files redoes only those. A chunk exactly at the
    budget passes; the message has one block per chunk over it.
    """
    blocks = [
        _budget_report(str(chunk), rows, max_share)
        for chunk, rows in statuses.groupby("chunk", sort=False)
        if failed(rows).sum() > max_share * len(rows)
    ]
    if blocks:
        hint = (
            "The good videos are stored: fix or remove the failed files (or raise "
            "extract.max_failure_share) and rerun; finished videos are not redone."
        )
        raise FailureBudgetExceeded("\n".join([*blocks, hint]))


def _budget_report(chunk: str, rows: pd.DataFrame, max_share: float) -> str:
    """A line naming the chunk and its failed share against the budget, then a table of reasons."""
    bad = rows[failed(rows)]
    head = (
        f"{chunk}: {len(bad)} of {len(rows)} videos failed ({len(bad) / len(rows):.1%}), "
        f"more than the budget extract.max_failure_share = {max_share:.1%}"
    )
    groups = sorted(bad.groupby("status", sort=False), key=lambda g: (-len(g[1]), str(g[0])))
    width = max(len("reason"), *(len(str(status)) for status, _ in groups))
    lines = [f"  {'reason':<{width}}  videos  examples (first detail)"]
    lines += [_reason_line(str(status), group, width) for status, group in groups]
    return "\n".join([head, *lines])


def _reason_line(status: str, group: pd.DataFrame, width: int) -> str:
    """``status  count  a few names (the first one's detail, on one line)``."""
    names = group["video"].astype(str).tolist()
    more = len(names) - _EXAMPLES
    examples = ", ".join(names[:_EXAMPLES]) + (f", +{more} more" if more > 0 else "")
    detail = _QUOTED_PATH.sub(r"\1\2\1", " ".join(str(group["detail"].iloc[0]).split()))
    if len(detail) > _DETAIL_CHARS:
        detail = detail[: _DETAIL_CHARS - 1] + "…"
    return f"  {status:<{width}}  {len(names):>6}  {examples}" + (f"  ({detail})" if detail else "")
