"""The report's per-chunk labels table: face counts of the fakes, and their voice counts beside them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dfdc.report.eda import labels_table


def test_voice_counts_sit_beside_the_face_counts() -> None:
    labels = pd.DataFrame({
        "chunk": "c", "video": ["r", "f", "v", "n"], "crop_idx": 0,
        "crop_label": ["REAL", "FAKE", "REAL", "REAL"],
        "label_source": ["real", "original", "original", "original"],
    })  # fmt: skip
    audio = pd.DataFrame({
        "chunk": "c", "video": ["r", "f", "v", "n"], "original": [None, "r", "r", "r"],
        "audio_diff": [np.nan, 0.1, 12.0, np.nan],
        "audio_changed": pd.array([False, False, True, None], dtype="boolean"),
        "audio_status": ["real", "compared", "compared", "no_audio"],
    })  # fmt: skip
    row = labels_table(labels, audio).set_index("chunk").loc["c"]
    assert (row["changed"], row["untouched"]) == (1, 2)
    assert (row["voice changed"], row["voice unchanged"], row["voice not compared"]) == (1, 1, 1)
    assert "voice changed" not in labels_table(labels).columns
