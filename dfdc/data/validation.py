"""The Great Expectations data contract over ``metadata.json`` and the videos on disk.

All chunks are flattened into ONE pandas frame (a row per listed video, plus a row per
``.mp4`` present but unlisted) with derived columns (``exists``, ``size``, ``opens``,
``original_label``...), and every rule is an expectation of one suite run over that frame.
Running everything at once is the point: a broken dataset gets the full list of what is
wrong, each failure mapped back to (chunk, file, rule) through GX's
``unexpected_index_column_names``, instead of one error per re-run.

Great Expectations is imported lazily: it is slow to import and only this stage needs it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from dfdc.data.metadata import METADATA_FILE, MetadataError, read_metadata

if TYPE_CHECKING:
    from dfdc.config import ValidateConfig

LABELS = ("FAKE", "REAL")
DATASET = "*"  # `chunk` of dataset-level violations (they belong to no single chunk)

# Anything that would let a "file name" escape its chunk folder or garble a report.
# Used both as the GX rule and to decide which names are safe to look up on disk.
UNSAFE_NAME = r"[/\\]|\.\.|^[A-Za-z]:|[\x00-\x1f\x7f]"
_UNSAFE_NAME_RE = re.compile(UNSAFE_NAME)
_INDEX = ["chunk", "filename"]
DOCS_SITE = "dfdc"  # the Data Docs site GX builds under the report folder


@dataclass(frozen=True)
class Violation:
    """One broken rule, pinned to the chunk and file to fix."""

    chunk: str
    file: str  # the offending video name, or "metadata.json"
    rule: str  # short rule id, e.g. "label_in_set", "original_exists", "file_exists"
    detail: str  # human-readable


@dataclass(frozen=True)
class ValidationReport:
    """Everything the suite found; ``ok`` gates the pipeline, the rest is for humans/DVC."""

    chunks: tuple[str, ...]
    n_videos: int
    fake_share: float
    violations: tuple[Violation, ...]
    title: str = "Metadata validation"

    @property
    def ok(self) -> bool:
        """True when no rule is broken anywhere."""
        return not self.violations

    def rule_counts(self) -> dict[str, int]:
        """Violations per rule id, to see at a glance which kind of damage dominates."""
        counts: dict[str, int] = {}
        for v in self.violations:
            counts[v.rule] = counts.get(v.rule, 0) + 1
        return dict(sorted(counts.items()))

    def summary_line(self) -> str:
        """One sentence: verdict, size and class balance."""
        verdict = "OK" if self.ok else f"FAILED with {len(self.violations)} violation(s)"
        share = "" if math.isnan(self.fake_share) else f", fake share {self.fake_share:.3f}"
        return f"{verdict}: {len(self.chunks)} chunk(s), {self.n_videos} listed video(s){share}."

    def to_markdown(self) -> str:
        """Render a chunk | file | rule | detail table under a summary line."""
        lines = [f"# {self.title}", "", f"**{self.summary_line()}**", ""]
        if self.ok:
            lines.append("No violations.")
        else:
            counts = ", ".join(f"{rule}: {n}" for rule, n in self.rule_counts().items())
            lines += [f"By rule: {counts}.", ""]
            lines += ["| chunk | file | rule | detail |", "|---|---|---|---|"]
            lines += [
                f"| {_md(v.chunk)} | {_md(v.file)} | {_md(v.rule)} | {_md(v.detail)} |"
                for v in self.violations
            ]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; scalars on top so ``dvc metrics`` can track them."""
        return {
            "ok": self.ok,
            "n_chunks": len(self.chunks),
            "n_videos": self.n_videos,
            "fake_share": None if math.isnan(self.fake_share) else self.fake_share,
            "n_violations": len(self.violations),
            "violations_by_rule": self.rule_counts(),
            "chunks": list(self.chunks),
            "violations": [asdict(v) for v in self.violations],
        }


def _md(text: str) -> str:
    """Escape a markdown table cell: no pipe or line break may split the row."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text.replace("|", "\\|")


# --------------------------------------------------------------------------- the frame


def probe_video(path: Path) -> str | None:
    """Return None if the file opens as a video and yields one frame, else why not.

    One decoded frame is the cheapest check that catches truncated/garbage files, which
    would otherwise only surface hours later inside face extraction.
    """
    import av  # lazy: heavy, and only needed when probing

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream"
            if next(container.decode(video=0), None) is None:
                return "no frame could be decoded"
    except Exception as err:
        return f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"
    return None


def _is_plain(name: str) -> bool:
    """Whether ``name`` is safe to join onto the chunk folder (same test as name_plain)."""
    return bool(name) and _UNSAFE_NAME_RE.search(name) is None


def _chunk_rows(chunk_dir: Path, meta: pd.DataFrame) -> list[dict[str, Any]]:
    """List the entries, then the mp4 files present in the folder but absent from metadata."""
    rows = [
        {
            "chunk": chunk_dir.name,
            "dir": chunk_dir,
            "filename": r.filename,
            "label": r.label,
            "split": r.split,
            "original": r.original,
            "listed": True,
        }
        for r in meta.itertuples(index=False)
    ]
    listed = set(meta["filename"])
    on_disk = sorted(
        p.name for p in chunk_dir.iterdir() if p.suffix.lower() == ".mp4" and p.is_file()
    )
    rows += [
        {
            "chunk": chunk_dir.name,
            "dir": chunk_dir,
            "filename": name,
            "label": None,
            "split": None,
            "original": None,
            "listed": False,
        }
        for name in on_disk
        if name not in listed
    ]
    return rows


def _probe_files(frame: pd.DataFrame, workers: int) -> pd.DataFrame:
    """Add plain/exists/size/opens/open_error; only listed, plain names are touched on disk."""
    plain = [_is_plain(name) for name in frame["filename"]]
    exists = [False] * len(frame)
    size = [-1] * len(frame)
    todo = [
        (i, folder / name)
        for i, (folder, name, listed, ok) in enumerate(
            zip(frame["dir"], frame["filename"], frame["listed"], plain, strict=True)
        )
        if listed and ok
    ]
    for i, path in todo:
        exists[i] = path.is_file()
        try:
            size[i] = path.stat().st_size if exists[i] else -1
        except OSError:  # vanished or unreadable between the two calls: counts as missing
            exists[i] = False
    to_open = [(i, path) for i, path in todo if size[i] > 0]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        errors = list(pool.map(probe_video, [path for _, path in to_open]))
    opens = [False] * len(frame)
    open_error: list[str | None] = [None] * len(frame)
    for (i, _), err in zip(to_open, errors, strict=True):
        opens[i], open_error[i] = err is None, err
    return frame.assign(
        plain=plain,
        exists=exists,
        size=pd.array(size, dtype="int64"),
        opens=opens,
        open_error=pd.Series(open_error, index=frame.index, dtype=object),
    )


def _link_originals(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``original_label`` (label of the named original, None if unknown) and self-links.

    The original may live in any chunk; one in the same chunk wins, then any REAL, so that a
    duplicated name (reported separately) does not also produce a spurious original error.
    """
    listed = frame[frame["listed"]]
    keys = zip(listed["chunk"], listed["filename"], strict=True)
    by_key = dict(zip(keys, listed["label"], strict=True))
    by_name: dict[str, list[Any]] = {}
    for name, label in zip(listed["filename"], listed["label"], strict=True):
        by_name.setdefault(name, []).append(label)

    def lookup(chunk: str, original: Any) -> Any:
        if not isinstance(original, str):
            return None
        if (chunk, original) in by_key:
            return by_key[(chunk, original)]
        labels = by_name.get(original, [])
        return "REAL" if "REAL" in labels else (labels[0] if labels else None)

    pairs = list(zip(frame["chunk"], frame["filename"], frame["original"], strict=True))
    return frame.assign(
        original_label=pd.Series(
            [lookup(c, o) for c, _, o in pairs], index=frame.index, dtype=object
        ),
        original_is_self=[o == f for _, f, o in pairs],
        is_fake=(frame["label"] == "FAKE").astype("int64"),
    )


# --------------------------------------------------------------------------- the suite

Detail = Callable[[dict[str, Any]], str]


def _flag(column: str, value: bool) -> Any:
    """Build a row condition on a boolean column (GX rejects booleans inside ``is_in``)."""
    from great_expectations.expectations.row_conditions import Column

    return Column(column) == value


def _rules(cfg: ValidateConfig, name_pattern: str) -> list[tuple[str, Any, Detail]]:
    """(rule id, expectation, detail-from-row) for every row-level rule of the contract."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    listed = _flag("listed", True)
    fake = listed & (Column("label") == "FAKE")
    real = listed & (Column("label") == "REAL")
    on_disk = listed & _flag("plain", True)  # unsafe names are never looked up
    splits = list(cfg.splits)
    return [
        (
            "label_in_set",
            gxe.ExpectColumnValuesToBeInSet(
                column="label", value_set=list(LABELS), row_condition=listed
            ),
            lambda r: f"label {r['label']!r} is not one of {list(LABELS)}",
        ),
        (
            "split_in_set",
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=splits, row_condition=listed),
            lambda r: f"split {r['split']!r} is not one of {splits}",
        ),
        (
            "name_pattern",
            gxe.ExpectColumnValuesToMatchRegex(
                column="filename", regex=name_pattern, row_condition=listed
            ),
            lambda r: f"name does not match {name_pattern}",
        ),
        (
            "name_plain",
            gxe.ExpectColumnValuesToNotMatchRegex(
                column="filename", regex=UNSAFE_NAME, row_condition=listed
            ),
            lambda r: (
                "not a plain file name (path separator, '..', drive or control "
                "character), so it is not looked up on disk"
            ),
        ),
        (
            "name_unique",
            gxe.ExpectColumnValuesToBeUnique(column="filename", row_condition=listed),
            lambda r: "name is listed in more than one chunk",
        ),
        (
            "real_has_no_original",
            gxe.ExpectColumnValuesToBeNull(column="original", row_condition=real),
            lambda r: f"REAL names an original ({r['original']!r}); it must be null",
        ),
        (
            "fake_has_original",
            gxe.ExpectColumnValuesToNotBeNull(column="original", row_condition=fake),
            lambda r: "FAKE has no original",
        ),
        (
            "original_exists",
            gxe.ExpectColumnValuesToNotBeNull(
                column="original_label", row_condition=fake & Column("original").is_not_null()
            ),
            lambda r: f"original {r['original']!r} is not listed in any readable chunk",
        ),
        (
            "original_is_real",
            gxe.ExpectColumnValuesToBeInSet(
                column="original_label",
                value_set=["REAL"],
                row_condition=fake & _flag("original_is_self", False),
            ),
            lambda r: f"original {r['original']!r} is labelled {r['original_label']!r}, not REAL",
        ),
        (
            "original_not_self",
            gxe.ExpectColumnValuesToBeInSet(
                column="original_is_self", value_set=[False], row_condition=fake
            ),
            lambda r: "FAKE names itself as its original",
        ),
        (
            "file_exists",
            gxe.ExpectColumnValuesToBeInSet(
                column="exists", value_set=[True], row_condition=on_disk
            ),
            lambda r: "listed file is missing from the chunk folder",
        ),
        (
            "file_nonempty",
            gxe.ExpectColumnValuesToBeBetween(
                column="size", min_value=1, row_condition=on_disk & _flag("exists", True)
            ),
            lambda r: "file is empty (0 bytes)",
        ),
        (
            "file_opens",
            gxe.ExpectColumnValuesToBeInSet(
                column="opens", value_set=[True], row_condition=on_disk & (Column("size") > 0)
            ),
            lambda r: f"does not open as a video ({r['open_error']})",
        ),
        (
            "file_listed",
            gxe.ExpectColumnValuesToBeInSet(column="listed", value_set=[True]),
            lambda r: f".mp4 in the chunk folder but not listed in {METADATA_FILE}",
        ),
    ]


def _raised(result: Any) -> str | None:
    """Return why GX failed to *evaluate* an expectation (a bug, not bad data), if it did.

    GX 1.x reports it either flat or keyed by metric id, so both shapes are checked.
    """
    info = result.exception_info or {}
    entries = [info] if "raised_exception" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return str(entry.get("exception_message"))
    return None


def _import_gx() -> Any:
    """Import Great Expectations quietly and offline (slow: only validation pays for it)."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"  # offline: never phone home
    with warnings.catch_warnings():
        # GX 1.24 imports the deprecated `sre_constants`; not ours to fix, not worth a warning.
        warnings.simplefilter("ignore", DeprecationWarning)
        import great_expectations as gx
    return gx


def _gx_validate(
    frame: pd.DataFrame,
    suite_name: str,
    expectations: list[Any],
    index_columns: list[str],
    docs_dir: Path | None,
) -> list[Any]:
    """Run ``expectations`` over ``frame`` in an ephemeral GX context; return GX's results.

    With ``docs_dir`` the run goes through a Checkpoint whose UpdateDataDocsAction renders
    GX's own Data Docs site (static HTML, built offline) into that folder, replacing any
    previous site so it shows this run only.
    """
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_def = (
        context.data_sources.add_pandas("dfdc")
        .add_dataframe_asset(suite_name)
        .add_batch_definition_whole_dataframe("all_chunks")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": index_columns}
    batch_parameters = {"dataframe": frame}
    if docs_dir is None:
        batch = batch_def.get_batch(batch_parameters=batch_parameters)
        return list(batch.validate(suite, result_format=result_format).results)

    docs_dir = Path(docs_dir).resolve()
    shutil.rmtree(docs_dir, ignore_errors=True)
    site = {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    context.add_data_docs_site(DOCS_SITE, site)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite_name, data=batch_def, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=suite_name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
            result_format=result_format,
        )
    )
    outcome = checkpoint.run(batch_parameters=batch_parameters)
    return [r for run in outcome.run_results.values() for r in run.results]


def _run_suite(
    frame: pd.DataFrame,
    cfg: ValidateConfig,
    name_pattern: str,
    check_share: bool,
    docs_dir: Path | None = None,
) -> list[Violation]:
    """Evaluate the whole contract in one GX run and map every failure back to a Violation."""
    gxe = _import_gx().expectations

    rules = _rules(cfg, name_pattern)
    details = {rule: detail for rule, _, detail in rules}
    expectations = []
    for rule, expectation, _ in rules:
        expectation.meta = {"rule": rule}
        expectations.append(expectation)
    if check_share:
        share = gxe.ExpectColumnMeanToBeBetween(
            column="is_fake",
            min_value=cfg.fake_share_min,
            max_value=cfg.fake_share_max,
            row_condition=_flag("listed", True),
            meta={"rule": "fake_share"},
        )
        expectations.append(share)

    # Paths are for probing only; GX fingerprints the frame, so hand it plain values.
    results = _gx_validate(
        frame.drop(columns=["dir"]), "dfdc_metadata", expectations, _INDEX, docs_dir
    )
    rows = {(r["chunk"], r["filename"]): r for r in frame.to_dict("records")}
    violations: list[Violation] = []
    for result in results:
        rule = result.expectation_config.meta["rule"]
        error = _raised(result)
        if error is not None:
            raise RuntimeError(f"GX could not evaluate rule {rule}: {error}")
        if result.success:
            continue
        if rule == "fake_share":
            violations.append(_share_violation(frame, cfg))
            continue
        for hit in result.result.get("unexpected_index_list") or []:
            row = rows[(hit["chunk"], hit["filename"])]
            violations.append(Violation(row["chunk"], row["filename"], rule, details[rule](row)))
    return violations


def _share_violation(frame: pd.DataFrame, cfg: ValidateConfig) -> Violation:
    listed = frame[frame["listed"]]
    n_fake, n = int(listed["is_fake"].sum()), len(listed)
    detail = (
        f"fake share {n_fake / n:.3f} ({n_fake}/{n}) outside "
        f"[{cfg.fake_share_min}, {cfg.fake_share_max}]"
    )
    return Violation(DATASET, METADATA_FILE, "fake_share", detail)


# --------------------------------------------------------------------------- public API


def validate_chunks(
    chunk_dirs: Sequence[Path],
    cfg: ValidateConfig,
    name_pattern: str,
    workers: int | None = None,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the metadata suite over every chunk at once and return EVERY violation.

    An unreadable metadata.json (or a missing chunk folder) is itself a violation and the
    other chunks are still checked. ``workers`` threads decode first frames (default: up to
    8), since opening every video dominates the run time on real chunks. With ``docs_dir``,
    GX's Data Docs (HTML) of the run are built there.
    """
    chunk_dirs = [Path(d) for d in chunk_dirs]
    chunks = tuple(d.name for d in chunk_dirs)
    violations: list[Violation] = []
    rows: list[dict[str, Any]] = []
    for chunk_dir in chunk_dirs:
        try:
            meta = read_metadata(chunk_dir)
        except MetadataError as err:
            violations.append(
                Violation(chunk_dir.name, METADATA_FILE, "metadata_readable", err.reason)
            )
            continue
        try:
            rows += _chunk_rows(chunk_dir, meta)
        except OSError as err:
            detail = f"chunk folder cannot be listed ({err.strerror or err})"
            violations.append(Violation(chunk_dir.name, METADATA_FILE, "chunk_listable", detail))

    columns = ["chunk", "dir", "filename", "label", "split", "original", "listed"]
    frame = pd.DataFrame(rows, columns=columns).astype(
        {c: object for c in columns[:-1]} | {"listed": bool}
    )
    n_videos = int(frame["listed"].sum())
    n_fake = int((frame.loc[frame["listed"], "label"] == "FAKE").sum())
    fake_share = n_fake / n_videos if n_videos else 0.0

    if n_videos == 0:
        detail = "no videos listed in any readable chunk"
        violations.append(Violation(DATASET, METADATA_FILE, "has_videos", detail))
    if len(frame):
        workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        frame = _link_originals(_probe_files(frame, workers))
        # A mean over no rows is undefined; has_videos already reports that case.
        violations += _run_suite(frame, cfg, name_pattern, n_videos > 0, docs_dir)

    order = {name: i for i, name in reversed(list(enumerate(chunks)))}
    violations.sort(key=lambda v: (order.get(v.chunk, len(order)), v.file, v.rule))
    return ValidationReport(chunks, n_videos, fake_share, tuple(violations))


def write_report(report: ValidationReport, out_dir: Path) -> Path:
    """Write out_dir/summary.json and out_dir/report.md; return the summary path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / "summary.json"
    summary.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    return summary


# --------------------------------------------------------------------------- the face index

FACE_INDEX = ["chunk", "file", "key"]


def _frame_size(path: Path) -> tuple[float, float]:
    """(width, height) from the video header; NaN when the header cannot be read."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return float("nan"), float("nan")
        return float(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), float(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()


def _face_rows(
    chunk_dir: Path, out_dir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Violation]]:
    """Video rows and crop rows of one chunk's face index (plus unreadable-table violations)."""
    from dfdc.faces.store import INDEX_FILE, VIDEOS_FILE

    chunk = chunk_dir.name
    try:
        videos = pd.read_parquet(out_dir / VIDEOS_FILE)
        index = pd.read_parquet(out_dir / INDEX_FILE)
    except Exception as err:
        detail = f"face index cannot be read ({type(err).__name__}: {err})"
        return [], [], [Violation(chunk, INDEX_FILE, "faces_readable", detail)]
    try:
        listed = list(read_metadata(chunk_dir)["filename"])
    except MetadataError:
        listed = list(videos["video"])  # the metadata suite reports that file
    recorded = dict(zip(videos["video"], videos.to_dict("records"), strict=True))
    video_rows = []
    for name in dict.fromkeys([*listed, *recorded]):
        rec = recorded.get(name, {})
        status = rec.get("status")
        n_crops = int(rec.get("n_crops", 0) or 0)
        video_rows.append(
            {
                "chunk": chunk, "file": name, "key": name, "kind": "video",
                "recorded": name in recorded, "status": status, "n_crops": n_crops,
                "accounted": (status == "ok" and n_crops > 0)
                or (isinstance(status, str) and status not in ("", "ok")),
            }
        )  # fmt: skip
    sizes: dict[str, tuple[float, float]] = {}
    has_size = {"width", "height"} <= set(index.columns)
    crop_rows = []
    for r in index.to_dict("records"):
        if has_size:
            width, height = float(r["width"]), float(r["height"])
        else:
            if r["video"] not in sizes:
                sizes[r["video"]] = _frame_size(chunk_dir / str(r["video"]))
            width, height = sizes[r["video"]]
        crop_rows.append(
            {
                "chunk": chunk, "file": r["video"], "key": f"{r['video']}@{r['frame']}#{r['face']}",
                "kind": "crop", "prob": float(r["prob"]),
                "box": (float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"])),
                "width": width, "height": height,
            }
        )  # fmt: skip
    return video_rows, crop_rows, []


def _box_in_frame(box: tuple[float, ...], width: float, height: float, overhang: float) -> bool:
    """A proper box (x1 < x2, y1 < y2) inside the frame, give or take ``overhang`` of its sides.

    MTCNN returns boxes that overhang the frame for faces cut by its edge; the crop policy
    clips them, so a small overhang is fine while a box far outside is a bug upstream.
    """
    x1, y1, x2, y2 = box
    dx, dy = overhang * width, overhang * height
    return bool(
        x1 < x2 and y1 < y2 and x1 >= -dx and y1 >= -dy and x2 <= width + dx and y2 <= height + dy
    )


def validate_faces(
    chunk_dirs: Sequence[Path],
    faces_dir: Path,
    cfg: ValidateConfig,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """The face-index suite after extraction, every violation at once.

    Every video of a chunk has crops or a recorded reason (``status``); every detector
    probability lies in [0, 1]; every box lies inside its frame (``width``/``height`` from
    the index when it has them, else from the video header).
    """
    video_rows: list[dict[str, Any]] = []
    crop_rows: list[dict[str, Any]] = []
    violations: list[Violation] = []
    for chunk_dir in map(Path, chunk_dirs):
        videos, crops, errors = _face_rows(chunk_dir, Path(faces_dir) / chunk_dir.name)
        video_rows += videos
        crop_rows += crops
        violations += errors
    columns = ["chunk", "file", "key", "kind", "recorded", "status", "n_crops", "accounted",
               "prob", "box", "width", "height"]  # fmt: skip
    frame = pd.DataFrame(video_rows + crop_rows, columns=columns)
    frame["in_frame"] = [
        _box_in_frame(b, w, h, cfg.face_box_overhang) if k == "crop" else True
        for k, b, w, h in zip(frame["kind"], frame["box"], frame["width"], frame["height"], strict=True)
    ]
    if len(frame):
        violations += _run_face_suite(frame, docs_dir)
    is_video = frame["kind"] == "video"
    return ValidationReport(
        chunks=tuple(Path(d).name for d in chunk_dirs),
        n_videos=int(is_video.sum()),
        fake_share=float("nan"),
        violations=tuple(violations),
        title="Face index validation",
    )


def _run_face_suite(frame: pd.DataFrame, docs_dir: Path | None) -> list[Violation]:
    gxe = _import_gx().expectations
    from great_expectations.expectations.row_conditions import Column

    video, crop = Column("kind") == "video", Column("kind") == "crop"
    rules: list[tuple[str, Any, Detail]] = [
        (
            "faces_video_recorded",
            gxe.ExpectColumnValuesToBeInSet(column="recorded", value_set=[True], row_condition=video),
            lambda r: "video of the metadata has no row in videos.parquet",
        ),
        (
            "faces_crops_or_reason",
            gxe.ExpectColumnValuesToBeInSet(
                column="accounted", value_set=[True], row_condition=video & _flag("recorded", True)
            ),
            lambda r: f"status {r['status']!r} with {r['n_crops']} crop(s): neither crops nor a reason",
        ),
        (
            "faces_prob_range",
            gxe.ExpectColumnValuesToBeBetween(
                column="prob", min_value=0, max_value=1, row_condition=crop
            ),
            lambda r: f"detector probability {r['prob']} outside [0, 1] ({r['key']})",
        ),
        (
            "faces_box_in_frame",
            gxe.ExpectColumnValuesToBeInSet(column="in_frame", value_set=[True], row_condition=crop),
            lambda r: (
                f"box {tuple(round(v, 1) for v in r['box'])} not inside the "
                f"{r['width']:.0f}x{r['height']:.0f} frame ({r['key']})"
            ),
        ),
    ]
    for rule, expectation, _ in rules:
        expectation.meta = {"rule": rule}
    details = {rule: detail for rule, _, detail in rules}
    plain = frame.drop(columns=["box"])
    results = _gx_validate(plain, "dfdc_faces", [e for _, e, _ in rules], FACE_INDEX, docs_dir)
    rows = {(r["chunk"], r["file"], r["key"]): r for r in frame.to_dict("records")}
    violations = []
    for result in results:
        rule = result.expectation_config.meta["rule"]
        error = _raised(result)
        if error is not None:
            raise RuntimeError(f"GX could not evaluate rule {rule}: {error}")
        for hit in result.result.get("unexpected_index_list") or []:
            row = rows[(hit["chunk"], hit["file"], hit["key"])]
            violations.append(Violation(row["chunk"], row["file"], rule, details[rule](row)))
    return violations
