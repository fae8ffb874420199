"""The offline submission bundle: weights, the whole protocol, a model card, checksums.

Weights are safetensors and the protocol is JSON, so loading a bundle runs no
pickled code; every file's SHA-256 is checked before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from dfdc.calibrate import Calibration
from dfdc.config import ExtractConfig, ModelConfig
from dfdc.model import Checkpoint, Preprocess, build_model

WEIGHTS = "model.safetensors"
PROTOCOL = "protocol.json"
CARD = "MODEL_CARD.md"
CHECKSUMS = "checksums.json"


class BundleError(Exception):
    """A bundle that is incomplete or has been altered since it was written."""


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the model ready to score and the protocol that feeds it."""

    model: nn.Module
    model_cfg: ModelConfig
    extract: ExtractConfig
    preprocess: Preprocess
    calibration: Calibration
    metrics: dict[str, float]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_bundle(
    checkpoint: Checkpoint,
    calibration: Calibration,
    metrics: dict[str, float],
    out_dir: Path,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write a self-describing bundle into ``out_dir`` and return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in checkpoint.state_dict.items()}, out_dir / WEIGHTS)
    protocol = {
        "model": checkpoint.model.model_dump(mode="json"),
        "extract": checkpoint.extract.model_dump(mode="json"),
        "preprocess": asdict(checkpoint.preprocess),
        "aggregation": "mean_logit",
        "calibration": asdict(calibration),
        "metrics": metrics,
        "provenance": extra or {},
    }
    (out_dir / PROTOCOL).write_text(json.dumps(protocol, indent=2) + "\n")
    (out_dir / CARD).write_text(_model_card(protocol))
    files = [WEIGHTS, PROTOCOL, CARD]
    checksums = {name: _sha256(out_dir / name) for name in files}
    (out_dir / CHECKSUMS).write_text(json.dumps(checksums, indent=2) + "\n")
    return out_dir


def verify_bundle(bundle_dir: Path) -> dict[str, str]:
    """Raise ``BundleError`` naming the first missing or altered file."""
    sums_path = bundle_dir / CHECKSUMS
    if not sums_path.is_file():
        raise BundleError(f"{bundle_dir}: no {CHECKSUMS}; not a dfdc bundle")
    checksums: dict[str, str] = json.loads(sums_path.read_text())
    for name in (WEIGHTS, PROTOCOL, CARD):
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from bundle")
        if checksums.get(name) != _sha256(path):
            raise BundleError(f"{path}: checksum mismatch; the file was altered")
    return checksums


def load_bundle(bundle_dir: Path) -> Bundle:
    """Verify, then rebuild the model exactly as it was trained."""
    verify_bundle(bundle_dir)
    protocol = json.loads((bundle_dir / PROTOCOL).read_text())
    model_cfg = ModelConfig.model_validate(protocol["model"])
    model = build_model(model_cfg.model_copy(update={"pretrained": False, "weights_path": None}))
    model.load_state_dict(load_file(bundle_dir / WEIGHTS))
    pre = protocol["preprocess"]
    return Bundle(
        model=model.eval(),
        model_cfg=model_cfg,
        extract=ExtractConfig.model_validate(protocol["extract"]),
        preprocess=Preprocess(tuple(pre["mean"]), tuple(pre["std"])),
        calibration=Calibration(**protocol["calibration"]),
        metrics=protocol["metrics"],
    )


def _model_card(protocol: dict) -> str:
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(protocol["metrics"].items()))
    provenance = "\n".join(f"- {k}: {v}" for k, v in sorted(protocol["provenance"].items()))
    ext = protocol["extract"]
    return f"""# dfdc detector

Scores a video with P(FAKE): {ext["frames_per_video"]} evenly spaced frames, faces found by
MTCNN (thresholds {ext["thresholds"]}), crops with margin {ext["margin"]:.2f} resized to
{ext["crop_size"]} px, backbone `{protocol["model"]["name"]}`, mean frame logit divided by the
temperature {protocol["calibration"]["temperature"]:.3f}, clipped to
[{protocol["calibration"]["clip_min"]}, {protocol["calibration"]["clip_max"]}]. A video with no
usable face gets {protocol["calibration"]["fallback"]:.3f}.

## Held-out metrics (video level)

| metric | value |
|---|---|
{metrics}

## Provenance

{provenance}

## Intended use and limits

Research on face-swap detection in DFDC-style footage. Trained on the data named above only;
it has not seen other manipulation methods, compressions or demographics, and a single
score is not proof that a video is or is not manipulated.
"""
