"""Stage `promote`: register the calibrated model; alias `champion` only if it is better."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from dfdc.calibrate import Calibration
from dfdc.config import Params, load_params
from dfdc.evaluate import video_metrics
from dfdc.metadata import labels_to_int
from dfdc.model import Checkpoint
from dfdc.package import build_bundle, load_bundle
from dfdc.predict import score_videos
from dfdc.registry import Decision, promote, register_bundle


def eval_fingerprint(test: pd.DataFrame) -> str:
    """Identity of the evaluation set: its videos and labels, order-free."""
    columns = test[["chunk", "filename", "label"]].itertuples(index=False)
    rows = sorted(f"{chunk}/{name}:{label}" for chunk, name, label in columns)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def rescorer(params: Params, test: pd.DataFrame):  # noqa: ANN201
    """Log loss of any bundle on these test videos, decoded afresh with the bundle's own protocol."""

    def rescore(bundle_dir: Path) -> float:
        bundle = load_bundle(bundle_dir)
        paths = [params.data.raw_dir / c / f for c, f in test[["chunk", "filename"]].itertuples(index=False)]
        scores = score_videos(bundle, paths)
        labels = labels_to_int(test["label"])
        return video_metrics(labels, scores["label"], bundle.calibration.fallback)["logloss"]

    return rescore


@flow(name="promote")
def promote_flow(params_path: str = "params.yaml") -> Decision:
    """Bundle, register as a new version of the model, decide, record the decision."""
    params = load_params(params_path)
    run = json.loads(params.train.run_file.read_text())
    metrics = json.loads(params.evaluate.metrics.read_text())
    splits = pd.read_parquet(params.data.splits)
    test = splits[splits["subset"] == "test"]
    fingerprint = eval_fingerprint(test)
    provenance = {**run, "eval_fingerprint": fingerprint}
    bundle_dir = build_bundle(
        Checkpoint.load(params.train.checkpoint), Calibration.load(params.calibrate.output),
        metrics, params.registry.bundle_dir, provenance,
    )  # fmt: skip
    tags = {k: str(metrics[k]) for k in ("logloss", "auc", "accuracy", "prior_logloss")}
    tags.update(provenance)
    version = register_bundle(params.registry, run["run_id"], bundle_dir, tags)
    decision = promote(params.registry, version, metrics["logloss"], fingerprint, rescorer(params, test))
    params.registry.decision.parent.mkdir(parents=True, exist_ok=True)
    params.registry.decision.write_text(json.dumps(decision.to_dict(), indent=2) + "\n")
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    create_markdown_artifact(
        f"**{params.registry.model_name} v{version}** {verdict}: {decision.reason}", key="promotion"
    )
    print(f"{params.registry.model_name} version {version} {verdict}: {decision.reason}")
    return decision
