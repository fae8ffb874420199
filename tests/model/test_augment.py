"""Face-part cut-out from the detector's landmarks, and the landmark mapping into crops."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import torch

from dfdc.faces.detect import crop_face, crop_transform
from dfdc.model.augment import PARTS, Augment, crop_landmarks, cutout, part_mask
from dfdc.model.backbone import Preprocess
from dfdc.model.dataset import CropDataset

if TYPE_CHECKING:
    from conftest import Extracted

PRE = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# A face-like layout in a 64 px crop: eyes, nose, mouth corners.
POINTS = np.array([[22, 24], [42, 24], [32, 34], [24, 46], [40, 46]], float)


def _dot_centre(crop: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre (x, y) of the bright marker in a crop."""
    weight = crop[..., 0].astype(float)
    weight[weight < 60] = 0
    ys, xs = np.indices(weight.shape)
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


@pytest.mark.parametrize(
    ("box", "size"),
    [
        ((60.0, 40.0, 120.0, 110.0), 64),  # inside the frame, taller than wide
        ((5.0, 3.0, 70.0, 50.0), 96),  # margin clipped at the left and top
        ((100.0, 80.0, 190.0, 140.0), 48),  # wider than tall, downscaled
        ((150.0, 90.0, 200.0, 160.0), 64),  # margin clipped at the right and bottom
    ],
)
def test_crop_transform_puts_a_frame_point_where_crop_face_draws_it(
    box: tuple[float, float, float, float], size: int
) -> None:
    frame_shape = (180, 220)
    x1, y1, x2, y2 = box
    rng = np.random.default_rng(0)
    for fx, fy in [(0.3, 0.35), (0.7, 0.4), (0.5, 0.75)]:
        px, py = int(x1 + fx * (x2 - x1)), int(y1 + fy * (y2 - y1))
        frame = np.zeros((*frame_shape, 3), np.uint8)
        frame[py - 1 : py + 2, px - 1 : px + 2] = 255  # a 3x3 marker centred on (px, py)
        frame[..., 1:] = rng.integers(0, 30, (*frame_shape, 2))  # noise off the marker channel
        crop = crop_face(frame, box, margin=1 / 3, size=size)
        scale, offset = crop_transform(box, 1 / 3, size, frame_shape)
        mapped = np.array([px, py]) * scale + offset
        np.testing.assert_allclose(_dot_centre(crop), mapped, atol=0.6)


def test_crop_landmarks_use_each_rows_frame_for_a_face_at_the_bottom_right_edge() -> None:
    """The margin runs off the frame on the right and below; the landmark must still land right."""
    height, width, box = 120, 160, (118.0, 78.0, 156.0, 117.0)
    points = np.array([[128, 90], [146, 90], [137, 100], [130, 108], [144, 108]], float)
    frame = np.zeros((height, width, 3), np.uint8)
    px, py = points[2].astype(int)
    frame[py - 1 : py + 2, px - 1 : px + 2, 0] = 255  # a 3x3 marker on the nose
    rows = pd.DataFrame([dict(zip(("x1", "y1", "x2", "y2"), box, strict=True))])
    rows = rows.assign(width=width, height=height, landmarks=[points.ravel().tolist()])
    mapped = crop_landmarks(rows, 1 / 3, 64)[0, 2]
    np.testing.assert_allclose(_dot_centre(crop_face(frame, box, margin=1 / 3, size=64)), mapped, atol=0.6)


@pytest.mark.parametrize("part", PARTS)
def test_cutout_blanks_its_part_and_keeps_the_others(part: str) -> None:
    image = torch.full((3, 64, 64), 200, dtype=torch.uint8)
    out = cutout(image, POINTS, part)
    blank = (out == 0).all(dim=0).numpy()
    inside = {"eyes": [0, 1], "nose": [2], "mouth": [3, 4]}[part]
    for i in range(5):
        x, y = POINTS[i].astype(int)
        assert blank[y, x] == (i in inside), (part, i)
    assert 0.02 < blank.mean() < 0.3  # a part, not the whole face
    assert (out[:, ~torch.from_numpy(blank)] == 200).all()  # nothing else touched
    assert (image == 200).all()  # the input is not modified


def test_part_mask_rejects_unknown_parts() -> None:
    with pytest.raises(ValueError, match="unknown face part"):
        part_mask((64, 64), POINTS, "ears")


def _eye_band(x: torch.Tensor) -> torch.Tensor:
    return x[..., 22:27, 24:41]


def test_augment_with_landmarks_darkens_the_face_parts() -> None:
    """Through the whole pipeline (colour, geometry, noise) the blanked part stays dark."""
    image = torch.full((3, 64, 64), 200, dtype=torch.uint8)
    torch.manual_seed(0)
    on = torch.stack([Augment(cutout_p=1.0, parts=["eyes"])(image, POINTS) for _ in range(20)])
    off = torch.stack([Augment(cutout_p=0.0)(image, POINTS) for _ in range(20)])
    no_points = torch.stack([Augment(cutout_p=1.0, parts=["eyes"])(image, None) for _ in range(20)])
    assert on.dtype == torch.float32 and on.min() >= 0 and on.max() <= 1
    assert _eye_band(on).mean() < 0.5 * _eye_band(off).mean()
    assert _eye_band(no_points).mean() > 0.6


def test_crop_dataset_passes_each_crops_landmarks_to_the_cutout() -> None:
    crops = np.full((4, 64, 64, 3), 200, np.uint8)
    landmarks = np.stack([POINTS] * 4)
    landmarks[1:, :, 1] += 20  # other crops' eyes sit lower: the eye band is kept there
    ds = CropDataset(crops, np.ones(4), PRE, augment=True, landmarks=landmarks, cutout_p=1.0)
    ds.transform.parts = ("eyes",)  # type: ignore[union-attr]
    torch.manual_seed(1)
    first = torch.stack([ds[0][0] for _ in range(10)]) * 0.5 + 0.5
    other = torch.stack([ds[1][0] for _ in range(10)]) * 0.5 + 0.5
    assert _eye_band(first).mean() < 0.5 * _eye_band(other).mean()


def test_crop_landmarks_of_real_detections_land_on_the_face(extracted: Extracted) -> None:
    """MTCNN's landmarks mapped into stored crops: eyes above the nose above the mouth, inside."""
    index: pd.DataFrame = extracted.index
    assert len(index)
    size = 32  # tests/conftest.py EXTRACT_CFG.crop_size
    points = crop_landmarks(index, 1 / 3, size)
    assert points.shape == (len(index), 5, 2)
    assert ((points > 0) & (points < size)).all()
    eyes_y, nose_y, mouth_y = points[:, :2, 1].mean(1), points[:, 2, 1], points[:, 3:, 1].mean(1)
    assert (eyes_y < nose_y).all() and (nose_y < mouth_y).all()
    assert (points[:, 0, 0] < points[:, 1, 0]).all()  # left eye left of the right eye
    # The face fills the crop's middle: the margin is a third of the box on each side.
    centre = points.reshape(-1, 2).mean(0)
    assert np.abs(centre - size / 2).max() < size / 4
