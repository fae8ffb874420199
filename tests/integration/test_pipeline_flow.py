"""The whole pipeline as one Prefect flow, on the real Prefect test harness and real MLflow (SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from dfdc.release.bundle import load_bundle

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_pipeline_end_to_end(learning_workdir: Path) -> None:
    workdir = learning_workdir
    from flows.pipeline import pipeline_flow

    pipeline_flow("params.yaml")

    summary = json.loads(Path("reports/validation/summary.json").read_text())
    assert summary["ok"] is True
    for chunk in ("dfdc_train_part_0", "dfdc_train_part_1"):
        index = pd.read_parquet(f"data/faces/{chunk}/index.parquet")
        assert len(index) > 0 and index["prob"].between(0, 1).all()

    metrics = json.loads(Path("reports/metrics.json").read_text())
    for key in ("logloss", "auc", "accuracy", "prior_logloss", "n_videos"):
        assert key in metrics
    assert metrics["n_videos"] > 0
    for key in ("test.logloss", "test.ece", "test.ece_uncalibrated", "test.prior_brier",
                "test.by_aggregation.confident.logloss", "test.by_aggregation.person_max.logloss"):
        assert key in metrics, key
    assert metrics["test.logloss"] == metrics["logloss"]
    # The seeded tiny pipeline learns: a flipped label (or a detector that learns nothing)
    # loses to the constant prior and ranks fakes no better than chance.
    assert metrics["logloss"] < metrics["prior_logloss"], metrics
    assert metrics["auc"] > 0.5, metrics
    labels = json.loads(Path("reports/labels.json").read_text())
    assert labels["n_fakes"] == 48 and labels["n_face_changed"] == 48  # every fake here edits its face
    assert Path("reports/plots/reliability_calibrated.csv").is_file()
    assert pd.read_parquet("data/frame_scores.parquet")["logit"].notna().all()

    uri = f"sqlite:///{(workdir / 'mlflow' / 'mlflow.db').resolve()}"
    client = MlflowClient(uri, uri)
    champion = client.get_model_version_by_alias("dfdc-detector", "champion")
    assert int(champion.version) == 1
    assert float(champion.tags["logloss"]) == pytest.approx(metrics["logloss"])
    run = client.get_run(champion.run_id)
    epochs = yaml.safe_load(Path("params.yaml").read_text())["train"]["epochs"]
    assert len(client.get_metric_history(run.info.run_id, "val_video_logloss")) == epochs

    bundle = load_bundle(Path("dist/submission"))
    assert bundle.calibration.temperature > 0
    submission = pd.read_csv("submission.csv")
    sample = pd.read_csv("data/raw/sample_submission.csv")
    assert submission["filename"].tolist() == sample["filename"].tolist()
    assert submission["label"].between(0, 1).all()

    # the packaged pyfunc model answers the same as the bundle it wraps, for paths under the
    # root it was loaded with; without a root it opens no path at all
    mlflow.set_tracking_uri(uri)
    root = Path("data/raw/test_videos").resolve()
    model = mlflow.pyfunc.load_model("models:/dfdc-detector@champion", model_config={"video_root": str(root)})
    paths = [str(root / f) for f in sample["filename"]]
    served = model.predict(pd.DataFrame({"path": paths}))
    assert served["label"].round(6).tolist() == submission["label"].round(6).tolist()
    closed = mlflow.pyfunc.load_model("models:/dfdc-detector@champion").predict(pd.DataFrame({"path": paths}))
    assert (closed["status"] == "refused").all()


def test_contract_violation_stops_the_pipeline(workdir: Path) -> None:
    from flows.pipeline import pipeline_flow

    meta_path = Path("data/raw/dfdc_train_part_0/metadata.json")
    meta = json.loads(meta_path.read_text())
    name = next(iter(meta))
    meta[name]["label"] = "MAYBE"
    meta_path.write_text(json.dumps(meta))

    state = pipeline_flow("params.yaml", return_state=True)

    assert state.is_failed()
    assert name in state.message and "label_in_set" in state.message
    assert not Path("data/faces").exists()
    assert not Path("mlflow/mlflow.db").exists()
