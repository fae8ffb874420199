"""The one scorer: run settings change where and how fast it runs, never what it answers."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import torch

from dfdc.config import ScoreConfig
from dfdc.model.backbone import Checkpoint
from dfdc.protocol import RUN_FIELDS, Protocol
from dfdc.release.bundle import CHECKSUMS, PROTOCOL, build_bundle, load_bundle
from dfdc.release.predict import list_videos, score_videos
from dfdc.scoring.calibrate import Calibration
from dfdc.scoring.scorer import Scorer

if TYPE_CHECKING:
    from conftest import Demo

CAL = Calibration(temperature=1.5, clip_min=0.02, clip_max=0.98, fallback=0.7, bias=0.3)
# Set by a process that trained and extracted on a GPU cluster: none of it may travel.
GPU_RUN = {"device": "cuda", "workers": 9, "dask_address": "tcp://scheduler:8786", "video_retries": 3}


@pytest.fixture(scope="module")
def videos(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The demo's test videos with a corrupt and a missing file among them."""
    tmp = tmp_path_factory.mktemp("scorer")
    corrupt = tmp / "corruptvid.mp4"
    corrupt.write_bytes(np.random.default_rng(1).bytes(20_000))
    good = list_videos(demo.test_dir)
    return [good[0], corrupt, *good[1:4], tmp / "missingvid.mp4", *good[4:]]


@pytest.fixture(scope="module")
def gpu_bundle_dir(untrained_checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle built from a checkpoint whose run set ``device: cuda`` (and other run settings)."""
    extract = untrained_checkpoint.extract.model_copy(update=GPU_RUN)
    checkpoint = Checkpoint(
        untrained_checkpoint.model, extract, untrained_checkpoint.preprocess,
        untrained_checkpoint.state_dict, 0, 0.69,
    )  # fmt: skip
    return build_bundle(checkpoint, CAL, {"logloss": 0.5}, tmp_path_factory.mktemp("gpu-bundle"))


def test_run_settings_do_not_change_any_score(gpu_bundle_dir: Path, videos: list[Path]) -> None:
    """One video at a time (no threads), or batched across videos by threads running ahead."""
    bundle = load_bundle(gpu_bundle_dir)
    runs = [
        ScoreConfig(device="cpu", workers=0, batch_size=1),  # each video alone, crop by crop
        ScoreConfig(device="cpu", workers=2, prefetch=0, batch_size=7),  # groups of a few videos
        ScoreConfig(device="auto", workers=3, prefetch=4, batch_size=512),  # the whole folder at once
    ]
    tables = [score_videos(bundle, videos, progress=False, run=run) for run in runs]
    first = tables[0]
    assert first["filename"].tolist() == [p.name for p in videos]  # input order, every input
    assert (first["status"] == "ok").sum() == len(videos) - 2
    assert set(first.loc[first["status"] != "ok", "filename"]) == {"corruptvid.mp4", "missingvid.mp4"}
    assert first["label"].nunique() > 2  # different videos, different scores: a real comparison
    for other in tables[1:]:
        pd.testing.assert_frame_equal(
            other.drop(columns=["label", "logit"]), first.drop(columns=["label", "logit"])
        )
        np.testing.assert_allclose(other["label"], first["label"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(other["logit"], first["logit"], rtol=1e-5, atol=1e-6)


def test_a_bundle_built_with_cuda_scores_without_it(gpu_bundle_dir: Path, videos: list[Path]) -> None:
    saved = json.loads((gpu_bundle_dir / PROTOCOL).read_text())
    assert not RUN_FIELDS & set(saved["extract"])  # run settings never enter the protocol
    bundle = load_bundle(gpu_bundle_dir)
    assert bundle.extract.device == "auto" and bundle.extract.workers == 2  # the defaults, not the builder's
    rows = score_videos(bundle, videos[:2], progress=False)  # auto: the CPU on this machine
    assert rows.at[0, "status"] == "ok" and rows.at[1, "status"] in {"decode_error", "empty"}
    assert next(bundle.model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_an_older_bundle_with_run_settings_in_its_protocol_ignores_them(
    gpu_bundle_dir: Path, videos: list[Path], tmp_path: Path
) -> None:
    """Bundles written before the split saved ``device`` inside ``extract``: it is not obeyed."""
    old = shutil.copytree(gpu_bundle_dir, tmp_path / "old")
    path = old / PROTOCOL
    protocol = json.loads(path.read_text())
    protocol["extract"].update(GPU_RUN)
    path.write_text(json.dumps(protocol))
    sums = json.loads((old / CHECKSUMS).read_text())
    sums[PROTOCOL] = hashlib.sha256(path.read_bytes()).hexdigest()
    (old / CHECKSUMS).write_text(json.dumps(sums))
    bundle = load_bundle(old)
    assert bundle.extract.device == "auto"
    row = score_videos(bundle, videos[:1], progress=False, run=ScoreConfig(device="cpu")).iloc[0]
    assert row["status"] == "ok"


def test_a_checkpoint_saves_the_protocol_without_run_settings(
    untrained_checkpoint: Checkpoint, tmp_path: Path
) -> None:
    extract = untrained_checkpoint.extract.model_copy(update=GPU_RUN)
    checkpoint = Checkpoint(
        untrained_checkpoint.model, extract, untrained_checkpoint.preprocess,
        untrained_checkpoint.state_dict, 3, 0.5,
    )  # fmt: skip
    checkpoint.save(tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert not RUN_FIELDS & set(raw["extract"])
    loaded = Checkpoint.load(tmp_path / "c.pt")
    assert loaded.protocol == checkpoint.protocol  # the same record the bundle saves
    assert loaded.extract.device == "auto"
    assert Protocol.from_json(raw).to_json() == {k: raw[k] for k in ("model", "extract", "preprocess")}


def test_crops_score_before_calibration_and_videos_only_after(
    untrained_checkpoint: Checkpoint, videos: list[Path]
) -> None:
    scorer = Scorer(untrained_checkpoint.build(), untrained_checkpoint.protocol, ScoreConfig(batch_size=4))
    size = untrained_checkpoint.extract.crop_size
    crops = np.random.default_rng(0).integers(0, 256, (10, size, size, 3), dtype=np.uint8)
    whole = scorer.crop_logits(crops)
    assert whole.shape == (10,)
    np.testing.assert_allclose(whole[3:5], scorer.crop_logits(crops[3:5]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not calibrated"):
        scorer.score(videos[:1], progress=False)
