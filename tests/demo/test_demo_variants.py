"""The demo's variants: voice-only fakes and two-person scenes, and a default left as it was.

Decoding is PyAV's and detection the project's MTCNN (the session ``detector``, at the
``ExtractConfig`` defaults), so what these tests see is what extraction will see.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from dfdc.demo import generate
from dfdc.demo.generate import ALL_KINDS, IDENTITIES, KINDS, VOICE, DemoSpec, generate_demo_data
from dfdc.faces.detect import FaceDetector

# --------------------------------------------------------------------------- default unchanged

# Computed with the generator as it was before the variants (commit 3375f89), with the
# PyAV/libx264 of the lock file: the variants must not move a byte of the default dataset.
OLD_COLUMNS = ["chunk", "filename", "label", "original", "kind", "identity", "seed"]
DEFAULT_MANIFEST_SHA256 = "1f0820262d510b1d8311807a23c27fc0f1cd5d97f614ec3d1817aaa79963ef10"
# The default spec cut to one real and its three fakes: the same first video as the default
# dataset (same names, seeds and frame geometry), and one fake of each default kind.
FIRST = DemoSpec(chunks=1, originals_per_chunk=1, fakes_per_original=3, test_videos=0)
FIRST_MANIFEST_SHA256 = "057212e7cae16c2499b6ecb1c9749c2afa98b9adffeaa6c7ce831af62f101b79"
FIRST_VIDEOS_SHA256 = {
    "merwsqojco.mp4": "079a019d7dad6595951f9e4f2bea02182b740692a62ea2072fc4d75d7792da4f",
    "rrgiyjutgi.mp4": "c8997f5986e4ff6df1236d8bf959d4e1170dc2ce389925d930efc4da98f103c1",
    "vopyhvuxvr.mp4": "2a173d0871e58c35f3ca8f8cd402f466b2aa2e5d2058f67062f0df6c7550ed47",
    "bqlnxhfabw.mp4": "1c143be3409c6e495ec8b1c7208c2da99fc5c6306543205561f3e56925372b25",
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_one_person_truth(manifest: pd.DataFrame) -> None:
    assert (manifest["people"] == 1).all()
    real = manifest["label"] == "REAL"
    assert (manifest.loc[real, "face_target"] == "none").all()
    assert (manifest.loc[~real, "face_target"] == "all").all()


def test_default_spec_is_unchanged(tmp_path: Path) -> None:
    # The full default dataset takes a minute to render; its manifest is its plan.
    default = generate._manifest(generate._plan(DemoSpec()))
    assert _sha256(default[OLD_COLUMNS].to_csv(index=False).encode()) == DEFAULT_MANIFEST_SHA256
    _check_one_person_truth(default)

    manifest = generate_demo_data(tmp_path, FIRST)
    assert list(manifest.columns) == [*OLD_COLUMNS, "people", "face_target"]
    assert _sha256(manifest[OLD_COLUMNS].to_csv(index=False).encode()) == FIRST_MANIFEST_SHA256
    _check_one_person_truth(manifest)
    assert manifest.iloc[0]["filename"] == default.iloc[0]["filename"]
    for row in manifest.itertuples():
        data = (tmp_path / row.chunk / row.filename).read_bytes()
        assert _sha256(data) == FIRST_VIDEOS_SHA256[row.filename], (row.filename, row.kind)


# --------------------------------------------------------------------------- variant dataset

# One two-person and one one-person original, each with one fake of every kind, and a
# two-person test real with a fake. At 320x240 (the frame size the detector settings are
# meant for) and 5 frames a video this renders in about a second. Seed 1 gives
# two-person fakes of both faces.
VARIANT = DemoSpec(
    chunks=1, originals_per_chunk=2, fakes_per_original=4, test_videos=2,
    width=320, height=240, duration=0.5, fps=10, seed=1, kinds=ALL_KINDS, pair_share=0.5,
)


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("variant")
    return root, generate_demo_data(root, VARIANT)


def _path(root: Path, manifest: pd.DataFrame, name: str) -> Path:
    chunk = manifest.set_index("filename").loc[name, "chunk"]
    return root / chunk / name


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]


def _sound(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])


def _pitch(sound: np.ndarray) -> float:
    """The strongest frequency in Hz (the hum; the hiss is flat and weak)."""
    spectrum = np.abs(np.fft.rfft(sound * np.hanning(sound.size)))
    return float(np.fft.rfftfreq(sound.size, 1 / 44100)[np.argmax(spectrum)])


def _faces(detector: FaceDetector, frame: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Detected boxes, left to right."""
    return sorted((f.box for f in detector.detect(frame)), key=lambda b: b[0] + b[2])


def test_manifest_records_people_and_target(variant: tuple[Path, pd.DataFrame]) -> None:
    _, manifest = variant
    assert list(manifest.columns) == list(generate.MANIFEST_COLUMNS)
    pairs = {"+".join(IDENTITIES), "+".join(IDENTITIES[::-1])}
    assert set(manifest["people"]) == {1, 2}
    assert (manifest["identity"].isin(pairs) == (manifest["people"] == 2)).all()
    assert (manifest["identity"].isin(IDENTITIES) == (manifest["people"] == 1)).all()
    real, voice = manifest["label"] == "REAL", manifest["kind"] == VOICE
    assert (manifest.loc[real | voice, "face_target"] == "none").all()
    face_fakes = manifest[~real & ~voice]
    one = face_fakes["people"] == 1
    assert (face_fakes.loc[one, "face_target"] == "all").all()
    assert set(face_fakes.loc[~one, "face_target"]) == {"left", "right"}
    assert set(manifest.loc[~real, "kind"]) == set(ALL_KINDS)
    # A fake shows its original's scene.
    by_name = manifest.set_index("filename")
    for row in manifest[~real].itertuples():
        assert row.identity == by_name.loc[row.original, "identity"]
        assert row.people == by_name.loc[row.original, "people"]


def test_voice_fake_keeps_the_frames_and_changes_the_voice(
    variant: tuple[Path, pd.DataFrame],
) -> None:
    root, manifest = variant
    voices = manifest[manifest["kind"] == VOICE]
    assert sorted(voices["people"]) == [1, 2]
    for row in voices.itertuples():
        original = _path(root, manifest, row.original)
        fake = root / row.chunk / row.filename
        # Same render, same encoder settings: the very same H.264 stream, so the same frames.
        assert _video_packets(fake) == _video_packets(original), row.filename
        assert np.array_equal(_frames(fake), _frames(original)), row.filename
        sound, original_sound = _sound(fake), _sound(original)
        # Same words, same length and loudness; the voice is 4-7 semitones off.
        assert sound.size == original_sound.size
        assert np.std(sound) == pytest.approx(np.std(original_sound), rel=0.2)
        ratio = _pitch(sound) / _pitch(original_sound)
        assert not 2 ** (-3 / 12) < ratio < 2 ** (3 / 12), (row.filename, ratio)


def test_two_person_scene_shows_two_detectable_faces(
    variant: tuple[Path, pd.DataFrame], detector: FaceDetector
) -> None:
    root, manifest = variant
    reals = manifest[(manifest["label"] == "REAL") & (manifest["people"] == 2)]
    assert len(reals) == 2  # one per group: the chunk's and the test reals
    for row in reals.itertuples():
        for frame in _frames(root / row.chunk / row.filename):
            width = frame.shape[1]
            faces = detector.detect(frame)
            assert len(faces) == 2, (row.filename, [f.prob for f in faces])
            left, right = _faces(detector, frame)
            assert (left[0] + left[2]) / 2 < width / 2 < (right[0] + right[2]) / 2
            # The people stand in the order of the identity: the camera photo is grey.
            grey = [_greyness(frame, box) for box in (left, right)]
            camera_left = row.identity.split("+")[0] == "camera"
            assert (grey[0] < grey[1]) == camera_left, (row.identity, grey)


def _greyness(frame: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Mean channel spread in the box's centre: small for the grey camera photo."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    patch = frame[int(cy - h / 4):int(cy + h / 4), int(cx - w / 4):int(cx + w / 4)].astype(float)
    return float((patch.max(axis=-1) - patch.min(axis=-1)).mean())


def test_two_person_fake_edits_exactly_its_target_face(
    variant: tuple[Path, pd.DataFrame], detector: FaceDetector
) -> None:
    root, manifest = variant
    fakes = manifest[(manifest["people"] == 2) & manifest["face_target"].isin(["left", "right"])]
    assert set(fakes["face_target"]) == {"left", "right"}
    for row in fakes.itertuples():
        original = _frames(_path(root, manifest, row.original))
        fake = _frames(root / row.chunk / row.filename)
        diff = np.abs(original.astype(np.float32) - fake.astype(np.float32)).mean(axis=-1)
        boxes = _faces(detector, original[len(original) // 2])
        assert len(boxes) == 2
        target = 0 if row.face_target == "left" else 1
        in_mean = diff[:, _region(boxes[target], diff.shape[1:], 0.3)].mean()
        # The other face (twice its box) differs by encoding noise only (measured <= 1.5 over
        # seeds 1-8, as in the background: x264 spends the frame's bits differently).
        other_mean = diff[:, _region(boxes[1 - target], diff.shape[1:], 1.0)].mean()
        other_centre = diff[:, _region(boxes[1 - target], diff.shape[1:], 0.3)].mean()
        assert in_mean > 5.0, (row.kind, row.face_target, in_mean)
        assert other_mean < 2.0, (row.kind, row.face_target, other_mean)
        assert in_mean > 4 * other_centre, (row.kind, row.face_target, in_mean, other_centre)


def _region(box: tuple[float, float, float, float], shape: tuple[int, int], half: float) -> np.ndarray:
    """Pixels within `half` a box size of the box's centre."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (np.abs(xx - cx) < half * w) & (np.abs(yy - cy) < half * h)


# --------------------------------------------------------------------------- geometry and plan


@pytest.mark.parametrize("size", [(320, 240), (64, 64), (1280, 720)])
def test_two_person_geometry_holds_in_every_frame(size: tuple[int, int]) -> None:
    """What face_target promises, from the generator's own camera: no decoding needed."""
    width, height = size
    spec = DemoSpec(width=width, height=height, duration=2.0, fps=15)
    photos = {ident: generate._load_photo(ident) for ident in IDENTITIES}
    for seed in range(12):
        people = IDENTITIES if seed % 2 else IDENTITIES[::-1]
        scene = generate._PairScene([photos[p] for p in people], people, seed, spec)
        for i in range(spec.n_frames):
            left, right = scene.poses(i)
            assert left.face_centre[0] < width / 2 < right.face_centre[0], (seed, i)
            for x0, y0, x1, y1 in (left.box, right.box):
                assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height, (seed, i)
            # The regions a manipulation may touch never meet.
            left_roi = generate._roi(left.box, width, height)
            right_roi = generate._roi(right.box, width, height)
            assert left_roi is not None and right_roi is not None
            assert left_roi[2] <= right_roi[0], (seed, i)


def test_face_edit_leaves_the_other_face_bit_identical() -> None:
    """Before encoding, a two-person fake equals its original outside its target's region."""
    spec = DemoSpec(duration=0.5, fps=10)
    photos = {ident: generate._load_photo(ident) for ident in IDENTITIES}
    for face in (0, 1):
        scene = generate._PairScene([photos[p] for p in IDENTITIES], IDENTITIES, 7, spec)
        fake = generate._Manipulator("swap", 11, IDENTITIES[face], photos)
        for frame, poses in scene.frames():
            edited = fake.apply(frame.copy(), poses[face])
            x0, y0, x1, y1 = generate._roi(poses[face].box, *spec.frame_size)
            outside = np.ones(frame.shape[:2], bool)
            outside[y0:y1, x0:x1] = False
            assert np.array_equal(edited[outside], frame[outside])
            assert np.abs(edited.astype(int) - frame).mean() > 0.1


def test_plan_spreads_pairs_and_targets() -> None:
    spec = DemoSpec(chunks=3, originals_per_chunk=8, fakes_per_original=3, test_videos=8,
                    kinds=("swap", VOICE), pair_share=0.25)
    manifest = generate._manifest(generate._plan(spec))
    reals = manifest[manifest["label"] == "REAL"]
    # round(8 * 0.25) two-person reals in every chunk and among the test reals (4 of them).
    assert list(reals.groupby("chunk")["people"].apply(lambda p: int((p == 2).sum()))) == [2, 2, 2, 1]
    # One-person reals take the identities in turn, two-person ones who stands left.
    for people in (1, 2):
        counts = reals.loc[reals["people"] == people, "identity"].value_counts()
        assert len(counts) == 2 and counts.max() - counts.min() <= 1, counts
    fakes = manifest[manifest["label"] == "FAKE"]
    assert list(fakes["kind"][:4]) == ["swap", VOICE, "swap", VOICE]
    targets = fakes.loc[(fakes["people"] == 2) & (fakes["kind"] == "swap"), "face_target"]
    assert set(targets) == {"left", "right"}


def test_kinds_default_to_the_face_manipulations() -> None:
    assert DemoSpec().kinds == KINDS
    assert VOICE not in KINDS
    assert set(ALL_KINDS) == {*KINDS, VOICE}
