"""MLflow pyfunc model "from code": videos in, P(FAKE) out, never a file it was not given.

MLflow loads this file by path (no cloudpickle), finds the bundle among the model's
artifacts, and verifies it like any other bundle.

Each input row is one video, either

- its bytes in column ``video`` (base64 in a JSON request: the signature's ``binary`` type),
  with an optional display ``name``: written to a private temporary folder, scored, deleted; or
- a ``path`` under the folder named by ``video_root`` in the model config, given when the
  model is loaded (``mlflow.pyfunc.load_model(uri, model_config={"video_root": ...})``, or
  ``MLFLOW_PYFUNC_INFERENCE_CONFIG='{"video_root": ...}'`` for ``mlflow models serve``).

A path that resolves outside the root (``..``, an absolute path elsewhere, a symlink out),
or any path when no root was given, is never opened: its row is ``refused`` with the
reason in ``detail`` and the calibrated fallback as ``label``.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model

ROOT_KEY = "video_root"
OUTPUT = ["filename", "label", "status", "detail"]


def _given(value: Any) -> bool:
    """A cell that holds something: not missing, not NaN, not empty."""
    if value is None or (isinstance(value, float) and value != value):
        return False
    return not (isinstance(value, str | bytes) and not value)


class DfdcDetector(mlflow.pyfunc.PythonModel):
    """Wraps ``dfdc.release.predict.score_videos`` around the bundle artifact."""

    def load_context(self, context: Any) -> None:
        """Verify and load the bundle once, when MLflow loads the model; fix the path root."""
        from dfdc.config import ScoreConfig
        from dfdc.release.bundle import load_bundle

        self.bundle = load_bundle(Path(context.artifacts["bundle"]))
        config = context.model_config or {}
        root = config.get(ROOT_KEY) or ""
        self.root = Path(root).resolve() if root else None
        # run settings (device, threads, batch_size, workers) may come with the model config too
        self.run = ScoreConfig.model_validate({k: config[k] for k in ScoreConfig.model_fields if k in config})

    def _path(self, value: str) -> tuple[Path | None, str]:
        """The path to score, or ``None`` and why it is refused (nothing is opened here)."""
        if self.root is None:
            return None, f"paths are not accepted (no {ROOT_KEY} given at load time); send the video"
        path = (self.root / str(value)).resolve()
        if not path.is_relative_to(self.root):
            return None, f"path outside {ROOT_KEY}"
        return path, ""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """One row per input row: ``filename``, ``label`` (P(FAKE)), ``status``, ``detail``."""
        from dfdc.faces.video import VIDEO_SUFFIXES
        from dfdc.release.predict import score_videos

        fallback = float(self.bundle.calibration.fallback)
        rows: list[dict[str, Any]] = []
        todo: dict[int, Path] = {}  # row index -> file to score
        with tempfile.TemporaryDirectory(prefix="dfdc-pyfunc-") as tmp:  # private (0700), removed after
            for i, cell in enumerate(model_input.to_dict("records")):
                video, path, name = cell.get("video"), cell.get("path"), cell.get("name")
                shown = Path(str(name)).name if _given(name) else ""
                reason = ""
                if _given(video):
                    data = video
                    if isinstance(video, str):  # base64 that no signature decoded
                        try:
                            data = base64.b64decode(video, validate=True)
                        except (binascii.Error, ValueError):
                            data, reason = None, "video is neither bytes nor base64"
                    if data is not None:
                        suffix = Path(shown).suffix.lower()
                        target = Path(tmp) / f"{i}{suffix if suffix in VIDEO_SUFFIXES else '.mp4'}"
                        target.write_bytes(bytes(data))
                        todo[i] = target
                    shown = shown or f"video_{i}"
                elif _given(path):
                    shown = shown or Path(str(path)).name
                    resolved, reason = self._path(str(path))
                    if resolved is not None:
                        todo[i] = resolved
                else:
                    reason = "no video and no path"
                rows.append({"filename": shown or f"video_{i}", "label": fallback, "status": "refused",
                             "detail": reason})  # fmt: skip
            if todo:
                scores = score_videos(self.bundle, list(todo.values()), progress=False, run=self.run)
                for i, scored in zip(todo, scores.to_dict("records"), strict=True):
                    rows[i].update(label=scored["label"], status=scored["status"], detail=scored["detail"])
        return pd.DataFrame(rows, columns=OUTPUT)


set_model(DfdcDetector())
