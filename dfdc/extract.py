"""Face extraction: sampled frames -> MTCNN -> crops, one packed file per video.

Per chunk the output is ``<faces_dir>/<chunk>/<video>.npz`` (crops plus their boxes,
probabilities and landmarks), ``index.parquet`` (one row per crop) and
``videos.parquet`` (one row per video with its status, so a faceless or broken video
is a recorded reason, not a silent gap). Writes are atomic and keyed by a fingerprint
of the extraction settings, so a rerun skips finished videos and redoes stale ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dfdc.config import ExtractConfig
from dfdc.faces import FaceDetector, crop_face
from dfdc.video import VideoError, sample_frames

INDEX_FILE = "index.parquet"
VIDEOS_FILE = "videos.parquet"


@dataclass(frozen=True)
class VideoFaces:
    """The crops of one video and where each came from."""

    crops: np.ndarray  # (n, size, size, 3) uint8
    frames: np.ndarray  # (n,) frame index in the stream
    faces: np.ndarray  # (n,) rank of the face within its frame
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2 in frame pixels
    probs: np.ndarray  # (n,)
    landmarks: np.ndarray  # (n, 10)
    n_sampled: int


def fingerprint(cfg: ExtractConfig) -> str:
    """Hash of every setting that changes the crops (the device does not)."""
    payload = cfg.model_dump(mode="json", exclude={"device"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def faces_of_video(path: Path, detector: FaceDetector, cfg: ExtractConfig) -> VideoFaces:
    """Sample frames, detect and crop faces: the protocol shared by extraction and prediction."""
    frames = sample_frames(path, cfg.frames_per_video)
    rows: list[tuple[int, int, tuple[float, ...], float, tuple[float, ...]]] = []
    crops: list[np.ndarray] = []
    for index, image in zip(frames.indices, frames.images, strict=True):
        for rank, face in enumerate(detector.detect(image)):
            crops.append(crop_face(image, face.box, cfg.margin, cfg.crop_size))
            rows.append((index, rank, face.box, face.prob, face.landmarks))
    size = cfg.crop_size
    return VideoFaces(
        crops=np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
        frames=np.array([r[0] for r in rows], dtype=np.int32),
        faces=np.array([r[1] for r in rows], dtype=np.int16),
        boxes=np.array([r[2] for r in rows], dtype=np.float32).reshape(-1, 4),
        probs=np.array([r[3] for r in rows], dtype=np.float32),
        landmarks=np.array([r[4] for r in rows], dtype=np.float32).reshape(-1, 10),
        n_sampled=len(frames.indices),
    )


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
        fields["n_sampled"] = int(fields["n_sampled"])
        return VideoFaces(**fields), str(data["fingerprint"])


def _is_fresh(path: Path, fp: str) -> bool:
    if not path.is_file():
        return False
    try:
        return load_video_faces(path)[1] == fp
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False  # a corrupt leftover is redone, not trusted


def extract_chunk(
    chunk_dir: Path,
    videos: pd.DataFrame,
    out_dir: Path,
    cfg: ExtractConfig,
    progress: Callable[[Iterable[int]], Iterable[int]] = iter,
) -> pd.DataFrame:
    """Extract every video of one chunk into ``out_dir``; return the per-video status table.

    ``videos`` holds the chunk's metadata rows (``filename``, ``label``, ``original``).
    Finished videos (same fingerprint) are skipped; failures are recorded with their
    reason and never stop the chunk.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(cfg)
    detector: FaceDetector | None = None
    statuses: list[dict[str, object]] = []
    rows = list(videos.itertuples(index=False))
    for i in progress(range(len(rows))):
        row = rows[i]
        target = out_dir / f"{Path(row.filename).stem}.npz"
        status = {"video": row.filename, "status": "ok", "detail": "", "seconds": 0.0}
        if not _is_fresh(target, fp):
            start = time.perf_counter()
            detector = detector or FaceDetector(cfg)
            try:
                faces = faces_of_video(chunk_dir / row.filename, detector, cfg)
                save_video_faces(faces, target, fp)
            except VideoError as err:
                status.update(status=err.reason, detail=err.detail)
                target.unlink(missing_ok=True)
            status["seconds"] = time.perf_counter() - start
        statuses.append(status)
    keep = {f"{Path(r.filename).stem}.npz" for r in rows}
    for stale in out_dir.glob("*.npz"):
        if stale.name not in keep:
            stale.unlink()
    table = pd.DataFrame(statuses, columns=["video", "status", "detail", "seconds"])
    return _write_tables(chunk_dir.name, videos, out_dir, table)


def _write_tables(
    chunk: str, videos: pd.DataFrame, out_dir: Path, statuses: pd.DataFrame
) -> pd.DataFrame:
    """Assemble ``index.parquet`` and ``videos.parquet`` from the packed files."""
    meta = videos.set_index("filename")
    records: list[dict[str, object]] = []
    n_crops: dict[str, int] = {}
    for name in meta.index:
        path = out_dir / f"{Path(name).stem}.npz"
        if not path.is_file():
            continue
        faces, _ = load_video_faces(path)
        n_crops[name] = len(faces.crops)
        for j in range(len(faces.crops)):
            records.append(
                {
                    "chunk": chunk,
                    "video": name,
                    "frame": int(faces.frames[j]),
                    "face": int(faces.faces[j]),
                    "x1": float(faces.boxes[j, 0]),
                    "y1": float(faces.boxes[j, 1]),
                    "x2": float(faces.boxes[j, 2]),
                    "y2": float(faces.boxes[j, 3]),
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
    statuses = statuses.assign(chunk=chunk, n_crops=statuses["video"].map(n_crops).fillna(0))
    no_face = (statuses["status"] == "ok") & (statuses["n_crops"] == 0)
    statuses.loc[no_face, "status"] = "no_face"
    statuses["n_crops"] = statuses["n_crops"].astype(int)
    statuses.to_parquet(out_dir / VIDEOS_FILE, index=False)
    return statuses


INDEX_COLUMNS = [
    "chunk", "video", "frame", "face", "x1", "y1", "x2", "y2", "prob", "landmarks",
    "label", "original", "crop_file", "crop_idx",
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
