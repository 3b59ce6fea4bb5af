"""Pytest fixtures for the Kubernetes API double (import them into a test module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import KubernetesDouble


@pytest.fixture
def kubernetes_double(tmp_path: Path) -> Iterator[KubernetesDouble]:
    """A fresh double: nodes cpu-1, cpu-2 (8 CPUs, 32 Gi) and gpu-1 (one NVIDIA-L4, tainted nvidia.com/gpu)."""
    folder = tmp_path / "kubernetes-double"
    folder.mkdir()
    with KubernetesDouble(folder) as double:
        yield double
