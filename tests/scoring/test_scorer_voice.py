"""The scorer with a voice branch: both branches fused; either alone when the other has nothing."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
import pytest
import torch

from dfdc.audio.model import VoiceCheckpoint, clip_logit
from dfdc.config import AudioConfig, ScoreConfig
from dfdc.model.backbone import Checkpoint
from dfdc.release.bundle import VOICE_WEIGHTS, build_bundle, load_bundle
from dfdc.release.predict import list_videos, score_videos
from dfdc.scoring.calibrate import Calibration
from dfdc.scoring.fusion import Fusion

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Demo

WEIGHTS = (0.8, 1.7)
CAL = Calibration(1.3, 0.02, 0.98, 0.6, bias=0.2, fusion=Fusion("logreg", WEIGHTS).to_json())
RUN = ScoreConfig(device="cpu", workers=0)


def _faceless_with_speech(src: Path, dst: Path) -> Path:
    """Grey frames with ``src``'s speech: a readable video whose only evidence is its voice."""
    with av.open(str(src)) as inp:
        rate = inp.streams.audio[0].rate
        speech = np.concatenate([f.to_ndarray().mean(axis=0) for f in inp.decode(audio=0)]).astype(np.float32)
    with av.open(str(dst), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 128, 96, "yuv420p"
        audio = out.add_stream("aac", rate=rate, layout="mono")
        audio.time_base = Fraction(1, rate)
        for i in range(int(10 * len(speech) / rate)):
            grey = av.VideoFrame.from_ndarray(np.full((96, 128, 3), 20 * (i % 8), np.uint8), format="rgb24")
            out.mux(video.encode(grey))
        for start in range(0, len(speech), 1024):
            piece = speech[None, start : start + 1024]
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(audio.encode(frame))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return dst


@pytest.fixture(scope="module")
def voice_bundle(
    untrained_checkpoint: Checkpoint,
    untrained_voice: VoiceCheckpoint,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    return build_bundle(
        untrained_checkpoint, CAL, {"logloss": 0.5}, tmp_path_factory.mktemp("voice-bundle"),
        voice=untrained_voice,
    )  # fmt: skip


@pytest.fixture(scope="module")
def clips(
    demo: Demo, tmp_path_factory: pytest.TempPathFactory, video_only: Callable[[Path, Path], Path]
) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("voice-clips")
    speaking = list_videos(demo.test_dir)[0]
    return {
        "both": speaking,
        "face_only": video_only(speaking, tmp / "noaudiovid.mp4"),  # the same frames, no audio track
        "voice_only": _faceless_with_speech(speaking, tmp / "facelessvd.mp4"),
    }


def test_the_bundle_carries_both_models(voice_bundle: Path) -> None:
    bundle = load_bundle(voice_bundle)
    assert (voice_bundle / VOICE_WEIGHTS).is_file()
    assert bundle.voice_model is not None and bundle.protocol.voice == AudioConfig()
    assert bundle.calibration.fusion_rule == Fusion("logreg", WEIGHTS)
    assert "Voice branch" in (voice_bundle / "MODEL_CARD.md").read_text()


def test_a_fused_calibration_without_a_voice_model_is_refused(
    untrained_checkpoint: Checkpoint, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="voice model"):
        build_bundle(untrained_checkpoint, CAL, {}, tmp_path / "b")


def test_each_video_is_scored_by_the_branches_it_has(voice_bundle: Path, clips: dict[str, Path]) -> None:
    bundle = load_bundle(voice_bundle)
    rows = score_videos(bundle, list(clips.values()), progress=False, run=RUN).set_index("filename")
    both, face_only, voice_only = (rows.loc[clips[k].name] for k in ("both", "face_only", "voice_only"))
    w_face, w_voice = WEIGHTS

    assert both["status"] == "ok" and both["voice_status"] == "ok" and both["n_faces"] > 0
    assert np.isfinite(both["face_logit"]) and np.isfinite(both["voice_logit"])
    assert both["logit"] == pytest.approx(w_face * both["face_logit"] + w_voice * both["voice_logit"])
    assert both["label"] == pytest.approx(float(CAL.probability(np.array([both["logit"]]))[0]))

    # no audio track: the face alone, with the reason on record
    assert face_only["voice_status"] == "no_audio" and np.isnan(face_only["voice_logit"])
    assert face_only["face_logit"] == pytest.approx(both["face_logit"], rel=1e-5)  # the same frames
    assert face_only["logit"] == pytest.approx(w_face * face_only["face_logit"])
    assert face_only["detail"] == "no_audio: scored by the face alone"

    # no face: the voice alone, not the fallback
    assert voice_only["status"] == "ok" and voice_only["n_faces"] == 0
    assert voice_only["detail"] == "no_face: scored by the voice alone"
    assert voice_only["voice_logit"] == pytest.approx(both["voice_logit"], abs=0.05)  # the same speech
    assert voice_only["logit"] == pytest.approx(w_voice * voice_only["voice_logit"])
    assert voice_only["label"] != pytest.approx(CAL.fallback)


def test_details_give_the_voice_per_window(voice_bundle: Path, clips: dict[str, Path]) -> None:
    bundle = load_bundle(voice_bundle)
    row = score_videos(bundle, [clips["both"]], progress=False, details=True, run=RUN).iloc[0]
    windows = row["details"]["voice"]
    assert windows and row["details"]["persons"]
    pooled = clip_logit(np.array([w["logit"] for w in windows]), bundle.protocol.voice)  # the head: identity
    assert pooled == pytest.approx(row["voice_logit"], rel=1e-5)
    starts = [w["start"] for w in windows]
    assert starts == sorted(starts) and all(w["end"] - w["start"] == pytest.approx(1.0) for w in windows)
    for w in windows:  # the voice alone through the bundle's fusion and calibration
        assert w["label"] == pytest.approx(float(CAL.probability(np.array([w_voice_only(w["logit"])]))[0]))


def w_voice_only(z: float) -> float:
    """The fused logit of a video with a voice and no face."""
    return WEIGHTS[1] * z


def test_a_face_only_bundle_never_opens_the_audio(
    untrained_checkpoint: Checkpoint, untrained_voice: VoiceCheckpoint, clips: dict[str, Path], tmp_path: Path
) -> None:
    plain = Calibration(1.3, 0.02, 0.98, 0.6, bias=0.2)
    built = build_bundle(untrained_checkpoint, plain, {}, tmp_path / "b", voice=untrained_voice)
    bundle = load_bundle(built)
    assert bundle.voice_model is None and not (tmp_path / "b" / VOICE_WEIGHTS).exists()
    rows = score_videos(bundle, [clips["both"], clips["voice_only"]], progress=False, run=RUN)
    assert rows["voice_status"].tolist() == ["off", "off"]
    assert rows["status"].tolist() == ["ok", "no_face"]


def test_an_unexpected_audio_failure_leaves_the_face_to_decide(
    voice_bundle: Path, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dfdc.audio.features

    def broken(path: Path, cfg: AudioConfig) -> None:
        raise RuntimeError("resampler exploded")

    monkeypatch.setattr(dfdc.audio.features, "audio_windows", broken)
    row = score_videos(load_bundle(voice_bundle), [clips["both"]], progress=False, run=RUN).iloc[0]
    assert row["status"] == "ok" and row["voice_status"] == "audio_error" and np.isnan(row["voice_logit"])
    assert row["logit"] == pytest.approx(WEIGHTS[0] * row["face_logit"])
    assert row["detail"] == "audio_error: scored by the face alone"


def test_the_bundle_applies_the_voice_models_clip_head(
    untrained_checkpoint: Checkpoint, untrained_voice: VoiceCheckpoint, clips: dict[str, Path], tmp_path: Path
) -> None:
    """A fitted head travels inside the voice weights; the clip's pitch spread feeds it when scored."""
    from dfdc.audio.features import audio_windows
    from dfdc.audio.model import window_logits

    head = torch.tensor([0.5, -1.0, 8.0, -2.0, 0.2])
    state = {**untrained_voice.state_dict, "clip_head": head}
    fitted = VoiceCheckpoint(untrained_voice.audio, state, 0, 0.5)
    bundle = load_bundle(build_bundle(untrained_checkpoint, CAL, {}, tmp_path / "b", voice=fitted))
    row = score_videos(bundle, [clips["both"]], progress=False, details=True, run=RUN).iloc[0]
    features = audio_windows(clips["both"], fitted.audio)
    window = window_logits(fitted.build(), features.windows)
    assert np.isfinite(features.pitch_spread)  # the demo's speech is voiced
    want = clip_logit(window, fitted.audio, features.pitch_spread, head.numpy())
    assert row["voice_logit"] == pytest.approx(want, abs=1e-4)
    assert row["voice_logit"] != pytest.approx(float(window.mean()), abs=1e-3)  # the head did something
    for w, z in zip(row["details"]["voice"], window, strict=True):  # each window through the same head
        assert w["logit"] == pytest.approx(
            clip_logit(z[None], fitted.audio, features.pitch_spread, head.numpy())
        )


def test_a_bundle_from_before_clip_heads_scores_as_it_did(
    voice_bundle: Path, clips: dict[str, Path], tmp_path: Path
) -> None:
    """Its voice weights have no clip head and its protocol no ``pool``: the windows' mean, as then."""
    import hashlib
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from dfdc.audio.features import audio_windows
    from dfdc.audio.model import window_logits
    from dfdc.release.bundle import CHECKSUMS, PROTOCOL

    old = Path(shutil.copytree(voice_bundle, tmp_path / "old"))
    weights = {k: v for k, v in load_file(old / VOICE_WEIGHTS).items() if k != "clip_head"}
    save_file(weights, old / VOICE_WEIGHTS)
    protocol = json.loads((old / PROTOCOL).read_text())
    for key in ("pool", "pool_temperature"):
        del protocol["voice"][key]
    (old / PROTOCOL).write_text(json.dumps(protocol))
    sums = json.loads((old / CHECKSUMS).read_text())
    for name in (VOICE_WEIGHTS, PROTOCOL):
        sums[name] = hashlib.sha256((old / name).read_bytes()).hexdigest()
    (old / CHECKSUMS).write_text(json.dumps(sums))

    bundle = load_bundle(old)
    assert bundle.protocol.voice is not None and bundle.protocol.voice.pool == "mean"
    row = score_videos(bundle, [clips["both"]], progress=False, run=RUN).iloc[0]
    assert bundle.voice_model is not None
    window = window_logits(bundle.voice_model, audio_windows(clips["both"], bundle.protocol.voice).windows)
    assert row["voice_logit"] == pytest.approx(float(window.mean()), abs=1e-4)
