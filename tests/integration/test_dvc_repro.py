"""`dvc repro` on a fresh copy of the project: every stage runs, reruns only what changed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.integration
STAGES = tuple(yaml.safe_load((Path(__file__).parents[2] / "dvc.yaml").read_text())["stages"])


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def ran(log: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in log}


def test_repro_runs_every_stage_then_only_what_changed(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    first = run(["dvc", "repro"], root, env)
    assert ran(first) == set(STAGES)
    assert json.loads((root / "reports/metrics.json").read_text())["n_videos"] > 0
    assert (root / "dist/submission/model.safetensors").is_file()
    assert len(pd.read_csv(root / "submission.csv")) == 4

    again = run(["dvc", "repro"], root, env)
    assert ran(again) == set()
    assert "up to date" in run(["dvc", "status"], root, env)

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["extract"]["crop_size"] = 56
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    third = run(["dvc", "repro"], root, env)
    assert ran(third) == set(STAGES) - {"validate", "split"}

    diff = run(["dvc", "metrics", "show", "--json"], root, env)
    assert "logloss" in diff
