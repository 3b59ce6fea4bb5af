"""Bundles as OCI artifacts: deterministic packing and untrusting unpacking."""

from modelhall.bundle.pack import Blob, PackedBundle, PackError, canonical_json, pack_bundle
from modelhall.bundle.unpack import UnpackLimits, UnsafeArchiveError, extract_tar, unpack_layers

__all__ = [
    "Blob", "PackError", "PackedBundle", "UnpackLimits", "UnsafeArchiveError",
    "canonical_json", "extract_tar", "pack_bundle", "unpack_layers",
]
