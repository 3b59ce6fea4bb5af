"""Unpacking archives and bundles without trusting them.

Refuses absolute paths, ``..``, links that leave the target, device files and archives
that expand past a limit. Everything is written into a fresh temp dir beside the
target and moved into place only when the whole archive was accepted, so a refused
archive leaves nothing behind.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from modelhall.bundle import mediatypes as mt

DEFAULT_MAX_BYTES = 20 * 1024**3
DEFAULT_MAX_MEMBERS = 100_000


class IteratorReader(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks (a blob streamed from a store)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class UnsafeArchiveError(ValueError):
    """An archive or layer that would write outside its target or past its limits."""


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS


def safe_relative_path(name: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside its root, or an error saying why not."""
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        raise UnsafeArchiveError(f"{name!r} is an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{name!r} leaves the target directory through '..'")
    if not path.parts or path == PurePosixPath("."):
        raise UnsafeArchiveError(f"{name!r} is not a file name")
    return path


class _Budget:
    def __init__(self, limits: UnpackLimits):
        self.limits = limits
        self.bytes = 0
        self.members = 0

    def spend(self, name: str, size: int) -> None:
        self.members += 1
        self.bytes += size
        if self.members > self.limits.max_members:
            raise UnsafeArchiveError(f"more than {self.limits.max_members} entries (at {name!r})")
        if self.bytes > self.limits.max_bytes:
            raise UnsafeArchiveError(f"expands past the limit of {self.limits.max_bytes} bytes (at {name!r})")


ARCHIVE_READ_ERRORS = (tarfile.ReadError, gzip.BadGzipFile, EOFError, zlib.error)


@contextmanager
def open_tar_gz_stream(stream: BinaryIO) -> Iterator[tarfile.TarFile]:
    """Read a tar+gzip stream front to back, without seeking.

    gzip is undone by :mod:`gzip` rather than tarfile's ``r|gz``, whose header parser
    fails on a truncated stream with a TypeError instead of a read error.
    Errors while reading are one of :data:`ARCHIVE_READ_ERRORS`.
    """
    with gzip.GzipFile(fileobj=stream, mode="rb") as unzipped, tarfile.open(fileobj=unzipped, mode="r|") as archive:
        yield archive


def extract_tar(stream: BinaryIO, target: Path, limits: UnpackLimits = UnpackLimits(),
                budget: _Budget | None = None) -> None:
    """Extract a tar+gzip stream into the existing directory ``target``."""
    budget = budget or _Budget(limits)
    try:
        with open_tar_gz_stream(stream) as archive:
            for member in archive:
                safe_relative_path(member.name)
                budget.spend(member.name, member.size)
                try:
                    accepted = tarfile.data_filter(member, str(target))
                except tarfile.FilterError as error:
                    raise UnsafeArchiveError(f"{member.name!r}: {_filter_reason(error)}") from None
                archive.extract(accepted, target, filter="fully_trusted")
    except ARCHIVE_READ_ERRORS as error:
        raise UnsafeArchiveError(f"not a readable tar archive: {error}") from None


def _filter_reason(error: tarfile.FilterError) -> str:
    if isinstance(error, tarfile.SpecialFileError):
        return "device files, pipes and other special files are refused"
    if isinstance(error, (tarfile.LinkOutsideDestinationError, tarfile.AbsoluteLinkError)):
        return "is a link that points outside the target directory"
    if isinstance(error, tarfile.OutsideDestinationError):
        return "would be written outside the target directory"
    return str(error)


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """A temp dir beside ``target`` that becomes ``target`` only if the block succeeds."""
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        target.rmdir()
    staging.rename(target)


def unpack_layers(manifest: dict[str, Any], open_blob: Callable[[str], BinaryIO], target: Path,
                  limits: UnpackLimits = UnpackLimits()) -> None:
    """Lay out a bundle's layers in ``target``.

    Understands Modelhall bundles (a code tar plus raw weights files) and artifacts
    pushed by plain ``oras push`` (raw files titled with their path, and directories
    as tar+gzip layers marked for unpacking).
    """
    budget = _Budget(limits)
    with staged_directory(target) as staging:
        for layer in manifest.get("layers", []):
            annotations = layer.get("annotations") or {}
            with open_blob(layer["digest"]) as stream:
                if mt.is_folder_archive(layer):
                    extract_tar(stream, staging, limits, budget)
                elif mt.ANNOTATION_TITLE in annotations:
                    _write_file(stream, staging, annotations[mt.ANNOTATION_TITLE], layer.get("size", 0), budget)


def _write_file(stream: BinaryIO, root: Path, title: str, size: int, budget: _Budget) -> None:
    relative = safe_relative_path(title)
    budget.spend(title, size)
    destination = root / relative
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.parent.resolve() != (root.resolve() / relative).parent:
        raise UnsafeArchiveError(f"{title!r} would be written through a link outside the target directory")
    with destination.open("wb") as out:
        shutil.copyfileobj(stream, out, 1024 * 1024)
