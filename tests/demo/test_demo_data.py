"""The demo generator must produce data the pipeline cannot tell from DFDC's layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from dfdc.data.labels import crop_difference
from dfdc.demo.generate import IDENTITIES, KINDS, DemoSpec, generate_demo_data

SPEC = DemoSpec(
    chunks=2, originals_per_chunk=2, fakes_per_original=3, test_videos=4,
    width=160, height=120, duration=1.0, fps=10, seed=3, kinds=KINDS,  # the face kinds
)
NAME = re.compile(r"^[a-z]{10}\.mp4$")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_demo_data(out, SPEC)
    return out


@pytest.fixture(scope="module")
def manifest(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "demo_manifest.csv")


@pytest.fixture(scope="module")
def mtcnn():
    facenet = pytest.importorskip("facenet_pytorch")
    return facenet.MTCNN(keep_all=True, device="cpu")


def _metadata(root: Path) -> dict[str, dict[str, dict]]:
    return {
        p.parent.name: json.loads(p.read_text())
        for p in sorted(root.glob("dfdc_train_part_*/metadata.json"))
    }


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_layout_and_metadata(root: Path) -> None:
    meta = _metadata(root)
    assert sorted(meta) == ["dfdc_train_part_0", "dfdc_train_part_1"]
    labels = {name: rec["label"] for chunk in meta.values() for name, rec in chunk.items()}
    where = {name: chunk for chunk, recs in meta.items() for name in recs}
    all_names: list[str] = []
    for chunk, recs in meta.items():
        present = sorted(p.name for p in (root / chunk).glob("*.mp4"))
        assert sorted(recs) == present
        assert len(present) == SPEC.originals_per_chunk * (1 + SPEC.fakes_per_original)
        all_names += present
        for name, rec in recs.items():
            assert set(rec) == {"label", "split", "original"}
            assert rec["split"] == "train"
            if rec["label"] == "REAL":
                assert rec["original"] is None
            else:
                assert rec["label"] == "FAKE"
                assert labels.get(rec["original"]) == "REAL", name
    tests = sorted(p.name for p in (root / "test_videos").glob("*.mp4"))
    assert len(tests) == SPEC.test_videos
    all_names += tests
    assert all(NAME.match(n) for n in all_names)
    assert len(set(all_names)) == len(all_names)
    cross = [
        n for chunk, recs in meta.items() for n, r in recs.items()
        if r["original"] and where[r["original"]] != chunk
    ]
    assert cross, "DFDC has fakes whose original lives in another chunk"
    assert not list(root.rglob("*.partial")), "files are written aside, then renamed"


def test_submission_and_answer_key(root: Path, manifest: pd.DataFrame) -> None:
    tests = sorted(p.name for p in (root / "test_videos").glob("*.mp4"))
    sub = pd.read_csv(root / "sample_submission.csv")
    assert list(sub.columns) == ["filename", "label"]
    assert list(sub["filename"]) == tests
    assert (sub["label"] == 0.5).all()
    key = pd.read_csv(root / "test_labels.csv").set_index("filename")["label"]
    truth = manifest[manifest["chunk"] == "test_videos"].set_index("filename")["label"]
    assert sorted(key.index) == tests
    assert (key == (truth.loc[key.index] == "FAKE").astype(int)).all()
    assert 0 < key.sum() < len(key)


def test_manifest_matches_metadata(root: Path, manifest: pd.DataFrame) -> None:
    assert list(manifest.columns) == [
        "chunk", "filename", "label", "original", "kind", "identity", "seed", "people", "face_target",
        "donor", "modality",
    ]
    for chunk, recs in _metadata(root).items():
        rows = manifest[manifest["chunk"] == chunk].set_index("filename")
        assert sorted(rows.index) == sorted(recs)
        for name, rec in recs.items():
            assert rows.loc[name, "label"] == rec["label"]
    assert set(manifest.loc[manifest["label"] == "FAKE", "kind"]) >= set(KINDS)
    assert (manifest.loc[manifest["label"] == "REAL", "kind"] == "real").all()
    assert (manifest["modality"] == manifest["label"].map({"REAL": "real", "FAKE": "face"})).all()
    assert set(manifest["identity"]) == set(IDENTITIES) == {"astronaut", "camera", "hopper"}
    swap = manifest["kind"] == "swap"
    assert manifest.loc[swap, "donor"].isin(IDENTITIES).all()
    assert (manifest.loc[swap, "donor"] != manifest.loc[swap, "identity"]).all()
    assert manifest.loc[~swap, "donor"].isna().all()  # written empty


def test_every_video_is_h264_with_aac(root: Path) -> None:
    videos = sorted(root.glob("*/*.mp4"))
    assert len(videos) == 2 * 8 + 4
    for path in videos:
        with av.open(str(path)) as container:
            assert len(container.streams.video) == 1
            assert len(container.streams.audio) == 1
            v, a = container.streams.video[0], container.streams.audio[0]
            assert v.codec_context.name == "h264"
            assert a.codec_context.name == "aac"
            assert (v.codec_context.width, v.codec_context.height) == (160, 120)
            n = sum(1 for _ in container.decode(video=0))
        assert abs(n - SPEC.duration * SPEC.fps) <= 1, path


def _face_box(mtcnn, frame: np.ndarray) -> tuple[np.ndarray, float]:
    boxes, probs = mtcnn.detect(frame)
    assert boxes is not None, "no face found"
    best = int(np.argmax(probs))
    return boxes[best], float(probs[best])


def test_real_faces_are_detectable(root: Path, manifest: pd.DataFrame, mtcnn) -> None:
    reals = manifest[(manifest["label"] == "REAL") & (manifest["chunk"] != "test_videos")]
    for row in reals.drop_duplicates("identity").itertuples():
        frames = _decode(root / row.chunk / row.filename)
        _, prob = _face_box(mtcnn, frames[len(frames) // 2])
        assert prob > 0.9, (row.filename, row.identity, prob)


def test_fakes_differ_only_near_the_face(
    root: Path, manifest: pd.DataFrame, mtcnn
) -> None:
    chunk_of = dict(zip(manifest["filename"], manifest["chunk"], strict=True))
    fakes = manifest[manifest["label"] == "FAKE"].drop_duplicates("kind")
    assert sorted(fakes["kind"]) == sorted(KINDS)
    for row in fakes.itertuples():
        original = _decode(root / chunk_of[row.original] / row.original).astype(np.float32)
        fake = _decode(root / row.chunk / row.filename).astype(np.float32)
        assert original.shape == fake.shape
        (x0, y0, x1, y1), _ = _face_box(mtcnn, original[len(original) // 2].astype(np.uint8))
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        yy, xx = np.mgrid[: original.shape[1], : original.shape[2]]
        # Camera motion over 1 s is small, so twice the mid-frame box holds the face region.
        outside = (np.abs(xx - cx) > w) | (np.abs(yy - cy) > h)
        inside = (np.abs(xx - cx) < 0.3 * w) & (np.abs(yy - cy) < 0.3 * h)
        diff = np.abs(original - fake).mean(axis=-1)
        out_mean, in_mean = diff[:, outside].mean(), diff[:, inside].mean()
        assert out_mean < 3.0, (row.kind, out_mean)
        # Every frame's face differs by more than the labels stage's threshold (10 grey levels).
        box = (max(int(x0), 0), max(int(y0), 0), int(x1), int(y1))
        changed = [crop_difference(f, o, box) for f, o in zip(fake, original, strict=True)]
        assert min(changed) > 10.0, (row.kind, changed)
        if row.kind == "warp":  # only the mouth moves: the face's centre barely changes
            assert in_mean < 8.0, (row.kind, in_mean)
            continue
        assert in_mean > 8.0, (row.kind, in_mean)
        assert in_mean > 4 * out_mean, (row.kind, in_mean, out_mean)


def test_same_spec_same_dataset(root: Path, manifest: pd.DataFrame, tmp_path: Path) -> None:
    # Rendered by two processes this time: each video comes from its own seeds alone.
    again = generate_demo_data(tmp_path, DemoSpec(**vars(SPEC)), workers=2)
    pd.testing.assert_frame_equal(again, manifest, check_dtype=False)
    assert _metadata(tmp_path) == _metadata(root)
    # Byte-identical videos: the encoder settings avoid x264's run-to-run drift.
    for row in manifest.itertuples():
        first = (root / row.chunk / row.filename).read_bytes()
        assert (tmp_path / row.chunk / row.filename).read_bytes() == first, row.filename


def test_other_seed_other_names(manifest: pd.DataFrame, tmp_path: Path) -> None:
    spec = DemoSpec(chunks=1, originals_per_chunk=1, fakes_per_original=1, test_videos=0,
                    width=64, height=64, duration=0.2, fps=10, seed=SPEC.seed + 1)
    other = generate_demo_data(tmp_path, spec)
    assert not set(other["filename"]) & set(manifest["filename"])


@pytest.mark.parametrize(
    "bad",
    [
        {"chunks": 0}, {"originals_per_chunk": 0}, {"fakes_per_original": -1},
        {"test_videos": -1}, {"width": 63}, {"height": 10}, {"fps": 0},
        {"duration": 0.0}, {"duration": float("nan")}, {"seed": -1},
        {"kinds": ("swap", "morph")}, {"kinds": ()}, {"pair_share": -0.1}, {"pair_share": 1.5},
        {"pair_share": float("nan")}, {"pair_share": 0.5, "width": 64, "height": 128},
    ],
)
def test_impossible_spec_is_rejected(bad: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="impossible DemoSpec"):
        generate_demo_data(tmp_path, DemoSpec(**bad))
    assert not any(tmp_path.iterdir())


def test_refuses_to_mix_with_another_dataset(tmp_path: Path) -> None:
    stray = tmp_path / "dfdc_train_part_0" / "zzzzzzzzzz.mp4"
    stray.parent.mkdir()
    stray.write_bytes(b"")
    with pytest.raises(FileExistsError):
        generate_demo_data(tmp_path, DemoSpec(chunks=1, originals_per_chunk=1,
                                              fakes_per_original=0, test_videos=0,
                                              width=64, height=64, duration=0.2, fps=5))
