"""Where a model came from: the git commit and the DVC hash of its face dataset."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def git_commit() -> str:
    """The checked-out commit, with ``-dirty`` when tracked files differ; ``unknown`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def dvc_hash(output: Path, lock: Path = Path("dvc.lock")) -> str:
    """The hash DVC recorded for ``output`` in ``dvc.lock`` (``unknown`` if not recorded)."""
    if not lock.is_file():
        return "unknown"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if Path(out["path"]) == output:
                return str(out.get("md5") or out.get("hash") or "unknown")
    return "unknown"
