"""Modelhall: share trained ML models as live, reproducible demos."""

__version__ = "0.1.0"
