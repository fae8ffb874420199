"""Self-blended pseudo-fakes (SBI: Shiohara & Yamasaki, CVPR 2022) from real face crops.

A face swap leaves a seam: a face whose colour, sharpness or position disagrees slightly
with the head around it. SBI makes that seam without any forgery method: a real crop is
blended into itself through a soft face mask after a slightly different colour, scale,
position and resolution is given to the pasted copy. A detector that learns these seams
learns what forgeries share rather than one method's fingerprint, which is why SBI
generalises to manipulations it never saw.

The mask is the convex hull of the five detector landmarks and of an ellipse around them
that reaches from the brows to the chin (the five points alone only span eyes to mouth),
its outline jittered, eroded or dilated, blurred with a random kernel, and scaled by a
blend ratio from SBI's ``{0.25, 0.5, 0.75, 1, 1, 1}``. Randomness comes from torch's
generator only, like ``dfdc.model.augment``, so training seeds reproduce it in DataLoader
workers too.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
MIN_EYE_DISTANCE = 4.0  # pixels: a smaller face has no seam worth learning


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _odd(low: int, high: int) -> int:
    """A random odd kernel size in ``[low, high]`` (``low`` odd)."""
    return low + 2 * int(torch.randint(max(1, (high - low) // 2 + 1), ()))


def face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """Eyes' midpoint, the face's downward unit vector, eye distance and eyes-to-mouth distance.

    ``None`` for a face too small (or landmarks too degenerate) to blend.
    """
    pts = np.asarray(landmarks, np.float64).reshape(5, 2)
    if not np.isfinite(pts).all():
        return None
    eyes = (pts[0] + pts[1]) / 2
    across = pts[1] - pts[0]
    eye_dist = float(np.linalg.norm(across))
    if eye_dist < MIN_EYE_DISTANCE:
        return None
    down = np.array([-across[1], across[0]]) / eye_dist  # eyes' line turned 90 degrees, towards the mouth
    mouth_dist = float(((pts[3] + pts[4]) / 2 - eyes) @ down)
    if mouth_dist < MIN_EYE_DISTANCE / 2:
        return None
    return eyes, down, eye_dist, mouth_dist


def face_mask(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray | None:
    """A random hard face mask ``(h, w)`` float32 in {0, 1}, or ``None`` for a face too small.

    An ellipse in the face's own frame: half as wide as 0.85-1.15 eye distances, half as high
    as 0.95-1.2 eyes-to-mouth distances, centred a little below the nose, so it runs from the
    brows to the chin; its outline is jittered radially, the landmarks are hulled in, then the
    region is eroded or dilated by a few pixels.
    """
    frame = face_frame(landmarks)
    if frame is None:
        return None
    eyes, down, eye_dist, mouth_dist = frame
    across = np.array([down[1], -down[0]])
    centre = eyes + down * mouth_dist * _uniform(0.45, 0.6)
    half_w, half_h = eye_dist * _uniform(0.85, 1.15), mouth_dist * _uniform(0.95, 1.2)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radial = 1 + 0.08 * (2 * torch.rand(len(angles)).numpy().astype(np.float64) - 1)  # a deformed outline
    outline = centre + radial[:, None] * (
        np.cos(angles)[:, None] * half_w * across + np.sin(angles)[:, None] * half_h * down
    )
    points = np.vstack([outline, np.asarray(landmarks, np.float64).reshape(5, 2)])
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    size = _odd(1, max(1, round(eye_dist / 5)) * 2 + 1)
    if size > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        mask = cv2.erode(mask, kernel) if torch.rand(()) < 0.5 else cv2.dilate(mask, kernel)
    return mask.astype(np.float32)


def soften(mask: np.ndarray, eye_dist: float) -> np.ndarray:
    """SBI's blend mask: blur, keep only the inner full-strength part, blur again; peak 1.

    Kernels scale with the face (SBI draws 5-25 px kernels on ~256 px faces).
    """
    top = max(3, round(eye_dist * 0.6)) | 1
    first = cv2.GaussianBlur(mask, (_odd(3, top),) * 2, 0)
    first[first < 1] = 0  # the first blur only moves the edge inwards
    if first.max() <= 0:
        first = mask
    soft = cv2.GaussianBlur(first, (_odd(3, top),) * 2, 0)
    return soft / soft.max()


def jitter_source(crop: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The copy that gets pasted: other colour, slightly other scale and place, lower resolution."""
    h, w = crop.shape[:2]
    out = crop.astype(np.float32)
    # Colour: a per-channel shift of at least a few grey levels, then brightness and contrast.
    signs = torch.where(torch.rand(3) < 0.5, -1.0, 1.0)
    out += (signs * (4 + 16 * torch.rand(3))).numpy()
    contrast, brightness = _uniform(0.85, 1.15), _uniform(-0.1, 0.1) * 255
    out = (out - out.mean()) * contrast + out.mean() + brightness
    out = np.clip(out, 0, 255).astype(np.uint8)
    if torch.rand(()) < 0.5:  # hue and saturation
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + _uniform(-5, 5)) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * _uniform(0.8, 1.2), 0, 255)
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    # Geometry: scale about the face centre and a small translation.
    scale = _uniform(0.95, 1.05)
    shift = np.array([_uniform(-0.03, 0.03) * w, _uniform(-0.03, 0.03) * h])
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 0.0, scale)
    matrix[:, 2] += shift
    out = cv2.warpAffine(out, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    # Resolution mismatch: down and back up.
    factor = _uniform(0.5, 1.0)
    if factor < 0.95:
        small = (max(1, round(w * factor)), max(1, round(h * factor)))
        out = cv2.resize(out, small, interpolation=cv2.INTER_AREA)
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


def self_blend(crop: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A self-blended fake of a uint8 ``(h, w, 3)`` real crop and its blend mask ``(h, w)`` in [0, 1].

    ``landmarks`` are the crop's five points in crop pixels (eyes, nose, mouth corners).
    Pixels where the mask is 0 are the input's, exactly. ``None`` when the face is too small.
    """
    frame = face_frame(landmarks)
    mask = face_mask(crop.shape[:2], landmarks)  # type: ignore[arg-type]
    if frame is None or mask is None or not mask.any():
        return None
    eyes, down, eye_dist, mouth_dist = frame
    source = jitter_source(crop, eyes + down * mouth_dist / 2)
    ratio = BLEND_RATIOS[int(torch.randint(len(BLEND_RATIOS), ()))]
    alpha = soften(mask, eye_dist) * ratio
    blended = source * alpha[..., None] + crop.astype(np.float32) * (1 - alpha[..., None])
    return np.clip(np.round(blended), 0, 255).astype(np.uint8), alpha
