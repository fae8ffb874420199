"""The Great Expectations metadata suite against small generated chunks of real mp4 files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dfdc.config import DataConfig, ValidateConfig
from dfdc.data.validation import ValidationReport, Violation, validate_chunks, write_report

PATTERN = DataConfig().name_pattern
CFG = ValidateConfig()
A, B, C = "dfdc_train_part_0", "dfdc_train_part_1", "dfdc_train_part_2"

Entry = dict[str, object]
Found = set[tuple[str, str, str]]


def real(split: str = "train") -> Entry:
    return {"label": "REAL", "split": split, "original": None}


def fake(original: str | None) -> Entry:
    return {"label": "FAKE", "split": "train", "original": original}


MakeChunk = Callable[..., Path]


@pytest.fixture
def make_chunk(tmp_path: Path, mp4_bytes: bytes) -> MakeChunk:
    """Write ``<tmp>/<name>/metadata.json`` plus a valid mp4 for every listed plain name."""

    def make(name: str, entries: dict[str, Entry], skip: tuple[str, ...] = ()) -> Path:
        chunk = tmp_path / name
        chunk.mkdir()
        (chunk / "metadata.json").write_text(json.dumps(entries))
        for video in entries:
            if video not in skip and "/" not in video:
                (chunk / video).write_bytes(mp4_bytes)
        return chunk

    return make


def clean_dataset(make_chunk: MakeChunk) -> list[Path]:
    """Two chunks, 4 FAKE of 6, one FAKE whose original lives in the other chunk."""
    first = make_chunk(
        A,
        {
            "aaaaaaaaaa.mp4": real(),
            "bbbbbbbbbb.mp4": fake("aaaaaaaaaa.mp4"),
            "cccccccccc.mp4": fake("aaaaaaaaaa.mp4"),
        },
    )
    second = make_chunk(
        B,
        {
            "dddddddddd.mp4": real(),
            "eeeeeeeeee.mp4": fake("dddddddddd.mp4"),
            "ffffffffff.mp4": fake("aaaaaaaaaa.mp4"),
        },
    )
    return [first, second]


def found(report: ValidationReport) -> Found:
    return {(v.chunk, v.file, v.rule) for v in report.violations}


def edit(chunk: Path, video: str, **fields: object) -> None:
    """Change one entry of an existing metadata.json."""
    path = chunk / "metadata.json"
    entries = json.loads(path.read_text())
    entries[video] = {**entries.get(video, {}), **fields}
    path.write_text(json.dumps(entries))


def test_clean_dataset_passes(make_chunk: MakeChunk) -> None:
    report = validate_chunks(clean_dataset(make_chunk), CFG, PATTERN)
    assert report.violations == ()
    assert report.ok
    assert report.chunks == (A, B)
    assert report.n_videos == 6
    assert report.fake_share == pytest.approx(4 / 6)


def test_cross_chunk_original_is_accepted(make_chunk: MakeChunk) -> None:
    chunks = clean_dataset(make_chunk)
    # ffffffffff (chunk B) names aaaaaaaaaa (chunk A); validating B alone must flag it.
    assert validate_chunks(chunks, CFG, PATTERN).ok
    alone = validate_chunks(chunks[1:], CFG, PATTERN)
    assert found(alone) == {(B, "ffffffffff.mp4", "original_exists")}


def _remove(chunk: Path, video: str) -> None:
    (chunk / video).unlink()


MUTATIONS: dict[str, tuple[Callable[[list[Path]], None], Found]] = {
    "bad label": (
        lambda c: edit(c[0], "bbbbbbbbbb.mp4", label="fake"),
        {(A, "bbbbbbbbbb.mp4", "label_in_set")},
    ),
    "bad split": (
        lambda c: edit(c[1], "dddddddddd.mp4", split="test"),
        {(B, "dddddddddd.mp4", "split_in_set")},
    ),
    "REAL with original": (
        lambda c: edit(c[0], "aaaaaaaaaa.mp4", original="dddddddddd.mp4"),
        {(A, "aaaaaaaaaa.mp4", "real_has_no_original")},
    ),
    "FAKE without original": (
        lambda c: edit(c[0], "bbbbbbbbbb.mp4", original=None),
        {(A, "bbbbbbbbbb.mp4", "fake_has_original")},
    ),
    "FAKE original missing": (
        lambda c: edit(c[0], "bbbbbbbbbb.mp4", original="zzzzzzzzzz.mp4"),
        {(A, "bbbbbbbbbb.mp4", "original_exists")},
    ),
    "FAKE original is a FAKE": (
        lambda c: edit(c[1], "eeeeeeeeee.mp4", original="cccccccccc.mp4"),
        {(B, "eeeeeeeeee.mp4", "original_is_real")},
    ),
    "FAKE original is itself": (
        lambda c: edit(c[0], "bbbbbbbbbb.mp4", original="bbbbbbbbbb.mp4"),
        {(A, "bbbbbbbbbb.mp4", "original_not_self")},
    ),
    "listed file missing": (
        lambda c: _remove(c[0], "cccccccccc.mp4"),
        {(A, "cccccccccc.mp4", "file_exists")},
    ),
    "empty file": (
        lambda c: (c[1] / "eeeeeeeeee.mp4").write_bytes(b""),
        {(B, "eeeeeeeeee.mp4", "file_nonempty")},
    ),
    "not a video": (
        lambda c: (c[0] / "aaaaaaaaaa.mp4").write_bytes(np.random.default_rng(1).bytes(4096)),
        {(A, "aaaaaaaaaa.mp4", "file_opens")},
    ),
    "unlisted mp4": (
        lambda c: (c[1] / "gggggggggg.mp4").write_bytes((c[1] / "dddddddddd.mp4").read_bytes()),
        {(B, "gggggggggg.mp4", "file_listed")},
    ),
    "path in name": (
        lambda c: edit(c[0], "../x.mp4", **real()),
        {(A, "../x.mp4", "name_pattern"), (A, "../x.mp4", "name_plain")},
    ),
    "name off pattern": (
        lambda c: (
            edit(c[0], "ABC.mp4", **real()),
            (c[0] / "ABC.mp4").write_bytes((c[0] / "aaaaaaaaaa.mp4").read_bytes()),
        ),
        {(A, "ABC.mp4", "name_pattern")},
    ),
    "duplicate name across chunks": (
        lambda c: (
            edit(c[1], "aaaaaaaaaa.mp4", **real()),
            (c[1] / "aaaaaaaaaa.mp4").write_bytes((c[0] / "aaaaaaaaaa.mp4").read_bytes()),
        ),
        {(A, "aaaaaaaaaa.mp4", "name_unique"), (B, "aaaaaaaaaa.mp4", "name_unique")},
    ),
    "malformed JSON": (
        lambda c: (c[0] / "metadata.json").write_text('{"aaaaaaaaaa.mp4": {"label": "REAL",'),
        # B's ffffffffff names an original that only the unreadable chunk A listed.
        {(A, "metadata.json", "metadata_readable"), (B, "ffffffffff.mp4", "original_exists")},
    ),
}


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_each_malformation_is_pinned_to_chunk_file_and_rule(
    make_chunk: MakeChunk, case: str
) -> None:
    chunks = clean_dataset(make_chunk)
    mutate, expected = MUTATIONS[case]
    mutate(chunks)
    report = validate_chunks(chunks, CFG, PATTERN)
    assert not report.ok
    assert found(report) == expected
    assert all(v.detail for v in report.violations)


def test_details_say_what_is_wrong(make_chunk: MakeChunk) -> None:
    chunks = clean_dataset(make_chunk)
    edit(chunks[0], "bbbbbbbbbb.mp4", label="fake")
    (chunks[1] / "eeeeeeeeee.mp4").write_bytes(b"not a video at all")
    details = {v.rule: v.detail for v in validate_chunks(chunks, CFG, PATTERN).violations}
    assert "'fake'" in details["label_in_set"]
    assert details["file_opens"].startswith("does not open as a video (")


def test_every_malformation_at_once_is_reported(make_chunk: MakeChunk, tmp_path: Path) -> None:
    noise = np.random.default_rng(2).bytes(4096)
    first = make_chunk(
        A,
        {
            "aaaaaaaaaa.mp4": real(),
            "bbbbbbbbbb.mp4": fake("aaaaaaaaaa.mp4"),
            "cccccccccc.mp4": {"label": "Fake", "split": "train", "original": "aaaaaaaaaa.mp4"},
            "dddddddddd.mp4": real(split="dev"),
            "eeeeeeeeee.mp4": {"label": "REAL", "split": "train", "original": "aaaaaaaaaa.mp4"},
            "ffffffffff.mp4": fake(None),
            "gggggggggg.mp4": fake("zzzzzzzzzz.mp4"),
            "hhhhhhhhhh.mp4": fake("bbbbbbbbbb.mp4"),
            "iiiiiiiiii.mp4": fake("iiiiiiiiii.mp4"),
            "jjjjjjjjjj.mp4": real(),
            "kkkkkkkkkk.mp4": real(),
            "llllllllll.mp4": real(),
            "../x.mp4": real(),
            "ABC.mp4": real(),
        },
        skip=("jjjjjjjjjj.mp4",),
    )
    (first / "kkkkkkkkkk.mp4").write_bytes(b"")
    (first / "llllllllll.mp4").write_bytes(noise)
    (first / "mmmmmmmmmm.mp4").write_bytes(noise)
    second = make_chunk(B, {"nnnnnnnnnn.mp4": fake("aaaaaaaaaa.mp4"), "aaaaaaaaaa.mp4": real()})
    third = make_chunk(C, {})
    (third / "metadata.json").write_text("{\n  'single quotes': 1\n}\n")
    missing = tmp_path / "dfdc_train_part_9"

    cfg = ValidateConfig(fake_share_min=0.5)
    report = validate_chunks([first, second, third, missing], cfg, PATTERN)

    assert found(report) == {
        (A, "aaaaaaaaaa.mp4", "name_unique"),
        (B, "aaaaaaaaaa.mp4", "name_unique"),
        (A, "cccccccccc.mp4", "label_in_set"),
        (A, "dddddddddd.mp4", "split_in_set"),
        (A, "eeeeeeeeee.mp4", "real_has_no_original"),
        (A, "ffffffffff.mp4", "fake_has_original"),
        (A, "gggggggggg.mp4", "original_exists"),
        (A, "hhhhhhhhhh.mp4", "original_is_real"),
        (A, "iiiiiiiiii.mp4", "original_not_self"),
        (A, "jjjjjjjjjj.mp4", "file_exists"),
        (A, "kkkkkkkkkk.mp4", "file_nonempty"),
        (A, "llllllllll.mp4", "file_opens"),
        (A, "mmmmmmmmmm.mp4", "file_listed"),
        (A, "../x.mp4", "name_pattern"),
        (A, "../x.mp4", "name_plain"),
        (A, "ABC.mp4", "name_pattern"),
        (C, "metadata.json", "metadata_readable"),
        ("dfdc_train_part_9", "metadata.json", "metadata_readable"),
        ("*", "metadata.json", "fake_share"),
    }
    assert report.n_videos == 16
    assert report.fake_share == pytest.approx(6 / 16)
    assert report.chunks == (A, B, C, "dfdc_train_part_9")
    by_chunk = {v.chunk: v.detail for v in report.violations if v.rule == "metadata_readable"}
    assert by_chunk[C].startswith("invalid JSON at line 2, column 3")
    assert by_chunk["dfdc_train_part_9"] == "chunk folder does not exist"
    # Violations come grouped by chunk in the order the chunks were given.
    order = [v.chunk for v in report.violations]
    assert order == sorted(order, key=[A, B, C, "dfdc_train_part_9", "*"].index)


@pytest.mark.parametrize(
    ("low", "high", "share_text"),
    [(0.7, 0.95, "0.667"), (0.3, 0.6, "0.667")],
)
def test_fake_share_out_of_range(
    make_chunk: MakeChunk, low: float, high: float, share_text: str
) -> None:
    cfg = ValidateConfig(fake_share_min=low, fake_share_max=high)
    report = validate_chunks(clean_dataset(make_chunk), cfg, PATTERN)
    assert found(report) == {("*", "metadata.json", "fake_share")}
    assert share_text in report.violations[0].detail


def test_no_videos_at_all_is_a_violation_not_a_crash(make_chunk: MakeChunk) -> None:
    report = validate_chunks([make_chunk(A, {})], CFG, PATTERN)
    assert found(report) == {("*", "metadata.json", "has_videos")}
    assert report.n_videos == 0
    assert report.fake_share == 0.0


def test_write_report_writes_summary_and_markdown(make_chunk: MakeChunk, tmp_path: Path) -> None:
    chunks = clean_dataset(make_chunk)
    edit(chunks[0], "bbbbbbbbbb.mp4", label="MAYBE|NOT")
    report = validate_chunks(chunks, CFG, PATTERN)
    out = tmp_path / "reports" / "validation"
    summary = write_report(report, out)

    assert summary == out / "summary.json"
    data = json.loads(summary.read_text())
    assert data["ok"] is False
    assert data["n_videos"] == 6
    assert data["n_violations"] == 1
    assert data["violations_by_rule"] == {"label_in_set": 1}
    assert data["violations"] == [
        {
            "chunk": A,
            "file": "bbbbbbbbbb.mp4",
            "rule": "label_in_set",
            "detail": data["violations"][0]["detail"],
        }
    ]
    markdown = (out / "report.md").read_text()
    assert "| chunk | file | rule | detail |" in markdown
    assert f"| {A} | bbbbbbbbbb.mp4 | label_in_set |" in markdown
    assert "MAYBE\\|NOT" in markdown  # a pipe in a value must not split the table row
    assert "FAILED with 1 violation(s)" in markdown


def test_clean_report_markdown() -> None:
    report = ValidationReport((A,), 2, 0.5, ())
    assert report.ok
    assert "No violations." in report.to_markdown()
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True
    assert not ValidationReport((A,), 2, 0.5, (Violation(A, "x", "r", "d"),)).ok


def test_importing_validation_does_not_import_great_expectations() -> None:
    code = "import sys, dfdc.data.validation; print('great_expectations' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
