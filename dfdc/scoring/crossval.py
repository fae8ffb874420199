"""Leave-one-manipulation-out and leave-one-identity-out: the detector on what it never saw.

In-distribution figures flatter a detector: its test fakes were made the way its training
fakes were, of people it has seen. These protocols (DeepfakeBench's cross-manipulation
protocol, extended to identities) retrain the model with one manipulation kind, or every
video of one identity, hidden from training, validation and calibration, and score only that:

- ``lomo.<kind>``: without that face manipulation's fakes (``swap`` with ``swap_voice``'s); tested
  on them, from the families never trained
  on (the split's val, calib and test subsets), with the test subset's reals;
- ``loio.<identity>``: without every video whose scene shows that identity or whose swap
  shows its face (``donor``); tested on all of those, whichever subset held them;
- ``iid``: nothing hidden, the test subset, on the same budget: the bar the others are read against.

A fold keeps the pipeline's split otherwise (a family never straddles train and test), its
calibration (the temperature fitted on the fold's calib videos) and its one scorer.

The protocols measure the face branch. A voice-only fake (manifest ``modality`` ``voice``)
shows its original's faces, which the labels stage marks REAL: such fakes train like any
video, but no fold validates, calibrates or tests on them (the face branch cannot see what
makes them fake, so they would measure nothing), and no voice-only kind gets a ``lomo``
fold. The figures are :func:`dfdc.scoring.evaluate.video_metrics`' plus the mean P(FAKE) and the
false-positive rate at 0.5 of the real test videos: what an unseen face costs an innocent.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dfdc.config import CrossvalConfig, Params
from dfdc.data.metadata import labels_to_int
from dfdc.demo.generate import MANIPULATIONS, modality_of
from dfdc.faces.store import read_index
from dfdc.model.dataset import load_subset
from dfdc.scoring.calibrate import calibrate_videos, frame_scores, uncalibrated
from dfdc.scoring.evaluate import video_metrics

PROTOCOLS = {
    "iid": "nothing held out: the test subset, on the same budget (the bar the others are read against)",
    "lomo": "leave one manipulation kind out",
    "loio": "leave one identity out",
}
MANIFEST_COLUMNS = ("chunk", "filename", "kind", "identity")  # donor, modality: optional
FACE_MODALITIES = ("face", "both")  # a fake of these shows its manipulation in the face
FOLD_KEYS = (
    "logloss", "prior_logloss", "auc", "real_mean_p", "real_fpr", "fake_mean_p",
    "real_mean_p_uncalibrated", "temperature", "n_videos", "n_fake", "n_train_videos", "best_epoch",
)  # fmt: skip
MEAN_KEYS = ("logloss", "auc", "real_mean_p", "real_fpr", "fake_mean_p")


class CrossvalError(ValueError):
    """A reason, in one line, why the protocols cannot run on this data."""


def read_manifest(path: Path | None) -> pd.DataFrame:
    """Each video's ``kind``, scene ``identity`` (people joined by ``+``), ``donor`` and ``modality``.

    Without a ``modality`` column (an older manifest) it comes from the kind: the demo's kinds
    have theirs (``dfdc.demo.generate.modality_of``), any other kind counts as a face one.

    Real DFDC's metadata names neither kinds nor people, so without such a file the
    protocols cannot be built: the error says so and points at chunk folds instead.
    """
    hint = "real DFDC has none: cross-validate by chunk with split.folds"
    if path is None or not Path(path).is_file():
        where = "evaluate.kinds names none" if path is None else f"{path} does not exist"
        raise CrossvalError(
            f"crossval needs a per-video manifest with kind and identity columns ({where}); {hint}"
        )
    table = pd.read_csv(path)
    if missing := [c for c in MANIFEST_COLUMNS if c not in table.columns]:
        raise CrossvalError(
            f"{path}: no {', '.join(missing)} column; crossval needs kind and identity ({hint})"
        )
    donor = table["donor"] if "donor" in table.columns else pd.Series("", index=table.index)
    if "modality" in table.columns:
        modality = table["modality"].fillna("face").astype(str)
    else:
        modality = table["kind"].astype(str).map(_kind_modality)
    return table[list(MANIFEST_COLUMNS)].assign(donor=donor.fillna("").astype(str), modality=modality)


def face_manipulation(kind: str) -> str:
    """The face manipulation of a kind: ``swap`` for ``swap_voice``, the kind itself otherwise.

    ``lomo`` holds out a face manipulation with every kind that uses it, so ``lomo.swap`` never
    trains on the swapped faces of ``swap_voice`` fakes.
    """
    face = MANIPULATIONS.get(kind, (kind, None))[0]
    return face if face is not None else kind


def _kind_modality(kind: str) -> str:
    """A kind's modality: the demo's own for its kinds, ``face`` for any other."""
    return modality_of(kind) if kind == "real" or kind in MANIPULATIONS else "face"


def annotate(splits: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """The split's videos with ``y``, ``kind``, ``identity``, ``donor``, ``modality``; each must be described.

    A manifest without ``modality`` (not from :func:`read_manifest`) counts every fake as a face one.
    """
    keys = ["chunk", "filename"]
    known = manifest.drop_duplicates(keys)
    if "modality" not in known.columns:
        known = known.assign(modality="face")
    table = splits.merge(known, on=keys, how="left", validate="one_to_one")
    if n := int(table["kind"].isna().sum()):
        first = table.loc[table["kind"].isna(), "filename"].iloc[0]
        raise CrossvalError(f"{n} videos of the split have no manifest row (first: {first})")
    return table.assign(y=labels_to_int(table["label"]))


def touches(table: pd.DataFrame, identity: str) -> np.ndarray:
    """Videos whose scene shows ``identity`` or whose swapped-in face is its (the donor)."""
    people = table["identity"].astype(str).str.split("+")
    return (people.map(lambda names: identity in names) | (table["donor"] == identity)).to_numpy()


def identities(table: pd.DataFrame) -> list[str]:
    """Every identity a scene shows or a swap brings in."""
    names = {n for scene in table["identity"].astype(str) for n in scene.split("+")}
    return sorted(names | {d for d in table["donor"] if d})


@dataclass(frozen=True)
class Fold:
    """One held-out kind or identity: the videos the fold uses, each with its fold ``subset``."""

    protocol: str  # lomo | loio
    held_out: str  # the kind or the identity
    # chunk, filename, label, y, subset (train/val/calib/test), kind, identity, donor, modality
    videos: pd.DataFrame

    @property
    def key(self) -> str:
        """``lomo.warp``: the prefix of the fold's metric keys (``iid`` alone: nothing is held out)."""
        return self.protocol if self.protocol == "iid" else f"{self.protocol}.{self.held_out}"

    def subset(self, name: str) -> pd.DataFrame:
        """The fold's videos in one subset."""
        return self.videos[self.videos["subset"] == name]


def voice_only(table: pd.DataFrame) -> np.ndarray:
    """Fakes whose faces are their original's: the face branch cannot tell them (``modality`` voice)."""
    return ((table["y"] == 1) & (table["modality"] == "voice")).to_numpy()


def _fold(protocol: str, name: str, table: pd.DataFrame, hidden: np.ndarray, test: np.ndarray) -> Fold:
    """Train, val and calib keep the split's subsets minus ``hidden``; ``test`` becomes the test subset.

    Voice-only fakes stay in train only (as REAL faces): val, calib and test leave them out.
    """
    fitting = table["subset"].isin(["train", "val", "calib"]).to_numpy() & ~hidden
    subset = table["subset"].where(fitting, None).mask(test, "test")
    subset = subset.mask(voice_only(table) & (subset != "train").to_numpy(), None)
    videos = table.assign(subset=subset)
    return Fold(protocol, name, videos[videos["subset"].notna()].reset_index(drop=True))


def build_folds(splits: pd.DataFrame, manifest: pd.DataFrame, cfg: CrossvalConfig) -> list[Fold]:
    """Every fold of ``cfg.protocols`` over the split's labelled videos.

    ``lomo`` holds out each face manipulation (``face_manipulation``: ``swap`` with ``swap_voice``)
    of the fakes that change the face (``FACE_MODALITIES``); voice-only
    fakes train in every fold and are tested in none. Videos touching an identity of
    ``cfg.exclude_identities`` take part in no fold. A fold whose training would lack reals
    or fakes, or that has nothing to test, is an error.
    """
    table = annotate(splits, manifest)
    for name in cfg.exclude_identities:
        table = table[~touches(table, name)].reset_index(drop=True)
    folds: list[Fold] = []
    if "iid" in cfg.protocols:
        nothing = np.zeros(len(table), dtype=bool)
        folds.append(_fold("iid", "none", table, nothing, (table["subset"] == "test").to_numpy()))
    if "lomo" in cfg.protocols:  # the face manipulations the face branch can see
        face_fakes = (table["y"] == 1) & table["modality"].isin(FACE_MODALITIES)
        face_of = table["kind"].astype(str).map(face_manipulation)
        for kind in sorted(face_of[face_fakes].unique()):
            hidden = (face_of == kind).to_numpy() & face_fakes.to_numpy()
            unseen_family = (table["subset"] != "train").to_numpy()
            test_reals = ((table["y"] == 0) & (table["subset"] == "test")).to_numpy()
            folds.append(_fold("lomo", kind, table, hidden, (hidden & unseen_family) | test_reals))
    if "loio" in cfg.protocols:
        for name in identities(table):
            hidden = touches(table, name)
            folds.append(_fold("loio", name, table, hidden, hidden))
    for fold in folds:
        train = fold.subset("train")
        if set(train["y"]) != {0, 1} or fold.subset("val").empty or fold.subset("test").empty:
            raise CrossvalError(
                f"fold {fold.key}: training needs reals and fakes, a val and a test subset "
                f"(train {len(train)}, val {len(fold.subset('val'))}, test {len(fold.subset('test'))} videos)"
            )
    return folds


def fold_metrics(
    y: np.ndarray, prob: np.ndarray, prob_uncalibrated: np.ndarray, prior: float,
    ece_bins: int = 15, recall_levels: Sequence[float] = (0.9,),
) -> dict[str, float]:  # fmt: skip
    """``video_metrics`` plus how the real and the fake test videos score (NaN when absent)."""
    y = np.asarray(y, dtype=int)
    prob = np.asarray(prob, dtype=float)
    real = y == 0

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else float("nan")

    out = video_metrics(y, prob, prior, ece_bins, recall_levels)
    out.setdefault("auc", float("nan"))
    return {
        **out,
        "real_mean_p": mean(prob[real]),
        "real_fpr": mean((prob[real] >= 0.5).astype(float)),
        "fake_mean_p": mean(prob[~real]),
        "real_mean_p_uncalibrated": mean(np.asarray(prob_uncalibrated, dtype=float)[real]),
    }


@dataclass(frozen=True)
class FoldResult:
    """A fold's figures (:data:`FOLD_KEYS`) and its scored test videos."""

    fold: Fold
    metrics: dict[str, float]
    scores: pd.DataFrame  # per test video: chunk, filename, y, kind, identity, donor, prob, prob_uncalibrated
    seconds: float


def thin_frames(index: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The crops of at most ``n`` evenly spaced frames of each video (every person's, at those frames)."""
    if n is None:
        return index
    keys = ["chunk", "video"]
    frames = index[[*keys, "frame"]].drop_duplicates().sort_values([*keys, "frame"])
    rank = frames.groupby(keys).cumcount().to_numpy()
    count = frames.groupby(keys)["frame"].transform("size").to_numpy()
    kept = frames.assign(slot=rank * n // count).drop_duplicates([*keys, "slot"]).drop(columns="slot")
    return index.merge(kept, on=[*keys, "frame"]).reset_index(drop=True)


def fold_params(params: Params, fold: Fold) -> Params:
    """The pipeline's recipe on the crossval budget, writing the fold's own checkpoint."""
    cv = params.crossval
    train = params.train.model_copy(
        update={"epochs": cv.epochs, "patience": cv.patience, "threads": cv.threads,
                "checkpoint": cv.work_dir / f"{fold.protocol}-{fold.held_out}.pt"}
    )  # fmt: skip
    return params.model_copy(update={"train": train})


def run_fold(
    fold: Fold,
    index: pd.DataFrame,
    labelled: pd.DataFrame,
    params: Params,
    on_epoch: Callable[[int, dict[str, float]], None] = lambda epoch, metrics: None,
) -> FoldResult:
    """Train on the fold, calibrate on its calib videos, score its test videos from stored crops.

    ``index`` is the crop store's index; ``labelled`` the same rows with ``train_label``
    (``dfdc.data.labels.training_labels``), what training learns. Both are thinned to
    ``crossval.frames_per_video`` frames per video first.
    """
    from dfdc.model.backbone import Checkpoint
    from dfdc.model.train import train
    from dfdc.scoring.scorer import Scorer

    start = time.perf_counter()
    p = fold_params(params, fold)
    index = thin_frames(index, p.crossval.frames_per_video)
    labelled = thin_frames(labelled, p.crossval.frames_per_video)
    faces_dir, ex = p.data.faces_dir, p.extract
    videos = fold.videos
    train_split = load_subset(faces_dir, labelled, videos, "train", ex.margin, ex.crop_size, "train_label")
    val_split = load_subset(faces_dir, index, fold.videos, "val")
    result = train(train_split, val_split, p.model, p.extract, p.train, on_epoch=on_epoch)
    checkpoint = Checkpoint.load(p.train.checkpoint)
    scorer = Scorer(checkpoint.build(), checkpoint.protocol, p.score)
    scored = fold.videos[fold.videos["subset"].isin(["calib", "test"])].reset_index(drop=True)
    frames = frame_scores(scorer, faces_dir, index, scored["filename"])
    c = p.calibrate
    clip = (c.clip_min, c.clip_max)
    priors = (c.temperature_prior_sd, c.bias_prior_sd)
    cal, logits = calibrate_videos(frames, scored, p.aggregate, *clip, *priors)
    test = (scored["subset"] == "test").to_numpy()
    z = logits.to_numpy()[test]
    scores = scored.loc[test, ["chunk", "filename", "y", "kind", "identity", "donor"]].assign(
        prob=cal.probability(z), prob_uncalibrated=uncalibrated(cal).probability(z)
    )
    e = p.evaluate
    metrics = fold_metrics(
        scores["y"].to_numpy(), scores["prob"].to_numpy(), scores["prob_uncalibrated"].to_numpy(),
        cal.fallback, e.ece_bins, e.recall_levels,
    )  # fmt: skip
    metrics.update(
        temperature=cal.temperature, n_train_videos=len(fold.subset("train")), best_epoch=result.best_epoch
    )
    kept = {k: float(metrics[k]) for k in FOLD_KEYS}
    return FoldResult(fold, kept, scores.reset_index(drop=True), time.perf_counter() - start)


def _finite(value: float) -> bool:
    return not (isinstance(value, float) and math.isnan(value))


def flat_metrics(results: Sequence[FoldResult]) -> dict[str, float]:
    """Flat keys: ``lomo.warp.auc`` per fold; ``lomo.mean_auc`` per protocol.

    The worst fold too (``min_auc``, ``max_real_mean_p``): a mean hides the identity that
    fails. NaNs are left out, as ``reports/metrics.json`` does.
    """
    out: dict[str, float] = {}
    for r in results:
        out.update({f"{r.fold.key}.{k}": v for k, v in r.metrics.items() if _finite(v)})
    for protocol in PROTOCOLS:
        mine = [r.metrics for r in results if r.fold.protocol == protocol]
        if not mine or protocol == "iid":
            continue
        for k in MEAN_KEYS:
            values = [m[k] for m in mine if _finite(m[k])]
            if values:
                out[f"{protocol}.mean_{k}"] = float(np.mean(values))
        aucs = [m["auc"] for m in mine if _finite(m["auc"])]
        reals = [m["real_mean_p"] for m in mine if _finite(m["real_mean_p"])]
        if aucs:
            out[f"{protocol}.min_auc"] = float(min(aucs))
        if reals:
            out[f"{protocol}.max_real_mean_p"] = float(max(reals))
        out[f"{protocol}.n_folds"] = len(mine)
    return out


def protocol_table(results: Sequence[FoldResult], protocol: str) -> pd.DataFrame:
    """One row per fold of ``protocol`` and a ``mean`` row."""
    rows = [{"held_out": r.fold.held_out, **r.metrics, "seconds": r.seconds}
            for r in results if r.fold.protocol == protocol]  # fmt: skip
    table = pd.DataFrame(rows)
    if len(table) < 2:
        return table
    mean = {"held_out": "mean", **table.drop(columns="held_out").mean(numeric_only=True).to_dict()}
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)


def _cell(value: float, digits: int = 3) -> str:
    return "–" if not _finite(value) else f"{value:.{digits}f}"


def markdown(results: Sequence[FoldResult]) -> str:
    """A table per protocol: log loss beside the prior's, AUC, and how real and fake videos score."""
    parts = []
    for protocol, title in PROTOCOLS.items():
        table = protocol_table(results, protocol)
        if table.empty:
            continue
        lines = [
            f"**{protocol}: {title}** (calibrated P(FAKE) of the held-out test videos)",
            "",
            "| held out | test videos (fake) | log loss (prior) | AUC | real mean P(FAKE) | real FPR@0.5 "
            "| fake mean P(FAKE) | real mean P uncal. | train videos |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in table.to_dict("records"):
            lines.append(
                f"| {r['held_out']} | {r['n_videos']:.0f} ({r['n_fake']:.0f}) "
                f"| {_cell(r['logloss'])} ({_cell(r['prior_logloss'])}) | {_cell(r['auc'])} "
                f"| {_cell(r['real_mean_p'])} | {_cell(r['real_fpr'])} | {_cell(r['fake_mean_p'])} "
                f"| {_cell(r['real_mean_p_uncalibrated'])} | {r['n_train_videos']:.0f} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def all_scores(results: Sequence[FoldResult]) -> pd.DataFrame:
    """Every fold's scored test videos, with ``protocol`` and ``held_out``."""
    frames = [r.scores.assign(protocol=r.fold.protocol, held_out=r.fold.held_out) for r in results]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def draw_unseen_identity_histogram(results: Sequence[FoldResult], path: Path, bins: int = 20) -> Path | None:
    """P(FAKE) of each held-out identity's real videos (its fakes in outline), one panel per identity."""
    from matplotlib.figure import Figure

    folds = [r for r in results if r.fold.protocol == "loio"]
    if not folds:
        return None
    fig = Figure(figsize=(3.2 * len(folds), 2.8), layout="constrained")
    axes = fig.subplots(1, len(folds), sharey=True, squeeze=False)[0]
    edges = np.linspace(0, 1, bins + 1)
    for ax, r in zip(axes, folds, strict=True):
        s = r.scores
        ax.hist(s.loc[s["y"] == 0, "prob"], bins=edges, color="tab:blue", alpha=0.8, label="real")
        ax.hist(s.loc[s["y"] == 1, "prob"], bins=edges, histtype="step", color="tab:red", label="fake")
        ax.axvline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"unseen: {r.fold.held_out}", fontsize=9)
        ax.set_xlabel("calibrated P(FAKE)")
    axes[0].set_ylabel("videos")
    axes[0].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_report(results: Sequence[FoldResult], cfg: CrossvalConfig) -> dict[str, float]:
    """``cfg.metrics`` (flat keys) and, under ``cfg.report_dir``, the tables, scores and histogram."""
    metrics = flat_metrics(results)
    cfg.metrics.parent.mkdir(parents=True, exist_ok=True)
    cfg.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    cfg.report_dir.mkdir(parents=True, exist_ok=True)
    (cfg.report_dir / "tables.md").write_text(markdown(results))
    for protocol in PROTOCOLS:
        table = protocol_table(results, protocol)
        if not table.empty:
            table.to_csv(cfg.report_dir / f"{protocol}.csv", index=False)
    all_scores(results).to_csv(cfg.report_dir / "scores.csv", index=False)
    draw_unseen_identity_histogram(results, cfg.report_dir / "unseen_identity_reals.png", cfg.histogram_bins)
    return metrics


def load_inputs(params: Params) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The split, the crop index and the index labelled for training, as the train stage reads them."""
    from dfdc.data.labels import read_labels, training_labels

    splits = pd.read_parquet(params.data.splits)
    chunks = sorted(splits["chunk"].unique())
    index = read_index(params.data.faces_dir, chunks)
    labelled = training_labels(index, read_labels(params.labels.out_dir, chunks), params.labels)
    return splits, index, labelled
