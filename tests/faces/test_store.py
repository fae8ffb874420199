"""The crop store: one crop per seek, records without pixels, deterministic bytes, streaming reads."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import torch

from dfdc.config import ExtractConfig, TrainConfig
from dfdc.faces import store
from dfdc.model.backbone import Preprocess
from dfdc.model.dataset import Split
from dfdc.model.train import train_loader

if TYPE_CHECKING:
    from conftest import Extracted

PRE = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _crops(n: int, size: int = 48, seed: int = 0) -> list[np.ndarray]:
    """Smooth random images (JPEG-like content, so lossy codecs stay close)."""
    import cv2

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (n, 4, 4, 3)).astype(np.uint8)
    return [cv2.resize(b, (size, size), interpolation=cv2.INTER_CUBIC) for b in base]


def _tracks(n: int) -> store.FaceTracks:
    return store.FaceTracks(
        frames=np.arange(n, dtype=np.int32) * 3, faces=np.zeros(n, np.int16),
        persons=np.zeros(n, np.int16), boxes=np.tile(np.float32([1, 2, 30, 40]), (n, 1)),
        probs=np.full(n, 0.99, np.float32), landmarks=np.zeros((n, 10), np.float32),
        detected=np.ones(n, bool), n_sampled=n, n_frames=30, width=64, height=48,
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_each_crop_is_read_alone_by_its_offset(tmp_path: Path, fmt: str) -> None:
    cfg = ExtractConfig(crop_format=fmt)
    crops = _crops(5)
    path = tmp_path / "abcdefghij.zip"
    record = store.write_video(path, crops, _tracks(5), "proto-digest", cfg)
    assert record.crop_format == fmt and len(record.offsets) == 5
    with zipfile.ZipFile(path) as archive:  # a standard zip: any archive tool can open it
        names = archive.namelist()
        assert names[-1] == store.RECORD and len(names) == 6
        for j in range(5):
            member = archive.read(names[j])
            assert int(record.sizes[j]) == len(member)
            np.testing.assert_array_equal(store.read_crop(path, int(record.offsets[j]), len(member)),
                                          store.decode_crop(member))  # fmt: skip
    for j, crop in enumerate(crops):
        got = store.read_crop(path, int(record.offsets[j]), int(record.sizes[j]))
        np.testing.assert_array_equal(got, store.as_stored(crop, cfg))
        if fmt != "jpeg":  # lossless
            np.testing.assert_array_equal(got, crop)
        else:
            assert np.abs(got.astype(int) - crop).mean() < 3


def test_the_record_is_read_without_touching_the_pixels(tmp_path: Path) -> None:
    cfg = ExtractConfig()
    path = tmp_path / "v.zip"
    written = store.write_video(path, _crops(4), _tracks(4), "proto-digest", cfg)
    data = bytearray(path.read_bytes())
    for offset, size in zip(written.offsets, written.sizes, strict=True):
        data[int(offset) : int(offset + size)] = b"\0" * int(size)  # every image destroyed
    path.write_bytes(bytes(data))
    record = store.read_record(path)
    np.testing.assert_array_equal(record.frames, [0, 3, 6, 9])
    np.testing.assert_array_equal(record.boxes, written.boxes)
    assert (record.fingerprint, record.width, record.height) == ("proto-digest", 64, 48)
    with pytest.raises(ValueError, match="not a readable image"):
        store.read_crop(path, int(record.offsets[0]), int(record.sizes[0]))


def test_equal_crops_give_equal_bytes(tmp_path: Path) -> None:
    cfg = ExtractConfig()
    store.write_video(tmp_path / "a.zip", _crops(3), _tracks(3), "proto-digest", cfg)
    store.write_video(tmp_path / "b.zip", _crops(3), _tracks(3), "proto-digest", cfg)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    store.write_video(tmp_path / "c.zip", _crops(3, seed=1), _tracks(3), "proto-digest", cfg)
    assert (tmp_path / "a.zip").read_bytes() != (tmp_path / "c.zip").read_bytes()


def test_fresh_record_refuses_other_fingerprints_and_corrupt_files(tmp_path: Path) -> None:
    path = tmp_path / "v.zip"
    store.write_video(path, _crops(2), _tracks(2), "proto-digest", ExtractConfig())
    assert store.fresh_record(path, "proto-digest") is not None
    assert store.fresh_record(path, "proto-other") is None
    assert store.fresh_record(tmp_path / "missing.zip", "proto-digest") is None
    path.write_bytes(path.read_bytes()[:-40])  # cut short: the central directory is gone
    assert store.fresh_record(path, "proto-digest") is None


def test_protocol_fingerprint_covers_crop_settings_and_code_version(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ExtractConfig()
    fp = store.protocol_fingerprint(cfg)
    assert store.protocol_fingerprint(cfg.model_copy(update={"workers": 7, "device": "cuda"})) == fp
    for change in ({"jpeg_quality": 90}, {"crop_format": "png"}, {"margin": 0.5}, {"frames_per_video": 8}):
        assert store.protocol_fingerprint(cfg.model_copy(update=change)) != fp, change
    monkeypatch.setattr(store, "CROP_CODE_VERSION", store.CROP_CODE_VERSION + 1)
    assert store.protocol_fingerprint(cfg) != fp


def test_video_digest_follows_content_not_time(tmp_path: Path) -> None:
    import os

    video = tmp_path / "v.mp4"
    video.write_bytes(bytes(range(256)) * 1000)
    digest = store.video_digest(video)
    os.utime(video, (1, 1))
    assert store.video_digest(video) == digest
    data = bytearray(video.read_bytes())
    data[-5] ^= 0xFF  # the end of the file (where an mp4 may keep its index)
    video.write_bytes(bytes(data))
    assert store.video_digest(video) != digest


def test_stored_crops_stream_through_dataloader_workers(extracted: Extracted) -> None:
    index = extracted.index.reset_index(drop=True)
    crops = store.StoredCrops(extracted.faces_dir, index)
    assert len(crops) == len(index)
    stacked = crops[:]
    assert stacked.dtype == np.uint8 and stacked.shape[0] == len(index)
    labels = (index["label"] == "FAKE").to_numpy(int)
    videos = index["video"].to_numpy()
    # Training's own loader: two worker processes reading the store against one process holding
    # every crop in memory, the same balanced draw; no augmentation, so items must be equal.
    cfg = TrainConfig(batch_size=4, augment=False, seed=3)
    streamed = train_loader(Split(crops, labels, videos), PRE, cfg.model_copy(update={"num_workers": 2}))
    in_memory = train_loader(Split(stacked, labels, videos), PRE, cfg)
    got = [torch.cat(parts) for parts in zip(*streamed, strict=True)]  # images, labels
    want = [torch.cat(parts) for parts in zip(*in_memory, strict=True)]
    assert len(got[0]) > 0
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    part = crops.select(np.arange(1, len(crops), 2))
    np.testing.assert_array_equal(part[:], stacked[1::2])


def test_identity_follows_the_index_not_the_pixels(extracted: Extracted, tmp_path: Path) -> None:
    index = extracted.index
    a = store.StoredCrops(extracted.faces_dir, index).identity()
    assert store.StoredCrops(extracted.faces_dir, index.copy()).identity() == a
    moved = shutil.copytree(extracted.faces_dir, tmp_path / "faces")
    assert store.StoredCrops(moved, index).identity() == a  # the same crops elsewhere
    redone = index.assign(fingerprint=index["fingerprint"].where(index.index != 0, "other"))
    assert store.StoredCrops(extracted.faces_dir, redone).identity() != a
    assert store.StoredCrops(extracted.faces_dir, index.iloc[1:]).identity() != a


def test_read_index_reads_only_the_columns_asked(extracted: Extracted) -> None:
    chunk = extracted.out_dir.name
    full = store.read_index(extracted.faces_dir, [chunk])
    assert list(full.columns) == store.INDEX_COLUMNS
    slim = store.read_index(extracted.faces_dir, [chunk], columns=["video", "crop_offset"])
    assert list(slim.columns) == ["video", "crop_offset"]
    pd.testing.assert_series_equal(slim["crop_offset"], full["crop_offset"])
