"""The registry gives a freed blob buffer back to the system (``registry/memory.py``), measured in a
fresh interpreter, with and without the fixed threshold, so this process's allocator stays as it is."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

FREED_PART_GROWTH = """
import sys
from pathlib import Path

from modelhall.registry.memory import return_large_buffers


def resident_kib() -> int:
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmRSS:"))


def touch_and_free(size: int) -> None:
    part = bytearray(size)
    part[::4096] = b"x" * len(part[::4096])
    del part


if sys.argv[1] == "fixed":
    assert return_large_buffers()
touch_and_free(8 << 20)  # an S3 part: freed, it moves glibc's dynamic threshold above its size
before = resident_kib()
touch_and_free(8 << 20)
print(resident_kib() - before)
"""


def growth_kib(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", FREED_PART_GROWTH, mode], capture_output=True, text=True,
                          timeout=60, check=True)
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the threshold is glibc's")
def test_a_freed_part_buffer_leaves_the_registrys_memory() -> None:
    assert growth_kib("dynamic") >= 4 * 1024  # glibc's default keeps the second part's 8 MiB
    assert growth_kib("fixed") < 1024
