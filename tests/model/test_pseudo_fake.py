"""Self-blended pseudo-fakes (SBI) from real face crops, and their place in the training data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from dfdc.faces.detect import FaceDetector, crop_face, crop_transform
from dfdc.model.backbone import Preprocess
from dfdc.model.dataset import CropDataset, balanced_sampler
from dfdc.model.pseudo_fake import self_blend

PRE = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
SIZE = 96  # ExtractConfig's default crop size


def _is_input(item: torch.Tensor, crop: np.ndarray) -> bool:
    """Whether a dataset item (normalised, not augmented) shows ``crop`` unchanged."""
    plain = torch.from_numpy(crop).permute(2, 0, 1).float().div(255)
    return torch.allclose(item * 0.5 + 0.5, plain, atol=1e-6)


@pytest.fixture(scope="module")
def faces(detector: FaceDetector) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real 96 px face crops (the astronaut, the cameraman) with MTCNN's landmarks in crop pixels."""
    out = []
    for photo in (data.astronaut()[..., :3], np.repeat(data.camera()[..., None], 3, axis=2)):
        image = np.ascontiguousarray(photo)
        face = detector.detect(image)[0]
        scale, offset = crop_transform(face.box, 1 / 3, SIZE, image.shape[:2])
        points = np.asarray(face.landmarks, float).reshape(5, 2) * scale + offset
        out.append((crop_face(image, face.box, margin=1 / 3, size=SIZE), points))
    return out


def _within(points: np.ndarray, factor: float) -> np.ndarray:
    """Pixels of the crop inside the landmarks' bounding box grown ``factor`` times about its centre."""
    low, high = points.min(0), points.max(0)
    centre, half = (low + high) / 2, (high - low) / 2 * factor
    ys, xs = np.indices((SIZE, SIZE))
    return (np.abs(xs - centre[0]) <= half[0]) & (np.abs(ys - centre[1]) <= half[1])


def test_the_blend_changes_the_face_and_nothing_outside_its_mask(faces: list) -> None:
    torch.manual_seed(0)
    changes = []
    for crop, points in faces:
        for _ in range(12):
            result = self_blend(crop, points)
            assert result is not None
            fake, alpha = result
            assert fake.shape == crop.shape and fake.dtype == np.uint8
            assert alpha.min() >= 0 and alpha.max() <= 1
            outside = alpha == 0
            assert np.array_equal(fake[outside], crop[outside])  # exactly the input there
            assert not (alpha > 0)[~_within(points, 3.0)].any()  # the mask stays on the face
            assert (alpha > 0)[~_within(points, 1.0)].any()  # and reaches past the five points
            inner = _within(points, 0.6)  # eyes to mouth: inside every mask
            assert (alpha[inner] > 0).all()
            changes.append(np.abs(fake.astype(int) - crop.astype(int))[inner].mean())
    assert min(changes) > 1.0  # never a no-op
    assert np.mean(changes) > 5.0  # usually a visible seam


def test_blend_ratios_scale_the_mask_like_sbi(faces: list) -> None:
    crop, points = faces[0]
    torch.manual_seed(1)
    peaks = [round(float(self_blend(crop, points)[1].max()), 2) for _ in range(60)]  # type: ignore[index]
    assert set(peaks) == {0.25, 0.5, 0.75, 1.0}
    assert peaks.count(1.0) > peaks.count(0.25)  # 1 is drawn three times as often


def test_the_same_seed_gives_the_same_pseudo_fake(faces: list) -> None:
    crop, points = faces[0]
    torch.manual_seed(7)
    a = self_blend(crop, points)
    torch.manual_seed(7)
    b = self_blend(crop, points)
    c = self_blend(crop, points)
    assert a is not None and b is not None and c is not None
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_a_face_too_small_is_not_blended(faces: list) -> None:
    crop, points = faces[0]
    tiny = points.mean(0) + (points - points.mean(0)) * 0.05
    assert self_blend(crop, tiny) is None


@pytest.mark.parametrize(("sbi_p", "label"), [(1.0, 1.0), (0.0, 0.0)])
def test_crop_dataset_turns_reals_into_fakes_at_sbi_p(faces: list, sbi_p: float, label: float) -> None:
    crops = np.stack([c for c, _ in faces])
    points = np.stack([p for _, p in faces])
    ds = CropDataset(crops, np.zeros(2), PRE, augment=False, landmarks=points, sbi_p=sbi_p)
    torch.manual_seed(0)
    for i in range(2):
        image, target = ds[i]
        assert float(target) == label
        assert _is_input(image, crops[i]) == (label == 0.0)


def test_fakes_and_reals_without_landmarks_are_never_blended(faces: list) -> None:
    crops = np.stack([c for c, _ in faces])
    points = np.stack([p for _, p in faces])
    fakes = CropDataset(crops, np.ones(2), PRE, augment=False, landmarks=points, sbi_p=1.0)
    unknown = CropDataset(crops, np.zeros(2), PRE, augment=False, landmarks=None, sbi_p=1.0)
    for i in range(2):
        image, target = fakes[i]
        assert float(target) == 1.0 and _is_input(image, crops[i])
        image, target = unknown[i]
        assert float(target) == 0.0 and _is_input(image, crops[i])


def test_the_dataset_is_reproducible_under_a_seed(faces: list) -> None:
    crops = np.stack([c for c, _ in faces] * 4)
    points = np.stack([p for _, p in faces] * 4)
    ds = CropDataset(crops, np.zeros(8), PRE, augment=True, landmarks=points, sbi_p=0.5)

    def epoch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        images, labels = zip(*(ds[i] for i in range(len(ds))), strict=True)
        return torch.stack(images), torch.stack(labels)

    a, b, c = epoch(3), epoch(3), epoch(4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert 0 < float(a[1].sum()) < 8  # some reals blended, some kept


@pytest.mark.parametrize("sbi_p", [0.0, 0.3, 0.5])
def test_the_sampler_keeps_the_epoch_half_real_as_the_model_sees_it(sbi_p: float) -> None:
    labels = np.array([1] * 840 + [0] * 160)  # DFDC's share of fakes
    sampler = balanced_sampler(labels, seed=0, pseudo_fake_p=sbi_p)
    sampler.num_samples = 40_000
    drawn_reals = float((labels[list(sampler)] == 0).mean())
    seen_real = drawn_reals * (1 - sbi_p)  # a share sbi_p of the drawn reals becomes fake
    assert seen_real == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="cannot be balanced"):
        balanced_sampler(labels, seed=0, pseudo_fake_p=0.6)
