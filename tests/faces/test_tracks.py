"""Grouping detections into people: linking, strays, the cap, interpolation and reach."""

from __future__ import annotations

import pytest

from dfdc.faces.detect import Face
from dfdc.faces.tracks import Track, build_tracks, iou


def _face(x: float, y: float, side: float = 40.0, prob: float = 0.99) -> Face:
    box = (x, y, x + side, y + side)
    landmarks = tuple(v for i in range(5) for v in (x + side * (i + 1) / 6, y + side / 2))
    return Face(box=box, prob=prob, landmarks=landmarks)


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # empty boxes never match


def test_two_people_stay_apart_while_moving() -> None:
    # Person A drifts right on the left, person B drifts down on the right; per frame the
    # detector lists them in either order.
    detections = []
    for k, frame in enumerate(range(0, 100, 10)):
        a, b = _face(100 + 3 * k, 100, prob=0.99), _face(600, 100 + 3 * k, prob=0.95)
        detections.append((frame, [a, b] if k % 2 else [b, a]))
    tracks = build_tracks(detections, max_people=2)
    assert len(tracks) == 2
    first, second = tracks
    assert first.frames == second.frames == tuple(range(0, 100, 10))
    assert all(f.box[0] < 300 for f in first.faces)  # A, the more confident, is person 0
    assert all(f.box[0] > 300 for f in second.faces)


def test_one_frame_strays_are_dropped_and_people_capped() -> None:
    people = lambda: [_face(100, 100), _face(500, 100, prob=0.93), _face(900, 100, prob=0.91)]  # noqa: E731
    detections = [(f, people()) for f in (0, 8, 16)]
    detections[1][1].append(_face(300, 600))  # a stray on one frame only
    tracks = build_tracks(detections, max_people=5)
    assert len(tracks) == 3
    assert all(len(t.frames) == 3 for t in tracks)
    assert [round(t.faces[0].box[0]) for t in tracks] == [100, 500, 900]  # by evidence
    capped = build_tracks(detections, max_people=2)
    assert [round(t.faces[0].box[0]) for t in capped] == [100, 500]


def test_a_single_searched_frame_keeps_its_faces() -> None:
    tracks = build_tracks([(0, [_face(10, 10), _face(200, 10, prob=0.95)])], max_people=2)
    assert len(tracks) == 2
    assert all(t.frames == (0,) for t in tracks)


def test_missed_frame_does_not_split_a_track() -> None:
    detections = [(0, [_face(100, 100)]), (10, []), (20, [_face(104, 100)])]
    tracks = build_tracks(detections, max_people=2)
    assert len(tracks) == 1
    assert tracks[0].frames == (0, 20)


def test_interpolation_between_detections() -> None:
    track = Track(frames=(0, 10), faces=(_face(100, 200, prob=0.9), _face(200, 100, prob=1.0)))
    face, detected = track.at(5, reach=10)
    assert not detected
    assert face.box == pytest.approx((150, 150, 190, 190))
    assert face.prob == pytest.approx(0.95)
    assert face.landmarks == pytest.approx(tuple((a + b) / 2 for a, b in zip(track.faces[0].landmarks,
                                                                               track.faces[1].landmarks,
                                                                               strict=True)))  # fmt: skip
    exact, detected = track.at(10, reach=0)
    assert detected
    assert exact == track.faces[1]


def test_carried_within_reach_then_gone() -> None:
    track = Track(frames=(20, 30), faces=(_face(0, 0), _face(10, 0)))
    assert track.at(12, reach=8) == (track.faces[0], False)
    assert track.at(11, reach=8) is None
    assert track.at(38, reach=8) == (track.faces[1], False)
    assert track.at(39, reach=8) is None
