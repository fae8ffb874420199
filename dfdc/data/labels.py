"""Per-crop labels from each fake's difference with its original.

DFDC labels whole videos, but a fake's manipulation is not everywhere in it: in a video
of two people often only one face was swapped, and a voice-only fake's faces are
untouched copies of its original's. Labelling every crop of a FAKE video FAKE teaches the
face model that untouched faces are fake. DFDC fakes are pixel-aligned with their
originals, so each fake crop is compared with the original's crop of the same person at
the same frame: a face that does not differ is labelled REAL for the face model. The
video's own label stays as DFDC gives it; metrics are always on video labels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from dfdc.config import LabelsConfig
from dfdc.faces.detect import crop_transform
from dfdc.faces.store import VIDEOS_FILE, VideoRecord, read_index, read_record, read_video_crops, video_file

LABEL_COLUMNS = [
    "chunk", "video", "crop_idx", "person", "frame", "face_diff", "crop_label", "label_source",
]  # fmt: skip
# label_source: "real" (a REAL video), "original" (compared with the original's crop),
# "video" (a FAKE with no original crop to compare: the video label is kept).
SUMMARY_KEYS = ("n_fakes", "n_face_changed", "n_face_untouched", "n_original_missing", "crops_fake_share")


def face_box_in_crop(
    box: np.ndarray, margin: float, size: int, frame_shape: tuple[int, int]
) -> tuple[int, ...]:
    """The detector's box in crop pixels ``(x0, y0, x1, y1)``: the face, without the margin."""
    scale, offset = crop_transform(tuple(box), margin, size, frame_shape)
    x0, y0 = np.floor(box[:2] * scale + offset).astype(int)
    x1, y1 = np.ceil(box[2:] * scale + offset).astype(int)
    return max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)


def aligned(
    fake: np.ndarray, fake_box: np.ndarray, original_box: np.ndarray, margin: float,
    frame_shape: tuple[int, int],
) -> np.ndarray:  # fmt: skip
    """The fake crop resampled into the original crop's pixels.

    A fake whose tracks were detected afresh (its original sits in another chunk) has
    boxes a pixel or so off the original's; compared as they are, the two crops differ at
    every edge of an untouched face. Both crops are known affine maps of the frame
    (``crop_transform``), so one is mapped onto the other exactly.
    """
    size = fake.shape[0]
    if np.array_equal(fake_box, original_box):
        return fake
    s_f, t_f = crop_transform(tuple(fake_box), margin, size, frame_shape)
    s_o, t_o = crop_transform(tuple(original_box), margin, size, frame_shape)
    a = s_f / s_o  # original-crop pixel -> fake-crop pixel: c_f = a * c_o + (t_f - a * t_o)
    b = t_f - a * t_o
    matrix = np.array([[a[0], 0.0, b[0]], [0.0, a[1], b[1]]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(fake, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def crop_difference(fake: np.ndarray, original: np.ndarray, region: tuple[int, ...]) -> float:
    """How much a face differs from its original, in grey levels (0-255).

    The mean of the largest tenth of the per-pixel differences inside the face box, after a
    small blur: the blur averages away compression noise (both videos were encoded, the
    crops too), and the top tenth keeps a local edit (a mouth, the eyes) from being diluted
    by the untouched rest of the face.
    """
    x0, y0, x1, y1 = region
    if x1 - x0 < 2 or y1 - y0 < 2:
        return float("nan")
    a = fake[y0:y1, x0:x1].astype(np.float32)
    b = original[y0:y1, x0:x1].astype(np.float32)
    diff = cv2.GaussianBlur(np.abs(a - b).mean(axis=2), (0, 0), sigmaX=1.0)
    top = np.sort(diff, axis=None)[-max(1, diff.size // 10) :]
    return float(top.mean())


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda boxes: (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_crops(fake: VideoRecord, original: VideoRecord, min_iou: float) -> np.ndarray:
    """For each fake crop, the original's crop of the same face at the same frame, or -1.

    With the original's tracks reused the boxes are identical; otherwise the best overlap
    on that frame, if at least ``min_iou``.
    """
    match = np.full(len(fake.frames), -1, dtype=np.int64)
    for frame in np.unique(fake.frames):
        mine = np.flatnonzero(fake.frames == frame)
        theirs = np.flatnonzero(original.frames == frame)
        if not len(theirs):
            continue
        iou = box_iou(fake.boxes[mine], original.boxes[theirs])
        best = iou.argmax(axis=1)
        ok = iou[np.arange(len(mine)), best] >= min_iou
        match[mine[ok]] = theirs[best[ok]]
    return match


def _rows(
    chunk: str, video: str, record: VideoRecord, diffs: np.ndarray, labels: list[str], source: list[str]
) -> pd.DataFrame:
    columns = {
        "chunk": chunk, "video": video, "crop_idx": np.arange(len(record.frames)),
        "person": record.persons.astype(np.int64), "frame": record.frames.astype(np.int64),
        "face_diff": diffs.astype(np.float64), "crop_label": labels, "label_source": source,
    }  # fmt: skip
    return pd.DataFrame(columns, columns=LABEL_COLUMNS)


def label_fake(
    chunk: str, video: str, fake_path: Path, original: tuple[VideoRecord, np.ndarray] | None,
    cfg: LabelsConfig, margin: float,
) -> pd.DataFrame:  # fmt: skip
    """One row per crop of a fake: its difference with the original's crop and its label.

    ``original`` is the original's record and decoded crops, None when it is not stored.
    """
    record = read_record(fake_path)
    n = len(record.frames)
    diffs = np.full(n, np.nan)
    if original is not None and n:
        source, source_crops = original
        match = match_crops(record, source, cfg.min_iou)
        crops = read_video_crops(fake_path, record)
        size, shape = crops.shape[1], (record.height, record.width)
        for j in np.flatnonzero(match >= 0):
            box = source.boxes[match[j]]
            region = face_box_in_crop(box, margin, size, shape)
            fake = aligned(crops[j], record.boxes[j], box, margin, shape)
            diffs[j] = crop_difference(fake, source_crops[match[j]], region)
    compared = ~np.isnan(diffs)
    labels = np.where(compared & (diffs <= cfg.diff_threshold), "REAL", "FAKE").tolist()
    source = np.where(compared, "original", "video").tolist()
    return _rows(chunk, video, record, diffs, labels, source)


def label_family(
    original_path: Path | None, fakes: list[tuple[str, str, Path]], cfg: LabelsConfig, margin: float
) -> list[pd.DataFrame]:
    """Every fake made from one original; the original's record and crops are read once for all of them."""
    original = None
    if original_path is not None:
        record = read_record(original_path)
        original = (record, read_video_crops(original_path, record))
    return [label_fake(chunk, video, path, original, cfg, margin) for chunk, video, path in fakes]


def store_locations(faces_dir: Path, chunks: Iterable[str]) -> dict[str, Path]:
    """Every stored video's file, by video name, across ``chunks`` (an original may sit in another)."""
    found: dict[str, Path] = {}
    for chunk in chunks:
        videos = pd.read_parquet(Path(faces_dir) / chunk / VIDEOS_FILE, columns=["video"])
        for name in videos["video"]:
            path = video_file(Path(faces_dir) / chunk, name)
            if path.is_file():
                found[name] = path
    return found


def label_chunk(
    faces_dir: Path, chunk: str, locations: dict[str, Path], cfg: LabelsConfig, margin: float
) -> pd.DataFrame:
    """Labels of every crop of one chunk; fakes are compared family by family in ``cfg.workers`` threads.

    Image decoding and the difference run in OpenCV and numpy, which release the GIL.
    """
    columns = ["video", "label", "original", "crop_idx", "person", "frame"]
    index = read_index(faces_dir, [chunk], columns=columns)
    real = index[index["label"] == "REAL"]
    reals = real.assign(chunk=chunk, face_diff=np.nan, crop_label="REAL", label_source="real")[LABEL_COLUMNS]
    videos = index.drop_duplicates("video")
    fakes = videos[videos["label"] == "FAKE"]
    families = [
        (locations.get(original), [(chunk, v, locations[v]) for v in group["video"]])
        for original, group in fakes.groupby("original")
    ]
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        done = pool.map(lambda f: label_family(*f, cfg, margin), families)
        parts = [rows for family in done for rows in family]
    frames = [p for p in [reals, *parts] if len(p)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LABEL_COLUMNS)
    return table.sort_values(["video", "crop_idx"], ignore_index=True)


def video_face_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """One row per labelled fake: ``face`` is ``changed``, ``untouched`` or ``original_missing``.

    ``changed``: some face differs from the original. ``untouched``: every crop was compared
    and none differs (a candidate voice-only fake). ``original_missing``: no difference was
    found but some crop had nothing to compare with, so the video label stands for those.
    """
    fakes = labels[labels["label_source"] != "real"]
    compared = fakes["label_source"] == "original"
    per_video = (
        fakes.assign(changed=compared & (fakes["crop_label"] == "FAKE"), uncompared=~compared)
        .groupby(["chunk", "video"])[["changed", "uncompared"]]
        .any()
    )
    face = np.where(
        per_video["changed"], "changed", np.where(per_video["uncompared"], "original_missing", "untouched")
    )
    return per_video.assign(face=face)[["face"]].reset_index()


def face_changed(labels: pd.DataFrame) -> pd.DataFrame:
    """``chunk, video, face_changed`` per labelled video: the face branch's own target.

    1.0 when some face differs from the original's, 0.0 for a real and for a fake whose every
    face is untouched (a voice-only fake), NaN when the original was missing (unknown).
    """
    faces = video_face_labels(labels)
    fakes = faces.assign(face_changed=faces["face"].map({"changed": 1.0, "untouched": 0.0}))
    reals = labels.loc[labels["label_source"] == "real", ["chunk", "video"]].drop_duplicates()
    parts = [reals.assign(face_changed=0.0), fakes[["chunk", "video", "face_changed"]]]
    return pd.concat(parts, ignore_index=True).astype({"face_changed": "float64"})


def summarize(labels: pd.DataFrame, cfg: LabelsConfig) -> dict[str, float]:
    """Flat figures for ``reports/labels.json`` (``dvc metrics``): how many fakes keep a fake face."""
    faces = video_face_labels(labels)["face"].value_counts()
    fake_rows = labels["label_source"] != "real"
    share = float((labels.loc[fake_rows, "crop_label"] == "FAKE").mean()) if fake_rows.any() else float("nan")
    return {
        "n_fakes": int(faces.sum()),
        "n_face_changed": int(faces.get("changed", 0)),
        "n_face_untouched": int(faces.get("untouched", 0)),
        "n_original_missing": int(faces.get("original_missing", 0)),
        "crops_fake_share": share,  # of the crops of fake videos
        "diff_threshold": cfg.diff_threshold,
    }


def training_labels(index: pd.DataFrame, labels: pd.DataFrame, cfg: LabelsConfig) -> pd.DataFrame:
    """``index`` with ``train_label``: what the face model learns for each crop.

    ``cfg.use == "video"`` keeps DFDC's video label (the ablation). Otherwise each crop
    takes its own label, and the crops of fakes whose faces are all untouched are either
    kept as REAL or dropped (``cfg.untouched``). Crops with no label row keep the video's.
    """
    if cfg.use == "video":
        return index.assign(train_label=index["label"])
    keys = ["chunk", "video", "crop_idx"]
    merged = index.merge(labels[[*keys, "crop_label"]], on=keys, how="left")
    merged["train_label"] = merged["crop_label"].fillna(merged["label"])
    if cfg.untouched == "drop":
        faces = video_face_labels(labels)
        untouched = faces.loc[faces["face"] == "untouched", ["chunk", "video"]].assign(_drop=True)
        merged = merged.merge(untouched, on=["chunk", "video"], how="left")
        merged = merged[merged["_drop"].isna()].drop(columns="_drop")
    return merged.drop(columns="crop_label").reset_index(drop=True)


def write_labels(table: pd.DataFrame, path: Path) -> None:
    """Write one chunk's labels beside a hidden temporary, then rename (a kill leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    table.to_parquet(partial, index=False)
    partial.replace(path)


def read_labels(labels_dir: Path, chunks: Iterable[str]) -> pd.DataFrame:
    """The labels of several chunks (see :data:`LABEL_COLUMNS`); a chunk never labelled is an error."""
    paths = [Path(labels_dir) / f"{c}.parquet" for c in chunks]
    if missing := [p for p in paths if not p.is_file()]:
        raise FileNotFoundError(f"{missing[0]}: no labels for this chunk; run `dfdc labels` first")
    frames = [pd.read_parquet(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LABEL_COLUMNS)


def write_summary(summary: dict[str, float], path: Path) -> None:
    """``reports/labels.json``: flat keys, so ``dvc metrics diff`` compares label runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
