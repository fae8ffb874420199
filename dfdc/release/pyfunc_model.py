"""MLflow pyfunc model "from code": a table of video paths in, P(FAKE) out.

MLflow loads this file by path (no cloudpickle), finds the bundle among the model's
artifacts, and verifies it like any other bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model


class DfdcDetector(mlflow.pyfunc.PythonModel):
    """Wraps ``dfdc.release.predict.score_videos`` around the bundle artifact."""

    def load_context(self, context: Any) -> None:
        """Verify and load the bundle once, when MLflow loads the model."""
        from dfdc.release.bundle import load_bundle

        self.bundle = load_bundle(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """Score the videos in column ``path``: ``filename``, ``label`` (P(FAKE)), ``status``."""
        from dfdc.release.predict import score_videos

        paths = [Path(p) for p in model_input["path"]]
        scores = score_videos(self.bundle, paths, progress=False)
        return scores[["filename", "label", "status"]]


set_model(DfdcDetector())
