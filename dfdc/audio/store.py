"""The audio feature store: every video's log-mel windows, one chunk per folder.

``<features_dir>/<chunk>/`` holds two files:

- ``windows.f16``: the windows of all the chunk's videos, one after the other, float16, C order,
  each ``(n_mels, window_frames)``; a reader maps it (``np.memmap``) and never loads it whole.
- ``index.parquet``: one row per video of the chunk's ``metadata.json`` (``INDEX_COLUMNS``):
  ``status`` is ``ok`` or the ``AudioError`` reason (``no_audio``, ``silent``, ``decode_error`` ...),
  ``offset`` and ``windows`` say which rows of ``windows.f16`` are the video's, ``trim_start_s``
  and ``trimmed_s`` where its sound began and how long it lasts, ``pitch_spread`` how far its
  pitch spreads (``dfdc.audio.pitch``). The schema's metadata carries
  the feature protocol's fingerprint.

Writing streams: one video's windows in memory at a time, appended to the data file. The index
is written last, beside the folder and renamed into it, so a chunk with an index is finished and
one without is redone from its first video. A finished chunk is kept while the feature protocol
(``AudioConfig`` less the model's shape) and its list of videos stay the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dfdc.audio.decode import AudioError
from dfdc.audio.features import audio_windows
from dfdc.config import AudioConfig

DATA_FILE = "windows.f16"
INDEX_FILE = "index.parquet"
INDEX_COLUMNS = (
    "chunk", "video", "status", "detail", "windows", "offset", "trim_start_s", "trimmed_s", "pitch_spread",
)  # fmt: skip
OK = "ok"
DTYPE = np.float16  # log-mel dB minus the clip's mean: |x| < 100, steps of 0.03 dB at most
FEATURES_CODE_VERSION = 2  # bump when dfdc.audio.features changes what a window holds
_MODEL_FIELDS = {"pool", "pool_temperature", "width", "dropout"}  # the model's: no part of a window
_META_KEY = b"dfdc.audio.fingerprint"


def features_fingerprint(cfg: AudioConfig) -> str:
    """Hash of every setting that changes a window, and of the feature code's version."""
    payload = {"audio": cfg.model_dump(mode="json", exclude=_MODEL_FIELDS), "code": FEATURES_CODE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def chunk_dir(features_dir: Path, chunk: str) -> Path:
    """Where one chunk's windows and index live."""
    return Path(features_dir) / chunk


def _made_under(index_path: Path, cfg: AudioConfig) -> bool:
    """Whether the index's recorded feature protocol is ``cfg``'s."""
    meta = pq.read_schema(index_path).metadata or {}
    return meta.get(_META_KEY, b"").decode() == features_fingerprint(cfg)


def chunk_finished(out_dir: Path, videos: Iterable[str], cfg: AudioConfig) -> bool:
    """Whether ``out_dir`` holds a finished chunk of exactly ``videos`` under this feature protocol."""
    index_path = out_dir / INDEX_FILE
    if not index_path.is_file() or not (out_dir / DATA_FILE).is_file() or not _made_under(index_path, cfg):
        return False
    stored = pq.read_table(index_path, columns=["video"]).column("video").to_pylist()
    return sorted(stored) == sorted(videos)


def _write_index(index: pd.DataFrame, path: Path, cfg: AudioConfig) -> None:
    """The index beside its final name, then renamed: the chunk is finished at that instant."""
    table = pa.Table.from_pandas(index, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), _META_KEY: features_fingerprint(cfg).encode()}
    )
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    partial.replace(path)


def write_chunk(chunk: str, paths: Sequence[Path], out_dir: Path, cfg: AudioConfig) -> pd.DataFrame:
    """Compute and store the windows of every video in ``paths``; returns the chunk's index.

    A video whose track cannot be used is a row with its reason and no windows. Any earlier
    index is removed first, so an interrupted run leaves the chunk unfinished.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / INDEX_FILE
    index_path.unlink(missing_ok=True)
    rows, offset = [], 0
    with (out_dir / DATA_FILE).open("wb") as data:
        for path in paths:
            row = {"chunk": chunk, "video": path.name, "status": OK, "detail": "", "windows": 0,
                   "offset": offset, "trim_start_s": np.nan, "trimmed_s": np.nan,
                   "pitch_spread": np.nan}  # fmt: skip
            try:
                features = audio_windows(path, cfg)
            except AudioError as err:
                row.update(status=err.reason, detail=err.detail)
            else:
                windows = features.windows[:, 0].astype(DTYPE)
                data.write(np.ascontiguousarray(windows).tobytes())
                offset += len(windows)
                row.update(
                    windows=len(windows), trim_start_s=features.trim_start_s, trimmed_s=features.trimmed_s,
                    pitch_spread=features.pitch_spread,
                )  # fmt: skip
            rows.append(row)
        data.flush()
        os.fsync(data.fileno())
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS)).astype({"windows": "int64", "offset": "int64"})
    _write_index(index, index_path, cfg)
    return index


def summary_line(chunk: str, index: pd.DataFrame, out_dir: Path | None = None) -> str:
    """One line per chunk: videos, how many usable and why not, windows, bytes on disk."""
    counts = index["status"].value_counts()
    failed = ", ".join(f"{n} {reason}" for reason, n in counts.items() if reason != OK)
    size = f", {(out_dir / DATA_FILE).stat().st_size / 1e6:.1f} MB" if out_dir is not None else ""
    return (
        f"{chunk}: {len(index)} videos, {counts.get(OK, 0)} with audio"
        + (f" ({failed})" if failed else "")
        + f"; {int(index['windows'].sum())} windows{size}"
    )


@dataclass(frozen=True)
class ChunkWindows:
    """One finished chunk: its index and its windows, mapped from disk (float16)."""

    index: pd.DataFrame
    windows: np.ndarray  # (total, n_mels, window_frames) float16, a read-only memmap

    def of(self, row: int) -> np.ndarray:
        """The windows of the index's ``row``-th video: (n, 1, n_mels, window_frames) float32."""
        start, n = int(self.index["offset"].iat[row]), int(self.index["windows"].iat[row])
        return self.windows[start : start + n, None].astype(np.float32)


def open_chunk(out_dir: Path, cfg: AudioConfig) -> ChunkWindows:
    """Map a finished chunk's windows made under ``cfg``'s feature protocol.

    ``FileNotFoundError`` when the chunk is not finished, ``ValueError`` when other settings made it.
    """
    index_path = out_dir / INDEX_FILE
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path}: chunk not finished; run `dfdc voice` first")
    if not _made_under(index_path, cfg):
        raise ValueError(f"{index_path}: windows made with other audio settings; run `dfdc voice` again")
    index = pd.read_parquet(index_path)
    shape = (cfg.n_mels, cfg.window_frames)
    total = int(index["windows"].sum())
    if total == 0:
        return ChunkWindows(index, np.zeros((0, *shape), DTYPE))
    windows = np.memmap(out_dir / DATA_FILE, dtype=DTYPE, mode="r", shape=(total, *shape))
    return ChunkWindows(index, windows)
