"""Prefect flows: one per pipeline stage, the end-to-end pipeline, and the CLI."""
