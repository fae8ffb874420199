"""The aggregation travels with the calibration into the bundle, and prediction applies it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from scipy.special import expit

from dfdc.config import AggregateConfig
from dfdc.faces.extract import faces_of_video
from dfdc.faces.store import as_stored
from dfdc.model.backbone import predict_logits
from dfdc.release.bundle import PROTOCOL, build_bundle, load_bundle
from dfdc.release.predict import score_videos
from dfdc.scoring.aggregate import video_logit
from dfdc.scoring.calibrate import Calibration

if TYPE_CHECKING:
    from conftest import Demo

    from dfdc.faces.detect import FaceDetector
    from dfdc.model.backbone import Checkpoint

# Loose thresholds so the confident rule really changes the answer on a 4-frame video.
AGG = AggregateConfig(strategy="confident", fake_threshold=0.51, fake_min_share=0.2, fake_min_count=0)
CAL = Calibration(1.7, 0.02, 0.98, 0.6, AGG.model_dump(mode="json"))


def test_bundle_protocol_records_the_aggregation(
    untrained_checkpoint: Checkpoint, tmp_path: Path
) -> None:
    out = build_bundle(untrained_checkpoint, CAL, {"logloss": 0.5}, tmp_path / "bundle")
    protocol = json.loads((out / PROTOCOL).read_text())
    assert protocol["aggregation"] == AGG.model_dump(mode="json")
    assert "aggregation" not in protocol["calibration"]
    assert load_bundle(out).calibration == CAL


def test_prediction_uses_the_bundles_aggregation(
    untrained_checkpoint: Checkpoint, demo: Demo, detector: FaceDetector, tmp_path: Path
) -> None:
    path = sorted(demo.test_dir.glob("*.mp4"))[0]
    mean_cal = Calibration(1.7, 0.02, 0.98, 0.6)
    plain = load_bundle(build_bundle(untrained_checkpoint, mean_cal, {}, tmp_path / "a"))
    faces = faces_of_video(path, detector, plain.extract)
    crops = np.stack([as_stored(c, plain.extract) for c in faces.crops])  # as prediction reads them
    z = predict_logits(plain.model, crops, plain.preprocess).astype(float)
    assert len(z) >= 2
    # A threshold between this video's frames: the confident rule keeps only the upper ones.
    agg = AGG.model_copy(update={"fake_threshold": float(expit(np.median(z)))})
    cal = Calibration(1.7, 0.02, 0.98, 0.6, agg.model_dump(mode="json"))
    bundle = load_bundle(build_bundle(untrained_checkpoint, cal, {}, tmp_path / "b"))
    row = score_videos(bundle, [path], progress=False).iloc[0]
    expected = video_logit(z, faces.faces, agg)
    assert abs(expected - z.mean()) > 1e-4  # the rule is not the mean here
    assert row["logit"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert row["label"] == pytest.approx(float(cal.probability(np.array([expected]))[0]))
    # The mean bundle on the same video gives the mean logit.
    assert score_videos(plain, [path], progress=False).iloc[0]["logit"] == pytest.approx(z.mean(), rel=1e-5)
