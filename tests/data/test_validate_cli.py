"""`dfdc validate` on malformed chunks: exit 1, every problem named by chunk, file and rule.

Each case damages one chunk beside a valid one; the command must fail with a table row for
the damaged file and rule, never a traceback, and must leave the valid chunk alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from dfdc.data.validation import _md

REPO = Path(__file__).resolve().parents[2]
GOOD, BAD = "dfdc_train_part_0", "dfdc_train_part_1"
GOOD_ENTRIES = {
    "aaaaaaaaaa.mp4": {"label": "REAL", "split": "train", "original": None},
    "bbbbbbbbbb.mp4": {"label": "FAKE", "split": "train", "original": "aaaaaaaaaa.mp4"},
    "cccccccccc.mp4": {"label": "FAKE", "split": "train", "original": "aaaaaaaaaa.mp4"},
}
REAL = {"label": "REAL", "split": "train", "original": None}


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _write_chunk(chunk: Path, entries: dict[str, object], mp4: bytes) -> None:
    chunk.mkdir()
    (chunk / "metadata.json").write_text(json.dumps(entries))
    for name in entries:
        (chunk / name).write_bytes(mp4)


def _metadata(text: str | bytes) -> Callable[[Path, bytes], None]:
    def make(chunk: Path, _: bytes) -> None:
        chunk.mkdir()
        path = chunk / "metadata.json"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)

    return make


def _metadata_is_a_directory(chunk: Path, _: bytes) -> None:
    (chunk / "metadata.json").mkdir(parents=True)


def _chunk_is_a_file(chunk: Path, _: bytes) -> None:
    chunk.write_text("not a folder")


def _nothing(chunk: Path, _: bytes) -> None:
    """The chunk folder is named but does not exist."""


def _listed_video(name: str, damage: Callable[[Path], None]) -> Callable[[Path, bytes], None]:
    """A chunk listing one REAL ``name`` whose file is then damaged."""

    def make(chunk: Path, mp4: bytes) -> None:
        _write_chunk(chunk, {name: REAL}, mp4)
        damage(chunk / name)

    return make


def _replace_with_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _symlink_loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(3).bytes(2048))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def _entries(entries: dict[str, object]) -> Callable[[Path, bytes], None]:
    def make(chunk: Path, mp4: bytes) -> None:
        chunk.mkdir()
        (chunk / "metadata.json").write_text(json.dumps(entries))
        (chunk / "dddddddddd.mp4").write_bytes(mp4)

    return make


DUPLICATE = (
    '{"dddddddddd.mp4": {"label": "REAL", "split": "train", "original": null},'
    ' "dddddddddd.mp4": {"label": "REAL", "split": "train", "original": null}}'
)
# case -> (build the bad chunk, file named, rule, text the detail must contain)
CASES: dict[str, tuple[Callable[[Path, bytes], None], str, str, str]] = {
    "truncated JSON": (_metadata('{"dddddddddd.mp4": {"label": "REAL"'), "metadata.json",
                       "metadata_readable", "invalid JSON"),
    "top level is an array": (_metadata("[]"), "metadata.json", "metadata_readable", "top level"),
    "top level is a number": (_metadata("42"), "metadata.json", "metadata_readable", "a number"),
    "empty file": (_metadata(""), "metadata.json", "metadata_readable", "invalid JSON"),
    "not UTF-8": (_metadata(b'{"\xff\xfe": 1}'), "metadata.json", "metadata_readable", "UTF-8"),
    "UTF-8 BOM": (_metadata("\ufeff{}"), "metadata.json", "metadata_readable", "BOM"),
    "nested 100k deep": (_metadata("[" * 100_000), "metadata.json", "metadata_readable", "nested"),
    "integer of 5000 digits": (_metadata('{"a": ' + "9" * 5000 + "}"), "metadata.json",
                               "metadata_readable", "invalid JSON value"),
    "duplicate keys": (_metadata(DUPLICATE), "metadata.json", "metadata_readable", "duplicate key"),
    "entry is a string": (_metadata('{"dddddddddd.mp4": "REAL"}'), "metadata.json",
                          "metadata_readable", "not an object"),
    "metadata.json is a directory": (_metadata_is_a_directory, "metadata.json",
                                     "metadata_readable", "directory"),
    "chunk is a file": (_chunk_is_a_file, "metadata.json", "metadata_readable", "not a folder"),
    "chunk does not exist": (_nothing, "metadata.json", "metadata_readable", "does not exist"),
    "video is a directory": (_listed_video("dddddddddd.mp4", _replace_with_dir), "dddddddddd.mp4",
                             "file_exists", "missing"),
    "video is a symlink loop": (_listed_video("dddddddddd.mp4", _symlink_loop), "dddddddddd.mp4",
                                "file_exists", "missing"),
    "video is noise": (_listed_video("dddddddddd.mp4", _garbage), "dddddddddd.mp4", "file_opens",
                       "does not open"),
    "video truncated": (_listed_video("dddddddddd.mp4", _truncate), "dddddddddd.mp4", "file_opens",
                        "does not open"),
    "absolute path as name": (_entries({"dddddddddd.mp4": REAL, "/etc/passwd": REAL}),
                              "/etc/passwd", "name_plain", "plain"),
    "control character in name": (_entries({"dddddddddd.mp4": REAL, "ab\ncd.mp4": REAL}),
                                  "ab\ncd.mp4", "name_plain", "plain"),
    "label null": (_metadata('{"dddddddddd.mp4": {"label": null, "split": "train"}}'),
                   "metadata.json", "metadata_readable", "null"),
}  # fmt: skip


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mp4_bytes: bytes) -> Path:
    """tmp project: params.yaml and a valid chunk; the test adds the bad one."""
    # The defaults of dfdc.config (what params.yaml spells out), independent of its other sections.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({}))
    _write_chunk(tmp_path / GOOD, GOOD_ENTRIES, mp4_bytes)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_chunk_fails_naming_file_and_rule(
    project: Path, mp4_bytes: bytes, harness: None, case: str
) -> None:
    from flows.cli import app

    build, file, rule, detail = CASES[case]
    build(project / BAD, mp4_bytes)
    before = _digest(project / GOOD)
    result = CliRunner().invoke(app, ["validate", GOOD, BAD])

    assert result.exit_code == 1, result.output
    # A clean exit, not an escaped exception. (Tracebacks in the text are checked on a real
    # process below: in-process, Prefect's console handler may trip over CliRunner's streams.)
    assert isinstance(result.exception, SystemExit)
    rows = [line for line in result.output.splitlines() if line.startswith(f"| {BAD} |")]
    assert any(row.startswith(f"| {BAD} | {_md(file)} | {rule} |") for row in rows), result.output
    assert any(detail in row for row in rows), result.output
    assert f"| {GOOD} |" not in result.output  # the valid chunk beside it is not blamed
    assert _digest(project / GOOD) == before  # nor touched
    summary = json.loads((project / "reports/validation-by-hand/summary.json").read_text())
    assert summary["ok"] is False


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_metadata_is_reported(project: Path, harness: None) -> None:
    from flows.cli import app

    (project / BAD).mkdir()
    (project / BAD / "metadata.json").write_text("{}")
    (project / BAD / "metadata.json").chmod(0)
    result = CliRunner().invoke(app, ["validate", GOOD, BAD])
    assert result.exit_code == 1
    assert f"| {BAD} | metadata.json | metadata_readable | cannot be read" in result.output


def test_valid_chunk_passes_and_builds_data_docs(project: Path, harness: None) -> None:
    from flows.cli import app

    result = CliRunner().invoke(app, ["validate", GOOD])
    assert result.exit_code == 0, result.output
    # Folders named by hand report beside the stage's output, never into it (dvc would rerun).
    assert not (project / "reports/validation").exists()
    docs = project / "reports/validation-by-hand/data_docs"
    assert (docs / "index.html").is_file()
    pages = list((docs / "validations").rglob("*.html"))
    assert len(pages) == 1
    assert "dfdc_metadata" in pages[0].read_text()


@pytest.mark.integration  # its own Prefect server starts: ~30 s on a busy machine
def test_real_process_exits_1_without_traceback(project: Path, mp4_bytes: bytes) -> None:
    """The installed entry point, in its own process, on several bad chunks at once."""
    bad = ["dfdc_train_part_2", "dfdc_train_part_3", "dfdc_train_part_4"]
    _metadata("[" * 100_000)(project / bad[0], mp4_bytes)
    _metadata_is_a_directory(project / bad[1], mp4_bytes)
    _listed_video("dddddddddd.mp4", _garbage)(project / bad[2], mp4_bytes)
    env = {**os.environ, "PREFECT_HOME": str(project / ".prefect"), "PYTHONPATH": str(REPO)}
    code = "from flows.cli import app; app()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "validate", GOOD, *bad],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"| {bad[0]} | metadata.json | metadata_readable | JSON nested too deeply" in proc.stderr
    assert f"| {bad[1]} | metadata.json | metadata_readable | is a directory" in proc.stderr
    assert f"| {bad[2]} | dddddddddd.mp4 | file_opens |" in proc.stderr
    assert f"| {GOOD} |" not in proc.stderr
    shutil.rmtree(project / ".prefect", ignore_errors=True)
