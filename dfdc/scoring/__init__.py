"""Stages calibrate and evaluate: aggregation, calibration, metrics, plots."""
