"""The `voice` stage's flow on the real Prefect test harness and MLflow (SQLite in tmp_path)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from dfdc.demo.generate import DemoSpec, generate_demo_data

pytestmark = pytest.mark.integration
CHUNK = "dfdc_train_part_0"
SPEC = DemoSpec(chunks=1, originals_per_chunk=6, fakes_per_original=2, test_videos=0, width=96, height=72,
                duration=1.0, fps=8, seed=2, kinds=("voice", "swap"))  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_voice_flow_trains_scores_and_tracks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faceless_mp4: Callable[[Path], Path]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    manifest = generate_demo_data(tmp_path / "data" / "raw", SPEC)
    chunk = tmp_path / "data" / "raw" / CHUNK
    faceless_mp4(chunk / "muteaudios.mp4")  # a REAL with no audio stream at all
    meta = json.loads((chunk / "metadata.json").read_text())
    meta["muteaudios.mp4"] = {"label": "REAL", "split": "train", "original": None}
    (chunk / "metadata.json").write_text(json.dumps(meta))

    videos = manifest[manifest["chunk"] == CHUNK][["chunk", "filename", "label", "original", "kind"]]
    videos = pd.concat([videos, pd.DataFrame([{"chunk": CHUNK, "filename": "muteaudios.mp4", "label": "REAL",
                                               "original": None, "kind": "real"}])])  # fmt: skip
    family = videos["original"].fillna(videos["filename"])
    families = sorted(family.unique())
    subset = {f: ("train" if i < 4 else "val" if i < 6 else "test") for i, f in enumerate(families)}
    videos["subset"] = family.map(subset)
    (tmp_path / "data").mkdir(exist_ok=True)
    videos.drop(columns=["kind"]).to_parquet("data/splits.parquet", index=False)
    (tmp_path / "data" / "labels").mkdir()
    fake = videos["label"].eq("FAKE")
    pd.DataFrame({
        "chunk": CHUNK, "video": videos["filename"], "original": videos["original"],
        "audio_diff": np.where(videos["kind"].eq("voice"), 5.0, 0.0),
        "audio_changed": videos["kind"].eq("voice"),
        "audio_status": np.where(fake, "ok", "real"),
    }).to_parquet(f"data/labels/{CHUNK}.audio.parquet", index=False)  # fmt: skip

    params = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
    params["voice"].update(epochs=2, batch_size=16)
    Path("params.yaml").write_text(yaml.safe_dump(params))

    from flows.voice import voice_flow

    metrics = voice_flow("params.yaml")

    scores = pd.read_parquet("data/voice_scores.parquet")
    assert list(scores.columns) == ["chunk", "video", "subset", "voice_logit", "voice_status", "windows"]
    assert len(scores) == len(videos)
    mute = scores.set_index("video").loc["muteaudios.mp4"]
    assert np.isnan(mute["voice_logit"]) and mute["voice_status"] == "no_audio" and mute["windows"] == 0
    assert scores.drop(index=scores.index[scores["video"] == "muteaudios.mp4"])["voice_logit"].notna().all()
    report = json.loads(Path("reports/voice.json").read_text())
    assert report["n_no_audio"] == 1 and report["n_train"] > 0 and "val_auc" in report
    assert metrics["best_epoch"] in (0, 1)

    uri = f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').resolve()}"
    run = MlflowClient(uri).get_run(json.loads(Path("models/voice_run.json").read_text())["run_id"])
    assert run.data.tags["branch"] == "voice"
    assert len(MlflowClient(uri).get_metric_history(run.info.run_id, "val_logloss")) == 2
    assert "final_val_logloss" in run.data.metrics and "final_val_auc" in run.data.metrics

    # a second run keeps the finished chunk
    index = Path(f"data/audio/{CHUNK}/index.parquet")
    before = index.stat().st_mtime_ns
    voice_flow("params.yaml")
    assert index.stat().st_mtime_ns == before
