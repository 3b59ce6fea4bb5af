"""Large buffers go back to the system as soon as they are freed.

glibc raises its mmap threshold each time a large mapped block is freed (up to 32 MiB on 64-bit
systems), after which blob buffers (an S3 part is 8 MiB) come from the heap and stay there once
freed. Pushing 1 GB to S3 then peaked at 238 MB of registry RSS, against 186 MB with a fixed
threshold (``bench/registry_throughput.py``; the registry idles at 154 MB). A fixed threshold
keeps every buffer of 1 MiB or more in a mapping of its own, which ``free`` unmaps. Python has no
binding for ``mallopt``, hence ctypes.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
LARGE_BUFFER = 1024 * 1024


def return_large_buffers(threshold: int = LARGE_BUFFER) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl, macOS: their allocators do not keep large blocks this way
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
