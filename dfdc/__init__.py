"""dfdc: a reproducible deepfake video detection pipeline (library code, no orchestration)."""

__version__ = "0.1.0"
