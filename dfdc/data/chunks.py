"""Registering raw chunks with DVC: one ``.dvc`` file per chunk folder.

A DFDC chunk is ~10 GB; tracking each chunk separately lets a machine ``dvc pull`` only the
chunks it needs and lets a new chunk be added without rehashing the others. This is a thin
wrapper over ``dvc add`` (run as a subprocess, DVC's supported interface) that first checks
the folder looks like a chunk, and copies a chunk from outside the repository into
``data.raw_dir`` (``dvc add --out``) so the graph finds it where ``params.yaml`` says.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dfdc.data.metadata import MetadataError, read_metadata


class ChunkError(Exception):
    """A folder that cannot be registered as a chunk; the message says why."""


@dataclass(frozen=True)
class AddedChunk:
    """Where the chunk now lives in the repository and its ``.dvc`` file."""

    path: Path
    dvc_file: Path
    n_videos: int


def _check_chunk(path: Path) -> int:
    """Number of listed videos; raises ChunkError when ``path`` is not a readable chunk."""
    if not path.is_dir():
        raise ChunkError(f"{path}: not a folder")
    try:
        return len(read_metadata(path))
    except MetadataError as err:
        raise ChunkError(f"{err.path}: {err.reason} (run `dfdc validate {path}` for the full list)") from err


def add_chunk(path: Path, raw_dir: Path, repo_root: Path = Path()) -> AddedChunk:
    """``dvc add`` one chunk folder, after checking its ``metadata.json`` can be read.

    A folder already under ``raw_dir`` is tracked in place; one elsewhere is copied to
    ``raw_dir/<name>`` by DVC. Returns the chunk's path and ``.dvc`` file (relative to the
    repository root when they are inside it).
    """
    path, repo_root = Path(path), Path(repo_root).resolve()
    n_videos = _check_chunk(path)
    raw_dir = (repo_root / raw_dir).resolve()
    source = path.resolve()
    target = raw_dir / source.name
    command = [sys.executable, "-m", "dvc", "add", "--quiet", str(source)]
    if source != target:
        if target.exists():
            raise ChunkError(f"{target} already exists; remove it or rename {path}")
        raw_dir.mkdir(parents=True, exist_ok=True)
        command += ["--out", str(target)]
    proc = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ChunkError(f"dvc add {path} failed: {(proc.stderr or proc.stdout).strip()}")
    dvc_file = target.with_name(target.name + ".dvc")
    if not dvc_file.is_file():
        raise ChunkError(f"dvc add {path} wrote no {dvc_file.name}")
    return AddedChunk(_relative(target, repo_root), _relative(dvc_file, repo_root), n_videos)


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path

