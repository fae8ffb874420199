"""Shared, session-scoped fixtures: one tiny demo dataset, one extraction, one detector.

Everything here is real: H.264 mp4 files rendered by ``dfdc.demo.generate``, facenet-pytorch's
MTCNN with the weights of its wheel, and a timm ``resnet10t``. The expensive parts are
built once per session; tests that need to change files work on copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch

from dfdc.audio.model import VoiceCheckpoint, build_voice_model
from dfdc.config import AudioConfig, ExtractConfig, ModelConfig
from dfdc.data.metadata import read_metadata
from dfdc.demo.generate import TEST_DIR, DemoSpec, generate_demo_data
from dfdc.faces.detect import FaceDetector
from dfdc.faces.extract import extract_chunk
from dfdc.faces.store import INDEX_FILE
from dfdc.model.backbone import Checkpoint, build_model, preprocess_of

# One intra-op thread: on a shared 2-core machine, torch's OpenMP threads spin against
# other processes and MTCNN runs ~10x slower. Results do not depend on it.
torch.set_num_threads(1)

DEMO_SPEC = DemoSpec(
    chunks=1,
    originals_per_chunk=2,
    fakes_per_original=3,
    test_videos=2,
    width=160,
    height=120,
    duration=1.0,
    fps=10,
    # Manipulations far above the labels threshold even in 160x120 clips: these clips test the
    # machinery; the subtle kinds (warp, blend) are tested where they are made (tests/demo).
    kinds=("swap", "lowres", "colour"),
)
# Small crops and few frames keep extraction and the models fast; every test that
# extracts or predicts uses this one record so their crops can be compared.
# One process (no pool to spawn per call) and no reuse of originals' tracks, so every crop
# is detected on its own video exactly as prediction does; reuse is tested on its own.
EXTRACT_CFG = ExtractConfig(device="cpu", frames_per_video=4, crop_size=32, workers=1, reuse_originals=False)


@dataclass(frozen=True)
class Demo:
    """The generated demo dataset on disk and its ground truth."""

    root: Path
    spec: DemoSpec
    manifest: pd.DataFrame
    chunk_dir: Path
    test_dir: Path
    sample_submission: Path


@dataclass(frozen=True)
class Extracted:
    """The session's extraction of the demo chunk (read-only: copy before changing)."""

    faces_dir: Path  # contains <chunk>/...
    out_dir: Path  # faces_dir / chunk name
    statuses: pd.DataFrame
    index: pd.DataFrame


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    root = tmp_path_factory.mktemp("demo")
    manifest = generate_demo_data(root, DEMO_SPEC)
    chunk = manifest.loc[manifest["chunk"] != TEST_DIR, "chunk"].unique()
    assert len(chunk) == 1
    return Demo(
        root=root,
        spec=DEMO_SPEC,
        manifest=manifest,
        chunk_dir=root / chunk[0],
        test_dir=root / TEST_DIR,
        sample_submission=root / "sample_submission.csv",
    )


@pytest.fixture(scope="session")
def extract_cfg() -> ExtractConfig:
    return EXTRACT_CFG


@pytest.fixture(scope="session")
def chunk_meta(demo: Demo) -> pd.DataFrame:
    return read_metadata(demo.chunk_dir)


@pytest.fixture(scope="session")
def detector(extract_cfg: ExtractConfig) -> FaceDetector:
    return FaceDetector(extract_cfg)


@pytest.fixture(scope="session")
def extracted(
    tmp_path_factory: pytest.TempPathFactory,
    demo: Demo,
    chunk_meta: pd.DataFrame,
    extract_cfg: ExtractConfig,
) -> Extracted:
    faces_dir = tmp_path_factory.mktemp("faces")
    out_dir = faces_dir / demo.chunk_dir.name
    statuses = extract_chunk(demo.chunk_dir, chunk_meta, out_dir, extract_cfg)
    index = pd.read_parquet(out_dir / INDEX_FILE)
    return Extracted(faces_dir, out_dir, statuses, index)


@pytest.fixture(scope="session")
def untrained_checkpoint(extract_cfg: ExtractConfig) -> Checkpoint:
    """A randomly initialised resnet10t with the session's crop protocol."""
    torch.manual_seed(0)
    cfg = ModelConfig(name="resnet10t")
    model = build_model(cfg)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Checkpoint(cfg, extract_cfg, preprocess_of(model), state, epoch=0, val_logloss=0.69)


@pytest.fixture(scope="session")
def untrained_voice() -> VoiceCheckpoint:
    """A randomly initialised voice model (its batch norms' statistics spread, so windows differ)."""
    torch.manual_seed(1)
    audio = AudioConfig()
    model = build_voice_model(audio)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return VoiceCheckpoint(audio, {k: v.clone() for k, v in model.state_dict().items()}, 0, 0.5)


def _faceless_mp4(path: Path) -> Path:
    """An H.264 mp4 of flat grey frames: a readable video with no face in it."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((96, 128, 3), 30 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _audio_only_mp4(path: Path) -> Path:
    """An mp4 holding one AAC stream and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100, layout="mono")
        for k in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, k * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _video_only(src: Path, dst: Path) -> Path:
    """``src``'s video packets alone in ``dst``'s container (its suffix says which): same frames, no audio."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        target = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is not None:
                packet.stream = target
                out.mux(packet)
    return dst


@pytest.fixture(scope="session")
def video_only() -> Callable[[Path, Path], Path]:
    """Copies a video's H.264 packets, and nothing else, into another file (remuxed, not re-encoded)."""
    return _video_only


@pytest.fixture(scope="session")
def faceless_mp4() -> Callable[[Path], Path]:
    """Writes a faceless H.264 video to the given path and returns it."""
    return _faceless_mp4


@pytest.fixture(scope="session")
def audio_only_mp4() -> Callable[[Path], Path]:
    """Writes an audio-only mp4 to the given path and returns it."""
    return _audio_only_mp4


@pytest.fixture(scope="session")
def serve_bundle_dir(untrained_checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the untrained checkpoint for ``dfdc serve``'s tests (web API and browser)."""
    from dfdc.release.bundle import build_bundle
    from dfdc.scoring.calibrate import Calibration

    calibration = Calibration(temperature=2.0, clip_min=0.05, clip_max=0.95, fallback=0.5)
    return build_bundle(
        untrained_checkpoint, calibration, {"logloss": 0.69, "auc": 0.5},
        tmp_path_factory.mktemp("serve_bundle"), {"run_id": "test-run"},
    )  # fmt: skip
