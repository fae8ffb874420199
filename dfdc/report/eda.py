"""The exploratory report: the seed notebooks' plots as one self-contained HTML file.

What a person looks at before trusting a DFDC dataset: how many videos per chunk and label,
which metadata is missing, where folders and metadata disagree, which originals were faked
most, what real and fake frames look like, how a fake differs from its original frame for
frame, what the face crops look like, and how the OpenCV Haar cascades the seed notebooks
used compare with MTCNN on the same frames. Every figure is a base64 PNG inside the page,
so the file can be mailed, attached to an artifact or opened offline.

The frame-level sections sample a few videos (``ReportConfig``), so the stage stays quick.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dfdc.data.metadata import METADATA_COLUMNS, MetadataError, read_metadata

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dfdc.config import ExtractConfig, ReportConfig

# (anchor, title) of every section, in page order; tests check each is present.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("balance", "Videos per chunk and label balance"),
    ("missing", "Missing values per column"),
    ("files", "Files vs metadata"),
    ("originals", "Most-faked originals"),
    ("frames", "Sampled frames: real vs fake"),
    ("difference", "A fake beside its original, with their absolute difference"),
    ("crops", "Face crops: real vs fake pairs"),
    ("labels", "Which faces of the fakes differ from their originals"),
    ("detectors", "Haar cascades vs MTCNN on the same frames"),
)
HAAR_CASCADES = {
    "haar_frontal": "haarcascade_frontalface_default.xml",
    "haar_profile": "haarcascade_profileface.xml",
    "haar_eyes": "haarcascade_eye.xml",
}
_COLOURS = {"mtcnn": (0, 200, 0), "haar_frontal": (255, 60, 60), "haar_profile": (60, 120, 255),
            "haar_eyes": (255, 200, 0)}  # fmt: skip


@dataclass(frozen=True)
class Inventory:
    """Metadata of every readable chunk plus what is on disk, and the chunks that could not be read."""

    meta: pd.DataFrame  # METADATA_COLUMNS + path + exists
    unlisted: pd.DataFrame  # chunk, filename: .mp4 on disk, absent from metadata
    unreadable: dict[str, str]  # chunk -> reason


def inventory(chunk_dirs: Sequence[Path]) -> Inventory:
    """Read every chunk without stopping at a broken one (the report shows what it can)."""
    frames, unlisted, unreadable = [], [], {}
    for chunk_dir in map(Path, chunk_dirs):
        try:
            meta = read_metadata(chunk_dir)
        except MetadataError as err:
            unreadable[chunk_dir.name] = err.reason
            continue
        paths = [chunk_dir / str(name) for name in meta["filename"]]
        frames.append(meta.assign(path=paths, exists=[p.is_file() for p in paths]))
        listed = set(meta["filename"])
        unlisted += [
            (chunk_dir.name, p.name) for p in sorted(chunk_dir.glob("*.mp4")) if p.name not in listed
        ]
    columns = [*METADATA_COLUMNS, "path", "exists"]
    meta = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return Inventory(meta, pd.DataFrame(unlisted, columns=["chunk", "filename"]), unreadable)


# --------------------------------------------------------------------------- tables


def balance_table(meta: pd.DataFrame) -> pd.DataFrame:
    """Videos per chunk and label, with the fake share (and a total row)."""
    table = meta.groupby(["chunk", "label"]).size().unstack(fill_value=0)
    for label in ("REAL", "FAKE"):
        if label not in table:
            table[label] = 0
    table.loc["all"] = table.sum()
    table["videos"] = table.sum(axis=1)
    table["fake_share"] = (table["FAKE"] / table["videos"].where(table["videos"] > 0)).round(3)
    return table[["videos", "REAL", "FAKE", "fake_share"]].rename_axis(columns=None).reset_index()


def missing_table(meta: pd.DataFrame) -> pd.DataFrame:
    """Null count per metadata column and label (a REAL's missing ``original`` is by design)."""
    columns = ["label", "split", "original"]
    rows = []
    for label, group in [("all", meta), *meta.groupby("label")]:
        nulls = {f"{c} missing": int(n) for c, n in group[columns].isna().sum().items()}
        rows.append({"videos": label, "rows": len(group), **nulls})
    return pd.DataFrame(rows)


def files_table(inv: Inventory) -> pd.DataFrame:
    """Every disagreement between a folder and its metadata.json."""
    missing = inv.meta.loc[~inv.meta["exists"].astype(bool), ["chunk", "filename"]]
    rows = [(c, f, "listed, file missing") for c, f in missing.itertuples(index=False)]
    rows += [(c, f, "on disk, not listed") for c, f in inv.unlisted.itertuples(index=False)]
    rows += [(c, "metadata.json", f"unreadable: {r}") for c, r in inv.unreadable.items()]
    return pd.DataFrame(rows, columns=["chunk", "file", "difference"])


def top_originals(meta: pd.DataFrame, n: int) -> pd.DataFrame:
    """Originals with the most fakes, and how many chunks those fakes spread over."""
    fakes = meta[meta["label"] == "FAKE"].dropna(subset=["original"])
    if fakes.empty:
        return pd.DataFrame(columns=["original", "fakes", "chunks"])
    table = fakes.groupby("original").agg(fakes=("filename", "size"), chunks=("chunk", "nunique"))
    return table.sort_values(["fakes", "chunks"], ascending=False).head(n).reset_index()


# --------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    """Matplotlib's pyplot on the file-only Agg backend (no display on servers and in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Figure) -> str:
    """A figure as an inline <img> (base64 PNG), closing it."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _grid(images: list[list[np.ndarray | None]], row_titles: list[str], col_titles: list[str]) -> Figure:
    """A grid of RGB images with titles; None leaves a cell blank."""
    plt = _pyplot()

    n_rows, n_cols = len(images), max(len(r) for r in images)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols, 2.0 * n_rows), squeeze=False)
    for i, row in enumerate(images):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row) and row[j] is not None:
                ax.imshow(row[j])
            if j < len(col_titles) and i == 0:
                ax.set_title(col_titles[j], fontsize=8)
        axes[i][0].text(-0.05, 0.5, row_titles[i], transform=axes[i][0].transAxes, fontsize=7,
                        ha="right", va="center", rotation=90)  # fmt: skip
    fig.tight_layout()
    return fig


def _bars(table: pd.DataFrame, x: str, ys: list[str], title: str) -> Figure:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(table) + 2), 2.8))
    table.plot.bar(x=x, y=ys, ax=ax, stacked=True, rot=30)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("")
    fig.tight_layout()
    return fig


def _frames(path: Path, n: int) -> tuple[tuple[int, ...], tuple[np.ndarray, ...]]:
    """``n`` evenly spaced RGB frames, or none when the video cannot be read."""
    from dfdc.faces.video import VideoError, sample_frames

    try:
        frames = sample_frames(path, n)
    except VideoError:
        return (), ()
    return frames.indices, frames.images


def _sample(meta: pd.DataFrame, label: str, n: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = meta[(meta["label"] == label) & meta["exists"].astype(bool)]
    return rows.iloc[sorted(rng.choice(len(rows), min(n, len(rows)), replace=False))] if len(rows) else rows


def frame_grid(meta: pd.DataFrame, cfg: ReportConfig, rng: np.random.Generator) -> Figure | None:
    """Rows of sampled REAL then FAKE videos, ``cfg.frames`` frames each."""
    rows, titles = [], []
    for label in ("REAL", "FAKE"):
        for r in _sample(meta, label, cfg.videos, rng).itertuples():
            _, images = _frames(Path(r.path), cfg.frames)
            if images:
                rows.append(list(images))
                titles.append(f"{label}\n{r.filename}")
    if not rows:
        return None
    return _grid(rows, titles, [f"frame {i + 1}" for i in range(cfg.frames)])


def difference_pairs(meta: pd.DataFrame, cfg: ReportConfig, rng: np.random.Generator) -> list[Figure]:
    """For a few fakes whose original is on disk: original | fake | |fake - original| per frame."""
    on_disk = meta[meta["exists"].astype(bool)]
    paths = dict(zip(on_disk["filename"], on_disk["path"], strict=True))
    fakes = on_disk[(on_disk["label"] == "FAKE") & on_disk["original"].isin(list(paths))]
    figures = []
    for r in _sample(fakes, "FAKE", cfg.pairs, rng).itertuples():
        idx_o, original = _frames(Path(paths[r.original]), cfg.frames)
        idx_f, fake = _frames(Path(r.path), cfg.frames)
        n = min(len(original), len(fake))
        if n == 0 or idx_o[:n] != idx_f[:n] or original[0].shape != fake[0].shape:
            continue  # not frame-aligned: a difference image would be meaningless
        diffs = [np.abs(fake[i].astype(np.int16) - original[i].astype(np.int16)).astype(np.uint8)
                 for i in range(n)]  # fmt: skip
        # stretched so the 99.5th percentile is white: the edit is local and otherwise faint
        amplified = [np.clip(d * (255.0 / max(1.0, float(np.percentile(d, 99.5)))), 0, 255).astype(np.uint8)
                     for d in diffs]  # fmt: skip
        grid = [[original[i], fake[i], amplified[i]] for i in range(n)]
        titles = [f"frame {idx_f[i]}" for i in range(n)]
        cols = [f"original {r.original}", f"fake {r.filename}", "|fake - original| (stretched)"]
        figures.append(_grid(grid, titles, cols))
    return figures


def crop_pairs(faces_dir: Path | None, meta: pd.DataFrame, cfg: ReportConfig) -> Figure | None:
    """Face crops of fakes beside the crop of their original at the same frame and person."""
    from dfdc.faces.store import StoredCrops, read_index

    if faces_dir is None:
        return None
    chunks = [c for c in meta["chunk"].unique() if (Path(faces_dir) / str(c) / "index.parquet").is_file()]
    if not chunks:
        return None
    index = read_index(Path(faces_dir), chunks).reset_index(drop=True)
    key = ["video", "frame", "face"]
    real = index[index["label"] == "REAL"].drop_duplicates(key)
    fake = index[index["label"] == "FAKE"].drop_duplicates(key)
    pairs = fake.merge(real, left_on=["original", "frame", "face"], right_on=["video", "frame", "face"],
                       suffixes=("_fake", "_real"))  # fmt: skip
    pairs = pairs.drop_duplicates("video_fake").head(cfg.pairs * 2)
    if pairs.empty:
        return None
    where = ["chunk", "crop_file", "crop_offset", "crop_bytes", "fingerprint"]
    try:
        sides = ("real", "fake")
        rows = {side: pairs[[f"{c}_{side}" for c in where]].set_axis(where, axis=1) for side in sides}
        crops = {side: StoredCrops(Path(faces_dir), r)[:] for side, r in rows.items()}
    except (OSError, KeyError, ValueError):  # crops of another extraction format: nothing to show
        return None
    grid = [[crops["real"][i], crops["fake"][i]] for i in range(len(pairs))]
    titles = [f"{v}\nframe {f}" for v, f in zip(pairs["video_fake"], pairs["frame"], strict=True)]
    return _grid(grid, titles, ["original (REAL)", "fake"])


def _haar(gray: np.ndarray, cascade: Any, min_side: int) -> list[tuple[int, int, int, int]]:
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    return [tuple(int(v) for v in box) for box in (found if len(found) else [])]


def detector_comparison(
    meta: pd.DataFrame, cfg: ReportConfig, extract_cfg: ExtractConfig, rng: np.random.Generator
) -> tuple[Figure | None, pd.DataFrame]:
    """Haar frontal / profile / eyes and MTCNN on the same sampled frames; hit rate per detector.

    A frame is a hit for a detector when it finds at least one box. Haar cascades run on
    the grey frame as the seed notebooks did (scale 1.1, 5 neighbours).
    """
    import cv2

    from dfdc.faces.detect import FaceDetector

    cascades = {name: cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / file))
                for name, file in HAAR_CASCADES.items()}  # fmt: skip
    import torch

    detector = FaceDetector(extract_cfg)
    threads = torch.get_num_threads()
    # One thread: on a busy CPU, OpenMP threads spin against other processes and MTCNN
    # on a few small frames runs ~10x slower. Restored below.
    torch.set_num_threads(1)
    try:
        return _compare(meta, cfg, detector, cascades, rng)
    finally:
        torch.set_num_threads(threads)


def _compare(
    meta: pd.DataFrame, cfg: ReportConfig, detector: Any, cascades: dict[str, Any], rng: np.random.Generator
) -> tuple[Figure | None, pd.DataFrame]:
    import cv2

    sample = pd.concat([_sample(meta, label, cfg.videos, rng) for label in ("REAL", "FAKE")])
    hits: dict[str, list[bool]] = {name: [] for name in ["mtcnn", *cascades]}
    shown: list[list[np.ndarray | None]] = []
    titles: list[str] = []
    for r in sample.itertuples():
        indices, images = _frames(Path(r.path), cfg.frames)
        for index, image in zip(indices, images, strict=True):
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            min_side = max(12, min(gray.shape) // 12)
            boxes = {"mtcnn": [tuple(round(v) for v in f.box) for f in detector.detect(image)]}
            for name, cascade in cascades.items():
                found = _haar(gray, cascade, min_side // 2 if name == "haar_eyes" else min_side)
                boxes[name] = [(x, y, x + w, y + h) for x, y, w, h in found]
            for name, found in boxes.items():
                hits[name].append(bool(found))
            if len(shown) < 2 * cfg.videos and index == indices[len(indices) // 2]:
                panels = []
                for name in ("mtcnn", "haar_frontal", "haar_profile", "haar_eyes"):
                    canvas = image.copy()
                    for x1, y1, x2, y2 in boxes[name]:
                        cv2.rectangle(canvas, (x1, y1), (x2, y2), _COLOURS[name], 2)
                    panels.append(canvas)
                shown.append(panels)
                titles.append(f"{r.label}\n{r.filename}")
    rates = pd.DataFrame(
        [{"detector": name, "frames": len(v), "hits": int(sum(v)), "hit_rate": round(float(np.mean(v)), 3)
          if v else float("nan")} for name, v in hits.items()]
    )  # fmt: skip
    figure = _grid(shown, titles, ["MTCNN", "Haar frontal", "Haar profile", "Haar eyes"]) if shown else None
    return figure, rates


# --------------------------------------------------------------------------- the page

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:2px 8px}
th{background:#f2f2f2}h2{border-bottom:1px solid #ddd;margin-top:2em}img{max-width:100%}
.note{color:#666;font-size:.9em}nav a{margin-right:1em}
"""


def labels_table(labels: pd.DataFrame | None, audio_labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fakes per chunk by what their faces show (changed, untouched: voice-only?, no original) and voices."""
    if labels is None or not len(labels):
        return pd.DataFrame()
    from dfdc.data.labels import video_face_labels

    faces = video_face_labels(labels)
    table = faces.groupby(["chunk", "face"]).size().unstack(fill_value=0).reset_index()
    crops = labels[labels["label_source"] != "real"].groupby("chunk")["crop_label"]
    share = crops.apply(lambda s: round(float((s == "FAKE").mean()), 3)).rename("fake crops share")
    table = table.merge(share.reset_index(), on="chunk", how="left")
    if audio_labels is None or not len(audio_labels):
        return table
    fakes = audio_labels[audio_labels["audio_status"] != "real"]
    voice = fakes["audio_changed"].astype("boolean").map({True: "voice changed", False: "voice unchanged"})
    voices = fakes.assign(voice=voice.fillna("voice not compared").astype(str))
    counts = voices.groupby(["chunk", "voice"]).size().unstack(fill_value=0).reset_index()
    return table.merge(counts, on="chunk", how="left")


def _table(frame: pd.DataFrame, empty: str) -> str:
    if frame.empty:
        return f'<p class="note">{html.escape(empty)}</p>'
    return frame.to_html(index=False, border=0, na_rep="—", escape=True)


def _section(anchor: str, body: str) -> str:
    title = dict(SECTIONS)[anchor]
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def build_report(
    chunk_dirs: Sequence[Path],
    faces_dir: Path | None,
    cfg: ReportConfig,
    extract_cfg: ExtractConfig,
    labels: pd.DataFrame | None = None,
    audio_labels: pd.DataFrame | None = None,
) -> str:
    """The whole report as one HTML string (figures embedded); both labels tables from the labels stage."""
    inv = inventory(chunk_dirs)
    meta = inv.meta
    rng = np.random.default_rng(cfg.seed)

    def figure_or_note(make: Callable[[], Figure | None], note: str) -> str:
        fig = make()
        return _png(fig) if fig is not None else f'<p class="note">{html.escape(note)}</p>'

    balance = balance_table(meta)
    body = [_table(balance, "no readable metadata")]
    if len(balance) > 1:
        body.append(_png(_bars(balance[balance["chunk"] != "all"], "chunk", ["REAL", "FAKE"], "videos")))
    parts = {"balance": "\n".join(body)}
    parts["missing"] = _table(missing_table(meta), "no rows") + (
        '<p class="note">A REAL has no original by design; a missing original of a FAKE is a '
        "contract violation (see reports/validation).</p>"
    )
    parts["files"] = _table(files_table(inv), "Every listed file exists and every .mp4 is listed.")
    top = top_originals(meta, cfg.top_originals)
    parts["originals"] = _table(top, "no fakes") + (
        _png(_bars(top, "original", ["fakes"], "fakes per original")) if len(top) else ""
    )
    parts["frames"] = figure_or_note(lambda: frame_grid(meta, cfg, rng), "no readable videos")
    diffs = difference_pairs(meta, cfg, rng)
    parts["difference"] = "\n".join(_png(f) for f in diffs) or (
        '<p class="note">no fake with a readable, frame-aligned original</p>'
    )
    parts["crops"] = figure_or_note(
        lambda: crop_pairs(faces_dir, meta, cfg), "no face index with crops of a fake and its original"
    )
    no_labels = "no labels yet (the labels stage runs after extraction)"
    parts["labels"] = _table(labels_table(labels, audio_labels), no_labels) + (
        '<p class="note">Each crop of a fake is compared with its original\'s crop at the same frame. '
        "Faces that do not differ are labelled REAL for the face model; a fake whose faces all match "
        "is <em>untouched</em> (a candidate voice-only fake). Each fake's sound track is compared with "
        "its original's: <em>voice changed</em> when they differ by more than labels.audio_threshold; "
        "<em>not compared</em> when a track is missing or unreadable. The video label stays as DFDC "
        "gives it.</p>"
    )
    figure, rates = detector_comparison(meta, cfg, extract_cfg, rng)
    parts["detectors"] = (
        _table(rates, "no frames") + (_png(figure) if figure is not None else "")
        + '<p class="note">Hit rate: share of sampled frames where the detector finds at least one box '
        "(every sampled video shows a face). Boxes: MTCNN green, frontal red, profile blue, eyes yellow.</p>"
    )  # fmt: skip

    nav = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in SECTIONS)
    chunks = ", ".join(html.escape(Path(c).name) for c in chunk_dirs)
    sections = "\n".join(_section(anchor, parts[anchor]) for anchor, _ in SECTIONS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>dfdc exploratory report</title><style>{_CSS}</style></head><body>\n"
        f'<h1>dfdc exploratory report</h1>\n<p class="note">{len(meta)} listed videos in '
        f"{len(chunk_dirs)} chunk(s): {chunks}. Sampled with seed {cfg.seed}.</p>\n<nav>{nav}</nav>\n"
        f"{sections}\n</body></html>\n"
    )


def write_report(text: str, out: Path) -> Path:
    """Write the HTML page atomically enough for a report (parent folders created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
