"""Raw chunks under DVC: `dfdc add-chunk`, then push and pull into a fresh clone, byte for byte.

A real git repository and real DVC in a temporary folder, configured with this repository's
own ``.dvc/config`` (its default remote is a folder beside the repository, so a clone next
to it shares it) and ``.gitignore`` (which must let the ``.dvc`` files through).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dfdc.data.chunks import ChunkError, add_chunk
from dfdc.demo.generate import DemoSpec, generate_demo_data

REPO = Path(__file__).resolve().parents[2]
SPEC = DemoSpec(chunks=2, originals_per_chunk=1, fakes_per_original=1, test_videos=1,
                width=64, height=64, duration=0.4, fps=5)  # fmt: skip


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dfdc(*args: str) -> list[str]:
    return [sys.executable, "-c", "from flows.cli import app; app()", *args]


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def incoming(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("incoming")
    generate_demo_data(out, SPEC)
    return out


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git + DVC project with this repository's DVC config, .gitignore and an empty params."""
    root = tmp_path / "project"
    root.mkdir()
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    (root / "params.yaml").write_text("{}\n")
    return root


def test_push_then_pull_into_a_fresh_clone_restores_the_chunk(repo: Path, incoming: Path) -> None:
    # One chunk already in data/raw (the demo's way), one added from outside (a download's way).
    raw = repo / "data" / "raw"
    raw.mkdir(parents=True)
    shutil.copytree(incoming / "dfdc_train_part_0", raw / "dfdc_train_part_0")
    out = run(dfdc("add-chunk", "data/raw/dfdc_train_part_0", str(incoming / "dfdc_train_part_1")), repo)
    assert "data/raw/dfdc_train_part_0: 2 videos tracked by data/raw/dfdc_train_part_0.dvc" in out
    assert (raw / "dfdc_train_part_1.dvc").is_file()
    expected = {c: digests(incoming / c) for c in ("dfdc_train_part_0", "dfdc_train_part_1")}
    assert digests(raw / "dfdc_train_part_1") == expected["dfdc_train_part_1"]

    # git sees the pointers, not the videos
    run(["git", "add", "-A"], repo)
    tracked = run(["git", "ls-files"], repo).split()
    assert {"data/raw/dfdc_train_part_0.dvc", "data/raw/dfdc_train_part_1.dvc"} <= set(tracked)
    assert not [t for t in tracked if t.endswith((".mp4", "metadata.json"))]
    run(["git", "commit", "-q", "-m", "chunks"], repo)
    run([sys.executable, "-m", "dvc", "push"], repo)
    assert (repo.parent / "dfdc-dvc-storage" / "files" / "md5").is_dir()  # the default remote

    clone = repo.parent / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    assert not (clone / "data" / "raw" / "dfdc_train_part_0").exists()
    run([sys.executable, "-m", "dvc", "pull", "data/raw/dfdc_train_part_1.dvc"], clone)  # one chunk
    assert digests(clone / "data" / "raw" / "dfdc_train_part_1") == expected["dfdc_train_part_1"]
    assert not (clone / "data" / "raw" / "dfdc_train_part_0").exists()
    run([sys.executable, "-m", "dvc", "pull"], clone)
    assert digests(clone / "data" / "raw" / "dfdc_train_part_0") == expected["dfdc_train_part_0"]


def test_add_chunk_refuses_what_is_not_a_chunk(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "no_metadata").mkdir()
    with pytest.raises(ChunkError, match="file does not exist"):
        add_chunk(tmp_path / "no_metadata", Path("data/raw"), repo)
    bad = tmp_path / "bad_json"
    bad.mkdir()
    (bad / "metadata.json").write_text(json.dumps([1]))
    with pytest.raises(ChunkError, match="top level is an array"):
        add_chunk(bad, Path("data/raw"), repo)
    with pytest.raises(ChunkError, match="not a folder"):
        add_chunk(tmp_path / "nowhere", Path("data/raw"), repo)
    assert not (repo / "data").exists()
