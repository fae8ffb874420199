"""Shared fixtures of the data-contract tests."""

from __future__ import annotations

import io

import numpy as np
import pytest


@pytest.fixture(scope="session")
def mp4_bytes() -> bytes:
    """A real H.264 clip (4 frames of 64x64 noise), encoded once and copied per video."""
    import av

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(4):
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()
