"""The offline submission bundle: weights, the whole protocol, its code, a model card, checksums.

With a voice branch the bundle carries both models: the face model's weights and the voice
model's (``voice.safetensors``), the voice features in the protocol's ``voice`` and how
the two are fused in its ``fusion``.

Weights are safetensors and the protocol is JSON, so loading a bundle runs no
pickled code. The bundle also carries the dfdc source files prediction runs on, an
entry point (``predict.py``) and exact requirement pins, so it scores videos with
nothing but itself and a fresh environment. Every file's SHA-256 is checked before
anything is loaded, and a file the checksums do not list is refused too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dfdc.config import ExtractConfig, ModelConfig
from dfdc.faces.video import VIDEO_SUFFIXES
from dfdc.model.backbone import Checkpoint, build_model
from dfdc.protocol import Preprocess, Protocol
from dfdc.scoring.calibrate import Calibration

if TYPE_CHECKING:
    from dfdc.audio.model import VoiceCheckpoint
    from dfdc.config import ScoreConfig
    from dfdc.scoring.scorer import Scorer

WEIGHTS = "model.safetensors"
VOICE_WEIGHTS = "voice.safetensors"  # only in a bundle whose fusion uses the voice
PROTOCOL = "protocol.json"
CARD = "MODEL_CARD.md"
CHECKSUMS = "checksums.json"
ENTRY = "predict.py"
REQUIREMENTS = "requirements.txt"
CODE = "code"  # the vendored ``dfdc`` package: code/dfdc/*.py
REQUIRED = (WEIGHTS, PROTOCOL, CARD)  # bundles written before the entry point still load


class BundleError(Exception):
    """A bundle that is incomplete or has been altered since it was written."""


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the model (on the CPU; the scorer moves it) and the protocol that feeds it."""

    model: nn.Module
    protocol: Protocol  # calibrated: crops, normalisation, aggregation, fusion, temperature, clip
    metrics: dict[str, float]
    voice_model: nn.Module | None = None  # with a voice branch (protocol.voice)

    def scorer(self, run: ScoreConfig | None = None) -> Scorer:
        """The one scorer on this bundle's models and protocol, run as ``run`` says."""
        from dfdc.scoring.scorer import Scorer

        return Scorer(self.model, self.protocol, run, self.voice_model)

    @property
    def model_cfg(self) -> ModelConfig:
        """The backbone's architecture."""
        return self.protocol.model

    @property
    def extract(self) -> ExtractConfig:
        """The crop protocol; its run settings (device, workers) are defaults, never the builder's."""
        return self.protocol.extract

    @property
    def preprocess(self) -> Preprocess:
        """The backbone's normalisation."""
        return self.protocol.preprocess

    @property
    def calibration(self) -> Calibration:
        """Aggregation, temperature, shift, clip and fallback."""
        assert self.protocol.calibration is not None  # a bundle is always calibrated
        return self.protocol.calibration


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_bundle(
    checkpoint: Checkpoint,
    calibration: Calibration,
    metrics: dict[str, float],
    out_dir: Path,
    extra: dict[str, str] | None = None,
    training: dict[str, Any] | None = None,
    voice: VoiceCheckpoint | None = None,
) -> Path:
    """Write a self-describing, self-running bundle into ``out_dir`` (replacing a bundle there).

    ``voice`` is required when ``calibration`` fuses a voice branch, and ignored otherwise.
    """
    uses_voice = calibration.fusion_rule.uses_voice
    if uses_voice and voice is None:
        method = calibration.fusion_rule.method
        raise ValueError(f"the calibration fuses the voice ({method}): a voice model is needed")
    _clear(out_dir)
    save_file({k: v.contiguous() for k, v in checkpoint.state_dict.items()}, out_dir / WEIGHTS)
    record = checkpoint.protocol.with_calibration(calibration)
    if uses_voice and voice is not None:
        save_file({k: v.contiguous() for k, v in voice.state_dict.items()}, out_dir / VOICE_WEIGHTS)
        record = replace(record, voice=voice.audio)
    protocol = {
        **record.to_json(),  # as the checkpoint saves it
        "metrics": metrics,
        "provenance": extra or {},
        "training": training or {},
    }
    (out_dir / PROTOCOL).write_text(json.dumps(protocol, indent=2) + "\n")
    (out_dir / CARD).write_text(_model_card(protocol))
    _write_code(out_dir)
    checksums = {name: _sha256(out_dir / name) for name in _bundle_files(out_dir)}
    (out_dir / CHECKSUMS).write_text(json.dumps(checksums, indent=2) + "\n")
    return out_dir


def _clear(out_dir: Path) -> None:
    """Start from an empty folder; refuse to empty one that is not a bundle."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / CHECKSUMS).is_file():
            raise BundleError(f"{out_dir}: not empty and not a dfdc bundle; refusing to overwrite")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_code(out_dir: Path) -> None:
    """The entry point, the dfdc source files it runs on, and their exact requirements."""
    from dfdc.release import _standalone

    files, third_party = _standalone.module_closure()
    package = out_dir / CODE / _standalone.PACKAGE
    package.mkdir(parents=True)
    for path in files:
        target = package / path.relative_to(_standalone.SOURCE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    shutil.copyfile(Path(__file__).with_name("_bundle_main.py"), out_dir / ENTRY)
    (out_dir / REQUIREMENTS).write_text(_standalone.requirements_text(third_party))


def _bundle_files(bundle_dir: Path) -> list[str]:
    """Every file of the bundle except the checksums themselves, as relative POSIX paths."""
    return sorted(
        p.relative_to(bundle_dir).as_posix()
        for p in bundle_dir.rglob("*")
        if p.is_file() and p != bundle_dir / CHECKSUMS
    )


def _one_line(err: BaseException) -> str:
    """An exception as one line, for a refusal printed without a traceback."""
    return " ".join(f"{type(err).__name__}: {err}".split())


def _read_checksums(sums_path: Path) -> dict[str, str]:
    """The file name to SHA-256 mapping; an unreadable or malformed one is a ``BundleError``."""
    try:
        checksums = json.loads(sums_path.read_text())
    except (OSError, ValueError) as err:  # permissions, bad UTF-8, bad JSON
        raise BundleError(f"{sums_path}: unreadable ({_one_line(err)})") from err
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise BundleError(f"{sums_path}: not a mapping of file names to SHA-256 digests")
    return checksums


def verify_bundle(bundle_dir: Path) -> dict[str, str]:
    """Raise ``BundleError`` naming the first missing, unreadable, altered or unlisted file."""
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: no such folder; not a dfdc bundle")
    sums_path = bundle_dir / CHECKSUMS
    if not sums_path.is_file():
        raise BundleError(f"{bundle_dir}: no {CHECKSUMS}; not a dfdc bundle")
    checksums = _read_checksums(sums_path)
    for name in sorted(set(REQUIRED) | set(checksums)):
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from bundle")
        try:
            digest = _sha256(path)
        except OSError as err:
            raise BundleError(f"{path}: unreadable ({_one_line(err)})") from err
        if checksums.get(name) != digest:
            raise BundleError(f"{path}: checksum mismatch; the file was altered")
    unlisted = sorted(set(_bundle_files(bundle_dir)) - set(checksums))
    if unlisted:
        raise BundleError(
            f"{bundle_dir / unlisted[0]}: not listed in {CHECKSUMS}; the bundle was altered "
            "(keep outputs and environments outside the bundle folder)"
        )
    return checksums


def bundle_digest(checksums: dict[str, str]) -> str:
    """One SHA-256 for a whole bundle: of its checksums, sorted, in compact JSON.

    ``verify_bundle`` ties every file to the checksums; this ties the checksums to a value
    kept outside the bundle (the registry's ``bundle_sha256`` tag), so a copy whose files
    and checksums were both rewritten is still caught.
    """
    canonical = json.dumps(checksums, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_bundle(bundle_dir: Path) -> Bundle:
    """Verify, then rebuild the model exactly as it was trained.

    A bundle whose files match their checksums but still do not load (checksums rewritten
    by hand, or written by an incompatible dfdc) is a ``BundleError`` too: refused in one line.
    """
    verify_bundle(bundle_dir)
    try:
        return _rebuild(bundle_dir)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        raise BundleError(f"{bundle_dir}: cannot be loaded ({_one_line(err)})") from err


def _rebuild(bundle_dir: Path) -> Bundle:
    """The model and protocol of a verified bundle (run settings in an older protocol are ignored)."""
    raw = json.loads((bundle_dir / PROTOCOL).read_text())
    protocol = Protocol.from_json(raw)
    if protocol.calibration is None:
        raise KeyError("calibration")
    model = build_model(protocol.model)
    model.load_state_dict(load_file(bundle_dir / WEIGHTS))
    voice_model = None
    if protocol.voice is not None:
        from dfdc.audio.model import build_voice_model, load_voice_weights

        voice_model = build_voice_model(protocol.voice)
        load_voice_weights(voice_model, load_file(bundle_dir / VOICE_WEIGHTS))
        voice_model.eval()
    return Bundle(model=model.eval(), protocol=protocol, metrics=raw["metrics"], voice_model=voice_model)


def _voice_card(protocol: dict) -> str:
    """The voice branch and the fusion, for the model card ("" for a face-only bundle)."""
    fusion, voice = protocol.get("fusion"), protocol.get("voice")
    if fusion is None or voice is None:
        return ""
    weights = fusion.get("weights", [1.0, 1.0])
    a, b = fusion.get("face_scale", [1.0, 0.0])
    how = {
        "rule": "the larger of the two logits (the branch more confident that the video is fake)",
        "noisy_or": f"noisy-OR: fake unless both branches say untouched (the face logit as {a:.3f} x face"
        f" {b:+.3f}, calibrated on the calib subset for whether the face changed)",
        "logreg": f"{weights[0]:.3f} x face + {weights[1]:.3f} x voice (fitted on the calib subset)",
        "voice": "the voice logit alone",
    }[fusion["method"]]
    return f"""
**Voice branch.** The audio track is decoded to mono at {voice["sample_rate"]} Hz, its leading and
trailing silence trimmed, cut into {voice["window_s"]} s log-mel windows ({voice["n_mels"]} bands)
every {voice["window_hop_s"]} s and scored by a small LCNN-style CNN (`voice.safetensors`); the
windows' logits are pooled ({voice.get("pool", "mean")}) and joined with the clip's pitch spread (a
second voice spliced in widens it) by the clip head stored with the weights; the face and voice
logits are fused as {how} before the temperature and shift. A video
without usable audio (no track, empty, silent, undecodable) is scored by its face alone, one
without a face by its voice alone; with neither it gets the fallback.
"""


def _model_card(protocol: dict) -> str:
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(protocol["metrics"].items()))
    provenance = "\n".join(f"- {k}: {v}" for k, v in sorted(protocol["provenance"].items()))
    training = "\n".join(f"- {k}: {v}" for k, v in sorted(protocol["training"].items())) or "- not recorded"
    ext = protocol["extract"]
    return f"""# dfdc detector

Scores a video with P(FAKE): {ext["frames_per_video"]} evenly spaced frames, faces found by
MTCNN (thresholds {ext["thresholds"]}), crops with margin {ext["margin"]:.2f} resized to
{ext["crop_size"]} px, backbone `{protocol["model"]["name"]}`, frame logits aggregated per video
(`{protocol["aggregation"].get("strategy", "mean")}`), divided by the
temperature {protocol["calibration"]["temperature"]:.3f}, shifted by
{protocol["calibration"].get("bias", 0.0):.3f} (fitted around the log prior odds: training balanced
the classes), clipped to
[{protocol["calibration"]["clip_min"]}, {protocol["calibration"]["clip_max"]}]. A video with no
usable face gets {protocol["calibration"]["fallback"]:.3f}.
{_voice_card(protocol)}
## Held-out metrics (video level)

| metric | value |
|---|---|
{metrics}

## Provenance

{provenance}

## Training parameters

{training}

## How to run it

Needs only this folder and the packages of `{REQUIREMENTS}` (exact pins; Python and platform in
its first line); no network, no MLflow, no pipeline. Keep the environment and the outputs
outside this folder:

```bash
python -m venv ~/dfdc-env && ~/dfdc-env/bin/pip install -r <bundle>/{REQUIREMENTS}
~/dfdc-env/bin/python -I <bundle>/{ENTRY} <folder of videos | video> --out submission.csv \\
    [--sample-submission sample_submission.csv] [--details details.json]
```

A folder's videos are its {", ".join(f"`{s}`" for s in VIDEO_SUFFIXES)} files, in any case.
`{ENTRY}` checks every file against `{CHECKSUMS}` first and refuses an altered, missing or
unlisted one, anywhere in the folder; nothing of the folder is imported before that check.
It runs the dfdc source files in `{CODE}/`, the same ones the pipeline ran.
A bad bundle, a path that does not exist or a folder without videos is refused in one line
on stderr with exit status 2.

## Intended use and limits

Research on face-swap detection in DFDC-style footage. Trained on the data named above only;
it has not seen other manipulation methods, compressions or demographics, and a single
score is not proof that a video is or is not manipulated.
"""
