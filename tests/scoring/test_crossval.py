"""Cross-validation protocols: folds hide what they claim to, the figures exist, no manifest is refused.

Fold construction runs on a synthetic split of three identities and five kinds (every
subset, swaps with donors); one fold runs end to end on the session's extracted demo chunk.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import log_loss, roc_auc_score
from typer.testing import CliRunner

from dfdc.config import CrossvalConfig, DataConfig, Params, ScoreConfig, TrainConfig
from dfdc.demo.generate import modality_of
from dfdc.scoring.crossval import (
    CrossvalError,
    Fold,
    annotate,
    build_folds,
    flat_metrics,
    fold_metrics,
    read_manifest,
    run_fold,
    thin_frames,
    touches,
    write_report,
)

PEOPLE = ("astronaut", "camera", "hopper")
KINDS = ("swap", "lowres", "colour", "warp", "blend")
SUBSETS = ("train", "train", "val", "calib", "test", "train")

if TYPE_CHECKING:
    from conftest import Demo, Extracted

    from dfdc.config import ExtractConfig



def _synthetic(kinds: tuple[str, ...] = KINDS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A split (whole families per subset) and its manifest: 18 families of a real and 3 fakes."""
    rows, manifest = [], []
    n = 0
    for family in range(18):
        person = PEOPLE[family % 3]
        subset = SUBSETS[family // 3]  # each subset holds one family of each person
        real = f"r{family:02d}.mp4"
        rows.append(("c0", real, "REAL", None, subset))
        manifest.append(("c0", real, "real", person, ""))
        for k in range(3):
            kind = kinds[n % len(kinds)]
            n += 1
            name = f"f{family:02d}{k}.mp4"
            donor = PEOPLE[(family + 1 + k % 2) % 3] if kind in ("swap", "swap_voice") else ""
            rows.append(("c0", name, "FAKE", real, subset))
            manifest.append(("c0", name, kind, person, donor))
    splits = pd.DataFrame(rows, columns=["chunk", "filename", "label", "original", "subset"])
    return splits, pd.DataFrame(manifest, columns=["chunk", "filename", "kind", "identity", "donor"])


@pytest.fixture(scope="module")
def table() -> tuple[pd.DataFrame, pd.DataFrame, list[Fold]]:
    splits, manifest = _synthetic()
    return splits, manifest, build_folds(splits, manifest, CrossvalConfig())


def test_every_kind_and_identity_gets_a_fold(table) -> None:
    _, _, folds = table
    assert [f.key for f in folds] == [
        "iid", *(f"lomo.{k}" for k in sorted(KINDS)), *(f"loio.{p}" for p in PEOPLE)
    ]
    iid = folds[0]  # nothing hidden: the split as it is, the test subset as test
    splits = table[0]
    assert iid.videos.set_index("filename")["subset"].equals(splits.set_index("filename")["subset"])


def test_lomo_fits_without_the_kind_and_tests_its_unseen_fakes_with_the_test_reals(table) -> None:
    splits, manifest, folds = table
    full = annotate(splits, manifest)
    for fold in (f for f in folds if f.protocol == "lomo"):
        v = fold.videos
        fitting = v[v["subset"] != "test"]
        assert not (fitting["kind"] == fold.held_out).any(), fold.key
        expected = full[
            ((full["kind"] == fold.held_out) & (full["subset"] != "train"))
            | ((full["y"] == 0) & (full["subset"] == "test"))
        ]
        assert set(fold.subset("test")["filename"]) == set(expected["filename"]), fold.key
        assert fold.subset("test")["y"].nunique() == 2
        # everything else keeps its subset: only the held-out kind leaves train, val and calib
        for name in ("train", "val", "calib"):
            kept = full[(full["subset"] == name) & (full["kind"] != fold.held_out)]
            assert set(fold.subset(name)["filename"]) == set(kept["filename"]), (fold.key, name)


def test_loio_hides_the_identity_and_its_swapped_in_face_and_tests_on_them(table) -> None:
    splits, manifest, folds = table
    full = annotate(splits, manifest)
    for fold in (f for f in folds if f.protocol == "loio"):
        person = fold.held_out
        v = fold.videos
        fitting = v[v["subset"] != "test"]
        assert not (fitting["identity"] == person).any(), fold.key
        assert not (fitting["donor"] == person).any(), fold.key  # its face swapped into another scene
        touching = full[(full["identity"] == person) | (full["donor"] == person)]
        assert set(fold.subset("test")["filename"]) == set(touching["filename"])
        assert (touching["donor"] == person).any()  # the case that matters is present
        others = full[(full["subset"] != "test") & ~full["filename"].isin(touching["filename"])]
        assert set(fitting["filename"]) == set(others["filename"])  # nothing else leaves


def test_excluded_identities_are_in_no_fold(table) -> None:
    splits, manifest, _ = table
    folds = build_folds(splits, manifest, CrossvalConfig(exclude_identities=("hopper",)))
    assert "loio.hopper" not in [f.key for f in folds]
    assert [f.key for f in folds if f.protocol == "loio"] == ["loio.astronaut", "loio.camera"]
    for fold in folds:
        assert not touches(fold.videos, "hopper").any(), fold.key


def test_voice_only_fakes_train_but_get_no_lomo_fold_and_are_never_scored() -> None:
    """The face branch cannot see a voice-only fake: no fold holds its kind out or scores it."""
    splits, manifest = _synthetic((*KINDS, "voice", "swap_voice"))
    manifest = manifest.assign(modality=manifest["kind"].map(modality_of))
    full = annotate(splits, manifest)
    voice = full[full["modality"] == "voice"]
    assert set(voice["subset"]) == set(SUBSETS)  # voice fakes in every subset of the split
    folds = build_folds(splits, manifest, CrossvalConfig())
    lomo = [f.held_out for f in folds if f.protocol == "lomo"]
    assert lomo == sorted(KINDS)  # swap_voice's face is a swap: held out with the swaps
    swap = next(f for f in folds if f.key == "lomo.swap")
    held = swap.videos[swap.videos["kind"].isin(["swap", "swap_voice"])]
    assert not held.empty and (held["subset"] != "train").all()  # neither trains in lomo.swap
    for fold in folds:
        v = fold.videos
        assert not (v.loc[v["subset"] != "train", "modality"] == "voice").any(), fold.key
        hidden = touches(voice, fold.held_out) if fold.protocol == "loio" else np.zeros(len(voice), bool)
        # ... yet they train, as REAL faces, wherever their identity is not held out
        trained = set(fold.subset("train")["filename"])
        expected = voice[(voice["subset"] == "train").to_numpy() & ~hidden]["filename"]
        assert set(expected) <= trained and not expected.empty, fold.key


def test_modality_without_its_column_comes_from_the_kind(tmp_path: Path) -> None:
    kinds = ["real", "swap", "voice_splice", "swap_voice", "neural_textures"]
    path = tmp_path / "manifest.csv"
    pd.DataFrame({"chunk": "c0", "filename": [f"{k}.mp4" for k in kinds], "kind": kinds,
                  "identity": "camera"}).to_csv(path, index=False)  # fmt: skip
    assert read_manifest(path)["modality"].tolist() == ["real", "face", "voice", "both", "face"]
    pd.read_csv(path).assign(modality="voice").to_csv(path, index=False)
    assert (read_manifest(path)["modality"] == "voice").all()  # a column says it all


def test_a_pair_scene_touches_both_of_its_people() -> None:
    t = pd.DataFrame({"identity": ["camera+astronaut", "camera", "hopper"], "donor": ["", "astronaut", ""]})
    assert touches(t, "astronaut").tolist() == [True, True, False]


def test_fold_metrics_score_reals_and_fakes_apart() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    prob = np.array([0.2, 0.6, 0.1, 0.3, 0.9, 0.7, 0.4])
    m = fold_metrics(y, prob, prob * 0.5, prior=0.5)
    assert m["real_mean_p"] == pytest.approx(0.3)
    assert m["real_fpr"] == pytest.approx(0.25)
    assert m["fake_mean_p"] == pytest.approx(2 / 3)
    assert m["real_mean_p_uncalibrated"] == pytest.approx(0.15)
    assert m["logloss"] == pytest.approx(log_loss(y, prob))
    assert m["auc"] == pytest.approx(roc_auc_score(y, prob))


def test_a_split_video_missing_from_the_manifest_is_refused() -> None:
    splits, manifest = _synthetic()
    with pytest.raises(CrossvalError, match="no manifest row"):
        build_folds(splits, manifest.iloc[1:], CrossvalConfig())


@pytest.mark.parametrize("case", ["unnamed", "absent", "no_identity"])
def test_without_a_manifest_of_kinds_and_identities_it_refuses(case: str, tmp_path: Path) -> None:
    path = {"unnamed": None, "absent": tmp_path / "nothing.csv", "no_identity": tmp_path / "kinds.csv"}[case]
    if case == "no_identity":
        pd.DataFrame({"chunk": ["c0"], "filename": ["a.mp4"], "kind": ["real"]}).to_csv(path, index=False)
    with pytest.raises(CrossvalError, match="kind and identity") as err:
        read_manifest(path)
    assert "\n" not in str(err.value)


def test_the_command_refuses_in_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import app

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump({"evaluate": {"kinds": None}}))
    result = CliRunner().invoke(app, ["crossval", "-p", "params.yaml"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refusing to run: crossval needs a per-video manifest")
    assert "split.folds" in lines[0]
    assert not Path("reports").exists()


def test_one_fold_trains_scores_and_reports_finite_figures(
    demo: Demo, extracted: Extracted, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    """A hand-made fold of the session's chunk: one family trains, the other is split over the rest."""
    m = demo.manifest[demo.manifest["chunk"] == extracted.out_dir.name].reset_index(drop=True)
    reals = m[m["label"] == "REAL"]["filename"].tolist()
    assert len(reals) == 2
    fam = m["original"].fillna(m["filename"])
    a, b = m[fam == reals[0]], m[fam == reals[1]]
    b_fakes = b[b["label"] == "FAKE"]["filename"].tolist()
    subset = {**dict.fromkeys(a["filename"], "train"), reals[1]: "test",
              b_fakes[0]: "val", b_fakes[1]: "calib", b_fakes[2]: "test"}  # fmt: skip
    videos = m.assign(subset=m["filename"].map(subset), y=(m["label"] == "FAKE").astype(int))
    videos["donor"] = videos["donor"].fillna("")
    fold = Fold("lomo", "warp", videos)
    cv = CrossvalConfig(
        epochs=1, work_dir=tmp_path / "folds", metrics=tmp_path / "crossval.json", report_dir=tmp_path / "cv"
    )
    params = Params(
        data=DataConfig(faces_dir=extracted.faces_dir), extract=extract_cfg,
        train=TrainConfig(epochs=9, batch_size=8, threads=1), score=ScoreConfig(device="cpu", workers=0),
        crossval=cv,
    )  # fmt: skip
    index = extracted.index
    result = run_fold(fold, index, index.assign(train_label=index["label"]), params)
    assert (cv.work_dir / "lomo-warp.pt").is_file()  # the fold's own checkpoint, not the pipeline's
    assert set(result.scores["filename"]) == {reals[1], b_fakes[2]}
    assert result.metrics["n_videos"] == 2 and result.metrics["best_epoch"] == 0  # crossval's budget: 1 epoch
    metrics = write_report([result], cv)
    assert json.loads(cv.metrics.read_text()) == metrics
    for key in ("logloss", "auc", "real_mean_p", "real_fpr", "fake_mean_p"):
        assert math.isfinite(metrics[f"lomo.warp.{key}"]), key
        assert metrics[f"lomo.mean_{key}"] == metrics[f"lomo.warp.{key}"]
    assert 0 <= metrics["lomo.warp.real_fpr"] <= 1
    assert "| warp |" in (cv.report_dir / "tables.md").read_text()
    assert len(pd.read_csv(cv.report_dir / "scores.csv")) == 2
    assert not (cv.report_dir / "unseen_identity_reals.png").exists()  # no loio fold, no histogram


def test_flat_metrics_average_each_protocol_and_name_the_worst_fold() -> None:
    from dfdc.scoring.crossval import FoldResult

    def result(protocol: str, name: str, auc: float, real: float) -> FoldResult:
        keys = dict.fromkeys(("logloss", "fake_mean_p", "real_fpr"), 0.5)
        return FoldResult(Fold(protocol, name, pd.DataFrame()), {**keys, "auc": auc, "real_mean_p": real},
                          pd.DataFrame(), 1.0)  # fmt: skip

    folds = [result("loio", "a", 0.9, 0.2), result("loio", "b", 0.7, 0.4), result("lomo", "w", math.nan, 0.1)]
    out = flat_metrics(folds)
    assert out["loio.mean_auc"] == pytest.approx(0.8)
    assert out["loio.min_auc"] == pytest.approx(0.7)
    assert out["loio.max_real_mean_p"] == pytest.approx(0.4)
    assert "lomo.w.auc" not in out and "lomo.mean_auc" not in out  # NaN: left out, not written as NaN
    assert out["lomo.n_folds"] == 1


def test_thin_frames_keeps_evenly_spaced_frames_with_every_person() -> None:
    frames = [0, 2, 5, 8, 10, 13, 16, 18, 21, 24, 26, 29]
    index = pd.DataFrame(
        [("c0", v, f, person) for v in ("a.mp4", "b.mp4") for f in frames for person in (0, 1)],
        columns=["chunk", "video", "frame", "person"],
    )
    kept = thin_frames(index, 4)
    assert sorted(kept.loc[kept["video"] == "a.mp4", "frame"].unique()) == [0, 8, 16, 24]
    assert (kept.groupby(["video", "frame"]).size() == 2).all()  # both people at each kept frame
    assert thin_frames(index, None).equals(index) and len(thin_frames(index, 40)) == len(index)


def test_the_command_refuses_a_missing_params_file_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["crossval", "-p", "nothing.yaml"])
    assert result.exit_code == 2
    assert result.output.strip() == "refusing to run: no params file nothing.yaml"
