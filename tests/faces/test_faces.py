"""The real MTCNN on real face photos, and the one crop policy."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import skimage.data

from dfdc.config import ExtractConfig
from dfdc.faces.detect import (
    BatchingDetector,
    Face,
    FaceDetector,
    crop_face,
    detector_scale,
    resolve_device,
)

# ----------------------------------------------------------------- detector_scale


@pytest.mark.parametrize(
    ("width", "height", "scale"),
    [
        (160, 120, 2.0),
        (299, 299, 2.0),
        (120, 299, 2.0),  # the longer side decides, whatever the orientation
        (300, 200, 1.0),
        (640, 480, 1.0),
        (1000, 1000, 1.0),
        (1001, 500, 0.5),
        (1280, 720, 0.5),
        (720, 1280, 0.5),
        (1900, 1080, 0.5),
        (1920, 1080, 0.33),
        (1080, 1920, 0.33),
        (3840, 2160, 0.33),
    ],
)
def test_detector_scale_bands(width: int, height: int, scale: float) -> None:
    assert detector_scale(width, height) == scale


def test_detector_scale_never_grows_with_the_frame() -> None:
    sides = range(64, 4000, 7)
    scales = [detector_scale(s, s // 2) for s in sides]
    assert all(b <= a for a, b in itertools.pairwise(scales))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in {"cpu", "cuda"}


# ----------------------------------------------------------------- detection


@pytest.fixture(scope="module")
def default_detector() -> FaceDetector:
    return FaceDetector(ExtractConfig(device="cpu"))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut()[..., :3])


@pytest.fixture(scope="module")
def astronaut_faces(default_detector: FaceDetector, astronaut: np.ndarray) -> list[Face]:
    return default_detector.detect(astronaut)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def _inside(point: tuple[float, float], box: tuple[float, ...]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def test_astronaut_has_one_confident_face(astronaut_faces: list[Face], astronaut: np.ndarray) -> None:
    assert len(astronaut_faces) == 1
    face = astronaut_faces[0]
    assert face.prob > 0.95
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= astronaut.shape[1]
    assert 0 <= y1 < y2 <= astronaut.shape[0]
    # Eileen Collins' face is upper-middle-left of the photo, about a fifth of its side.
    assert _inside((205, 125), face.box)
    assert 40 < x2 - x1 < 160
    assert 40 < y2 - y1 < 160
    # Five landmarks (eyes, nose, mouth corners), all on the face.
    assert len(face.landmarks) == 10
    points = np.asarray(face.landmarks).reshape(5, 2)
    for point in points:
        assert _inside(tuple(point), face.box)
    left_eye, right_eye, nose = points[0], points[1], points[2]
    assert left_eye[0] < right_eye[0]  # in image coordinates
    assert nose[1] > max(left_eye[1], right_eye[1])


def test_blank_image_has_no_face(default_detector: FaceDetector) -> None:
    assert default_detector.detect(np.full((120, 160, 3), 128, np.uint8)) == []
    assert default_detector.detect(np.full((320, 320, 3), 128, np.uint8)) == []


@pytest.mark.parametrize("side", [200, 1200], ids=["upscaled-detector-input", "downscaled-detector-input"])
def test_boxes_come_back_in_frame_pixels(
    default_detector: FaceDetector, astronaut: np.ndarray, astronaut_faces: list[Face], side: int
) -> None:
    """Whatever scale the detector ran at, boxes and landmarks are in the frame's pixels."""
    assert detector_scale(side, side) != 1.0
    interp = cv2.INTER_AREA if side < 512 else cv2.INTER_CUBIC
    resized = cv2.resize(astronaut, (side, side), interpolation=interp)
    faces = default_detector.detect(resized)
    assert len(faces) == 1
    factor = side / astronaut.shape[0]
    expected = tuple(v * factor for v in astronaut_faces[0].box)
    assert _iou(faces[0].box, expected) > 0.75
    expected_pts = np.asarray(astronaut_faces[0].landmarks) * factor
    assert np.abs(np.asarray(faces[0].landmarks) - expected_pts).max() < 0.08 * side / 2


def test_faces_sorted_by_probability_and_capped(astronaut: np.ndarray) -> None:
    # Two people side by side: the astronaut and the cameraman (450 px each: detector scale 1).
    camera = np.repeat(skimage.data.camera()[..., None], 3, axis=2)
    halves = [cv2.resize(img, (450, 450), interpolation=cv2.INTER_AREA) for img in (astronaut, camera)]
    scene = np.ascontiguousarray(np.concatenate(halves, axis=1))
    assert detector_scale(*scene.shape[1::-1]) == 1.0
    two = FaceDetector(ExtractConfig(device="cpu", max_faces=2)).detect(scene)
    assert len(two) == 2
    assert two[0].prob >= two[1].prob
    assert sorted(f.box[0] < 450 for f in two) == [False, True]  # one face in each half
    one = FaceDetector(ExtractConfig(device="cpu", max_faces=1)).detect(scene)
    assert len(one) == 1
    assert one[0].box == pytest.approx(two[0].box)  # the cap keeps the most probable


# ----------------------------------------------------------------- crop_face


@pytest.fixture
def noise() -> np.ndarray:
    return np.random.default_rng(0).integers(1, 256, size=(100, 120, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [16, 32, 96])
@pytest.mark.parametrize("box", [(10, 10, 50, 50), (0, 0, 120, 100), (30.5, 20.2, 31.7, 90.9)])
def test_crop_shape_and_dtype(noise: np.ndarray, box: tuple[float, ...], size: int) -> None:
    crop = crop_face(noise, box, 1 / 3, size)
    assert crop.shape == (size, size, 3)
    assert crop.dtype == np.uint8


def test_square_box_at_its_own_size_is_the_pixels(noise: np.ndarray) -> None:
    crop = crop_face(noise, (10, 20, 42, 52), 0.0, 32)
    assert np.array_equal(crop, noise[20:52, 10:42])


def test_margin_is_a_fraction_of_the_box_on_each_side(noise: np.ndarray) -> None:
    # 20 px box, margin 0.5 -> 10 px more on every side -> a 40 px square.
    crop = crop_face(noise, (40, 40, 60, 60), 0.5, 40)
    assert np.array_equal(crop, noise[30:70, 30:70])


def test_margin_clamps_at_the_border(noise: np.ndarray) -> None:
    # The margin would start at -10: it is clamped to the image, no error, no wrap-around.
    crop = crop_face(noise, (0, 0, 30, 30), 1 / 3, 40)
    assert np.array_equal(crop, noise[0:40, 0:40])
    # Bottom-right corner: the box plus margin runs past the image on both axes.
    h, w = noise.shape[:2]
    crop = crop_face(noise, (w - 20, h - 20, w, h), 1.0, 40)
    assert crop.shape == (40, 40, 3)
    assert np.array_equal(crop, noise[h - 40 : h, w - 40 : w])


def test_tall_box_is_padded_left_and_right_not_stretched() -> None:
    white = np.full((200, 200, 3), 255, np.uint8)
    crop = crop_face(white, (90, 40, 110, 100), 0.0, 60)  # 20 wide, 60 tall -> scale 1
    filled = crop.any(axis=2)
    cols = np.flatnonzero(filled.any(axis=0))
    rows = np.flatnonzero(filled.any(axis=1))
    assert len(rows) == 60  # full height
    assert len(cols) == 20  # width kept in proportion
    assert cols[0] == 20 and cols[-1] == 39  # centred
    assert not crop[:, :20].any() and not crop[:, 40:].any()  # zero padding


def test_wide_box_is_padded_top_and_bottom() -> None:
    white = np.full((200, 200, 3), 255, np.uint8)
    crop = crop_face(white, (20, 80, 180, 120), 0.0, 32)  # 160 x 40 -> 32 x 8
    filled = crop.any(axis=2)
    rows = np.flatnonzero(filled.any(axis=1))
    assert len(np.flatnonzero(filled.any(axis=0))) == 32
    assert len(rows) == 8
    assert rows[0] == 12
    assert not crop[:12].any() and not crop[20:].any()


def test_aspect_ratio_is_kept_at_any_scale() -> None:
    white = np.full((400, 400, 3), 255, np.uint8)
    crop = crop_face(white, (100, 50, 190, 350), 0.0, 96)  # 90 x 300
    filled = crop.any(axis=2)
    width = len(np.flatnonzero(filled.any(axis=0)))
    height = len(np.flatnonzero(filled.any(axis=1)))
    assert height == 96
    assert width == pytest.approx(96 * 90 / 300, abs=1)


@pytest.mark.parametrize(
    "box",
    [
        (50, 50, 50, 50),  # a point
        (50, 40, 50, 80),  # zero width
        (60, 60, 40, 40),  # inverted
        (130, 10, 160, 40),  # right of the image
        (10, 110, 40, 140),  # below the image
        pytest.param((-60, 10, -30, 40), id="left-of-image"),
        pytest.param((10, -60, 40, -30), id="above-image"),
    ],
)
def test_empty_or_out_of_frame_box_gives_zeros(noise: np.ndarray, box: tuple[float, ...]) -> None:
    crop = crop_face(noise, box, 0.0, 32)
    assert crop.shape == (32, 32, 3)
    assert not crop.any()


def test_detect_many_equals_detect_frame_by_frame(
    default_detector: FaceDetector, astronaut: np.ndarray
) -> None:
    blank = np.full_like(astronaut, 128)
    frames = [astronaut, blank, np.ascontiguousarray(astronaut[:, ::-1])]
    many = default_detector.detect_many(frames)
    assert [len(f) for f in many] == [1, 0, 1]
    for image, faces in zip(frames, many, strict=True):
        assert faces == default_detector.detect(image)
    assert default_detector.detect_many([]) == []


def test_batching_detector_answers_each_thread_as_the_detector_would(
    default_detector: FaceDetector, astronaut: np.ndarray
) -> None:
    """Threads' frames are detected together (grouped by size), each thread gets its own answer."""
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    blank = np.full_like(astronaut, 128)
    requests = [
        [astronaut, blank],
        [small, small[:, ::-1].copy()],
        [np.ascontiguousarray(astronaut[:, ::-1])],
        [np.full_like(small, 90)],
    ]
    want = [default_detector.detect_many(images) for images in requests]
    batcher = BatchingDetector(default_detector, max_frames=64, wait_s=0.5)
    start = threading.Barrier(len(requests))

    def ask(images: list[np.ndarray]) -> list[list[Face]]:
        start.wait()
        return batcher.detect_many(images)

    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            got = list(pool.map(ask, requests))
    finally:
        batcher.close()
    assert got == want
    assert [len(f) for f in got[0]] == [1, 0]  # a real comparison: faces where there are faces
    assert len(batcher.batches) < len(requests)  # requests of several threads shared a batch
    assert sum(batcher.batches) == sum(len(r) for r in requests)
    assert batcher.detect_many([]) == []


def test_batching_detector_hands_a_detector_error_to_its_callers(astronaut: np.ndarray) -> None:
    class Broken:
        device = "cpu"

        def detect_many(self, images: list[np.ndarray]) -> list[list[Face]]:
            raise RuntimeError("CUDA out of memory")

    batcher = BatchingDetector(Broken(), wait_s=0.0)  # type: ignore[arg-type]
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            batcher.detect_many([astronaut])
    finally:
        batcher.close()
