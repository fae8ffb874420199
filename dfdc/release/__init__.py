"""Stages promote and package: registry, bundle, prediction, the pyfunc model."""
