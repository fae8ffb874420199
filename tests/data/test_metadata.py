"""The metadata reader: good files become a frame, bad ones a MetadataError with a reason."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from dfdc.data.metadata import (
    METADATA_COLUMNS,
    MetadataError,
    labels_to_int,
    read_chunks,
    read_metadata,
)

if TYPE_CHECKING:
    from pathlib import Path

GOOD = {
    "abcdefghij.mp4": {"label": "FAKE", "split": "train", "original": "klmnopqrst.mp4"},
    "klmnopqrst.mp4": {"label": "REAL", "split": "train", "original": None},
}


def _chunk(root: Path, name: str, content: object | str) -> Path:
    chunk = root / name
    chunk.mkdir()
    text = content if isinstance(content, str) else json.dumps(content)
    (chunk / "metadata.json").write_text(text)
    return chunk


def _reason(chunk: Path) -> str:
    with pytest.raises(MetadataError) as info:
        read_metadata(chunk)
    err = info.value
    assert err.path == chunk / "metadata.json"
    assert str(err) == f"{err.path}: {err.reason}"
    return err.reason


def test_good_metadata_becomes_rows(tmp_path: Path) -> None:
    chunk = _chunk(tmp_path, "dfdc_train_part_0", GOOD)
    frame = read_metadata(chunk)
    assert tuple(frame.columns) == METADATA_COLUMNS
    assert frame.to_dict("records") == [
        {
            "chunk": "dfdc_train_part_0",
            "filename": "abcdefghij.mp4",
            "label": "FAKE",
            "split": "train",
            "original": "klmnopqrst.mp4",
        },
        {
            "chunk": "dfdc_train_part_0",
            "filename": "klmnopqrst.mp4",
            "label": "REAL",
            "split": "train",
            "original": None,
        },
    ]


def test_missing_original_key_reads_as_none(tmp_path: Path) -> None:
    chunk = _chunk(tmp_path, "c", {"klmnopqrst.mp4": {"label": "REAL", "split": "train"}})
    assert read_metadata(chunk)["original"].tolist() == [None]


def test_empty_object_gives_empty_frame_with_columns(tmp_path: Path) -> None:
    frame = read_metadata(_chunk(tmp_path, "c", {}))
    assert frame.empty
    assert tuple(frame.columns) == METADATA_COLUMNS


def test_semantic_errors_are_not_the_readers_job(tmp_path: Path) -> None:
    bad = {"x.mp4": {"label": "MAYBE", "split": "nope", "original": "x.mp4"}}
    assert read_metadata(_chunk(tmp_path, "c", bad))["label"].tolist() == ["MAYBE"]


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    text = '{\n  "abcdefghij.mp4": {"label": "FAKE",\n  "split": "train",,\n}\n'
    chunk = _chunk(tmp_path, "c", text)
    reason = _reason(chunk)
    assert "invalid JSON" in reason
    assert "line 3" in reason
    with pytest.raises(MetadataError, match=r"metadata\.json: invalid JSON at line 3, column"):
        read_metadata(chunk)


def test_top_level_list_is_rejected(tmp_path: Path) -> None:
    reason = _reason(_chunk(tmp_path, "c", [GOOD]))
    assert reason == "top level is an array, expected a JSON object of entries"


def test_entry_not_an_object(tmp_path: Path) -> None:
    reason = _reason(_chunk(tmp_path, "c", {"abcdefghij.mp4": "FAKE"}))
    assert reason == "entry 'abcdefghij.mp4' is a string, not an object"


def test_missing_label(tmp_path: Path) -> None:
    reason = _reason(_chunk(tmp_path, "c", {"abcdefghij.mp4": {"split": "train"}}))
    assert reason == "entry 'abcdefghij.mp4' lacks field(s) label"


def test_extra_field(tmp_path: Path) -> None:
    entry = {"label": "REAL", "split": "train", "original": None, "score": 0.3}
    reason = _reason(_chunk(tmp_path, "c", {"abcdefghij.mp4": entry}))
    assert reason == "entry 'abcdefghij.mp4' has unexpected field(s) score"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"label": 1, "split": "train"}, "field 'label' is a number, not a string"),
        ({"label": "REAL", "split": None}, "field 'split' is null, not a string"),
        (
            {"label": "FAKE", "split": "train", "original": ["a"]},
            "'original' is an array, not a string or null",
        ),
    ],
)
def test_mistyped_fields(tmp_path: Path, entry: dict[str, object], expected: str) -> None:
    assert expected in _reason(_chunk(tmp_path, "c", {"abcdefghij.mp4": entry}))


def test_duplicate_key_is_not_silently_dropped(tmp_path: Path) -> None:
    text = (
        '{"abcdefghij.mp4": {"label": "REAL", "split": "train", "original": null},'
        ' "abcdefghij.mp4": {"label": "FAKE", "split": "train", "original": "x.mp4"}}'
    )
    assert _reason(_chunk(tmp_path, "c", text)) == "duplicate key 'abcdefghij.mp4'"


def test_missing_file_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert _reason(tmp_path / "empty") == "file does not exist"
    assert _reason(tmp_path / "nowhere") == "chunk folder does not exist"


def test_non_utf8_file(tmp_path: Path) -> None:
    chunk = tmp_path / "c"
    chunk.mkdir()
    (chunk / "metadata.json").write_bytes(b'{"\xff": 1}')
    assert _reason(chunk).startswith("not UTF-8 text")


def test_read_chunks_concatenates_in_order_with_paths(tmp_path: Path) -> None:
    first = _chunk(tmp_path, "part_1", GOOD)
    second = _chunk(tmp_path, "part_0", {"uvwxyzabcd.mp4": {"label": "REAL", "split": "train"}})
    frame = read_chunks([first, second])
    assert tuple(frame.columns) == (*METADATA_COLUMNS, "path")
    assert frame["chunk"].tolist() == ["part_1", "part_1", "part_0"]
    assert frame["path"].tolist() == [
        first / "abcdefghij.mp4",
        first / "klmnopqrst.mp4",
        second / "uvwxyzabcd.mp4",
    ]
    assert frame.index.tolist() == [0, 1, 2]


def test_read_chunks_of_nothing_and_of_a_bad_chunk(tmp_path: Path) -> None:
    assert tuple(read_chunks([]).columns) == (*METADATA_COLUMNS, "path")
    bad = _chunk(tmp_path, "bad", "[")
    with pytest.raises(MetadataError):
        read_chunks([_chunk(tmp_path, "good", GOOD), bad])


def test_labels_to_int() -> None:
    out = labels_to_int(pd.Series(["FAKE", "REAL", "FAKE"]))
    assert out.dtype == np.int64
    assert out.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="fake"):
        labels_to_int(pd.Series(["REAL", "fake"]))
