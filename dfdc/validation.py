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
import os
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from dfdc.metadata import METADATA_FILE, MetadataError, read_metadata

if TYPE_CHECKING:
    from dfdc.config import ValidateConfig

LABELS = ("FAKE", "REAL")
DATASET = "*"  # `chunk` of dataset-level violations (they belong to no single chunk)

# Anything that would let a "file name" escape its chunk folder or garble a report.
# Used both as the GX rule and to decide which names are safe to look up on disk.
UNSAFE_NAME = r"[/\\]|\.\.|^[A-Za-z]:|[\x00-\x1f\x7f]"
_UNSAFE_NAME_RE = re.compile(UNSAFE_NAME)
_INDEX = ["chunk", "filename"]


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
        return (
            f"{verdict}: {len(self.chunks)} chunk(s), {self.n_videos} listed video(s), "
            f"fake share {self.fake_share:.3f}."
        )

    def to_markdown(self) -> str:
        """Render a chunk | file | rule | detail table under a summary line."""
        lines = ["# Metadata validation", "", f"**{self.summary_line()}**", ""]
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
            "fake_share": self.fake_share,
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
    except (av.FFmpegError, OSError, ValueError) as err:  # decoder says: not a video
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
        size[i] = path.stat().st_size if exists[i] else -1
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


def _run_suite(
    frame: pd.DataFrame, cfg: ValidateConfig, name_pattern: str, check_share: bool
) -> list[Violation]:
    """Evaluate the whole contract in one GX run and map every failure back to a Violation."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"  # offline: never phone home
    with warnings.catch_warnings():
        # GX 1.24 imports the deprecated `sre_constants`; not ours to fix, not worth a warning.
        warnings.simplefilter("ignore", DeprecationWarning)
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_def = (
        context.data_sources.add_pandas("dfdc")
        .add_dataframe_asset("metadata")
        .add_batch_definition_whole_dataframe("all_chunks")
    )
    rules = _rules(cfg, name_pattern)
    details = {rule: detail for rule, _, detail in rules}
    suite = gx.ExpectationSuite(name="dfdc_metadata")
    for rule, expectation, _ in rules:
        expectation.meta = {"rule": rule}
        suite.add_expectation(expectation)
    if check_share:
        share = gxe.ExpectColumnMeanToBeBetween(
            column="is_fake",
            min_value=cfg.fake_share_min,
            max_value=cfg.fake_share_max,
            row_condition=_flag("listed", True),
            meta={"rule": "fake_share"},
        )
        suite.add_expectation(share)

    # Paths are for probing only; GX fingerprints the frame, so hand it plain values.
    batch = batch_def.get_batch(batch_parameters={"dataframe": frame.drop(columns=["dir"])})
    results = batch.validate(
        suite,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": _INDEX},
    )
    rows = {(r["chunk"], r["filename"]): r for r in frame.to_dict("records")}
    violations: list[Violation] = []
    for result in results.results:
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
) -> ValidationReport:
    """Run the metadata suite over every chunk at once and return EVERY violation.

    An unreadable metadata.json (or a missing chunk folder) is itself a violation and the
    other chunks are still checked. ``workers`` threads decode first frames (default: up to
    8), since opening every video dominates the run time on real chunks.
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
        rows += _chunk_rows(chunk_dir, meta)

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
        violations += _run_suite(frame, cfg, name_pattern, check_share=n_videos > 0)

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
