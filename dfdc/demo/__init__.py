"""The demo-data generator (nothing at run time depends on it)."""
