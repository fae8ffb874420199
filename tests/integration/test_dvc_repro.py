"""`dvc repro` on a fresh copy of the project: every stage runs, reruns only what changed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dfdc.config import load_params
from dfdc.data.labels import read_labels, video_face_labels
from flows.train import load_splits

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
    # the tiny data has voice fakes: the voice stage trained and the bundle fuses both branches
    assert json.loads((root / "reports/voice.json").read_text())["n_train"] > 0
    assert (root / "dist/submission/voice.safetensors").is_file()
    protocol = json.loads((root / "dist/submission/protocol.json").read_text())
    assert protocol["fusion"]["method"] == "noisy_or" and protocol["voice"]["sample_rate"] == 16000
    assert json.loads((root / "reports/labels.json").read_text())["audio_changed"] > 0
    assert len(pd.read_csv(root / "submission.csv")) == 4
    # The face branch chose its epoch on whether each video's face changed, not on its label.
    _, val = load_splits(load_params(root / "params.yaml"))
    val_videos = pd.DataFrame({"video": val.videos, "y": val.labels}).groupby("video")["y"].max()
    chunks = pd.read_parquet(root / "data/splits.parquet")["chunk"].unique()
    faces = video_face_labels(read_labels(root / "data/labels", chunks))
    face_fake = faces.set_index("video")["face"].ne("untouched")  # changed, or no original to tell
    assert (val_videos == face_fake.reindex(val_videos.index, fill_value=False).astype(int)).all()
    assert val_videos.sum() > 0
    assert set(faces.loc[faces["face"] == "untouched", "video"]) & set(val_videos.index)  # a voice-only fake

    again = run(["dvc", "repro"], root, env)
    assert ran(again) == set()
    assert "up to date" in run(["dvc", "status"], root, env)

    # A check by hand of any folder reports elsewhere and so changes nothing DVC tracks;
    # rerunning the stage itself rewrites its Data Docs (new run ids), which nothing depends on.
    run(["dfdc", "validate", "data/raw/dfdc_train_part_0"], root, env)  # its fakes all have originals there
    assert (root / "reports/validation-by-hand/summary.json").is_file()
    assert "up to date" in run(["dvc", "status"], root, env)
    assert ran(run(["dvc", "repro", "--force", "--single-item", "validate"], root, env)) == {"validate"}
    assert "up to date" in run(["dvc", "status"], root, env)

    # A run setting (worker processes) reruns extraction, which redoes no video and writes
    # the same bytes: data/faces keeps its hash and nothing downstream of it reruns.
    faces_hash = faces_md5(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["extract"]["workers"] = 1 if params["extract"]["workers"] > 1 else 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert ran(run(["dvc", "repro"], root, env)) == {"extract", "report"}
    assert faces_md5(root) == faces_hash
    commit(root, env, "first run")  # what a user commits: dvc.lock, params, metrics, plot CSVs

    params = yaml.safe_load((root / "params.yaml").read_text())
    crop_size = params["extract"]["crop_size"]
    params["extract"]["crop_size"] = crop_size - 8
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    third = run(["dvc", "repro"], root, env)
    assert ran(third) == set(STAGES) - {"validate", "split"}

    # The second run against the first: params, metrics and plots from git's HEAD and the workspace.
    changed = json.loads(run(["dvc", "params", "diff", "--json"], root, env))
    assert changed["params.yaml"]["extract.crop_size"] == {"old": crop_size, "new": crop_size - 8, "diff": -8}
    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], root, env))
    metrics = diff["reports/metrics.json"]
    for key in ("logloss", "logloss_uncalibrated", "ece", "prior_logloss"):
        assert isinstance(metrics[key]["old"], float) and isinstance(metrics[key]["new"], float), key
    assert metrics["n_videos"]["old"] == metrics["n_videos"]["new"]
    vega = json.loads(run(["dvc", "plots", "diff", "HEAD", "--targets", "roc", "--show-vega"], root, env))
    assert {row["rev"] for row in vega["data"]["values"]} == {"HEAD", "workspace"}
    run(["dvc", "plots", "show", "-o", "dvc_plots"], root, env)
    page = (root / "dvc_plots/index.html").read_text()
    for title in ("Reliability", "ROC", "Precision-recall", "Calibrated P(FAKE) by label"):
        assert title in page

    # A stage's own flow file is a dependency: editing it reruns that stage and, at most, what follows.
    flow = root / "flows/evaluate.py"
    flow.write_text(flow.read_text() + "# edited\n")
    fourth = ran(run(["dvc", "repro"], root, env))
    assert "evaluate" in fourth and fourth <= {"evaluate", "promote", "package"}


def faces_md5(root: Path) -> str:
    """The hash dvc.lock records for the crop store."""
    outs = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["extract"]["outs"]
    return next(o["md5"] for o in outs if o["path"] == "data/faces")


def commit(root: Path, env: dict[str, str], message: str) -> None:
    """Commit what the project's .gitignore lets git track."""
    run(["git", "add", "-A"], root, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root, env)
    tracked = run(["git", "ls-files"], root, env).split()
    assert {"dvc.lock", "reports/metrics.json", "reports/plots/roc.csv"} <= set(tracked)
    assert not any(name.endswith(".mp4") or name.startswith(("data/faces/", "models/")) for name in tracked)
