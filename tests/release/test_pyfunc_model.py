"""The pyfunc model scores video bytes, or paths under the root given at load time, and nothing else."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pandas as pd
import pytest

import dfdc.release.predict as predict_module
from dfdc.release.bundle import build_bundle
from dfdc.release.pyfunc_model import OUTPUT, DfdcDetector
from dfdc.scoring.calibrate import Calibration

if TYPE_CHECKING:
    from dfdc.model.backbone import Checkpoint

FALLBACK = 0.65


@pytest.fixture(scope="module")
def bundle_dir(untrained_checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cal = Calibration(1.0, 0.02, 0.98, FALLBACK)
    return build_bundle(untrained_checkpoint, cal, {"logloss": 0.5}, tmp_path_factory.mktemp("b") / "bundle")


def _model(bundle_dir: Path, root: Path | None) -> DfdcDetector:
    model = DfdcDetector()
    config = {"video_root": str(root) if root else ""}
    model.load_context(SimpleNamespace(artifacts={"bundle": str(bundle_dir)}, model_config=config))
    return model


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path handed to the scorer (the only code that opens a video)."""
    seen: list[Path] = []
    real = predict_module.score_videos

    def recording(bundle: object, paths: list[Path], **kwargs: object) -> pd.DataFrame:
        seen.extend(paths)
        return real(bundle, paths, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(predict_module, "score_videos", recording)
    return seen


def test_a_path_outside_the_root_is_refused_and_never_opened(
    bundle_dir: Path, tmp_path: Path, opened: list[Path]
) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not yours")
    inside = root / "gone.mp4"  # under the root: accepted, scored as missing
    table = pd.DataFrame({"path": [str(secret), "../secret.mp4", str(inside)]})
    out = _model(bundle_dir, root).predict(None, table)
    assert list(out.columns) == OUTPUT
    assert out["status"].tolist() == ["refused", "refused", "missing"]
    assert out["detail"].tolist()[:2] == ["path outside video_root"] * 2
    assert out["label"].tolist()[:2] == [pytest.approx(FALLBACK)] * 2
    assert out["filename"].tolist() == ["secret.mp4", "secret.mp4", "gone.mp4"]
    assert opened == [inside]


def test_without_a_root_no_path_is_opened(bundle_dir: Path, tmp_path: Path, opened: list[Path]) -> None:
    out = _model(bundle_dir, None).predict(None, pd.DataFrame({"path": [str(tmp_path / "a.mp4")]}))
    assert out.to_dict("records") == [{
        "filename": "a.mp4", "label": pytest.approx(FALLBACK), "status": "refused",
        "detail": "paths are not accepted (no video_root given at load time); send the video",
    }]  # fmt: skip
    assert opened == []


@pytest.mark.parametrize("encode", [bytes, lambda b: base64.b64encode(b).decode()], ids=["bytes", "base64"])
def test_video_bytes_are_scored_from_a_private_copy_that_is_removed(
    bundle_dir: Path, opened: list[Path], encode: object
) -> None:
    data = b"this is no video"
    table = pd.DataFrame({"video": [encode(data)], "name": ["../../clip.MP4"]})  # type: ignore[operator]
    out = _model(bundle_dir, None).predict(None, table)
    (row,) = out.to_dict("records")
    assert row["filename"] == "clip.MP4" and row["status"] not in {"ok", "refused"}
    assert row["label"] == pytest.approx(FALLBACK)
    (copy,) = opened
    assert copy.suffix == ".mp4" and not copy.exists() and not copy.parent.exists()


def test_a_row_with_nothing_is_refused(bundle_dir: Path) -> None:
    out = _model(bundle_dir, None).predict(None, pd.DataFrame({"name": ["x.mp4"]}))
    assert out[["status", "detail"]].to_dict("records") == [
        {"status": "refused", "detail": "no video and no path"}
    ]
