"""Per-crop labels from the fake-original difference, on real extracted crops of the demo chunk."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from dfdc.config import LabelsConfig
from dfdc.data.labels import (
    crop_difference,
    face_changed,
    label_chunk,
    store_locations,
    summarize,
    training_labels,
    video_face_labels,
)
from dfdc.faces.store import video_file

CFG = LabelsConfig()
MARGIN = 1 / 3


def _copy_store(extracted, tmp_path: Path) -> Path:
    faces_dir = tmp_path / "faces"
    shutil.copytree(extracted.faces_dir, faces_dir)
    return faces_dir


def _label(faces_dir: Path, chunk: str) -> pd.DataFrame:
    return label_chunk(faces_dir, chunk, store_locations(faces_dir, [chunk]), CFG, MARGIN)


def test_every_crop_of_a_manipulated_face_is_fake_and_reals_are_real(extracted) -> None:
    chunk = extracted.out_dir.name
    labels = _label(extracted.faces_dir, chunk)
    keys = ["video", "crop_idx"]
    assert len(labels) == len(extracted.index)
    assert set(map(tuple, labels[keys].to_numpy())) == set(map(tuple, extracted.index[keys].to_numpy()))
    video_label = labels["video"].map(extracted.index.drop_duplicates("video").set_index("video")["label"])
    fakes = labels[video_label == "FAKE"]
    # Every fake's crops were compared with its original's (tracks detected afresh: matched by overlap).
    assert (fakes["label_source"] == "original").all()
    assert (fakes["crop_label"] == "FAKE").all(), fakes["face_diff"].describe()
    reals = labels[video_label == "REAL"]
    assert (reals["crop_label"] == "REAL").all() and (reals["label_source"] == "real").all()
    assert set(video_face_labels(labels)["face"]) == {"changed"}


def test_a_fake_whose_face_is_its_originals_is_untouched(extracted, tmp_path: Path) -> None:
    """A voice-only fake: the same pixels as its original (here: the original's own crops)."""
    faces_dir = _copy_store(extracted, tmp_path)
    chunk = extracted.out_dir.name
    index = extracted.index.drop_duplicates("video")
    fake = index[index["label"] == "FAKE"].iloc[0]
    shutil.copy(video_file(faces_dir / chunk, fake["original"]), video_file(faces_dir / chunk, fake["video"]))
    labels = _label(faces_dir, chunk)
    mine = labels[labels["video"] == fake["video"]]
    assert len(mine) and (mine["crop_label"] == "REAL").all()
    assert (mine["face_diff"] == 0).all()
    faces = video_face_labels(labels).set_index("video")["face"]
    assert faces[fake["video"]] == "untouched"
    assert (faces.drop(fake["video"]) == "changed").all()
    summary = summarize(labels, CFG)
    assert summary["n_face_untouched"] == 1 and summary["n_face_changed"] == summary["n_fakes"] - 1
    # the face branch's own target: 0 for the voice-only fake and the reals, 1 for the others
    targets = face_changed(labels).set_index("video")["face_changed"]
    assert targets[fake["video"]] == 0.0 and set(targets.index) == set(labels["video"])
    reals = labels.loc[labels["label_source"] == "real", "video"].unique()
    assert len(reals) and (targets[reals] == 0.0).all()
    assert (targets.drop([fake["video"], *reals]) == 1.0).all()


def test_a_fake_without_its_original_keeps_the_video_label(extracted, tmp_path: Path) -> None:
    faces_dir = _copy_store(extracted, tmp_path)
    chunk = extracted.out_dir.name
    index = extracted.index.drop_duplicates("video")
    original = index.loc[index["label"] == "FAKE", "original"].iloc[0]
    video_file(faces_dir / chunk, original).unlink()
    labels = _label(faces_dir, chunk)
    orphans = labels[labels["video"].isin(index.loc[index["original"] == original, "video"])]
    assert len(orphans) and (orphans["label_source"] == "video").all()
    assert (orphans["crop_label"] == "FAKE").all() and orphans["face_diff"].isna().all()
    assert summarize(labels, CFG)["n_original_missing"] == orphans["video"].nunique()


def test_training_labels_follow_the_policy() -> None:
    columns = {
        "chunk": "c", "video": ["r", "f", "f", "v", "v"], "crop_idx": [0, 0, 1, 0, 1],
        "label": ["REAL", "FAKE", "FAKE", "FAKE", "FAKE"],
    }  # fmt: skip
    index = pd.DataFrame(columns)
    labels = index.drop(columns="label").assign(
        crop_label=["REAL", "FAKE", "REAL", "REAL", "REAL"],
        label_source=["real", "original", "original", "original", "original"],
        face_diff=[np.nan, 30.0, 1.0, 0.5, 0.4], person=0, frame=0,
    )  # fmt: skip
    crop = training_labels(index, labels, CFG)
    assert crop["train_label"].tolist() == ["REAL", "FAKE", "REAL", "REAL", "REAL"]
    dropped = training_labels(index, labels, LabelsConfig(untouched="drop"))
    assert dropped["video"].tolist() == ["r", "f", "f"]  # "v": every face untouched
    video = training_labels(index, labels, LabelsConfig(use="video"))
    assert video["train_label"].tolist() == index["label"].tolist()


def test_difference_sees_a_local_edit_but_not_compression() -> None:
    rng = np.random.default_rng(0)
    face = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), (0, 0), 2.0)
    region = (19, 19, 77, 77)
    assert crop_difference(face, face, region) == 0.0
    recoded = cv2.imdecode(cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR)
    assert crop_difference(recoded, face, region) < CFG.diff_threshold
    mouth = face.copy()
    mouth[60:72, 38:58] = cv2.GaussianBlur(mouth[60:72, 38:58], (0, 0), 3.0) // 2 + 40  # ~4% of the face
    assert crop_difference(mouth, face, region) > CFG.diff_threshold


@pytest.mark.parametrize("threshold", [1e-3, 500.0])
def test_the_threshold_decides(extracted, threshold: float) -> None:
    chunk = extracted.out_dir.name
    faces_dir = extracted.faces_dir
    cfg = LabelsConfig(diff_threshold=threshold)
    labels = label_chunk(faces_dir, chunk, store_locations(faces_dir, [chunk]), cfg, MARGIN)
    compared = labels[labels["label_source"] == "original"]
    assert (compared["crop_label"] == ("FAKE" if threshold < 1 else "REAL")).all()
