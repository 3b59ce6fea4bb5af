"""Runtimes: where bundles' environments are built and their model servers run."""
