"""The crop store: the one on-disk format of extracted faces, read by every later stage.

Per chunk, ``<faces_dir>/<chunk>/`` holds one uncompressed zip per video (``<stem>.zip``:
its crops as encoded images ``0000.jpg`` ... and ``record.json`` last), ``index.parquet``
(one row per crop, with the byte offset and length of its image inside the zip) and
``videos.parquet`` (one row per video). Hence:

- one crop is read by a seek and one image decode, without touching its siblings;
- a video's record (fingerprint, boxes, landmarks, sizes) is read without any pixels;
- DVC sees one file per video, and a redone video changes exactly one file;
- a zip opens in any archive tool, and its bytes depend on nothing but the crops and the
  record (fixed member timestamps, sorted JSON): an unchanged video is byte-identical.

The fingerprint of a video covers the protocol (every extract setting that changes a
crop), :data:`CROP_CODE_VERSION` and the input file's identity (:func:`video_digest`), so a
change to any of them redoes that video and nothing else.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import cv2
import numpy as np
import pandas as pd

from dfdc.config import ExtractConfig
from dfdc.protocol import extract_protocol

# Bump when the code that turns a video into crops changes what it produces (sampling,
# detection, tracking, the crop policy, the encoder): every stored video is then redone.
CROP_CODE_VERSION = 3  # 3: unlinked sparse detections search every sampled frame

RECORD = "record.json"
INDEX_FILE = "index.parquet"
VIDEOS_FILE = "videos.parquet"
SUFFIX = ".zip"
TMP_SUFFIX = ".tmp"  # hidden (``.name.tmp``) until complete, then renamed to ``<stem>.zip``
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip member time: fixed, so equal crops give equal bytes
_HEAD = 1 << 16  # bytes hashed at each end of a video (the mp4 index lives at one of them)
_EXT = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}


def protocol_fingerprint(cfg: ExtractConfig) -> str:
    """Hash of every setting that changes a crop, and of the crop code's version."""
    payload = {"extract": extract_protocol(cfg), "code": CROP_CODE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def video_digest(path: Path) -> str:
    """Identity of an input video: its size and the first and last 64 KiB.

    Cheaper than hashing the whole file (128 KiB read, not ~4 MB) and, unlike mtime, the
    same on every machine and after a ``dvc checkout``. A re-encoded or replaced mp4 differs
    in its index (``moov``, at one end of the file), which lists every sample's size.
    """
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(_HEAD))
        if size > _HEAD:
            f.seek(max(size - _HEAD, _HEAD))
            h.update(f.read(_HEAD))
    return h.hexdigest()[:16]


def video_fingerprint(protocol: str, digest: str) -> str:
    """What a stored video must have been made under to be reused: protocol and input."""
    return f"{protocol}-{digest}"


# ----------------------------------------------------------------- encoding


def encode_crop(crop: np.ndarray, cfg: ExtractConfig) -> bytes:
    """An RGB uint8 crop as image bytes in ``cfg.crop_format`` (deterministic)."""
    params = {
        "jpeg": [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality],
        "png": [cv2.IMWRITE_PNG_COMPRESSION, 3],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, 101],  # > 100: lossless
    }[cfg.crop_format]
    ok, data = cv2.imencode(_EXT[cfg.crop_format], cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"cannot encode a crop of shape {crop.shape} as {cfg.crop_format}")
    return data.tobytes()


def decode_crop(data: bytes) -> np.ndarray:
    """Image bytes back to an RGB uint8 crop."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("crop bytes are not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def as_stored(crop: np.ndarray, cfg: ExtractConfig) -> np.ndarray:
    """The crop exactly as training reads it back from the store (prediction feeds this)."""
    return decode_crop(encode_crop(crop, cfg))


# ----------------------------------------------------------------- one video


@dataclass(frozen=True, kw_only=True)
class FaceTracks:
    """Where the faces of one video are: one entry per crop (one person on one sampled frame)."""

    frames: np.ndarray  # (n,) frame index in the stream
    faces: np.ndarray  # (n,) rank of the face within its frame
    persons: np.ndarray  # (n,) track id: 0 is the strongest person of the video
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2 in frame pixels
    probs: np.ndarray  # (n,)
    landmarks: np.ndarray  # (n, 10)
    detected: np.ndarray  # (n,) found on this frame, not interpolated along the track
    n_sampled: int = 0
    n_frames: int = 0
    width: int = 0
    height: int = 0
    truncated: bool = False
    source: str = ""  # the original whose tracks were reused, "" when detected here


@dataclass(frozen=True, kw_only=True)
class VideoRecord(FaceTracks):
    """What the store knows of one video without its pixels: its tracks, fingerprint and crop places."""

    fingerprint: str
    offsets: np.ndarray  # (n,) where each crop's image starts in the file
    sizes: np.ndarray  # (n,) its length in bytes
    crop_format: str = "jpeg"


_ARRAYS = {
    "frames": (np.int32, (-1,)), "faces": (np.int16, (-1,)), "persons": (np.int16, (-1,)),
    "boxes": (np.float32, (-1, 4)), "probs": (np.float32, (-1,)), "landmarks": (np.float32, (-1, 10)),
    "detected": (bool, (-1,)), "offsets": (np.int64, (-1,)), "sizes": (np.int64, (-1,)),
}  # fmt: skip


def _record_json(record: VideoRecord) -> bytes:
    fields = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in record.__dict__.items()}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _record_of(raw: dict[str, Any]) -> VideoRecord:
    arrays = {k: np.asarray(raw.pop(k), dtype).reshape(shape) for k, (dtype, shape) in _ARRAYS.items()}
    return VideoRecord(**arrays, **raw)


def write_video(
    path: Path, crops: Sequence[np.ndarray], tracks: FaceTracks, fingerprint: str, cfg: ExtractConfig
) -> VideoRecord:
    """Write one video's crops and its record atomically; return the record (with the crops' offsets).

    A killed run leaves the old file or none, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=TMP_SUFFIX)
    os.close(fd)
    ext = _EXT[cfg.crop_format]
    try:
        offsets, sizes = [], []
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for j, crop in enumerate(crops):
                info = zipfile.ZipInfo(f"{j:04d}{ext}", date_time=_EPOCH)
                data = encode_crop(crop, cfg)
                archive.writestr(info, data)
                offsets.append(info.header_offset + 30 + len(info.filename.encode()) + len(info.extra))
                sizes.append(len(data))
            record = VideoRecord(
                **{f.name: getattr(tracks, f.name) for f in dataclasses.fields(FaceTracks)},
                fingerprint=fingerprint, offsets=np.asarray(offsets, np.int64),
                sizes=np.asarray(sizes, np.int64), crop_format=cfg.crop_format,
            )  # fmt: skip
            archive.writestr(zipfile.ZipInfo(RECORD, date_time=_EPOCH), _record_json(record))
        Path(tmp).replace(path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return record


def read_record(path: Path) -> VideoRecord:
    """A video's record, read from the end of its file: no pixels are touched."""
    with zipfile.ZipFile(path) as archive:
        return _record_of(json.loads(archive.read(RECORD)))


def fresh_record(path: Path | None, fingerprint: str) -> VideoRecord | None:
    """The stored record when the file exists, is readable and was made under ``fingerprint``."""
    if path is None or not path.is_file():
        return None
    try:
        record = read_record(path)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None  # a corrupt leftover is redone, not trusted
    return record if record.fingerprint == fingerprint else None


def read_crop(path: Path, offset: int, size: int) -> np.ndarray:
    """One crop by its place in the file: a seek, a read and one image decode."""
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise ValueError(f"{path}: crop at byte {offset} is cut short")
    return decode_crop(data)


def read_video_crops(path: Path, record: VideoRecord | None = None) -> np.ndarray:
    """Every crop of one stored video, in record order ``(n, h, w, 3)`` (``record``: already read)."""
    record = record if record is not None else read_record(path)
    crops = [read_crop(path, int(o), int(s)) for o, s in zip(record.offsets, record.sizes, strict=True)]
    return np.stack(crops) if crops else np.zeros((0, 1, 1, 3), np.uint8)


# ----------------------------------------------------------------- a chunk


INDEX_COLUMNS = [
    "chunk", "video", "frame", "face", "person", "detected", "x1", "y1", "x2", "y2", "width", "height",
    "prob", "landmarks", "label", "original", "crop_file", "crop_idx", "crop_offset", "crop_bytes",
    "fingerprint",
]  # fmt: skip

# Per-video facts from the record, and their value for a video that has none.
VIDEO_DEFAULTS: dict[str, object] = {
    "n_crops": 0, "n_people": 0, "width": 0, "height": 0, "n_frames": 0, "truncated": False, "source": "",
    "fingerprint": "",
}  # fmt: skip


def video_file(out_dir: Path, video: str) -> Path:
    """Where the crops of ``video`` (a file name such as ``abc.mp4``) are stored."""
    return out_dir / f"{Path(video).stem}{SUFFIX}"


def stored_files(out_dir: Path) -> list[Path]:
    """Every finished video file of a chunk folder (temporary leftovers excluded)."""
    return sorted(p for p in out_dir.glob(f"*{SUFFIX}") if not p.name.startswith("."))


def write_tables(chunk: str, videos: pd.DataFrame, out_dir: Path, statuses: pd.DataFrame) -> pd.DataFrame:
    """Assemble ``index.parquet`` and ``videos.parquet`` from the records (no pixels read).

    ``videos`` holds the chunk's metadata rows, ``statuses`` one row per video with
    ``video``, ``status`` and ``detail``. Nothing run-dependent (timings, hosts) is written.
    """
    meta = videos.set_index("filename")
    records: list[dict[str, object]] = []
    per_video: dict[str, dict[str, object]] = {}
    for name in meta.index:
        path = video_file(out_dir, name)
        if not path.is_file():
            continue
        rec = read_record(path)
        per_video[name] = {
            "n_crops": len(rec.frames), "n_people": len(set(rec.persons.tolist())), "width": rec.width,
            "height": rec.height, "n_frames": rec.n_frames, "truncated": rec.truncated, "source": rec.source,
            "fingerprint": rec.fingerprint,
        }  # fmt: skip
        for j in range(len(rec.frames)):
            records.append(
                {
                    "chunk": chunk, "video": name, "frame": int(rec.frames[j]), "face": int(rec.faces[j]),
                    "person": int(rec.persons[j]), "detected": bool(rec.detected[j]),
                    "x1": float(rec.boxes[j, 0]), "y1": float(rec.boxes[j, 1]),
                    "x2": float(rec.boxes[j, 2]), "y2": float(rec.boxes[j, 3]),
                    "width": rec.width, "height": rec.height, "prob": float(rec.probs[j]),
                    "landmarks": rec.landmarks[j].tolist(), "label": meta.at[name, "label"],
                    "original": meta.at[name, "original"], "crop_file": path.name, "crop_idx": j,
                    "crop_offset": int(rec.offsets[j]), "crop_bytes": int(rec.sizes[j]),
                    "fingerprint": rec.fingerprint,
                }
            )  # fmt: skip
    index = pd.DataFrame.from_records(records, columns=INDEX_COLUMNS)
    index.to_parquet(out_dir / INDEX_FILE, index=False)
    found = pd.DataFrame.from_dict(per_video, orient="index", columns=list(VIDEO_DEFAULTS))
    table = statuses[["video", "status", "detail"]].assign(chunk=chunk)
    for column, default in VIDEO_DEFAULTS.items():
        values = table["video"].map(found[column]) if len(found) else pd.Series(index=table.index)
        table[column] = values.where(values.notna(), default).astype(type(default))
    no_face = (table["status"] == "ok") & (table["n_crops"] == 0)
    table.loc[no_face, "status"] = "no_face"
    table.to_parquet(out_dir / VIDEOS_FILE, index=False)
    return table


def read_index(faces_dir: Path, chunks: Iterable[str], columns: list[str] | None = None) -> pd.DataFrame:
    """The face index of several chunks, one row per crop (only ``columns`` when given)."""
    frames = [pd.read_parquet(faces_dir / c / INDEX_FILE, columns=columns) for c in chunks]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or INDEX_COLUMNS)


# ----------------------------------------------------------------- streaming reads


class StoredCrops(Sequence[np.ndarray]):
    """The crops of some index rows, read from the store on demand (nothing held in memory).

    Holds only numpy arrays (file code, offset, length per crop) and the list of files, so
    ``DataLoader`` workers share it without copying: memory is set by what is read at once,
    not by the number of rows. ``crops[i]`` is one crop; ``crops[a:b]`` a stacked batch.
    """

    def __init__(self, faces_dir: Path, rows: pd.DataFrame) -> None:
        paths = rows["chunk"].astype(str) + "/" + rows["crop_file"].astype(str)
        codes, files = pd.factorize(paths, sort=False)
        first = np.unique(codes, return_index=True)[1]  # codes number files in order of appearance
        self.faces_dir = Path(faces_dir)
        self.files = tuple(str(f) for f in files)
        self.fingerprints = tuple(str(f) for f in rows["fingerprint"].to_numpy()[first])  # one per file
        self.file = codes.astype(np.int32)
        self.offset = rows["crop_offset"].to_numpy(np.int64)
        self.size = rows["crop_bytes"].to_numpy(np.int64)

    def __len__(self) -> int:
        return len(self.offset)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> np.ndarray: ...
    def __getitem__(self, i: int | slice) -> np.ndarray:
        if isinstance(i, slice):
            items = [self[j] for j in range(*i.indices(len(self)))]
            return np.stack(items) if items else np.zeros((0, 1, 1, 3), np.uint8)
        path = self.faces_dir / self.files[self.file[i]]
        return read_crop(path, int(self.offset[i]), int(self.size[i]))

    def select(self, positions: np.ndarray) -> StoredCrops:
        """The crops at ``positions``, still unread (one rank's share, a sample)."""
        out = copy.copy(self)
        out.file, out.offset, out.size = self.file[positions], self.offset[positions], self.size[positions]
        return out

    def identity(self) -> str:
        """A hash of which stored crops these are: each file with its video's fingerprint, each crop's place.

        The folder they sit in is left out, so the same store moved elsewhere has the same identity.
        """
        h = hashlib.sha256("\n".join(map(" ".join, zip(self.files, self.fingerprints, strict=True))).encode())
        for column in (self.file, self.offset, self.size):
            h.update(column.tobytes())
        return h.hexdigest()[:16]


def crops_identity(crops: np.ndarray | StoredCrops) -> str:
    """What a training fingerprint records of a crop source.

    The store's identity for stored crops; the pixels of a small in-memory array (tests).
    """
    if isinstance(crops, StoredCrops):
        return crops.identity()
    return hashlib.sha256(np.ascontiguousarray(crops).tobytes()).hexdigest()[:16]
