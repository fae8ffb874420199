"""The one validated reader of DFDC ``metadata.json`` files.

Every stage (validation, splitting, training, evaluation) reads metadata through here, so
a malformed file fails the same way everywhere: as a :class:`MetadataError` naming the
file and the reason, never as a stray ``JSONDecodeError``/``KeyError`` deep in a stage.
Only the *shape* is checked here; the semantic rules (allowed labels, originals that
exist, ...) belong to :mod:`dfdc.data.validation`, which must be able to report them all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Sequence

METADATA_COLUMNS = ("chunk", "filename", "label", "split", "original")
METADATA_FILE = "metadata.json"

_REQUIRED_FIELDS = ("label", "split")
_ALLOWED_FIELDS = frozenset({"label", "split", "original"})
_LABEL_TO_INT = {"REAL": 0, "FAKE": 1}


class MetadataError(Exception):
    """A metadata.json that cannot be read as DFDC metadata; `path` and `reason` say why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class _DuplicateKeyError(ValueError):
    """A JSON object repeats a key; ``json`` would silently keep the last one."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKeyError(key)
        seen[key] = value
    return seen


def _json_type(value: object) -> str:
    """JSON's name for a parsed value, so reasons speak the file's language, not Python's."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _load(path: Path) -> Any:
    """Parse the file, turning every I/O and syntax failure into a MetadataError."""
    if not path.parent.exists():
        raise MetadataError(path, "chunk folder does not exist")
    if not path.parent.is_dir():
        raise MetadataError(path, "chunk path is a file, not a folder")
    if path.is_dir():
        raise MetadataError(path, "is a directory, not a file")
    if not path.is_file():
        raise MetadataError(path, "file does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MetadataError(path, f"not UTF-8 text (byte {err.start})") from err
    except OSError as err:
        raise MetadataError(path, f"cannot be read ({err.strerror or err})") from err
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as err:
        reason = f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        raise MetadataError(path, reason) from err
    except _DuplicateKeyError as err:
        raise MetadataError(path, f"duplicate key {err.args[0]!r}") from err
    except RecursionError as err:  # json recurses per nesting level
        raise MetadataError(path, "JSON nested too deeply to parse") from err
    except ValueError as err:  # e.g. an integer literal beyond Python's digit limit
        raise MetadataError(path, f"invalid JSON value: {err}") from err


def _check_entry(path: Path, name: str, entry: Any) -> tuple[str, str, str | None]:
    """Shape of one entry: an object with string label/split and a string-or-null original."""
    if not isinstance(entry, dict):
        raise MetadataError(path, f"entry {name!r} is {_json_type(entry)}, not an object")
    missing = [f for f in _REQUIRED_FIELDS if f not in entry]
    if missing:
        raise MetadataError(path, f"entry {name!r} lacks field(s) {', '.join(missing)}")
    extra = sorted(set(entry) - _ALLOWED_FIELDS)
    if extra:
        raise MetadataError(path, f"entry {name!r} has unexpected field(s) {', '.join(extra)}")
    for field in _REQUIRED_FIELDS:
        if not isinstance(entry[field], str):
            kind = _json_type(entry[field])
            raise MetadataError(path, f"entry {name!r} field {field!r} is {kind}, not a string")
    original = entry.get("original")
    if original is not None and not isinstance(original, str):
        kind = _json_type(original)
        raise MetadataError(
            path, f"entry {name!r} field 'original' is {kind}, not a string or null"
        )
    return entry["label"], entry["split"], original


def read_metadata(chunk_dir: Path) -> pd.DataFrame:
    """Rows of one chunk's metadata.json, columns METADATA_COLUMNS.

    ``chunk`` is the folder name and ``original`` is None for a REAL. Raises MetadataError
    when the file is missing, unreadable, not JSON, not an object of objects, or an entry
    lacks ``label``/``split``, has unexpected fields or mistyped values. Semantic rules
    are left to validation so that it can report every violation, not just the first.
    """
    chunk_dir = Path(chunk_dir)
    path = chunk_dir / METADATA_FILE
    data = _load(path)
    if not isinstance(data, dict):
        reason = f"top level is {_json_type(data)}, expected a JSON object of entries"
        raise MetadataError(path, reason)
    rows = [
        (chunk_dir.name, name, *_check_entry(path, name, entry)) for name, entry in data.items()
    ]
    return pd.DataFrame(rows, columns=list(METADATA_COLUMNS), dtype=object)


def read_chunks(chunk_dirs: Sequence[Path]) -> pd.DataFrame:
    """Concatenate read_metadata over chunks (stable order), plus ``path`` of each mp4 file.

    Fails on the first unreadable chunk: stages downstream of validation must not train
    or evaluate on a silently partial dataset.
    """
    frames = []
    for chunk_dir in chunk_dirs:
        frame = read_metadata(Path(chunk_dir))
        frame["path"] = [Path(chunk_dir) / name for name in frame["filename"]]
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*METADATA_COLUMNS, "path"], dtype=object)
    return pd.concat(frames, ignore_index=True)


def labels_to_int(labels: pd.Series) -> np.ndarray:
    """FAKE -> 1, REAL -> 0; any other value raises rather than being silently mislabelled."""
    values = pd.Series(labels, dtype=object)
    unknown = sorted({str(v) for v in values if v not in _LABEL_TO_INT})
    if unknown:
        raise ValueError(f"labels other than REAL/FAKE: {', '.join(unknown)}")
    return values.map(_LABEL_TO_INT).to_numpy(dtype=np.int64)
